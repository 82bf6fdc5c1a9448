"""
Tests for the Socket.IO v5 codec.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from socketio import packet as reference
from twisted.trial.unittest import SynchronousTestCase

from realtimed.engineio.socket_packets import (
    ACK,
    BINARY_ACK,
    BINARY_EVENT,
    CONNECT,
    CONNECT_ERROR,
    DISCONNECT,
    EVENT,
    RESERVED_EVENTS,
    SocketPacket,
    SocketPacketDecoder,
    SocketProtocolError,
    encode,
    has_binary,
)

keys = st.text(max_size=8).filter(lambda k: k != "_placeholder")
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=12,
)
binary_values = st.recursive(
    st.binary(max_size=20),
    lambda inner: (
        st.lists(inner | scalars, min_size=1, max_size=3).filter(has_binary)
        | st.dictionaries(keys, inner, min_size=1, max_size=3)
    ),
    max_leaves=6,
)
namespaces = st.just("/") | st.text(
    alphabet=st.characters(blacklist_characters=",?", blacklist_categories=("Cs",)),
    min_size=1,
    max_size=10,
).map(lambda s: "/" + s)
events = st.text(max_size=10).filter(lambda e: e not in RESERVED_EVENTS)
ack_ids = st.integers(min_value=0, max_value=2**31)


def _event_data(args: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    return st.builds(lambda e, a: [e, *a], events, st.lists(args, max_size=3))


packets_without_binary = st.one_of(
    st.builds(
        SocketPacket,
        st.just(CONNECT),
        namespaces,
        st.none() | st.dictionaries(keys, json_values, max_size=3),
    ),
    st.builds(SocketPacket, st.just(DISCONNECT), namespaces),
    st.builds(
        SocketPacket,
        st.just(CONNECT_ERROR),
        namespaces,
        st.text() | st.dictionaries(keys, json_values, max_size=3),
    ),
    st.builds(
        SocketPacket,
        st.just(EVENT),
        namespaces,
        _event_data(json_values),
        st.none() | ack_ids,
    ),
    st.builds(
        SocketPacket,
        st.just(ACK),
        namespaces,
        st.lists(json_values, max_size=3),
        ack_ids,
    ),
)
packets_with_binary = st.one_of(
    st.builds(
        SocketPacket,
        st.just(BINARY_EVENT),
        namespaces,
        st.builds(
            lambda e, b, a: [e, b, *a],
            events,
            binary_values,
            st.lists(json_values, max_size=2),
        ),
        st.none() | ack_ids,
    ),
    st.builds(
        SocketPacket,
        st.just(BINARY_ACK),
        namespaces,
        st.builds(lambda b, a: [*a, b], binary_values, st.lists(json_values, max_size=2)),
        ack_ids,
    ),
)
all_packets = packets_without_binary | packets_with_binary


def decode_all(messages: list[str | bytes]) -> list[SocketPacket]:
    decoder = SocketPacketDecoder()
    return [p for p in map(decoder.feed, messages) if p is not None]


# no time limit per example: the machine running the suite may be busy
relaxed = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


class CodecTests(SynchronousTestCase):
    """
    Encoding and decoding Socket.IO packets.
    """

    @relaxed
    @given(all_packets)
    def test_round_trip(self, packet: SocketPacket) -> None:
        """
        Every kind of packet decodes to itself after encoding, attachments
        included.
        """
        self.assertEqual(decode_all(encode(packet)), [packet])

    def test_examples(self) -> None:
        """
        Packets are written as the protocol's examples show.
        """
        self.assertEqual(encode(SocketPacket(CONNECT, "/", {"sid": "x"})), ['0{"sid":"x"}'])
        self.assertEqual(encode(SocketPacket(DISCONNECT, "/admin")), ["1/admin,"])
        self.assertEqual(encode(SocketPacket(EVENT, "/", ["a", 1], 12)), ['212["a",1]'])
        self.assertEqual(encode(SocketPacket(ACK, "/admin", ["é"], 13)), ['3/admin,13["é"]'])
        self.assertEqual(
            encode(SocketPacket(EVENT, "/", ["a", b"\x01"])),
            ['51-["a",{"_placeholder":true,"num":0}]', b"\x01"],
        )
        self.assertEqual(
            encode(SocketPacket(ACK, "/", [b"\x01", b"\x02"], 7)),
            [
                '62-7[{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]',
                b"\x01",
                b"\x02",
            ],
        )

    def test_namespace_without_comma(self) -> None:
        """
        A namespace may end the packet without a comma.
        """
        self.assertEqual(decode_all(["0/custom"]), [SocketPacket(CONNECT, "/custom")])

    def test_invalid(self) -> None:
        """
        Unknown types, broken JSON, bad ack ids, data of the wrong shape,
        reserved event names and bad attachment counts are rejected.
        """
        for bad in [
            "",
            "abc",
            "7",
            "2{}",
            "2[]",
            "2[1]",
            '2abc["message"]',
            '2["message"',
            "2NaN",
            '2["connect"]',
            "3[1]",
            "1{}",
            "0[]",
            "4",
            '5x-["a"]',
            '5-["a"]',
            '599999-["a"]',
            '21234567890123456["a"]',
            "2" + "[" * 100_000 + "]" * 100_000,
        ]:
            with self.subTest(bad=bad):
                self.assertRaises(SocketProtocolError, SocketPacketDecoder().feed, bad)

    def test_unexpected_binary(self) -> None:
        """
        A binary message nobody waits for is rejected, and so is text while
        attachments are due.
        """
        self.assertRaises(SocketProtocolError, SocketPacketDecoder().feed, b"\x01")
        decoder = SocketPacketDecoder()
        self.assertIsNone(decoder.feed('51-["a",{"_placeholder":true,"num":0}]'))
        self.assertRaises(SocketProtocolError, decoder.feed, '2["a"]')

    def test_attachment_limit(self) -> None:
        """
        The attachments of one packet may not exceed the byte limit
        together.
        """
        decoder = SocketPacketDecoder(max_attachment_bytes=4)
        decoder.feed('52-["a",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]')
        decoder.feed(b"\x01\x02\x03")
        self.assertRaises(SocketProtocolError, decoder.feed, b"\x04\x05")

    def test_bad_placeholder(self) -> None:
        """
        A placeholder pointing past the attachments is rejected.
        """
        decoder = SocketPacketDecoder()
        decoder.feed('51-["a",{"_placeholder":true,"num":1}]')
        self.assertRaises(SocketProtocolError, decoder.feed, b"\x01")


class ReferenceAgreementTests(SynchronousTestCase):
    """
    The codec agrees with python-socketio's packet class.
    """

    @relaxed
    @given(all_packets)
    def test_reference_reads_ours(self, packet: SocketPacket) -> None:
        """
        python-socketio decodes what we encode to the same packet.
        """
        messages = encode(packet)
        theirs = reference.Packet(encoded_packet=messages[0])
        for attachment in messages[1:]:
            theirs.add_attachment(attachment)
        self.assertEqual(theirs.packet_type, packet.type)
        self.assertEqual(theirs.namespace or "/", packet.namespace)
        self.assertEqual(theirs.id, packet.id)
        self.assertEqual(theirs.data, packet.data)

    @relaxed
    @given(all_packets)
    def test_we_read_reference(self, packet: SocketPacket) -> None:
        """
        We decode what python-socketio encodes to the same packet.
        """
        # python-socketio picks the binary types itself
        plain = {BINARY_EVENT: EVENT, BINARY_ACK: ACK}.get(packet.type, packet.type)
        theirs = reference.Packet(
            plain,
            packet.data,
            namespace=packet.namespace,
            id=packet.id,
        ).encode()
        messages = theirs if isinstance(theirs, list) else [theirs]
        self.assertEqual(decode_all(messages), [packet])
