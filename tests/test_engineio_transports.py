"""
Unit tests of the WebSocket protocol set-up in L{realtimed.engineio.websocket}.
"""

from __future__ import annotations

from typing import Any

import autobahn.websocket.protocol
from twisted.internet.abstract import FileDescriptor
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from realtimed.engineio.connection import EngineConnection
from realtimed.engineio.engine import EngineConfig, EngineIOServer
from realtimed.engineio.websocket import PONG_BACKLOG, EngineWebSocketProtocol, unsent


class _Handler:
    def __init__(self) -> None:
        self.messages: list[str | bytes] = []

    def message(self, data: str | bytes) -> None:
        self.messages.append(data)

    def closed(self, reason: str) -> None:
        pass


def _accept(connection: EngineConnection) -> _Handler:
    return _Handler()


class WebSocketOptionsTests(SynchronousTestCase):
    """
    The WebSocket options are settled once per server, not per connection.
    """

    def connect(self, server: EngineIOServer) -> Any:
        """
        A WebSocket protocol of C{server}, connected to a fake transport
        (Autobahn sets its options up when the connection is made).
        """
        factory: Any = server.websocket_factory
        protocol: EngineWebSocketProtocol = factory.buildProtocol(
            IPv4Address("TCP", "127.0.0.1", 40000)
        )
        protocol.makeConnection(StringTransport())
        # Autobahn's opening handshake timer runs on the global reactor
        self.addCleanup(protocol.connectionLost, Failure(ConnectionDone()))
        return protocol

    def test_options_applied(self) -> None:
        """
        A new WebSocket has the server's limits and Autobahn's defaults for
        the rest, except for UTF-8, which the server checks itself.
        """
        server = EngineIOServer(Clock(), _accept, EngineConfig(max_payload=1234))
        protocol = self.connect(server)
        self.assertEqual(protocol.maxMessagePayloadSize, 1234)
        self.assertEqual(protocol.maxFramePayloadSize, 1234)
        self.assertEqual(protocol.autoPingInterval, 0)
        self.assertEqual(protocol.openHandshakeTimeout, 10)
        self.assertIs(protocol.failByDrop, False)
        self.assertIs(protocol.utf8validateIncoming, False)
        self.assertEqual(protocol.versions, [8, 13])

    def test_two_servers_keep_their_own(self) -> None:
        """
        Two servers in one process each keep their own limits.
        """
        small = EngineIOServer(Clock(), _accept, EngineConfig(max_payload=10))
        large = EngineIOServer(Clock(), _accept, EngineConfig(max_payload=1000))
        self.assertEqual(self.connect(small).maxMessagePayloadSize, 10)
        self.assertEqual(self.connect(large).maxMessagePayloadSize, 1000)

    def test_no_option_listing_per_connection(self) -> None:
        """
        Connecting does not build and pretty-print the list of options,
        which Autobahn does for a debug message even when nothing is logged
        at debug level.
        """
        server = EngineIOServer(Clock(), _accept)
        formatted: list[object] = []
        original = autobahn.websocket.protocol.pformat

        def recording(value: object, *args: Any, **kwargs: Any) -> str:
            formatted.append(value)
            return str(original(value, *args, **kwargs))

        self.patch(autobahn.websocket.protocol, "pformat", recording)
        self.connect(server)
        self.connect(server)
        self.assertEqual([v for v in formatted if v], [])


class HandshakeTests(SynchronousTestCase):
    """
    A WebSocket opened without a polling session starts one with the
    handshake's headers and query, and keeps no other copy of the handshake.
    """

    def test_opened(self) -> None:
        opened: list[EngineConnection] = []
        handler = _Handler()

        def accept(connection: EngineConnection) -> _Handler:
            opened.append(connection)
            return handler

        server = EngineIOServer(Clock(), accept)
        factory: Any = server.websocket_factory
        protocol: EngineWebSocketProtocol = factory.buildProtocol(
            IPv4Address("TCP", "127.0.0.1", 40000)
        )
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.addCleanup(protocol.connectionLost, Failure(ConnectionDone()))
        protocol.dataReceived(
            b"GET /socket.io/?EIO=4&transport=websocket&x=1 HTTP/1.1\r\n"
            b"Host: example.com\r\n"
            b"Upgrade: websocket\r\n"
            b"Connection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n"
            b"Authorization: Bearer abc\r\n"
            b"X-Custom: Some Value\r\n"
            b"\r\n"
        )
        self.assertEqual(protocol.state, protocol.STATE_OPEN)
        self.assertIn(b"101 Switching Protocols", transport.value())
        [connection] = opened
        self.assertEqual(connection.headers["host"], "example.com")
        self.assertEqual(connection.headers["authorization"], "Bearer abc")
        self.assertEqual(connection.headers["x-custom"], "Some Value")
        self.assertEqual(connection.headers["sec-websocket-key"], "dGhlIHNhbXBsZSBub25jZQ==")
        self.assertEqual(dict(connection.query), {"EIO": "4", "transport": "websocket", "x": "1"})
        self.assertIs(protocol.connection, connection)
        self.assertIsNone(protocol.http_headers)
        self.assertIsNone(protocol.http_request_data)
        self.assertIsNone(protocol.http_response_data)
        self.assertIsNone(protocol.transport_details)

        # the connection still works as Autobahn set it up
        self.assertIs(protocol.wasClean, False)
        self.assertIsNone(protocol.closeHandshakeTimeoutCall)
        mask = b"\x01\x02\x03\x04"
        payload = b"4hello"
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        protocol.dataReceived(b"\x81" + bytes([0x80 | len(payload)]) + mask + masked)
        self.assertEqual(handler.messages, ["hello"])
        self.assertEqual(len(protocol.send_queue), 0)
        transport.clear()
        protocol.sendMessage(b"x")
        self.assertEqual(transport.value(), b"\x81\x01x")


class _Unread(FileDescriptor):
    """
    A connection whose peer reads nothing: whatever is written stays in
    its send buffer.
    """

    connected = 1

    def __init__(self) -> None:
        super().__init__(MemoryReactor())  # type: ignore[arg-type]

    def writeSomeData(self, data: bytes) -> int:
        return 0

    def getPeer(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 40000)

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 8080)

    def waiting(self) -> bytes:
        return b"".join([self.dataBuffer[self.offset :], *self._tempDataBuffer])


class PingTests(SynchronousTestCase):
    """
    Pings are answered while the client reads what it is sent; pongs do
    not pile up for a client that does not.
    """

    def test_pongs_stop_when_the_peer_does_not_read(self) -> None:
        """
        A ping is answered with a pong; once the pongs waiting to be sent
        pass L{PONG_BACKLOG}, further pings are not answered, and the
        WebSocket stays open.
        """
        server = EngineIOServer(Clock(), _accept)
        factory: Any = server.websocket_factory
        protocol: EngineWebSocketProtocol = factory.buildProtocol(
            IPv4Address("TCP", "127.0.0.1", 40000)
        )
        transport = _Unread()
        protocol.makeConnection(transport)
        self.addCleanup(protocol.connectionLost, Failure(ConnectionDone()))
        protocol.dataReceived(
            b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n"
            b"Host: example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        self.assertEqual(protocol.state, protocol.STATE_OPEN)
        ping = b"\x89\xfd" + b"\0\0\0\0" + b"p" * 125
        pong = b"\x8a\x7d" + b"p" * 125
        before = unsent(transport)
        protocol.dataReceived(ping)
        self.assertEqual(unsent(transport), before + len(pong))
        self.assertTrue(transport.waiting().endswith(pong))
        protocol.dataReceived(ping * 10_000)
        self.assertLessEqual(unsent(transport), PONG_BACKLOG + len(pong))
        self.assertEqual(protocol.state, protocol.STATE_OPEN)

    def test_unsent_under_tls(self) -> None:
        """
        Under TLS the bytes waiting are those of the connection under it.
        """

        class Wrapper:
            def __init__(self, transport: object) -> None:
                self.transport = transport

        transport = _Unread()
        transport.write(b"x" * 10)
        self.assertEqual(unsent(Wrapper(Wrapper(transport))), 10)
        self.assertEqual(unsent(StringTransport()), 0)
