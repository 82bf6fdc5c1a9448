"""
Engine.IO v4 packets: the codec for single packets (one WebSocket message
each), for the HTTP long-polling payload (packets joined by the record
separator ``\\x1e``, binary ones as ``b`` + base64) and the server-side
WebSocket frame.

Pure code: no I/O, no Twisted.

An encoded packet is either a `str` (a text packet: its type digit followed
by its data) or `bytes` (a binary message packet, sent as-is in a binary
WebSocket frame).  That form is what the transports queue and send.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import struct
from collections.abc import Iterable, Sequence
from typing import Final

from attrs import frozen

OPEN: Final = 0
CLOSE: Final = 1
PING: Final = 2
PONG: Final = 3
MESSAGE: Final = 4
UPGRADE: Final = 5
NOOP: Final = 6

RECORD_SEPARATOR: Final = "\x1e"

#: the start of an empty packet, or of one of no known type, in a payload
_BAD_PACKET: Final = re.compile("(?:^|\x1e)(?:(?=\x1e|\\Z)|([^0-6b]))")

EncodedPacket = str | bytes


class EngineProtocolError(ValueError):
    """
    The peer sent something that is not valid Engine.IO v4.
    """


@frozen
class EnginePacket:
    """
    One Engine.IO packet.  ``data`` is `bytes` only for binary ``MESSAGE``
    packets.
    """

    type: int
    data: str | bytes = ""

    def encode(self) -> EncodedPacket:
        """
        The packet as one WebSocket message (also the unit of the polling
        payload).
        """
        if isinstance(self.data, bytes):
            return self.data
        return f"{self.type}{self.data}"


def decode_packet(encoded: EncodedPacket) -> EnginePacket:
    """
    Decode one packet received as a WebSocket message.

    @raise EngineProtocolError: for an empty packet or an unknown type.
    """
    if isinstance(encoded, bytes):
        return EnginePacket(MESSAGE, encoded)
    if not encoded:
        raise EngineProtocolError("empty packet")
    kind = encoded[0]
    if kind < "0" or kind > "6":
        raise EngineProtocolError("unknown packet type")
    return EnginePacket(ord(kind) - 48, encoded[1:])


def open_packet(
    sid: str,
    upgrades: Sequence[str],
    ping_interval: float,
    ping_timeout: float,
    max_payload: int,
) -> str:
    """
    The encoded ``open`` packet that starts a session (intervals in seconds,
    sent in milliseconds).
    """
    handshake = {
        "sid": sid,
        "upgrades": list(upgrades),
        "pingInterval": round(ping_interval * 1000),
        "pingTimeout": round(ping_timeout * 1000),
        "maxPayload": max_payload,
    }
    return f"{OPEN}" + json.dumps(handshake, separators=(",", ":"))


def encode_payload(packets: Iterable[EncodedPacket]) -> bytes:
    """
    Join encoded packets into the body of a polling ``GET`` response.
    """
    parts = []
    for packet in packets:
        if isinstance(packet, bytes):
            parts.append("b" + base64.b64encode(packet).decode("ascii"))
        else:
            parts.append(packet)
    return RECORD_SEPARATOR.join(parts).encode("utf-8")


def split_payload(body: bytes) -> list[EncodedPacket]:
    """
    Split the body of a polling ``POST`` request into encoded packets,
    checked: text packets as they are, binary ones decoded to `bytes`.
    Checking is cheaper than building the packets (`decode_packet` turns
    each into an `EnginePacket` and cannot fail on them), so a server can
    refuse a bad payload whole before it acts on any of its packets.

    @raise EngineProtocolError: for a body that is not UTF-8, an empty or
        unknown packet, or bad base64.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise EngineProtocolError("payload is not UTF-8") from e
    # one scan of the whole text finds a bad packet: a payload may hold
    # hundreds of thousands of packets, too many to look at one by one
    bad = _BAD_PACKET.search(text)
    if bad is not None:
        if bad.group(1):
            raise EngineProtocolError("unknown packet type")
        raise EngineProtocolError("empty packet")
    parts: list[EncodedPacket] = list(text.split(RECORD_SEPARATOR))
    if text.startswith("b") or RECORD_SEPARATOR + "b" in text:
        for index, part in enumerate(parts):
            if isinstance(part, str) and part.startswith("b"):
                try:
                    parts[index] = base64.b64decode(part[1:], validate=True)
                except (binascii.Error, ValueError) as e:
                    raise EngineProtocolError("bad base64 in binary packet") from e
    return parts


def decode_payload(body: bytes) -> list[EnginePacket]:
    """
    Decode the body of a polling ``POST`` request.

    @raise EngineProtocolError: for a body that is not UTF-8, an empty or
        unknown packet, or bad base64.
    """
    return [decode_packet(part) for part in split_payload(body)]


def websocket_frame(payload: EncodedPacket) -> bytes:
    """
    One complete, unmasked, unfragmented server-to-client WebSocket frame
    (RFC 6455 section 5.2) carrying an encoded packet: a text frame for
    `str`, a binary frame for `bytes`.  Framing once and writing the same
    bytes to many connections is how a broadcast stays cheap.
    """
    if isinstance(payload, str):
        data = payload.encode("utf-8")
        first = 0x81
    else:
        data = payload
        first = 0x82
    length = len(data)
    if length < 126:
        header = struct.pack("!BB", first, length)
    elif length < 65536:
        header = struct.pack("!BBH", first, 126, length)
    else:
        header = struct.pack("!BBQ", first, 127, length)
    return header + data
