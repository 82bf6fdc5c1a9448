"""
Channel names and patterns.

A name is 1-255 characters from ``A-Z a-z 0-9 _ - : . @``.  A pattern is a
name in which ``*`` may stand anywhere; ``*`` matches any run of characters,
``:`` and the empty run included, so ``order:*`` matches ``order:123`` and
``order:a:b``.  A pattern without ``*`` matches only itself.

``%`` (the wildcard as upstream InsForge writes it, ``order:%``) means the
same as ``*``.  Patterns are kept in one canonical form, with ``*``
(`canonical_pattern`): the REST API and the socket events turn ``%`` into
``*`` as they read a pattern, and PostgreSQL does the same for every row
written to ``realtime.channels`` (migration 0009), so ``order:%`` and
``order:*`` are one pattern however they arrive.

A name belongs to the enabled channel whose pattern matches it; when several
match, the exact pattern wins, then the one with the most literal characters,
then the oldest.  PostgreSQL decides it (``realtime.owning_channel()``), with
its own copy of `matches` (``realtime.pattern_matches()``); tests hold both
against this module and a statement of the rule in Python.

Pure code.
"""

from __future__ import annotations

import re
from functools import cache, lru_cache

MAX_LENGTH = 255
WILDCARD = "*"
#: Upstream's spelling of the wildcard; the same as `WILDCARD`.
UPSTREAM_WILDCARD = "%"
#: What a channel name is, and a pattern, as regular expressions (also
#: written into the OpenAPI document).
NAME_REGEX = rf"[A-Za-z0-9_\-:.@]{{1,{MAX_LENGTH}}}"
PATTERN_REGEX = rf"[A-Za-z0-9_\-:.@*%]{{1,{MAX_LENGTH}}}"
NAME = re.compile(NAME_REGEX)
PATTERN = re.compile(PATTERN_REGEX)


def is_valid_name(name: object) -> bool:
    """
    Is C{name} a channel name (no wildcard)?
    """
    return isinstance(name, str) and NAME.fullmatch(name) is not None


def is_valid_pattern(pattern: object) -> bool:
    """
    Is C{pattern} a channel pattern (a name in which ``*`` or ``%`` may
    appear)?
    """
    return isinstance(pattern, str) and PATTERN.fullmatch(pattern) is not None


def canonical_pattern(pattern: str) -> str:
    """
    C{pattern} in the form realtimed keeps: every ``%`` written as ``*``.
    """
    return pattern.replace(UPSTREAM_WILDCARD, WILDCARD)


def is_wildcard(pattern: str) -> bool:
    return WILDCARD in pattern or UPSTREAM_WILDCARD in pattern


@lru_cache(maxsize=4096)
def _compiled(pattern: str) -> re.Pattern[str]:
    parts = canonical_pattern(pattern).split(WILDCARD)
    return re.compile(".*".join(re.escape(part) for part in parts), re.S)


def matches(pattern: str, name: str) -> bool:
    """
    Does C{pattern} match the channel name C{name}?
    """
    if WILDCARD not in pattern and UPSTREAM_WILDCARD not in pattern:
        return pattern == name
    return _compiled(pattern).fullmatch(name) is not None


def literal_length(pattern: str) -> int:
    """
    How many characters of C{pattern} are not wildcards.
    """
    return len(pattern) - pattern.count(WILDCARD)


def overlap(first: str, second: str) -> bool:
    """
    Is there a channel name both patterns match?
    """
    # Collapse runs of wildcards: they match what one does.
    a = re.sub(r"\*+", WILDCARD, first)
    b = re.sub(r"\*+", WILDCARD, second)

    @cache
    def common(i: int, j: int) -> bool:
        # Do a[i:] and b[j:] match a common string?
        if i == len(a) and j == len(b):
            return True
        if i < len(a) and a[i] == WILDCARD:
            # The wildcard matches nothing more, or also what b[j] matches.
            return common(i + 1, j) or (j < len(b) and common(i, j + 1))
        if j < len(b) and b[j] == WILDCARD:
            return common(i, j + 1) or (i < len(a) and common(i + 1, j))
        return i < len(a) and j < len(b) and a[i] == b[j] and common(i + 1, j + 1)

    return common(0, 0)


def takes_names_from(newer: str, newer_created: float, older: str, older_created: float) -> bool:
    """
    Does the enabled row with pattern C{newer} own some of the names that
    the row with wildcard pattern C{older} would own without it?  It does
    when some name matches both and, for such a name, C{newer} wins: it is
    the name itself (no wildcard), or it has more literal characters, or as
    many and is the older row (times in seconds).
    """
    if newer == older or not overlap(newer, older):
        return False
    if not is_wildcard(newer):
        return True
    mine, theirs = literal_length(newer), literal_length(older)
    return mine > theirs or (mine == theirs and newer_created < older_created)
