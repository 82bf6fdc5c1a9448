"""
What clients send on the realtime Socket.IO namespace, checked, and what
they are answered.

``REALTIME_SUBSCRIBE`` ``{channel}``, ``REALTIME_UNSUBSCRIBE`` ``{channel}``,
``REALTIME_PUBLISH`` ``{channel, event, payload}`` and ``REALTIME_AUTH``
``{token}``, also spelled ``realtime:subscribe``, ``realtime:unsubscribe``,
``realtime:publish`` and ``realtime:auth``.  `parse` turns an event's
arguments into a `Subscribe`, `Unsubscribe`, `Publish` or `Authenticate`,
or a `Refusal` with code ``INVALID_INPUT``.  Answers go to the
acknowledgement callback when the client gave one (`ok_ack`, `Refusal.ack`),
otherwise failures are sent as the event ``realtime:error``
(`Refusal.error_event`).

Pure code.
"""

from __future__ import annotations

import json
import re
from typing import Any

from attrs import frozen

from realtimed.realtime.channels import canonical_pattern, is_valid_pattern
from realtimed.realtime.publication import Sender, expected, publication_problems

SUBSCRIBE = "subscribe"
UNSUBSCRIBE = "unsubscribe"
PUBLISH = "publish"
AUTH = "auth"

#: Client event names and the operation each one asks for.
EVENTS: dict[str, str] = {
    "REALTIME_SUBSCRIBE": SUBSCRIBE,
    "REALTIME_UNSUBSCRIBE": UNSUBSCRIBE,
    "REALTIME_PUBLISH": PUBLISH,
    "realtime:subscribe": SUBSCRIBE,
    "realtime:unsubscribe": UNSUBSCRIBE,
    "realtime:publish": PUBLISH,
    "REALTIME_AUTH": AUTH,
    "realtime:auth": AUTH,
}

ERROR_EVENT = "realtime:error"

INVALID_INPUT = "INVALID_INPUT"
REALTIME_UNAUTHORIZED = "REALTIME_UNAUTHORIZED"
REALTIME_NOT_SUBSCRIBED = "REALTIME_NOT_SUBSCRIBED"
REALTIME_LIMIT_EXCEEDED = "REALTIME_LIMIT_EXCEEDED"
REALTIME_RATE_LIMITED = "REALTIME_RATE_LIMITED"
INTERNAL_ERROR = "INTERNAL_ERROR"

CHANNEL_RULE = (
    "channel: Invalid channel (1-255 characters from A-Z a-z 0-9 _ - : . @,"
    " or a channel pattern with * or %)"
)


@frozen
class Subscribe:
    """
    A client's subscribe; with C{since}, a message id or the offset a
    message came with: replay what was stored on the channel after it.
    """

    channel: str
    since: str | None = None


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
class Authenticate:
    """
    A socket presents a new token for its credential.
    """

    token: str


@frozen
class Refusal:
    """
    A request that failed: its channel (when the client named one that was
    a string), the error code and the reason.

    @ivar about_channel: Whether the request concerns a channel; the
        acknowledgement of one that does not (a token refresh) has no
        C{channel}.
    """

    channel: str | None
    code: str
    message: str
    about_channel: bool = True

    def ack(self) -> dict[str, Any]:
        """
        The acknowledgement answering the failed request.
        """
        error = {"code": self.code, "message": self.message}
        if not self.about_channel:
            return {"ok": False, "error": error}
        return {"ok": False, "channel": self.channel, "error": error}

    def error_event(self) -> dict[str, Any]:
        """
        The data of the ``realtime:error`` event, for a request without an
        acknowledgement callback.
        """
        return {"channel": self.channel, "code": self.code, "message": self.message}


def invalid(channel: str | None, message: str) -> Refusal:
    return Refusal(channel, INVALID_INPUT, message)


Request = Subscribe | Unsubscribe | Publish | Authenticate


def parse(operation: str, args: list[Any], text: str | None = None) -> Request | Refusal:
    """
    Check the arguments of a client event asking for C{operation} (one of
    the values of L{EVENTS}).

    @param text: The JSON text the event's data (C{[event, *args]}) was
        decoded from, if known: a publish's payload is then stored as the
        client wrote it.
    """
    data = args[0] if args else None
    if not isinstance(data, dict):
        return invalid(None, expected("data", "object", data))
    if operation == AUTH:
        token = data.get("token")
        if not isinstance(token, str) or not token:
            problem = (
                "token: Token is required"
                if token in (None, "")
                else (expected("token", "string", token))
            )
            return Refusal(None, INVALID_INPUT, problem, about_channel=False)
        return Authenticate(token)
    channel = data.get("channel")
    named = channel if isinstance(channel, str) else None
    if operation == SUBSCRIBE or operation == UNSUBSCRIBE:
        if channel is None:
            return invalid(None, "channel: Channel name is required")
        if named is None:
            return invalid(None, expected("channel", "string", channel))
        if not is_valid_pattern(named):
            return invalid(named, CHANNEL_RULE)
        # order:% and order:* are one subscription, named as realtimed
        # keeps patterns.
        named = canonical_pattern(named)
        if operation == UNSUBSCRIBE:
            return Unsubscribe(named)
        since = data.get("since")
        if since is not None and not isinstance(since, str):
            return invalid(named, expected("since", "string", since))
        return Subscribe(named, since or None)
    if operation != PUBLISH:
        raise ValueError(f"unknown operation {operation!r}")
    event = data.get("event")
    payload = data.get("payload", {})
    problems = publication_problems(channel, event, payload, Sender.CLIENT)
    if problems:
        return invalid(named, ", ".join(problems))
    assert isinstance(channel, str) and isinstance(event, str)
    payload_json = None
    if text is not None and "payload" in data:
        payload_json = member_text(text, "payload")
    if payload_json is None:
        payload_json = encode_payload(payload)
    return Publish(channel, event, payload, payload_json)


_value = json.JSONDecoder().raw_decode
_SPACE = re.compile(r"[ \t\n\r]*")


def _skip(text: str, i: int) -> int:
    """
    Where the JSON whitespace from C{i} on ends.
    """
    return _SPACE.match(text, i).end()  # type: ignore[union-attr]


def member_text(text: str, name: str) -> str | None:
    """
    The JSON text of member C{name} of the object that is the second item
    of the JSON array C{text} (an event's data: C{["event", {...}, ...]}),
    as written there; for a name given more than once, the last, as a
    decoder keeps it.  C{None} if the text is not shaped so, or has no such
    member.  C{text} must be valid JSON.
    """
    try:
        i = _skip(text, 0)
        if text[i : i + 1] != "[":
            return None
        _, i = _value(text, _skip(text, i + 1))
        i = _skip(text, i)
        if text[i : i + 1] != ",":
            return None
        i = _skip(text, i + 1)
        if text[i : i + 1] != "{":
            return None
        i = _skip(text, i + 1)
        found = None
        while text[i : i + 1] == '"':
            key, i = _value(text, i)
            i = _skip(text, i)
            if text[i : i + 1] != ":":
                return None
            start = _skip(text, i + 1)
            _, end = _value(text, start)
            if key == name:
                found = text[start:end]
            i = _skip(text, end)
            if text[i : i + 1] == "}":
                return found
            if text[i : i + 1] != ",":
                return None
            i = _skip(text, i + 1)
        return None
    except (ValueError, RecursionError):
        return None


def encode_payload(payload: Any) -> str:
    """
    A payload that passed L{publication_problems}, as the JSON text stored.
    """
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def subscribed_ack(
    channel: str, members: list[dict[str, Any]], replay: tuple[int, bool] | None = None
) -> dict[str, Any]:
    """
    The ack of a subscribe; C{replay}, for a subscribe C{since} a message:
    how many messages were replayed, and whether that was all of them.
    """
    ack = {"ok": True, "channel": channel, "presence": {"members": members}}
    if replay is not None:
        ack["replay"] = {"count": replay[0], "complete": replay[1]}
    return ack


def unsubscribed_ack(channel: str) -> dict[str, Any]:
    return {"ok": True, "channel": channel}


def published_ack(channel: str, message_id: str) -> dict[str, Any]:
    return {"ok": True, "channel": channel, "messageId": message_id}


def authenticated_ack(expires_at: str | None) -> dict[str, Any]:
    return {"ok": True, "expiresAt": expires_at}
