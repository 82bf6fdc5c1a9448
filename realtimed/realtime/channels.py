"""
Channel names and patterns.

A name is 1-255 characters from ``A-Z a-z 0-9 _ - : . @``.  A pattern is a
name in which ``*`` may stand anywhere; ``*`` matches any run of characters,
``:`` and the empty run included, so ``order:*`` matches ``order:123`` and
``order:a:b``.  A pattern without ``*`` matches only itself.

A name belongs to the enabled channel whose pattern matches it; when several
match, the exact pattern wins, then the one with the most literal characters,
then the oldest (`precedence`).  The same rule is written in SQL as
``realtime.owning_channel()``; the two are kept in agreement by tests.

Pure code.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime
from functools import lru_cache
from typing import Protocol, TypeVar

MAX_LENGTH = 255
NAME = re.compile(r"[A-Za-z0-9_\-:.@]{1,255}")
PATTERN = re.compile(r"[A-Za-z0-9_\-:.@*]{1,255}")
WILDCARD = "*"


def is_valid_name(name: object) -> bool:
    """
    Is C{name} a channel name (no wildcard)?
    """
    return isinstance(name, str) and NAME.fullmatch(name) is not None


def is_valid_pattern(pattern: object) -> bool:
    """
    Is C{pattern} a channel pattern (a name in which ``*`` may appear)?
    """
    return isinstance(pattern, str) and PATTERN.fullmatch(pattern) is not None


def is_wildcard(pattern: str) -> bool:
    return WILDCARD in pattern


@lru_cache(maxsize=4096)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in pattern.split(WILDCARD)), re.S)


def matches(pattern: str, name: str) -> bool:
    """
    Does C{pattern} match the channel name C{name}?
    """
    if WILDCARD not in pattern:
        return pattern == name
    return _compiled(pattern).fullmatch(name) is not None


def literal_length(pattern: str) -> int:
    """
    How many characters of C{pattern} are not wildcards.
    """
    return len(pattern) - pattern.count(WILDCARD)


class ChannelLike(Protocol):
    @property
    def pattern(self) -> str: ...

    @property
    def created_at(self) -> datetime: ...


C = TypeVar("C", bound=ChannelLike)


def owner(channels: Iterable[C], name: str) -> C | None:
    """
    The channel among C{channels} (all enabled) that owns C{name}: the exact
    pattern, else the matching pattern with the most literal characters, else
    the oldest; C{None} when none matches.
    """
    best: C | None = None
    best_key: tuple[bool, int, float] | None = None
    for channel in channels:
        if not matches(channel.pattern, name):
            continue
        key = precedence(channel, name)
        if best_key is None or key > best_key:
            best, best_key = channel, key
    return best


def precedence(channel: ChannelLike, name: str) -> tuple[bool, int, float]:
    """
    Sort key of a channel matching C{name}: greater owns it.
    """
    return (
        channel.pattern == name,
        literal_length(channel.pattern),
        -channel.created_at.timestamp(),
    )
