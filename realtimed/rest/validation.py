"""
Validation of what the admin REST API is given: request bodies, query
parameters and path parameters.

Every problem is reported as ``<path>: <reason>``, where the path names the
field (``pattern``, ``webhookUrls.0``, ``limit``, ``id``) or, for the body as
a whole, ``body``.  All problems found in one request are reported together,
in the order of the fields in the documented schema, joined by ``, ``.

Strings that PostgreSQL cannot store (holding a NUL character, or a lone
UTF-16 surrogate that JSON allows but UTF-8 does not) are refused here, so
that a malformed request never reaches the database as an error.  A message
published with ``POST /messages`` obeys the same rules as one a client
publishes on a socket (`realtimed.realtime.publication`).

Pure code: no I/O, no Twisted.
"""

from __future__ import annotations

import enum
import json
import math
import re
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import urlsplit

from attrs import frozen

from realtimed.realtime.channels import canonical_pattern, is_valid_pattern
from realtimed.realtime.publication import (
    MAX_EVENT_LENGTH,
    InvalidInput,
    Sender,
    expected,
    publication_problems,
    storable_problem,
)

MAX_URL_LENGTH: Final = 2048
MAX_DESCRIPTION_LENGTH: Final = 10_000
MIN_LIMIT: Final = 1
MAX_LIMIT: Final = 1000
DEFAULT_LIMIT: Final = 100
MAX_OFFSET: Final = 2**31 - 1
#: The longest retention that may be set, in days (a hundred years).
MAX_RETENTION_DAYS: Final = 36_500

_UUID: Final = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
_INTEGER: Final = re.compile(r"[+-]?[0-9]+")
_URL_FORBIDDEN: Final = re.compile(r"[\x00-\x20\x7f\\]")


class _Unset(enum.Enum):
    """
    The type of `UNSET`.
    """

    UNSET = "UNSET"

    def __repr__(self) -> str:
        return "UNSET"


#: A field that an update leaves as it is.
UNSET: Final = _Unset.UNSET


@frozen
class ChannelCreation:
    """
    A new channel, as ``POST /channels`` describes it.

    @ivar webhook_urls: C{None} when the channel has none.
    """

    pattern: str
    description: str | None
    webhook_urls: tuple[str, ...] | None
    enabled: bool


@frozen
class ChannelUpdate:
    """
    The fields ``PUT /channels/{id}`` changes; `UNSET` for the others.
    """

    pattern: str | _Unset = UNSET
    description: str | _Unset | None = UNSET
    webhook_urls: tuple[str, ...] | _Unset | None = UNSET
    enabled: bool | _Unset = UNSET

    def changes(self) -> dict[str, Any]:
        """
        The columns to set, by column name.
        """
        columns = {
            "pattern": self.pattern,
            "description": self.description,
            "webhook_urls": self.webhook_urls,
            "enabled": self.enabled,
        }
        return {k: v for k, v in columns.items() if v is not UNSET}


@frozen
class Publication:
    """
    A message a backend publishes with ``POST /messages``.

    @ivar payload: Any JSON value.
    """

    channel: str
    event: str
    payload: Any


@frozen
class MessageQuery:
    """
    Filters and window of ``GET /messages``.
    """

    channel_id: str | None = None
    event_name: str | None = None
    limit: int = DEFAULT_LIMIT
    offset: int = 0


@frozen
class StatsQuery:
    """
    Filters of ``GET /messages/stats``.
    """

    channel_id: str | None = None
    since: datetime | None = None


# -- JSON ------------------------------------------------------------------


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("number out of range")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json_body(raw: bytes) -> Any:
    """
    The JSON value in a request body.

    @raise InvalidInput: If the body is not UTF-8, or not JSON (``NaN``,
        ``Infinity`` and numbers too large for a double included).  (Its size
        is bounded before it is read: see `realtimed.web.RealtimeSite`.)
    """
    if not raw.strip():
        raise InvalidInput(["body: Required"])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(["body: Invalid UTF-8"]) from None
    try:
        return json.loads(text, parse_float=_finite_float, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise InvalidInput(["body: Invalid JSON"]) from None


# -- bodies ----------------------------------------------------------------


def _object(body: Any, fields: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """
    C{body} as an object, and the problems of its unknown fields.
    """
    if not isinstance(body, dict):
        raise InvalidInput([expected("body", "object", body)])
    problems = []
    for key in body:
        if key not in fields:
            problem = storable_problem(key)
            shown = key if problem is None else repr(key.encode("utf-8", "replace"))
            problems.append(f"{shown}: Unknown field")
    return body, problems


def _pattern(value: Any, problems: list[str]) -> str | None:
    if not isinstance(value, str):
        problems.append(expected("pattern", "string", value))
        return None
    if not is_valid_pattern(value):
        problems.append(
            "pattern: Invalid channel pattern (1-255 characters from A-Z a-z 0-9 _ - : . @ * %)"
        )
        return None
    return canonical_pattern(value)


def _description(value: Any, problems: list[str]) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        problems.append(expected("description", "string", value))
        return None
    problem = storable_problem(value)
    if problem:
        problems.append(f"description: {problem}")
    elif len(value) > MAX_DESCRIPTION_LENGTH:
        problems.append(f"description: At most {MAX_DESCRIPTION_LENGTH} characters")
    return value


def url_problem(url: str) -> str | None:
    """
    Why C{url} is not an acceptable webhook URL, or C{None} when it is one:
    an absolute ``http`` or ``https`` URL with a host.
    """
    if len(url) > MAX_URL_LENGTH:
        return f"At most {MAX_URL_LENGTH} characters"
    if storable_problem(url) or _URL_FORBIDDEN.search(url):
        return "Invalid url"
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return "Invalid url"
    if not parts.scheme or not parts.netloc or not hostname:
        return "Invalid url"
    if parts.scheme.lower() not in ("http", "https"):
        return "Must be an http or https URL"
    return None


def _webhook_urls(value: Any, problems: list[str]) -> tuple[str, ...] | None:
    """
    The webhook URLs, without repeats; C{None} for none (C{null} or an
    empty list).
    """
    if value is None:
        return None
    if not isinstance(value, list):
        problems.append(expected("webhookUrls", "array", value))
        return None
    urls = []
    for index, url in enumerate(value):
        if not isinstance(url, str):
            problems.append(expected(f"webhookUrls.{index}", "string", url))
            continue
        problem = url_problem(url)
        if problem:
            problems.append(f"webhookUrls.{index}: {problem}")
            continue
        urls.append(url)
    # The same URL twice would be one webhook; keep the first.
    return tuple(dict.fromkeys(urls)) or None


def _enabled(value: Any, problems: list[str]) -> bool:
    if not isinstance(value, bool):
        problems.append(expected("enabled", "boolean", value))
        return True
    return value


_CHANNEL_FIELDS: Final = ("pattern", "description", "webhookUrls", "enabled")


def channel_creation(body: Any) -> ChannelCreation:
    """
    The channel a ``POST /channels`` body describes.

    @param body: The parsed JSON body.
    @raise InvalidInput: Naming every problem.
    """
    fields, problems = _object(body, _CHANNEL_FIELDS)
    pattern = None
    if "pattern" not in fields or fields["pattern"] is None:
        problems.insert(0, "pattern: Channel pattern is required")
    else:
        pattern = _pattern(fields["pattern"], problems)
    description = _description(fields.get("description"), problems)
    webhook_urls = _webhook_urls(fields.get("webhookUrls"), problems)
    enabled = _enabled(fields["enabled"], problems) if "enabled" in fields else True
    if problems or pattern is None:
        raise InvalidInput(_ordered(problems))
    return ChannelCreation(pattern, description, webhook_urls, enabled)


def channel_update(body: Any) -> ChannelUpdate:
    """
    The changes a ``PUT /channels/{id}`` body asks for.

    @param body: The parsed JSON body.
    @raise InvalidInput: Naming every problem; an empty object is one.
    """
    fields, problems = _object(body, _CHANNEL_FIELDS)
    if not fields:
        raise InvalidInput(["body: At least one field is required"])
    changes: dict[str, Any] = {}
    if "pattern" in fields:
        changes["pattern"] = _pattern(fields["pattern"], problems)
    if "description" in fields:
        changes["description"] = _description(fields["description"], problems)
    if "webhookUrls" in fields:
        changes["webhook_urls"] = _webhook_urls(fields["webhookUrls"], problems)
    if "enabled" in fields:
        changes["enabled"] = _enabled(fields["enabled"], problems)
    if problems:
        raise InvalidInput(_ordered(problems))
    return ChannelUpdate(**changes)


_PUBLICATION_FIELDS: Final = ("channel", "event", "payload")


def publication(body: Any) -> Publication:
    """
    The message a ``POST /messages`` body publishes.

    @param body: The parsed JSON body.
    @raise InvalidInput: Naming every problem.
    """
    fields, problems = _object(body, _PUBLICATION_FIELDS)
    channel = fields.get("channel")
    event = fields.get("event")
    payload = fields.get("payload", {})
    problems[:0] = publication_problems(channel, event, payload, Sender.BACKEND)
    if problems:
        raise InvalidInput(_ordered(problems))
    assert isinstance(channel, str) and isinstance(event, str)
    return Publication(channel, event, payload)


def _ordered(problems: list[str]) -> list[str]:
    """
    C{problems} with those of known fields first (in the order found), then
    those of unknown fields.
    """
    known = [p for p in problems if not p.endswith(": Unknown field")]
    unknown = [p for p in problems if p.endswith(": Unknown field")]
    return known + unknown


@frozen
class RetentionConfig:
    """
    What ``PATCH /config`` sets.

    @ivar retention_days: Days messages are kept, or C{None} for ever.
    """

    retention_days: int | None


def retention_config(body: Any) -> RetentionConfig:
    """
    The retention a ``PATCH /config`` body sets: ``retentionDays``, a
    positive integer or C{null}.

    @param body: The parsed JSON body.
    @raise InvalidInput: Naming every problem.
    """
    fields, problems = _object(body, ("retentionDays",))
    days: int | None = None
    if "retentionDays" not in fields:
        problems.insert(0, "retentionDays: Required")
    else:
        value = fields["retentionDays"]
        if value is None:
            pass
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.insert(0, expected("retentionDays", "number", value))
        elif isinstance(value, float) and not value.is_integer():
            problems.insert(0, "retentionDays: Expected integer, received float")
        elif value <= 0:
            problems.insert(0, "retentionDays: Number must be greater than 0")
        elif value > MAX_RETENTION_DAYS:
            problems.insert(
                0, f"retentionDays: Number must be less than or equal to {MAX_RETENTION_DAYS}"
            )
        else:
            days = int(value)
    if problems:
        raise InvalidInput(_ordered(problems))
    return RetentionConfig(days)


#: The longest user or socket id a disconnect request may name.
MAX_ID_LENGTH: Final = 255


def disconnect_target(body: Any) -> tuple[str | None, str | None]:
    """
    Whose sockets a ``POST /disconnect`` body names: C{(userId, None)} or
    C{(None, socketId)}.

    @param body: The parsed JSON body.
    @raise InvalidInput: Naming every problem.
    """
    fields, problems = _object(body, ("userId", "socketId"))
    found: dict[str, str] = {}
    for name in ("userId", "socketId"):
        if name not in fields:
            continue
        value = fields[name]
        if not isinstance(value, str):
            problems.append(expected(name, "string", value))
        elif not 1 <= len(value) <= MAX_ID_LENGTH:
            problems.append(f"{name}: Must be 1-{MAX_ID_LENGTH} characters")
        elif storable_problem(value):
            problems.append(f"{name}: {storable_problem(value)}")
        else:
            found[name] = value
    if not problems and len(found) != 1:
        both = ", not both" if found else ""
        problems.append(f"body: Give userId or socketId{both}")
    if problems:
        raise InvalidInput(_ordered(problems))
    return found.get("userId"), found.get("socketId")


# -- parameters ------------------------------------------------------------


def channel_id(value: str, path: str = "id") -> str:
    """
    The canonical (lower-case) form of a channel or message id.

    @raise InvalidInput: If C{value} is not a UUID in its usual
        ``8-4-4-4-12`` hexadecimal form.
    """
    if _UUID.fullmatch(value) is None:
        raise InvalidInput([f"{path}: Invalid uuid"])
    return str(uuid.UUID(value))


def _single(args: Mapping[str, Sequence[str]], name: str, problems: list[str]) -> str | None:
    values = args.get(name)
    if not values:
        return None
    if len(values) > 1:
        problems.append(f"{name}: Must be given once")
        return None
    value = values[0]
    problem = storable_problem(value)
    if problem:
        problems.append(f"{name}: {problem}")
        return None
    return value


def _integer(
    args: Mapping[str, Sequence[str]],
    name: str,
    default: int,
    low: int,
    high: int,
    out_of_range: str,
    problems: list[str],
) -> int:
    text = _single(args, name, problems)
    if text is None:
        return default
    text = text.strip()
    if _INTEGER.fullmatch(text) is None:
        problems.append(f"{name}: Expected integer")
        return default
    digits = text.lstrip("+-").lstrip("0")
    if len(digits) > 18:
        problems.append(f"{name}: {out_of_range}")
        return default
    value = int(text)
    if not low <= value <= high:
        problems.append(f"{name}: {out_of_range}")
        return default
    return value


def _optional_uuid(args: Mapping[str, Sequence[str]], name: str, problems: list[str]) -> str | None:
    text = _single(args, name, problems)
    if text is None:
        return None
    try:
        return channel_id(text, name)
    except InvalidInput as e:
        problems.extend(e.problems)
        return None


def message_query(args: Mapping[str, Sequence[str]]) -> MessageQuery:
    """
    The query of ``GET /messages``.  Parameters not documented are ignored.

    @param args: Each query parameter's values, decoded.
    @raise InvalidInput: Naming every problem.
    """
    problems: list[str] = []
    channel = _optional_uuid(args, "channelId", problems)
    event_name = _single(args, "eventName", problems)
    if event_name is not None and not 1 <= len(event_name) <= MAX_EVENT_LENGTH:
        problems.append(f"eventName: Must be 1-{MAX_EVENT_LENGTH} characters")
    limit = _integer(
        args,
        "limit",
        DEFAULT_LIMIT,
        MIN_LIMIT,
        MAX_LIMIT,
        f"Must be between {MIN_LIMIT} and {MAX_LIMIT}",
        problems,
    )
    offset = _integer(
        args,
        "offset",
        0,
        0,
        MAX_OFFSET,
        f"Must be between 0 and {MAX_OFFSET}",
        problems,
    )
    if problems:
        raise InvalidInput(problems)
    return MessageQuery(channel, event_name, limit, offset)


def parse_datetime(text: str) -> datetime | None:
    """
    The instant an RFC 3339 date-time names (``2024-01-01T00:00:00Z``,
    ``2024-01-01T02:00:00.5+02:00``), or C{None}.  A date-time without an
    offset is taken as UTC; a date alone as its midnight UTC.
    """
    candidate = text.strip()
    if not 10 <= len(candidate) <= 40 or not candidate[:4].isdigit():
        return None
    if candidate[-1:] in ("z", "Z"):
        candidate = candidate[:-1] + "+00:00"
    try:
        value = datetime.fromisoformat(candidate)
    except ValueError:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except (OverflowError, ValueError):
        return None


def presence_query(args: Mapping[str, Sequence[str]]) -> str:
    """
    The channel of ``GET /presence``: a name, or a channel row's pattern
    (in its canonical form).

    @param args: Each query parameter's values, decoded.
    @raise InvalidInput: Naming the problem.
    """
    problems: list[str] = []
    channel = _single(args, "channel", problems)
    if problems:
        raise InvalidInput(problems)
    if channel is None:
        raise InvalidInput(["channel: Channel name is required"])
    if not is_valid_pattern(channel):
        raise InvalidInput(
            [
                "channel: Invalid channel (1-255 characters from A-Z a-z 0-9 _ - : . @,"
                " or a channel pattern with * or %)"
            ]
        )
    return canonical_pattern(channel)


def stats_query(args: Mapping[str, Sequence[str]]) -> StatsQuery:
    """
    The query of ``GET /messages/stats``.  Parameters not documented are
    ignored.

    @param args: Each query parameter's values, decoded.
    @raise InvalidInput: Naming every problem.
    """
    problems: list[str] = []
    channel = _optional_uuid(args, "channelId", problems)
    since = None
    text = _single(args, "since", problems)
    if text is not None:
        since = parse_datetime(text)
        if since is None:
            problems.append("since: Invalid datetime")
    if problems:
        raise InvalidInput(problems)
    return StatsQuery(channel, since)


@frozen
class FailuresQuery:
    """
    Filter and size of ``GET /webhooks/failures``.
    """

    channel_id: str | None = None
    limit: int = DEFAULT_LIMIT


def failures_query(args: Mapping[str, Sequence[str]]) -> FailuresQuery:
    """
    The query of ``GET /webhooks/failures``.  Parameters not documented are
    ignored.

    @param args: Each query parameter's values, decoded.
    @raise InvalidInput: Naming every problem.
    """
    problems: list[str] = []
    channel = _optional_uuid(args, "channelId", problems)
    limit = _integer(
        args,
        "limit",
        DEFAULT_LIMIT,
        MIN_LIMIT,
        MAX_LIMIT,
        f"Must be between {MIN_LIMIT} and {MAX_LIMIT}",
        problems,
    )
    if problems:
        raise InvalidInput(problems)
    return FailuresQuery(channel, limit)
