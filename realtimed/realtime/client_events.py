"""
What clients send on the realtime Socket.IO namespace, checked, and what
they are answered.

``REALTIME_SUBSCRIBE`` ``{channel}``, ``REALTIME_UNSUBSCRIBE`` ``{channel}``
and ``REALTIME_PUBLISH`` ``{channel, event, payload}``, also spelled
``realtime:subscribe``, ``realtime:unsubscribe`` and ``realtime:publish``.
`parse` turns an event's arguments into a `Subscribe`, `Unsubscribe` or
`Publish`, or a `Refusal` with code ``INVALID_INPUT``.  Answers go to the
acknowledgement callback when the client gave one (`ok_ack`, `Refusal.ack`),
otherwise failures are sent as the event ``realtime:error``
(`Refusal.error_event`).

Pure code.
"""

from __future__ import annotations

import json
import math
from typing import Any

from attrs import frozen

from realtimed.engineio.socket_packets import RESERVED_EVENTS
from realtimed.realtime.channels import is_valid_name, is_valid_pattern, is_wildcard

SUBSCRIBE = "subscribe"
UNSUBSCRIBE = "unsubscribe"
PUBLISH = "publish"

#: Client event names and the operation each one asks for.
EVENTS: dict[str, str] = {
    "REALTIME_SUBSCRIBE": SUBSCRIBE,
    "REALTIME_UNSUBSCRIBE": UNSUBSCRIBE,
    "REALTIME_PUBLISH": PUBLISH,
    "realtime:subscribe": SUBSCRIBE,
    "realtime:unsubscribe": UNSUBSCRIBE,
    "realtime:publish": PUBLISH,
}

ERROR_EVENT = "realtime:error"

INVALID_INPUT = "INVALID_INPUT"
REALTIME_UNAUTHORIZED = "REALTIME_UNAUTHORIZED"
REALTIME_NOT_SUBSCRIBED = "REALTIME_NOT_SUBSCRIBED"
INTERNAL_ERROR = "INTERNAL_ERROR"

#: Events only the database publishes (row changes).
DATABASE_EVENTS = frozenset({"INSERT", "UPDATE", "DELETE"})

#: Events the server itself sends; a client publishing them would spoof
#: presence or errors.
SERVER_EVENTS = frozenset({"presence:join", "presence:leave", ERROR_EVENT})

MAX_EVENT_LENGTH = 255

CHANNEL_RULE = (
    "channel must be 1-255 characters from A-Z a-z 0-9 _ - : . @ (or a channel pattern with *)"
)


@frozen
class Subscribe:
    channel: str


@frozen
class Unsubscribe:
    channel: str


@frozen
class Publish:
    """
    A client's publish.

    @ivar payload_json: The payload, already encoded as JSON text.
    """

    channel: str
    event: str
    payload: Any
    payload_json: str


@frozen
class Refusal:
    """
    A request that failed: its channel (when the client named one that was
    a string), the error code and the reason.
    """

    channel: str | None
    code: str
    message: str

    def ack(self) -> dict[str, Any]:
        """
        The acknowledgement answering the failed request.
        """
        return {
            "ok": False,
            "channel": self.channel,
            "error": {"code": self.code, "message": self.message},
        }

    def error_event(self) -> dict[str, Any]:
        """
        The data of the ``realtime:error`` event, for a request without an
        acknowledgement callback.
        """
        return {"channel": self.channel, "code": self.code, "message": self.message}


def invalid(channel: str | None, message: str) -> Refusal:
    return Refusal(channel, INVALID_INPUT, message)


def parse(operation: str, args: list[Any]) -> Subscribe | Unsubscribe | Publish | Refusal:
    """
    Check the arguments of a client event asking for C{operation} (one of
    the values of L{EVENTS}).
    """
    data = args[0] if args else None
    if not isinstance(data, dict):
        return invalid(None, "data must be an object")
    channel = data.get("channel")
    if channel is None:
        return invalid(None, "channel is required")
    if not isinstance(channel, str):
        return invalid(None, "channel must be a string")
    if operation == SUBSCRIBE or operation == UNSUBSCRIBE:
        if not is_valid_pattern(channel):
            return invalid(channel, CHANNEL_RULE)
        return Subscribe(channel) if operation == SUBSCRIBE else Unsubscribe(channel)
    if operation != PUBLISH:
        raise ValueError(f"unknown operation {operation!r}")
    if not is_valid_name(channel):
        if is_valid_pattern(channel) and is_wildcard(channel):
            return invalid(
                channel, "channel must be a channel name; a pattern cannot be published to"
            )
        return invalid(channel, CHANNEL_RULE)
    event = data.get("event")
    refusal = check_event_name(event)
    if refusal is not None:
        return invalid(channel, refusal)
    assert isinstance(event, str)
    payload = data.get("payload", {})
    try:
        payload_json = encode_payload(payload)
    except ValueError as e:
        return invalid(channel, f"payload: {e}")
    return Publish(channel, event, payload, payload_json)


def check_event_name(event: object) -> str | None:
    """
    Why C{event} may not be published by a client, or C{None} if it may.
    """
    if event is None:
        return "event is required"
    if not isinstance(event, str):
        return "event must be a string"
    if not 1 <= len(event) <= MAX_EVENT_LENGTH:
        return "event must be 1-255 characters"
    if "\x00" in event:
        return "event must not contain NUL characters"
    if event in DATABASE_EVENTS:
        return f"event {event} is reserved for database changes"
    if event in RESERVED_EVENTS or event in SERVER_EVENTS:
        return f"event {event} is reserved"
    return None


def encode_payload(payload: Any) -> str:
    """
    The payload as JSON text that PostgreSQL's ``jsonb`` accepts.

    @raise ValueError: If it is not JSON (binary data, non-finite numbers,
        NUL characters).
    """
    _check_json(payload, 0)
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


_MAX_DEPTH = 100


def _check_json(value: Any, depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise ValueError("nested too deeply")
    if value is None or isinstance(value, (bool, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("numbers must be finite")
        return
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("strings must not contain NUL characters")
        return
    if isinstance(value, list):
        for item in value:
            _check_json(item, depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError("object keys must be strings")
            if "\x00" in key:
                raise ValueError("strings must not contain NUL characters")
            _check_json(item, depth + 1)
        return
    raise ValueError("must be JSON (binary data is not accepted)")


def subscribed_ack(channel: str, members: list[dict[str, Any]]) -> dict[str, Any]:
    return {"ok": True, "channel": channel, "presence": {"members": members}}


def unsubscribed_ack(channel: str) -> dict[str, Any]:
    return {"ok": True, "channel": channel}


def published_ack(channel: str, message_id: str) -> dict[str, Any]:
    return {"ok": True, "channel": channel, "messageId": message_id}
