"""
What a published message must be, whoever publishes it: a client on a socket
(`realtimed.realtime.client_events`) or a backend through the REST API
(`realtimed.rest.validation`).  Both use this one rule set, so they accept
and refuse the same channels, event names and payloads, and say why in the
same words.

A problem is reported as ``<path>: <reason>``, where the path names the
field (``channel``, ``event``, ``payload.items.3``); the problems of one
input are joined by ``, `` (`InvalidInput.message`).

Only text PostgreSQL can store is accepted: no NUL character, and no lone
UTF-16 surrogate (JSON may carry one, UTF-8 cannot), in a name, a payload
string or a payload key.

Pure code.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from typing import Any, Final

from realtimed.engineio.socket_packets import RESERVED_EVENTS
from realtimed.realtime.channels import is_valid_name, is_valid_pattern, is_wildcard

MAX_EVENT_LENGTH: Final = 255

#: The deepest nesting of arrays and objects accepted in a payload.
MAX_PAYLOAD_DEPTH: Final = 64

#: At most this many problems of one payload are reported.
MAX_PAYLOAD_PROBLEMS: Final = 10

#: Events only the database publishes (row changes); backends may publish
#: them too, clients may not.
DATABASE_EVENTS: Final = frozenset({"INSERT", "UPDATE", "DELETE"})

#: Events the server itself sends to clients (presence changes, errors); a
#: client publishing them would impersonate the server.
SERVER_EVENTS: Final = frozenset({"presence:join", "presence:leave", "realtime:error"})


class Sender(enum.Enum):
    """
    Who publishes: a client on a socket, or a backend with the admin
    credential.
    """

    CLIENT = "client"
    BACKEND = "backend"


class InvalidInput(Exception):
    """
    The input is malformed.

    @ivar problems: One ``<path>: <reason>`` per problem found.
    """

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__(", ".join(problems))
        self.problems: tuple[str, ...] = tuple(problems)

    @property
    def message(self) -> str:
        return ", ".join(self.problems)


def json_type(value: object) -> str:
    """
    The JSON name of C{value}'s type, as problems mention it.
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, (bytes, bytearray)):
        return "binary"
    return type(value).__name__


def expected(path: str, kind: str, value: object) -> str:
    """
    The problem of a field of the wrong type.
    """
    return f"{path}: Expected {kind}, received {json_type(value)}"


def storable_problem(text: str) -> str | None:
    """
    Why PostgreSQL could not store C{text}, or C{None}.
    """
    if "\x00" in text:
        return "Must not contain NUL characters"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "Invalid Unicode"
    return None


def publication_problems(
    channel: object, event: object, payload: object, sender: Sender
) -> list[str]:
    """
    Everything that keeps C{sender} from publishing C{payload} as C{event}
    on C{channel}; none when it may.
    """
    problems = []
    problem = _channel_problem(channel)
    if problem is not None:
        problems.append(problem)
    problem = _event_problem(event, sender)
    if problem is not None:
        problems.append(problem)
    payload_problems: list[str] = []
    _payload_problems(payload, "payload", 0, payload_problems)
    problems.extend(payload_problems)
    return problems


def _channel_problem(channel: object) -> str | None:
    if channel is None:
        return "channel: Channel name is required"
    if not isinstance(channel, str):
        return expected("channel", "string", channel)
    if is_valid_name(channel):
        return None
    if is_valid_pattern(channel) and is_wildcard(channel):
        return "channel: A pattern cannot be published to; publish to a channel name"
    return "channel: Invalid channel name (1-255 characters from A-Z a-z 0-9 _ - : . @)"


def _event_problem(event: object, sender: Sender) -> str | None:
    if event is None:
        return "event: Event name is required"
    if not isinstance(event, str):
        return expected("event", "string", event)
    if not 1 <= len(event) <= MAX_EVENT_LENGTH:
        return f"event: Must be 1-{MAX_EVENT_LENGTH} characters"
    problem = storable_problem(event)
    if problem is not None:
        return f"event: {problem}"
    if event in RESERVED_EVENTS:
        return f"event: {event} is a reserved event name"
    if sender is Sender.CLIENT:
        if event in DATABASE_EVENTS:
            return f"event: {event} is reserved for database changes"
        if event in SERVER_EVENTS:
            return f"event: {event} is a reserved event name"
    return None


def _payload_problems(value: Any, path: str, depth: int, problems: list[str]) -> None:
    """
    Add to C{problems} what keeps the value at C{path}, C{depth} levels
    down, from being stored as ``jsonb``; at most L{MAX_PAYLOAD_PROBLEMS}.
    """
    if len(problems) >= MAX_PAYLOAD_PROBLEMS:
        return
    if depth > MAX_PAYLOAD_DEPTH:
        problems.append(f"{path}: Nested more than {MAX_PAYLOAD_DEPTH} levels deep")
    elif value is None or isinstance(value, (bool, int)):
        pass
    elif isinstance(value, str):
        problem = storable_problem(value)
        if problem is not None:
            problems.append(f"{path}: {problem}")
    elif isinstance(value, float):
        if not math.isfinite(value):
            problems.append(f"{path}: Must be a finite number")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _payload_problems(item, f"{path}.{index}", depth + 1, problems)
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                problems.append(f"{path}: Keys must be strings")
            elif (problem := storable_problem(key)) is not None:
                problems.append(f"{path}: Key {problem[0].lower()}{problem[1:]}")
            else:
                _payload_problems(item, f"{path}.{key}", depth + 1, problems)
            if len(problems) >= MAX_PAYLOAD_PROBLEMS:
                return
    else:
        problems.append(f"{path}: Must be JSON (binary data is not accepted)")
