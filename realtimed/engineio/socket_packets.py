"""
Socket.IO v5 packets, carried in Engine.IO ``message`` packets.

Wire form of the text part::

    <type>[<attachments>-][<namespace>,][<ack id>][<JSON data>]

``BINARY_EVENT`` and ``BINARY_ACK`` packets replace every binary value in
their data by ``{"_placeholder": true, "num": N}`` and are followed by N
binary Engine.IO messages, the attachments, in order.

Pure code: no I/O, no Twisted.  `encode` turns a packet into the list of
Engine.IO message payloads to send; `SocketPacketDecoder` turns the received
payloads back into packets, holding a binary packet until its attachments
have arrived.
"""

from __future__ import annotations

import json
from typing import Any, Final

from attrs import define, field, frozen

CONNECT: Final = 0
DISCONNECT: Final = 1
EVENT: Final = 2
ACK: Final = 3
CONNECT_ERROR: Final = 4
BINARY_EVENT: Final = 5
BINARY_ACK: Final = 6

#: Event names a client may not send: the client libraries use them for
#: their own lifecycle notifications.
RESERVED_EVENTS: Final = frozenset(
    {
        "connect",
        "connect_error",
        "disconnect",
        "disconnecting",
        "newListener",
        "removeListener",
    }
)

#: More attachments than this in one packet is treated as an attack.
MAX_ATTACHMENTS: Final = 1000


class SocketProtocolError(ValueError):
    """
    The peer sent something that is not valid Socket.IO v5.
    """


@frozen
class SocketPacket:
    """
    One Socket.IO packet.  ``data`` is the decoded JSON value, with any
    attachments already put back in place as `bytes`; ``text``, for a
    packet received without attachments, is the JSON text ``data`` was
    decoded from.
    """

    type: int
    namespace: str = "/"
    data: Any = None
    id: int | None = None
    text: str | None = field(default=None, eq=False, repr=False)


def _reject_constant(name: str) -> Any:
    raise SocketProtocolError(f"{name} is not JSON")


_decode_json = json.JSONDecoder(parse_constant=_reject_constant).decode
#: Compact JSON as JavaScript's ``JSON.stringify`` writes it.
_encode_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def has_binary(value: Any) -> bool:
    """
    Whether ``value`` holds `bytes` anywhere.
    """
    if isinstance(value, (bytes, bytearray, memoryview)):
        return True
    if isinstance(value, (list, tuple)):
        return any(has_binary(item) for item in value)
    if isinstance(value, dict):
        return any(has_binary(item) for item in value.values())
    return False


def _deconstruct(value: Any, attachments: list[bytes]) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        attachments.append(bytes(value))
        return {"_placeholder": True, "num": len(attachments) - 1}
    if isinstance(value, (list, tuple)):
        return [_deconstruct(item, attachments) for item in value]
    if isinstance(value, dict):
        return {key: _deconstruct(item, attachments) for key, item in value.items()}
    return value


def _reconstruct(value: Any, attachments: list[bytes]) -> Any:
    if isinstance(value, list):
        return [_reconstruct(item, attachments) for item in value]
    if isinstance(value, dict):
        if value.get("_placeholder") is True:
            num = value.get("num")
            if type(num) is not int or not 0 <= num < len(attachments):
                raise SocketProtocolError("bad attachment placeholder")
            return attachments[num]
        return {key: _reconstruct(item, attachments) for key, item in value.items()}
    return value


def encode(packet: SocketPacket) -> list[str | bytes]:
    """
    Encode a packet as Engine.IO message payloads: the text part first, then
    the attachments.  An ``EVENT`` or ``ACK`` whose data holds `bytes` is
    sent as ``BINARY_EVENT`` / ``BINARY_ACK``.
    """
    kind = packet.type
    data = packet.data
    attachments: list[bytes] = []
    encoded = None
    if kind in (EVENT, ACK, BINARY_EVENT, BINARY_ACK) and data is not None:
        # Encoding is the cheapest way to learn that there is no binary
        # data: JSON has no bytes, and the encoder refuses them.
        try:
            encoded = _encode_json(data)
        except TypeError:
            if not has_binary(data):
                raise
            data = _deconstruct(data, attachments)
            kind = BINARY_EVENT if kind in (EVENT, BINARY_EVENT) else BINARY_ACK
        else:
            kind = EVENT if kind in (EVENT, BINARY_EVENT) else ACK
    elif kind == BINARY_EVENT:
        kind = EVENT
    elif kind == BINARY_ACK:
        kind = ACK
    text = str(kind)
    if attachments:
        text += f"{len(attachments)}-"
    if packet.namespace != "/":
        text += packet.namespace + ","
    if packet.id is not None:
        text += str(packet.id)
    if encoded is not None:
        text += encoded
    elif data is not None:
        text += _encode_json(data)
    result: list[str | bytes] = [text]
    result.extend(attachments)
    return result


def _valid(packet: SocketPacket) -> bool:
    data = packet.data
    kind = packet.type
    if kind == CONNECT:
        return data is None or isinstance(data, dict)
    if kind == DISCONNECT:
        return data is None
    if kind == CONNECT_ERROR:
        return isinstance(data, (str, dict))
    if kind in (EVENT, BINARY_EVENT):
        return (
            isinstance(data, list)
            and len(data) > 0
            and isinstance(data[0], str)
            and data[0] not in RESERVED_EVENTS
        )
    if kind in (ACK, BINARY_ACK):
        return isinstance(data, list) and packet.id is not None
    return False


def decode_text(text: str) -> tuple[SocketPacket, int]:
    """
    Decode the text part of a packet.  Returns the packet (placeholders
    still in its data) and how many attachments must follow.

    @raise SocketProtocolError: for anything but a valid packet.
    """
    if not text or not "0" <= text[0] <= "6":
        raise SocketProtocolError("unknown packet type")
    kind = ord(text[0]) - 48
    i = 1
    end = len(text)
    attachments = 0
    if kind in (BINARY_EVENT, BINARY_ACK):
        dash = text.find("-", 1)
        digits = text[1:dash] if dash > 0 else ""
        if not digits.isdigit() or not digits.isascii() or len(digits) > 4:
            raise SocketProtocolError("illegal attachments")
        attachments = int(digits)
        if attachments > MAX_ATTACHMENTS:
            raise SocketProtocolError("too many attachments")
        i = dash + 1
    namespace = "/"
    if i < end and text[i] == "/":
        comma = text.find(",", i)
        if comma < 0:
            namespace = text[i:]
            i = end
        else:
            namespace = text[i:comma]
            i = comma + 1
    ack_id = None
    start = i
    while i < end and "0" <= text[i] <= "9":
        i += 1
    if i > start:
        if i - start > 15:
            raise SocketProtocolError("ack id too long")
        ack_id = int(text[start:i])
    data = None
    data_text = None
    if i < end:
        data_text = text[i:]
        try:
            data = _decode_json(data_text)
        except (ValueError, RecursionError) as e:
            raise SocketProtocolError("invalid JSON") from e
    packet = SocketPacket(kind, namespace, data, ack_id, data_text if not attachments else None)
    if not _valid(packet):
        raise SocketProtocolError("invalid packet")
    if kind in (BINARY_EVENT, BINARY_ACK) and attachments == 0:
        # nothing to wait for: it is an ordinary event or ack
        packet = SocketPacket(kind, namespace, _reconstruct(data, []), ack_id)
    return packet, attachments


@define
class SocketPacketDecoder:
    """
    Turns the Engine.IO messages of one connection into Socket.IO packets.
    """

    #: most bytes the attachments of one packet may hold together
    max_attachment_bytes: int | None = None
    _pending: SocketPacket | None = field(default=None, init=False)
    _expected: int = field(default=0, init=False)
    _attachments: list[bytes] = field(factory=list, init=False)
    _attachment_bytes: int = field(default=0, init=False)

    def feed(self, message: str | bytes) -> SocketPacket | None:
        """
        Take one Engine.IO message; return the packet it completes, or
        `None` while attachments are still due.

        @raise SocketProtocolError: for invalid input, including a binary
            message nobody waits for or text where an attachment is due.
        """
        if isinstance(message, str):
            if self._pending is not None:
                raise SocketProtocolError("text received while attachments are due")
            packet, expected = decode_text(message)
            if expected == 0:
                return packet
            self._pending = packet
            self._expected = expected
            self._attachments = []
            self._attachment_bytes = 0
            return None
        if self._pending is None:
            raise SocketProtocolError("unexpected binary message")
        self._attachment_bytes += len(message)
        limit = self.max_attachment_bytes
        if limit is not None and self._attachment_bytes > limit:
            raise SocketProtocolError("attachments too large")
        self._attachments.append(message)
        if len(self._attachments) < self._expected:
            return None
        pending = self._pending
        attachments = self._attachments
        self._pending = None
        self._attachments = []
        try:
            data = _reconstruct(pending.data, attachments)
        except RecursionError as e:
            raise SocketProtocolError("data nested too deeply") from e
        return SocketPacket(pending.type, pending.namespace, data, pending.id)
