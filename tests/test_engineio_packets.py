"""
Tests for the Engine.IO v4 codec.
"""

from __future__ import annotations

import base64
import binascii

from autobahn.twisted.websocket import WebSocketServerFactory
from engineio import packet as reference
from engineio import payload as reference_payload
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from realtimed.engineio.engine_packets import (
    CLOSE,
    MESSAGE,
    NOOP,
    OPEN,
    PING,
    PONG,
    UPGRADE,
    EnginePacket,
    EngineProtocolError,
    decode_packet,
    decode_payload,
    encode_payload,
    open_packet,
    split_payload,
    websocket_frame,
)

texts = st.text(alphabet=st.characters(blacklist_characters="\x1e", blacklist_categories=("Cs",)))
text_packets = st.builds(
    EnginePacket,
    st.sampled_from([OPEN, CLOSE, PING, PONG, MESSAGE, UPGRADE, NOOP]),
    texts,
)
binary_packets = st.builds(EnginePacket, st.just(MESSAGE), st.binary())
packets = text_packets | binary_packets


# no time limit per example: the machine running the suite may be busy
relaxed = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


class PacketTests(SynchronousTestCase):
    """
    Single packets, as carried in WebSocket messages.
    """

    @relaxed
    @given(packets)
    def test_round_trip(self, packet: EnginePacket) -> None:
        """
        Every packet decodes to itself after encoding.
        """
        self.assertEqual(decode_packet(packet.encode()), packet)

    def test_text_forms(self) -> None:
        """
        A text packet is its type digit followed by its data; a binary
        message is its bytes.
        """
        self.assertEqual(EnginePacket(MESSAGE, "hello").encode(), "4hello")
        self.assertEqual(EnginePacket(PING, "probe").encode(), "2probe")
        self.assertEqual(EnginePacket(MESSAGE, b"\x01\x02").encode(), b"\x01\x02")

    def test_bad_packets(self) -> None:
        """
        An empty packet and an unknown type are protocol errors.
        """
        for bad in ["", "7", "abc", "b", "\x00"]:
            with self.subTest(bad=bad):
                self.assertRaises(EngineProtocolError, decode_packet, bad)

    def test_open_packet(self) -> None:
        """
        The open packet carries the handshake in milliseconds.
        """
        self.assertEqual(
            open_packet("abc", ["websocket"], 0.3, 0.2, 1000000),
            '0{"sid":"abc","upgrades":["websocket"],"pingInterval":300,'
            '"pingTimeout":200,"maxPayload":1000000}',
        )

    @relaxed
    @given(text_packets)
    def test_agrees_with_reference_text(self, packet: EnginePacket) -> None:
        """
        python-engineio reads our text packets as we wrote them, and we
        read its text packets as it wrote them.
        """
        theirs = reference.Packet(encoded_packet=packet.encode())
        self.assertEqual(theirs.packet_type, packet.type)
        # python-engineio decodes JSON-looking data; encoding it again must
        # give the same packet back
        self.assertEqual(decode_packet(theirs.encode()).type, packet.type)
        if isinstance(theirs.data, str):
            self.assertEqual(theirs.data, packet.data)
        ours = decode_packet(reference.Packet(packet.type, packet.data).encode())
        self.assertEqual(ours, packet)

    @relaxed
    @given(st.binary())
    def test_agrees_with_reference_binary(self, data: bytes) -> None:
        """
        Binary messages agree with python-engineio both ways, as raw bytes
        and as base64 in a payload.
        """
        packet = EnginePacket(MESSAGE, data)
        theirs = reference.Packet(encoded_packet=packet.encode())
        self.assertEqual((theirs.packet_type, theirs.data), (MESSAGE, data))
        self.assertEqual(decode_packet(reference.Packet(MESSAGE, data).encode()), packet)
        self.assertEqual(
            decode_payload(reference.Packet(MESSAGE, data).encode(b64=True).encode("ascii")),
            [packet],
        )


class PayloadTests(SynchronousTestCase):
    """
    The HTTP long-polling payload.
    """

    @relaxed
    @given(st.lists(packets, min_size=1, max_size=10))
    def test_round_trip(self, items: list[EnginePacket]) -> None:
        """
        A payload decodes to the packets it was made of.
        """
        self.assertEqual(decode_payload(encode_payload(p.encode() for p in items)), items)

    def test_reference_example(self) -> None:
        """
        Text and binary packets are joined by the record separator, binary
        ones as ``b`` + base64.
        """
        body = encode_payload(["4hello", b"\x01\x02\x03\x04"])
        self.assertEqual(body, b"4hello\x1ebAQIDBA==")

    @relaxed
    @given(st.lists(text_packets | binary_packets, min_size=1, max_size=10))
    def test_agrees_with_reference(self, items: list[EnginePacket]) -> None:
        """
        python-engineio decodes our payloads to the same packets, and we
        decode its payloads.
        """
        body = encode_payload(p.encode() for p in items)
        theirs = reference_payload.Payload(encoded_payload=body.decode("utf-8"))
        self.assertEqual([p.packet_type for p in theirs.packets], [p.type for p in items])
        mine = reference_payload.Payload(
            packets=[reference.Packet(p.type, p.data) for p in items]
        ).encode()
        self.assertEqual(decode_payload(mine.encode("utf-8")), items)

    def test_bad_payloads(self) -> None:
        """
        Bodies that are not UTF-8, hold an empty or unknown packet, or bad
        base64 are protocol errors.
        """
        for bad in [b"\xff\xfe", b"", b"4a\x1e\x1e4b", b"9", b"b!!!", b"babc"]:
            with self.subTest(bad=bad):
                self.assertRaises(EngineProtocolError, decode_payload, bad)


def split_one_by_one(body: bytes) -> list[str | bytes] | str:
    """
    The payload split and checked one packet at a time, or the error it
    raises, for comparison with L{split_payload}.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return "payload is not UTF-8"
    parts: list[str | bytes] = []
    for part in text.split("\x1e"):
        if part[:1] == "b":
            try:
                parts.append(base64.b64decode(part[1:], validate=True))
            except (binascii.Error, ValueError):
                return "bad base64 in binary packet"
        elif not part:
            return "empty packet"
        elif not "0" <= part[0] <= "6":
            return "unknown packet type"
        else:
            parts.append(part)
    return parts


class SplitTests(SynchronousTestCase):
    """
    A payload is checked whole, with one scan, before any packet is built.
    """

    @relaxed
    @given(
        st.lists(
            st.text(alphabet="0169bAQI=\n x\x1e\u00e9", max_size=8),
            max_size=6,
        ).map(lambda parts: "\x1e".join(parts).encode("utf-8"))
        | st.binary(max_size=30)
    )
    def test_same_as_one_by_one(self, body: bytes) -> None:
        """
        L{split_payload} gives the packets, or the first error, that
        checking the packets one by one gives.
        """
        try:
            got: list[str | bytes] | str = split_payload(body)
        except EngineProtocolError as e:
            got = str(e)
        expected = split_one_by_one(body)
        if isinstance(expected, str) and isinstance(got, str):
            # the scan finds a bad packet before bad base64 further on
            self.assertIn(got, (expected, "empty packet", "unknown packet type"))
        else:
            self.assertEqual(got, expected)


class FrameTests(SynchronousTestCase):
    """
    Server-to-client WebSocket frames built once for many connections.
    """

    @relaxed
    @given(st.binary(max_size=70000) | st.text(max_size=300))
    def test_same_as_autobahn(self, payload: bytes | str) -> None:
        """
        The frame is byte for byte what Autobahn's prepared message holds
        for an unmasked server frame.
        """
        is_binary = isinstance(payload, bytes)
        data = payload if isinstance(payload, bytes) else payload.encode("utf-8")
        prepared = WebSocketServerFactory().prepareMessage(data, isBinary=is_binary)
        self.assertEqual(websocket_frame(payload), prepared.payloadHybi)

    def test_lengths(self) -> None:
        """
        Lengths up to 125 fit the first header, up to 65535 use 16 bits,
        beyond that 64 bits.
        """
        self.assertEqual(websocket_frame("4")[:2], b"\x81\x01")
        self.assertEqual(websocket_frame(b"x" * 126)[:4], b"\x82\x7e\x00\x7e")
        self.assertEqual(
            websocket_frame(b"x" * 65536)[:10], b"\x82\x7f" + (65536).to_bytes(8, "big")
        )
