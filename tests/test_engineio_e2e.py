"""
Engine.IO over real sockets: limits and bad input cost only the session
that sent them.
"""

from __future__ import annotations

import gc
import json
import weakref
from typing import Any

import treq
import websocket
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource

from realtimed.engineio.engine import EngineConfig, EngineIOServer
from tests.conformance import Echo
from tests.support import TrackingSite


def websocket_exchange(url: str, messages: list[str]) -> tuple[list[str | bytes], int | None]:
    """
    Open a WebSocket session, send ``messages`` and read until the server
    closes or two replies have come; returns the replies and the close code.
    """
    ws = websocket.create_connection(url, timeout=10)
    try:
        replies: list[str | bytes] = [ws.recv()]
        for message in messages:
            ws.send(message)
        while len(replies) < 3:
            opcode, data = ws.recv_data(control_frame=True)
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                return replies, int.from_bytes(data[:2], "big")
            replies.append(data.decode())
        return replies, None
    finally:
        ws.close()


class EchoServerTestCase(TestCase):
    """
    An Engine.IO echo server on a real port, with C{config}.
    """

    timeout = 30
    config = EngineConfig(ping_interval=5, ping_timeout=5)

    @inlineCallbacks
    def setUp(self) -> Any:
        self.server = EngineIOServer(reactor, Echo, self.config)
        root = Resource()
        root.putChild(b"engine.io", self.server.resource())
        self.site = TrackingSite(root)
        port: IListeningPort = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            self.site
        )
        self.addCleanup(port.stopListening)
        address = port.getHost()
        self.base = f"127.0.0.1:{address.port}/engine.io/?EIO=4"  # type: ignore[attr-defined]

    def tearDown(self) -> Deferred[Any]:
        # The sessions end with their closing handshakes; no connection
        # outlives the test.
        self.server.close()
        return self.site.all_closed()


class LimitsTests(EchoServerTestCase):
    """
    Payload limits over real connections.
    """

    config = EngineConfig(ping_interval=5, ping_timeout=5, max_payload=1000)

    @inlineCallbacks
    def test_websocket_message_too_big(self) -> Any:
        """
        A WebSocket message over the maximum payload closes that WebSocket
        with code 1009; another session goes on echoing.
        """
        url = f"ws://{self.base}&transport=websocket"
        replies, code = yield deferToThread(websocket_exchange, url, ["4" + "x" * 1001])
        self.assertEqual(code, 1009)
        replies, code = yield deferToThread(websocket_exchange, url, ["4small", "4again"])
        self.assertEqual((replies[1:], code), (["4small", "4again"], None))

    @inlineCallbacks
    def test_polling_body_too_big(self) -> Any:
        """
        A POST over the maximum payload is answered 413 and ends the
        session; the client's next poll learns it is closed.
        """
        base = f"http://{self.base}&transport=polling"
        response = yield treq.get(base, persistent=False)
        sid = json.loads((yield response.text())[1:])["sid"]
        response = yield treq.post(f"{base}&sid={sid}", b"4" + b"x" * 1001, persistent=False)
        self.assertEqual(response.code, 413)
        yield response.content()
        response = yield treq.get(f"{base}&sid={sid}", persistent=False)
        self.assertEqual((yield response.text()), "1")
        response = yield treq.get(f"{base}&sid={sid}", persistent=False)
        self.assertEqual(response.code, 400)
        self.assertEqual(
            json.loads((yield response.text())), {"code": 1, "message": "Session ID unknown"}
        )

    @inlineCallbacks
    def test_bad_websocket_query(self) -> Any:
        """
        A WebSocket upgrade with a bad version or an unknown sid is refused
        before the handshake.
        """

        def attempt(url: str) -> str:
            try:
                websocket.create_connection(url, timeout=10).close()
            except websocket.WebSocketBadStatusException as e:
                return str(e.status_code)
            return "opened"

        for query in ["EIO=3&transport=websocket", "EIO=4&transport=websocket&sid=nope"]:
            url = f"ws://{self.base.split('?')[0]}?{query}"
            self.assertEqual((yield deferToThread(attempt, url)), "400")


class FreedTests(EchoServerTestCase):
    """
    What a WebSocket keeps: nothing per frame while it is idle, and nothing
    at all once it is closed, without waiting for the garbage collector.
    """

    @property
    def url(self) -> str:
        return f"ws://{self.base}&transport=websocket"

    def track_protocols(self) -> list[weakref.ref[Any]]:
        """
        Weak references to the server's WebSocket protocols, as they are
        built.
        """
        factory = self.server.websocket_factory
        built: list[weakref.ref[Any]] = []
        build = factory.buildProtocol

        def tracking(address: Any) -> Any:
            protocol = build(address)
            built.append(weakref.ref(protocol))
            return protocol

        self.patch(factory, "buildProtocol", tracking)
        return built

    @inlineCallbacks
    def test_closed_websocket_freed_by_reference_counting(self) -> Any:
        """
        With the garbage collector off, a WebSocket is freed once it is
        closed.
        """
        built = self.track_protocols()
        gc.collect()
        gc.disable()
        self.addCleanup(gc.enable)
        replies, code = yield deferToThread(websocket_exchange, self.url, ["4a", "4b"])
        self.assertEqual((replies[1:], code), (["4a", "4b"], None))
        self.assertEqual(len(built), 1)
        for _ in range(100):
            if built[0]() is None:
                break
            yield deferLater(reactor, 0.05, lambda: None)
        self.assertIsNone(built[0](), "the closed WebSocket is still alive")

    @inlineCallbacks
    def test_idle_websocket_keeps_no_per_frame_state(self) -> Any:
        """
        An open WebSocket that has exchanged messages holds no traffic
        counters, UTF-8 validator, frame unmasker or handshake futures of
        its own.
        """
        built = self.track_protocols()
        ws = yield deferToThread(websocket.create_connection, self.url, timeout=10)
        try:
            yield deferToThread(ws.recv)
            yield deferToThread(ws.send, "4hello")
            self.assertEqual((yield deferToThread(ws.recv)), "4hello")
            own = vars(built[0]())
            for name in (
                "trafficStats",
                "utf8validator",
                "current_frame_masker",
                "is_open",
                "is_closed",
            ):
                self.assertNotIn(name, own)
        finally:
            ws.close()

    @inlineCallbacks
    def test_invalid_utf8_closes_with_1007(self) -> Any:
        """
        A text message that is not UTF-8 closes its WebSocket with code
        1007, as RFC 6455 asks.
        """

        def exchange() -> int:
            ws = websocket.create_connection(self.url, timeout=10, skip_utf8_validation=True)
            try:
                ws.recv()
                ws.send_frame(websocket.ABNF.create_frame(b"4\xff\xfe", websocket.ABNF.OPCODE_TEXT))
                while True:
                    opcode, data = ws.recv_data(control_frame=True)
                    if opcode == websocket.ABNF.OPCODE_CLOSE:
                        return int.from_bytes(data[:2], "big")
            finally:
                ws.close()

        self.assertEqual((yield deferToThread(exchange)), 1007)
