"""
Tests for the Socket.IO server layer, on a `Clock` with in-memory
WebSockets and polling requests.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from realtimed.engineio.engine import EngineConfig
from realtimed.engineio.socketio import ConnectRefused, Socket, SocketIOServer
from tests.test_engineio_session import FakeWebSocket, make_request, written


class Client:
    """
    One in-memory WebSocket client of a `SocketIOServer`.
    """

    def __init__(self, server: SocketIOServer, headers: dict[str, str] | None = None) -> None:
        self.ws = FakeWebSocket()
        server.engine.websocket_opened(self.ws, None, headers or {}, {})  # type: ignore[arg-type]
        [handshake] = self.ws.received()
        assert isinstance(handshake, str) and handshake.startswith("0")

    def send(self, *packets: str | bytes) -> None:
        """
        Send Socket.IO packets (text without the Engine.IO prefix).
        """
        for packet in packets:
            self.ws.receive("4" + packet if isinstance(packet, str) else packet)

    def received(self) -> list[str | bytes]:
        """
        Socket.IO packets received since last asked (pings left out).
        """
        return [
            p[1:] if isinstance(p, str) else p
            for p in self.ws.received()
            if not (isinstance(p, str) and p in ("2", "1"))
        ]

    def connect(self, namespace: str = "/", auth: Any = None) -> str:
        """
        Join a namespace; returns the socket id.
        """
        prefix = "" if namespace == "/" else namespace + ","
        self.send("0" + prefix + ("" if auth is None else json.dumps(auth)))
        reply = self.received()[0]
        assert isinstance(reply, str) and reply.startswith("0" + prefix), reply
        sid: str = json.loads(reply[1 + len(prefix) :])["sid"]
        return sid


class ServerTests(SynchronousTestCase):
    """
    Namespaces, connect hooks, events, acks, binary data and emits.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.server = SocketIOServer(self.clock, EngineConfig(ping_interval=25, ping_timeout=20))
        self.main = self.server.namespace("/")
        self.sockets: list[Socket] = []
        self.auths: list[Any] = []
        self.reasons: list[str] = []

        def connected(socket: Socket, auth: Any) -> None:
            self.sockets.append(socket)
            self.auths.append(auth)

        self.main.on_connect(connected)
        self.main.on_disconnect(lambda socket, reason: self.reasons.append(reason))

    def test_connect(self) -> None:
        """
        CONNECT is answered with the socket id; the hook sees the auth
        payload and the handshake headers.
        """
        client = Client(self.server, {"authorization": "Bearer x"})
        sid = client.connect(auth={"token": "123"})
        [socket] = self.sockets
        self.assertEqual(socket.sid, sid)
        self.assertEqual(self.auths, [{"token": "123"}])
        self.assertEqual(socket.headers["authorization"], "Bearer x")
        self.assertTrue(socket.connected)
        self.assertIs(socket.namespace, self.main)
        self.assertEqual(self.main.sockets, {sid: socket})

    def test_emit_during_connect_follows_reply(self) -> None:
        """
        What the hook emits is sent after the CONNECT reply.
        """
        self.main.on_connect(lambda socket, auth: socket.emit("welcome", 1))
        client = Client(self.server)
        client.send("0")
        received = client.received()
        self.assertTrue(str(received[0]).startswith("0{"))
        self.assertEqual(received[1:], ['2["welcome",1]'])

    def test_refused(self) -> None:
        """
        A hook raising `ConnectRefused` answers CONNECT_ERROR with its
        message and data; the socket never connects.
        """

        def refuse(socket: Socket, auth: Any) -> None:
            raise ConnectRefused("Invalid token", {"code": 1})

        self.main.on_connect(refuse)
        client = Client(self.server)
        client.send("0")
        self.assertEqual(client.received(), ['4{"message":"Invalid token","data":{"code":1}}'])
        self.assertEqual(self.main.sockets, {})
        self.assertEqual(self.reasons, [])

    def test_refused_later(self) -> None:
        """
        A hook may answer with a Deferred, which may fail with
        `ConnectRefused`.
        """
        pending: Deferred[None] = Deferred()
        self.main.on_connect(lambda socket, auth: pending)
        client = Client(self.server)
        client.send("0")
        self.assertEqual(client.received(), [])
        pending.errback(ConnectRefused("No authentication provided"))
        self.assertEqual(client.received(), ['4{"message":"No authentication provided"}'])

    def test_accepted_later(self) -> None:
        """
        A Deferred that succeeds accepts the connection.
        """
        pending: Deferred[None] = Deferred()
        self.main.on_connect(lambda socket, auth: pending)
        client = Client(self.server)
        client.send("0")
        pending.callback(None)
        self.assertTrue(str(client.received()[0]).startswith("0{"))

    def test_accepted_after_close(self) -> None:
        """
        When the connection ends while the hook is still deciding, a later
        acceptance sends nothing but is followed by the disconnect handler,
        so the application can release what it set up.
        """
        pending: Deferred[None] = Deferred()
        self.main.on_connect(lambda socket, auth: pending)
        client = Client(self.server)
        client.send("0")
        client.ws.lose()
        self.assertEqual(self.reasons, [])
        pending.callback(None)
        self.assertEqual(self.reasons, ["transport close"])
        self.assertEqual(self.main.sockets, {})

    def test_refused_after_close(self) -> None:
        """
        A refusal after the connection ended is dropped quietly.
        """
        pending: Deferred[None] = Deferred()
        self.main.on_connect(lambda socket, auth: pending)
        client = Client(self.server)
        client.send("0")
        client.ws.lose()
        pending.errback(ConnectRefused("late"))
        self.assertEqual(self.reasons, [])

    def test_hook_crashes(self) -> None:
        """
        A hook failing with anything else refuses with a generic message
        and is logged.
        """
        self.main.on_connect(lambda socket, auth: fail(ZeroDivisionError()))
        client = Client(self.server)
        client.send("0")
        self.assertEqual(client.received(), ['4{"message":"Internal server error"}'])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_unknown_namespace(self) -> None:
        """
        Connecting to a namespace that does not exist is refused.
        """
        client = Client(self.server)
        client.send("0/random,")
        self.assertEqual(client.received(), ['4/random,{"message":"Invalid namespace"}'])

    def test_namespaces(self) -> None:
        """
        One connection may join several namespaces, each with its own
        socket and handlers.
        """
        custom = self.server.namespace("/custom")
        seen: list[tuple[str, list[Any]]] = []
        custom.on(
            "hello",
            lambda socket, args, ack: seen.append((socket.namespace.name, args)),
        )
        client = Client(self.server)
        main_sid = client.connect()
        custom_sid = client.connect("/custom")
        self.assertNotEqual(main_sid, custom_sid)
        client.send('2/custom,["hello",1]', '2["hello",2]')
        self.assertEqual(seen, [("/custom", [1])])
        client.send("1/custom,")
        self.assertEqual(custom.sockets, {})
        self.assertEqual(len(self.main.sockets), 1)

    def test_event_with_ack(self) -> None:
        """
        Handlers get the arguments and, when asked for, an ack callable
        that answers once.
        """
        calls: list[Any] = []

        def handler(socket: Socket, args: list[Any], ack: Any) -> None:
            calls.append((args, ack is None))
            if ack is not None:
                ack("ok", {"n": 1})
                ack("twice")

        self.main.on("ask", handler)
        client = Client(self.server)
        client.connect()
        client.send('2["ask",1]', '27["ask",2]')
        self.assertEqual(calls, [([1], True), ([2], False)])
        self.assertEqual(client.received(), ['37["ok",{"n":1}]'])

    def test_event_text(self) -> None:
        """
        A handler registered with C{with_text} also gets the JSON text of
        the event's data, as the client wrote it; none for an event that
        came with attachments, and others do not get it.
        """
        texts: list[Any] = []
        self.main.on(
            "raw", lambda socket, args, ack, text: texts.append((args, text)), with_text=True
        )
        self.main.on("plain", lambda socket, args, ack: texts.append(args))
        client = Client(self.server)
        client.connect()
        client.send('2["raw", {"n": 1.10}]', '21["plain",1]')
        client.send('51-["raw",{"_placeholder":true,"num":0}]', b"\x01")
        self.assertEqual(texts, [([{"n": 1.1}], '["raw", {"n": 1.10}]'), [1], ([b"\x01"], None)])

    def test_on_any(self) -> None:
        """
        Events without a handler of their own go to the catch-all.
        """
        seen: list[Any] = []
        self.main.on_any(lambda socket, event, args, ack: seen.append((event, args)))
        client = Client(self.server)
        client.connect()
        client.send('2["whatever",true]')
        self.assertEqual(seen, [("whatever", [True])])

    def test_handler_crash_is_contained(self) -> None:
        """
        A handler raising is logged; the connection goes on.
        """

        def broken(socket: Socket, args: list[Any], ack: Any) -> None:
            raise RuntimeError("bug")

        self.main.on("boom", broken)
        self.main.on("echo", lambda socket, args, ack: socket.emit("echo", *args))
        client = Client(self.server)
        client.connect()
        client.send('2["boom"]', '2["echo",1]')
        self.assertEqual(client.received(), ['2["echo",1]'])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_emit_with_ack(self) -> None:
        """
        An emit asking for an ack runs the callback with the client's
        answer, once.
        """
        client = Client(self.server)
        client.connect()
        answers: list[Any] = []
        self.sockets[0].emit("q", 1, ack=lambda *values: answers.append(values))
        self.sockets[0].emit("q", 2, ack=lambda *values: answers.append(values))
        self.assertEqual(client.received(), ['20["q",1]', '21["q",2]'])
        client.send('31["b"]', '30["a",2]', '30["again"]', '39["unknown"]')
        self.assertEqual(answers, [("b",), ("a", 2)])

    def test_binary(self) -> None:
        """
        Binary arguments arrive as bytes, both ways, with acks.
        """
        got: list[Any] = []

        def handler(socket: Socket, args: list[Any], ack: Any) -> None:
            got.append(args)
            ack(args[0], {"b": b"\x09"})

        self.main.on("bin", handler)
        client = Client(self.server)
        client.connect()
        client.send('51-3["bin",{"_placeholder":true,"num":0}]', b"\x01\x02")
        self.assertEqual(got, [[b"\x01\x02"]])
        self.assertEqual(
            client.received(),
            [
                '62-3[{"_placeholder":true,"num":0},{"b":{"_placeholder":true,"num":1}}]',
                b"\x01\x02",
                b"\x09",
            ],
        )
        answers: list[Any] = []
        self.sockets[0].emit("file", b"\xff", ack=answers.append)
        self.assertEqual(client.received(), ['51-0["file",{"_placeholder":true,"num":0}]', b"\xff"])
        client.send('61-0[{"_placeholder":true,"num":0}]', b"\x07")
        self.assertEqual(answers, [b"\x07"])

    def test_emit_many_frames_once(self) -> None:
        """
        One broadcast writes the very same frame bytes to every WebSocket,
        queues the same packet for polling sockets, and skips sockets that
        have left.
        """
        clients = [Client(self.server) for _ in range(3)]
        for client in clients:
            client.connect()
        request = make_request(args={"EIO": "4", "transport": "polling"})
        self.server.engine.render(request)
        sid = json.loads(written(request)[1:])["sid"]
        post = make_request(b"POST", {"EIO": "4", "transport": "polling", "sid": sid}, b"40")
        self.server.engine.render(post)
        clients[2].send("1")
        self.reasons.clear()
        for client in clients:
            client.ws.transport.clear()
        self.main.emit_many(self.sockets, "news", {"n": 1}, b"\x01")
        # WebSocket frames go out at the end of the reactor turn
        self.assertEqual(clients[0].ws.transport.value(), b"")
        self.clock.advance(0)
        frames = [c.ws.transport.value() for c in clients]
        self.assertEqual(frames[0], frames[1])
        self.assertEqual(frames[2], b"")
        self.assertEqual(
            clients[0].received(),
            ['51-["news",{"n":1},{"_placeholder":true,"num":0}]', b"\x01"],
        )
        poll = make_request(args={"EIO": "4", "transport": "polling", "sid": sid})
        self.server.engine.render(poll)
        self.assertTrue(
            written(poll).endswith(
                b'\x1e451-["news",{"n":1},{"_placeholder":true,"num":0}]\x1ebAQ=='
            )
        )

    def test_slow_reader_dropped_by_broadcasts(self) -> None:
        """
        Broadcasts to a connection whose kernel buffer stays full are
        counted, and past the buffer limit the connection is dropped and
        its socket disconnected; the others keep receiving.
        """
        server = SocketIOServer(self.clock, EngineConfig(max_buffer=2000))
        namespace = server.namespace("/")
        reasons: list[str] = []
        namespace.on_disconnect(lambda socket, reason: reasons.append(reason))
        slow, fast = Client(server), Client(server)
        slow.connect()
        fast.connect()
        slow.ws.transport.producer.pauseProducing()
        for _ in range(30):
            namespace.emit("news", "x" * 100)
            self.clock.advance(0)
        self.assertTrue(slow.ws.dropped)
        self.assertFalse(fast.ws.dropped)
        self.assertEqual(reasons, ["transport error"])
        self.assertEqual(len(fast.received()), 30)

    def test_broadcasts_keep_order(self) -> None:
        """
        Broadcasts held for the end of the turn go out in order, and a
        direct emit made meanwhile waits behind them.
        """
        client = Client(self.server)
        client.connect()
        client.ws.transport.clear()
        self.main.emit_many(self.sockets, "a")
        self.sockets[0].emit("b")
        self.main.emit_many(self.sockets, "c")
        self.assertEqual(client.ws.transport.value(), b"")
        self.clock.advance(0)
        self.assertEqual(client.received(), ['2["a"]', '2["b"]', '2["c"]'])
        self.sockets[0].emit("d")
        self.assertEqual(client.received(), ['2["d"]'])

    def test_client_disconnect(self) -> None:
        """
        A DISCONNECT from the client leaves the namespace with its reason.
        """
        client = Client(self.server)
        client.connect()
        client.send("1")
        self.assertEqual(self.reasons, ["client namespace disconnect"])
        self.assertFalse(self.sockets[0].connected)
        self.sockets[0].emit("late")
        self.assertEqual(client.received(), [])

    def test_server_disconnect(self) -> None:
        """
        `Socket.disconnect` sends DISCONNECT and, for the last namespace,
        closes the Engine.IO session.
        """
        client = Client(self.server)
        client.connect()
        self.sockets[0].disconnect()
        self.assertEqual(client.ws.received(), ["41"])
        self.assertTrue(client.ws.closed)
        self.assertEqual(self.reasons, ["server namespace disconnect"])

    def test_transport_reasons(self) -> None:
        """
        Sockets learn why their connection ended.
        """
        client = Client(self.server)
        client.connect()
        self.clock.advance(25)
        self.clock.advance(20)
        self.assertEqual(self.reasons, ["ping timeout"])
        other = Client(self.server)
        other.connect()
        other.ws.lose()
        self.assertEqual(self.reasons, ["ping timeout", "transport close"])

    def test_bad_packets_close_connection(self) -> None:
        """
        Every undecodable Socket.IO packet closes its own connection and
        no other.
        """
        bystander = Client(self.server)
        bystander.connect()
        bad_packets: list[str | bytes] = ["abc", "2{}", '2abc["x"]', '2["connect"]', "4{}", b"\x00"]
        for bad in bad_packets:
            with self.subTest(bad=bad):
                client = Client(self.server)
                client.connect()
                client.send(bad)
                self.assertTrue(client.ws.closed)
        self.assertFalse(bystander.ws.closed)
        self.assertTrue(bystander.ws.connection is not None)

    def test_connect_timeout(self) -> None:
        """
        A connection that joins no namespace in time is closed.
        """
        server = SocketIOServer(self.clock, EngineConfig(ping_interval=100), connect_timeout=5)
        client = Client(server)
        self.clock.advance(5)
        self.assertTrue(client.ws.closed)
        joined = Client(server)
        joined.send("0")
        self.clock.advance(5)
        self.assertFalse(joined.ws.closed)

    def test_connect_timeout_counts_refusals(self) -> None:
        """
        Refused CONNECT attempts do not keep a session open: it is closed
        when the connect timeout passes without an accepted one, while a
        session whose later attempt is accepted stays.
        """
        server = SocketIOServer(self.clock, EngineConfig(ping_interval=100), connect_timeout=5)
        tokens: list[object] = []

        def connect(socket: Socket, auth: object) -> None:
            tokens.append(auth)
            if auth != {"token": "good"}:
                raise ConnectRefused("Invalid token")

        server.namespace("/").on_connect(connect)
        refused, late = Client(server), Client(server)
        for _ in range(4):
            refused.send('0{"token":"bad"}')
            late.send('0{"token":"bad"}')
            self.clock.advance(1)
        late.send('0{"token":"good"}')
        self.clock.advance(1)
        self.assertTrue(refused.ws.closed)
        self.assertFalse(late.ws.closed)
        self.clock.advance(100)
        self.assertFalse(late.ws.closed)
        self.assertEqual(len(tokens), 9)

    def test_oversize_message(self) -> None:
        """
        The maximum payload is announced and enforced by the WebSocket
        layer for each message.
        """
        server = SocketIOServer(self.clock, EngineConfig(max_payload=1234))
        options = server.engine.websocket_factory
        self.assertEqual(options.maxMessagePayloadSize, 1234)
        self.assertEqual(options.maxFramePayloadSize, 1234)
