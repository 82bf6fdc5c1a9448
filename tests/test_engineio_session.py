"""
Tests for the Engine.IO session: the pure state machine, and the Twisted
adapter driven by a `Clock`, in-memory requests and in-memory WebSocket
transports.
"""

from __future__ import annotations

import json
from io import BytesIO
from typing import Any

from autobahn.twisted.websocket import WebSocketServerProtocol
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from realtimed.engineio import session as states
from realtimed.engineio.connection import PACKETS_PER_TURN, EngineConnection
from realtimed.engineio.engine import EngineConfig, EngineIOServer, origin_allowed
from realtimed.engineio.engine_packets import EnginePacket, decode_packet
from realtimed.engineio.session import POLLING, WEBSOCKET, EngineSession


def parse_frames(data: bytes) -> list[str | bytes]:
    """
    The payloads of the unmasked server frames in ``data``.
    """
    found: list[str | bytes] = []
    i = 0
    while i < len(data):
        opcode = data[i] & 0x0F
        length = data[i + 1] & 0x7F
        i += 2
        if length == 126:
            length = int.from_bytes(data[i : i + 2], "big")
            i += 2
        elif length == 127:
            length = int.from_bytes(data[i : i + 8], "big")
            i += 8
        payload = data[i : i + length]
        i += length
        found.append(payload.decode("utf-8") if opcode == 1 else payload)
    return found


class FakeWebSocket:
    """
    Stands in for an Autobahn protocol: what is written goes to a
    `StringTransport`, closing is recorded.
    """

    STATE_OPEN = WebSocketServerProtocol.STATE_OPEN

    def __init__(self) -> None:
        self.transport = StringTransport()
        self.state = WebSocketServerProtocol.STATE_OPEN
        self.connection: EngineConnection | None = None
        self.closed = False
        self.dropped = False

    def sendClose(self, code: int | None = None, reason: str | None = None) -> None:
        self.closed = True
        self.state = WebSocketServerProtocol.STATE_CLOSING

    def dropConnection(self, abort: bool = False) -> None:
        self.dropped = True
        self.state = WebSocketServerProtocol.STATE_CLOSED

    def received(self) -> list[str | bytes]:
        """
        Packets written so far, forgetting them.
        """
        frames = parse_frames(self.transport.value())
        self.transport.clear()
        return frames

    def receive(self, data: str | bytes) -> None:
        """
        The client sends ``data``.
        """
        assert self.connection is not None
        self.connection.ws_message(self, data)  # type: ignore[arg-type]

    def lose(self) -> None:
        """
        The TCP connection goes away.
        """
        connection, self.connection = self.connection, None
        if connection is not None:
            connection.ws_lost(self)  # type: ignore[arg-type]


class RecordingHandler:
    """
    An `EngineHandler` that records what it gets.
    """

    def __init__(self, connection: EngineConnection) -> None:
        self.connection = connection
        self.messages: list[str | bytes] = []
        self.reasons: list[str] = []

    def message(self, data: str | bytes) -> None:
        self.messages.append(data)

    def closed(self, reason: str) -> None:
        self.reasons.append(reason)


def make_request(
    method: bytes = b"GET",
    args: dict[str, str] | None = None,
    body: bytes = b"",
    headers: dict[bytes, bytes] | None = None,
    peer: str = "192.0.2.1",
) -> DummyRequest:
    request = DummyRequest([b""])
    request.client = IPv4Address("TCP", peer, 40000)
    request.method = method
    request.args = {k.encode(): [v.encode()] for k, v in (args or {}).items()}
    request.content = BytesIO(body)
    for name, value in (headers or {}).items():
        request.requestHeaders.setRawHeaders(name, [value])
    return request


def written(request: DummyRequest) -> bytes:
    return b"".join(request.written)


class EngineHarness:
    """
    An `EngineIOServer` on a `Clock`, with methods to speak polling and
    (fake) WebSocket to it.
    """

    def __init__(self, **config: Any) -> None:
        self.clock = Clock()
        self.handlers: list[RecordingHandler] = []
        settings = {"ping_interval": 25.0, "ping_timeout": 20.0, **config}
        self.server = EngineIOServer(self.clock, self._accept, EngineConfig(**settings))

    def _accept(self, connection: EngineConnection) -> RecordingHandler:
        handler = RecordingHandler(connection)
        self.handlers.append(handler)
        return handler

    def render(self, request: DummyRequest) -> DummyRequest:
        result = self.server.render(request)
        if result is not NOT_DONE_YET:
            request.write(result)
            request.finish()
        return request

    def request(
        self,
        method: bytes = b"GET",
        sid: str | None = None,
        body: bytes = b"",
        headers: dict[bytes, bytes] | None = None,
        **args: str,
    ) -> DummyRequest:
        query = {"EIO": "4", "transport": "polling", **args}
        if sid is not None:
            query["sid"] = sid
        return self.render(make_request(method, query, body, headers))

    def open_polling(self) -> str:
        request = self.request()
        body = written(request)
        assert body.startswith(b"0"), body
        sid: str = json.loads(body[1:])["sid"]
        return sid

    def open_websocket(self, sid: str | None = None) -> FakeWebSocket:
        ws = FakeWebSocket()
        self.server.websocket_opened(ws, sid, {"x-test": "1"}, {})  # type: ignore[arg-type]
        return ws


class StateMachineTests(SynchronousTestCase):
    """
    `EngineSession` without any I/O.
    """

    def session(self, transport: str = POLLING) -> EngineSession:
        return EngineSession.start("sid", transport, 25.0, 20.0, now=100.0)

    def test_ping_after_interval(self) -> None:
        """
        The first ping is due one interval after the start; then a pong is
        due within the timeout.
        """
        session = self.session()
        self.assertEqual(session.deadline(), 125.0)
        self.assertEqual(session.expire(124.0), [])
        self.assertEqual(session.expire(125.0), [states.Send("2")])
        self.assertEqual(session.deadline(), 145.0)

    def test_pong_schedules_next_ping(self) -> None:
        """
        A pong ends the wait and the next ping is due an interval later.
        """
        session = self.session()
        session.expire(125.0)
        self.assertEqual(session.receive(EnginePacket(3), 130.0), [])
        self.assertEqual(session.deadline(), 155.0)

    def test_ping_timeout(self) -> None:
        """
        Without a pong the session closes with ``ping timeout``.
        """
        session = self.session()
        session.expire(125.0)
        self.assertEqual(session.expire(145.0), [states.Closed(states.PING_TIMEOUT, "1")])
        self.assertTrue(session.closed)
        self.assertIsNone(session.deadline())
        self.assertEqual(session.receive(EnginePacket(4, "late"), 146.0), [])

    def test_message(self) -> None:
        """
        Message packets are delivered, text and binary.
        """
        session = self.session()
        self.assertEqual(session.receive(EnginePacket(4, "hi"), 101.0), [states.Deliver("hi")])
        self.assertEqual(
            session.receive(EnginePacket(4, b"\x01"), 101.0), [states.Deliver(b"\x01")]
        )

    def test_client_close(self) -> None:
        """
        A close packet from the client ends the session.
        """
        session = self.session()
        self.assertEqual(
            session.receive(EnginePacket(1), 101.0),
            [states.Closed(states.TRANSPORT_CLOSE, "6", drop_queued=True, linger=True)],
        )

    def test_server_close(self) -> None:
        """
        The server closes a polling session with a close packet, a
        WebSocket session without.
        """
        session = self.session()
        self.assertEqual(session.close(), [states.Closed(states.FORCED_CLOSE, "1", linger=True)])
        self.assertEqual(session.close(), [])
        self.assertEqual(self.session(WEBSOCKET).close(), [states.Closed(states.FORCED_CLOSE)])

    def test_upgrade_packet_outside_upgrade(self) -> None:
        """
        An upgrade packet on the active transport is a protocol error.
        """
        session = self.session()
        self.assertEqual(
            session.receive(EnginePacket(5), 101.0), [states.Closed(states.PARSE_ERROR, "1")]
        )

    def test_upgrade(self) -> None:
        """
        A candidate WebSocket probes, the pending poll is released, and the
        upgrade packet moves the session to WebSocket for good.
        """
        session = self.session()
        self.assertTrue(session.begin_upgrade(101.0))
        self.assertFalse(session.begin_upgrade(101.0))
        self.assertEqual(
            session.receive_candidate(EnginePacket(2, "probe"), 101.0),
            [states.SendCandidate("3probe"), states.ReleasePoll()],
        )
        self.assertEqual(session.receive_candidate(EnginePacket(5), 101.0), [states.Upgraded()])
        self.assertEqual(session.transport, WEBSOCKET)
        self.assertFalse(session.upgrading)
        self.assertFalse(session.begin_upgrade(102.0))

    def test_candidate_sends_junk(self) -> None:
        """
        Anything but a probe or the upgrade on a candidate drops it; the
        session stays on polling.
        """
        session = self.session()
        session.begin_upgrade(101.0)
        self.assertEqual(
            session.receive_candidate(EnginePacket(4, "x"), 101.0),
            [states.DropCandidate()],
        )
        self.assertFalse(session.upgrading)
        self.assertEqual(session.transport, POLLING)

    def test_upgrade_timeout(self) -> None:
        """
        A candidate that does not finish the upgrade in time is dropped.
        """
        session = self.session()
        session.begin_upgrade(101.0)
        self.assertEqual(session.deadline(), 101.0 + states.UPGRADE_TIMEOUT)
        self.assertEqual(session.expire(101.0 + states.UPGRADE_TIMEOUT), [states.DropCandidate()])
        self.assertFalse(session.upgrading)

    def test_candidate_error(self) -> None:
        """
        A candidate that sends something undecodable is dropped; the
        session stays on polling and may take another candidate.
        """
        session = self.session()
        session.begin_upgrade(101.0)
        self.assertEqual(session.candidate_error(), [states.DropCandidate()])
        self.assertFalse(session.upgrading)
        self.assertEqual(session.deadline(), 125.0)
        self.assertTrue(session.begin_upgrade(102.0))

    def test_websocket_session_cannot_upgrade(self) -> None:
        """
        A session that started on WebSocket takes no candidate.
        """
        self.assertFalse(self.session(WEBSOCKET).begin_upgrade(101.0))


class ClosingTests(SynchronousTestCase):
    """
    How `EngineSession` ends, for each reason and transport: the reason
    given to the layer above, and what a polling client's ``GET`` gets,
    whether it is waiting (``last_packet`` after what is queued, unless
    ``drop_queued``) or yet to come (the same if ``linger``, else an unknown
    session).  A WebSocket is closed without a packet.
    """

    def session(self, transport: str) -> EngineSession:
        return EngineSession.start("sid", transport, 25.0, 20.0, now=100.0)

    def test_transport_close_polling(self) -> None:
        """
        When a polling client closes the session, its waiting ``GET`` gets
        a noop and nothing that was queued; with no ``GET`` waiting, the
        session lingers so that the ``GET`` the closing ``POST`` overtook
        still gets its noop.
        """
        self.assertEqual(
            self.session(POLLING).transport_lost(),
            [states.Closed(states.TRANSPORT_CLOSE, "6", drop_queued=True, linger=True)],
        )

    def test_transport_close_websocket(self) -> None:
        """
        A WebSocket client that closes the session (or goes away) gets
        nothing more.
        """
        session = self.session(WEBSOCKET)
        self.assertEqual(
            session.receive(EnginePacket(1), 101.0), [states.Closed(states.TRANSPORT_CLOSE)]
        )
        self.assertEqual(
            self.session(WEBSOCKET).transport_lost(), [states.Closed(states.TRANSPORT_CLOSE)]
        )

    def test_ping_timeout_polling(self) -> None:
        """
        A polling client that misses a pong gets what is queued and a
        close packet if a ``GET`` is waiting; otherwise nothing is kept for
        it.
        """
        session = self.session(POLLING)
        session.expire(125.0)
        self.assertEqual(session.expire(145.0), [states.Closed(states.PING_TIMEOUT, "1")])

    def test_ping_timeout_websocket(self) -> None:
        """
        A WebSocket client that misses a pong is closed without a packet.
        """
        session = self.session(WEBSOCKET)
        session.expire(125.0)
        self.assertEqual(session.expire(145.0), [states.Closed(states.PING_TIMEOUT)])

    def test_parse_error_polling(self) -> None:
        """
        A polling client that sends something undecodable gets what is
        queued and a close packet if a ``GET`` is waiting; otherwise
        nothing is kept for it.
        """
        self.assertEqual(
            self.session(POLLING).protocol_error(), [states.Closed(states.PARSE_ERROR, "1")]
        )

    def test_parse_error_websocket(self) -> None:
        """
        A WebSocket client that sends something undecodable is closed
        without a packet.
        """
        self.assertEqual(
            self.session(WEBSOCKET).protocol_error(), [states.Closed(states.PARSE_ERROR)]
        )

    def test_forced_close_polling(self) -> None:
        """
        When the server closes a polling session, the client gets what is
        queued and a close packet: with its waiting ``GET``, or with the
        next one, for which the session lingers.
        """
        self.assertEqual(
            self.session(POLLING).close(),
            [states.Closed(states.FORCED_CLOSE, "1", linger=True)],
        )

    def test_forced_close_websocket(self) -> None:
        """
        When the server closes a WebSocket session, the WebSocket is closed
        without a packet, as the reference server does.
        """
        self.assertEqual(self.session(WEBSOCKET).close(), [states.Closed(states.FORCED_CLOSE)])

    def test_transport_error_polling(self) -> None:
        """
        A polling client that breaks a rule of its transport is closed as
        by the server: what is queued and a close packet, now or with the
        next ``GET``.
        """
        self.assertEqual(
            self.session(POLLING).transport_error(),
            [states.Closed(states.TRANSPORT_ERROR, "1", linger=True)],
        )

    def test_transport_error_websocket(self) -> None:
        """
        A WebSocket session ended for a transport error closes without a
        packet.
        """
        self.assertEqual(
            self.session(WEBSOCKET).transport_error(), [states.Closed(states.TRANSPORT_ERROR)]
        )

    def test_overflow_polling(self) -> None:
        """
        A polling client that does not read loses what is queued; a waiting
        ``GET`` gets only a close packet, and nothing is kept for a later
        one.
        """
        self.assertEqual(
            self.session(POLLING).overflow(),
            [states.Closed(states.TRANSPORT_ERROR, "1", drop_queued=True)],
        )

    def test_overflow_websocket(self) -> None:
        """
        A WebSocket client that does not read is closed without a packet.
        """
        self.assertEqual(
            self.session(WEBSOCKET).overflow(), [states.Closed(states.TRANSPORT_ERROR)]
        )

    def test_closed_during_upgrade(self) -> None:
        """
        A session closed during an upgrade drops its candidate first, and
        ends as a polling session.
        """
        session = self.session(POLLING)
        session.begin_upgrade(101.0)
        self.assertEqual(
            session.close(),
            [states.DropCandidate(), states.Closed(states.FORCED_CLOSE, "1", linger=True)],
        )

    def test_closed_after_upgrade(self) -> None:
        """
        A session upgraded to WebSocket ends as a WebSocket session.
        """
        session = self.session(POLLING)
        session.begin_upgrade(101.0)
        session.receive_candidate(EnginePacket(5), 101.0)
        self.assertEqual(session.close(), [states.Closed(states.FORCED_CLOSE)])

    def test_closed_once(self) -> None:
        """
        A closed session does not close again, whatever happens next.
        """
        session = self.session(POLLING)
        session.close()
        self.assertEqual(session.transport_lost(), [])
        self.assertEqual(session.protocol_error(), [])
        self.assertEqual(session.transport_error(), [])
        self.assertEqual(session.overflow(), [])
        self.assertEqual(session.close(), [])
        self.assertEqual(session.expire(200.0), [])


class HandshakeTests(SynchronousTestCase):
    """
    Opening sessions and refusing bad requests.
    """

    def test_polling_handshake(self) -> None:
        """
        A GET without sid opens a session and answers with the open packet.
        """
        harness = EngineHarness(ping_interval=0.3, ping_timeout=0.2)
        request = harness.request()
        self.assertEqual(request.responseCode, None)
        body = written(request)
        self.assertEqual(body[:1], b"0")
        handshake = json.loads(body[1:])
        self.assertEqual(
            handshake,
            {
                "sid": handshake["sid"],
                "upgrades": ["websocket"],
                "pingInterval": 300,
                "pingTimeout": 200,
                "maxPayload": 1000000,
            },
        )
        self.assertIn(handshake["sid"], harness.server.sessions)
        self.assertEqual(len(harness.handlers), 1)

    def test_websocket_handshake(self) -> None:
        """
        A WebSocket without sid opens a session with no upgrades.
        """
        harness = EngineHarness()
        ws = harness.open_websocket()
        [packet] = ws.received()
        assert isinstance(packet, str)
        self.assertEqual(json.loads(packet[1:])["upgrades"], [])
        self.assertEqual(harness.handlers[0].connection.headers, {"x-test": "1"})

    def assertRefused(self, request: DummyRequest, code: int) -> None:
        self.assertEqual(request.responseCode, 400)
        self.assertEqual(json.loads(written(request))["code"], code)

    def test_bad_version(self) -> None:
        """
        A missing or wrong EIO parameter is refused with code 5.
        """
        harness = EngineHarness()
        self.assertRefused(harness.render(make_request(args={"transport": "polling"})), 5)
        self.assertRefused(harness.request(EIO="3"), 5)

    def test_bad_transport(self) -> None:
        """
        A missing or unknown transport is refused with code 0.
        """
        harness = EngineHarness()
        self.assertRefused(harness.render(make_request(args={"EIO": "4"})), 0)
        self.assertRefused(harness.request(transport="flash"), 0)

    def test_bad_method(self) -> None:
        """
        A handshake must be a GET.
        """
        harness = EngineHarness()
        self.assertRefused(harness.request(b"POST"), 2)
        self.assertRefused(harness.request(b"PUT"), 2)
        self.assertEqual(harness.server.sessions, {})

    def test_unknown_sid(self) -> None:
        """
        A request for an unknown session is refused with code 1.
        """
        harness = EngineHarness()
        self.assertRefused(harness.request(sid="nope"), 1)
        self.assertRefused(harness.request(b"POST", sid="nope", body=b"4x"), 1)

    def test_websocket_without_upgrade_header(self) -> None:
        """
        ``transport=websocket`` over plain HTTP is a bad request.
        """
        harness = EngineHarness()
        self.assertRefused(harness.request(transport="websocket"), 3)

    def test_cors_allowed_origin(self) -> None:
        """
        A configured origin gets credentialed CORS headers, preflights
        included; another origin is refused with 403 and no session.
        """
        harness = EngineHarness(cors_origins=("https://app.example",))
        request = harness.request(headers={b"origin": b"https://app.example"})
        self.assertEqual(
            request.responseHeaders.getRawHeaders(b"access-control-allow-origin"),
            [b"https://app.example"],
        )
        self.assertEqual(
            request.responseHeaders.getRawHeaders(b"access-control-allow-credentials"),
            [b"true"],
        )
        other = harness.request(headers={b"origin": b"https://evil.example"})
        self.assertEqual(other.responseCode, 403)
        self.assertEqual(json.loads(written(other)), {"code": 4, "message": "Forbidden"})
        self.assertIsNone(other.responseHeaders.getRawHeaders(b"access-control-allow-origin"))
        self.assertEqual(len(harness.server.sessions), 1)
        preflight = harness.request(
            b"OPTIONS",
            headers={
                b"origin": b"https://app.example",
                b"access-control-request-headers": b"content-type",
            },
        )
        self.assertEqual(preflight.responseCode, 204)
        self.assertEqual(
            preflight.responseHeaders.getRawHeaders(b"access-control-allow-headers"),
            [b"content-type"],
        )

    def test_cors_any_origin(self) -> None:
        """
        ``*`` allows any origin, without credentials.
        """
        harness = EngineHarness(cors_origins=("*",))
        request = harness.request(headers={b"origin": b"http://x.example"})
        self.assertEqual(
            request.responseHeaders.getRawHeaders(b"access-control-allow-origin"), [b"*"]
        )
        self.assertIsNone(
            request.responseHeaders.getRawHeaders(b"access-control-allow-credentials")
        )

    def test_origin_refused_on_every_transport(self) -> None:
        """
        With origins configured, a WebSocket upgrade from another origin is
        refused with 403 before any WebSocket handshake; requests without
        Origin, and those of the server's own origin, are served.
        """
        harness = EngineHarness(cors_origins=("https://app.example",))
        upgrade = {
            b"upgrade": b"websocket",
            b"connection": b"Upgrade",
            b"origin": b"https://evil.example",
        }
        refused = harness.request(transport="websocket", headers=upgrade)
        self.assertEqual(refused.responseCode, 403)
        post = harness.request(
            b"POST",
            sid=harness.open_polling(),
            body=b"4x",
            headers={b"origin": b"https://evil.example"},
        )
        self.assertEqual(post.responseCode, 403)
        for headers in (
            {},
            {b"origin": b"http://realtime.example:8080", b"host": b"realtime.example:8080"},
        ):
            request = harness.request(headers=headers)
            self.assertEqual(written(request)[:1], b"0", headers)

    def test_origin_allowed(self) -> None:
        """
        The origin rule: no origins configured, no Origin, a listed one,
        ``*``, or the server's own host are allowed; others are not.
        """
        listed = ("https://app.example",)
        self.assertTrue(origin_allowed((), "https://x.example", None))
        self.assertTrue(origin_allowed(listed, None, None))
        self.assertTrue(origin_allowed(listed, "https://app.example", "api.example"))
        self.assertTrue(origin_allowed(("*",), "https://x.example", None))
        self.assertTrue(origin_allowed(listed, "http://API.example:8080", "api.example:8080"))
        self.assertFalse(origin_allowed(listed, "https://x.example", "api.example"))
        self.assertFalse(origin_allowed(listed, "https://api.example.evil", "api.example"))
        self.assertFalse(origin_allowed(listed, "null", None))

    def test_session_limits(self) -> None:
        """
        Past the most sessions overall, or from one address, a new session
        (polling or WebSocket) is refused with 503 SERVICE_UNAVAILABLE;
        sessions already open go on, and room comes back when one closes.
        """
        harness = EngineHarness(max_sessions=3, max_sessions_per_address=2)
        first, second = harness.open_polling(), harness.open_polling()
        refused = harness.request()
        self.assertEqual(refused.responseCode, 503)
        body = json.loads(written(refused))
        self.assertEqual(body["error"], "SERVICE_UNAVAILABLE")
        self.assertIn("At most 2 connections from one address", body["message"])
        upgrade = {b"upgrade": b"websocket", b"connection": b"Upgrade"}
        self.assertEqual(harness.request(transport="websocket", headers=upgrade).responseCode, 503)
        elsewhere = make_request(args={"EIO": "4", "transport": "polling"}, peer="10.0.0.7")
        self.assertEqual(written(harness.render(elsewhere))[:1], b"0")
        full = make_request(args={"EIO": "4", "transport": "polling"}, peer="10.0.0.8")
        self.assertEqual(harness.render(full).responseCode, 503)
        self.assertIn(b"try again later", written(full))
        harness.request(b"POST", sid=first, body=b"1")
        self.assertEqual(written(harness.request())[:1], b"0")
        self.assertIn(second, harness.server.sessions)

    def test_session_limits_websocket(self) -> None:
        """
        A WebSocket that finishes its upgrade once the room is taken is
        closed without a session.
        """
        harness = EngineHarness(max_sessions=1)
        harness.open_polling()
        ws = harness.open_websocket()
        self.assertTrue(ws.closed)
        self.assertEqual(len(harness.server.sessions), 1)


class PollingTests(SynchronousTestCase):
    """
    Sessions on HTTP long-polling.
    """

    def setUp(self) -> None:
        self.harness = EngineHarness()
        self.sid = self.harness.open_polling()
        self.handler = self.harness.handlers[0]
        self.connection = self.handler.connection

    def test_post_delivers(self) -> None:
        """
        Packets in a POST are delivered in order and answered ``ok``.
        """
        request = self.harness.request(b"POST", self.sid, b"4a\x1e4b\x1ebAQI=")
        self.assertEqual(written(request), b"ok")
        self.assertEqual(self.handler.messages, ["a", "b", b"\x01\x02"])

    def long_payload(self, count: int, *more: bytes) -> bytes:
        return b"\x1e".join([*(b"4%d" % i for i in range(count)), *more])

    def test_long_post_over_turns(self) -> None:
        """
        A POST of more than L{PACKETS_PER_TURN} packets has that many
        handled at once and the rest on later reactor turns, in order; it
        is answered ``ok`` once all are handled.
        """
        count = 2 * PACKETS_PER_TURN + 5
        request = self.harness.request(b"POST", self.sid, self.long_payload(count))
        self.assertEqual(len(self.handler.messages), PACKETS_PER_TURN)
        self.assertEqual(request.finished, 0)
        self.harness.clock.advance(0)
        self.assertEqual(self.handler.messages, [str(i) for i in range(count)])
        self.assertEqual((written(request), request.finished), (b"ok", 1))

    def test_later_post_waits(self) -> None:
        """
        A POST arriving while a long one is being handled waits for it: its
        packets come after the long one's, and it is answered after it.
        """
        long = self.harness.request(b"POST", self.sid, self.long_payload(PACKETS_PER_TURN + 1))
        short = self.harness.request(b"POST", self.sid, b"4last")
        self.assertEqual((long.finished, short.finished), (0, 0))
        self.harness.clock.advance(0)
        self.assertEqual(self.handler.messages[-2:], [str(PACKETS_PER_TURN), "last"])
        self.assertEqual((written(long), written(short)), (b"ok", b"ok"))

    def test_closed_while_handled(self) -> None:
        """
        A close packet in a long POST ends the session there: the packets
        after it are dropped, the POST is answered ``ok``, and a POST
        waiting behind it is refused as for a closed session.
        """
        payload = self.long_payload(PACKETS_PER_TURN + 10, b"1", b"4after")
        long = self.harness.request(b"POST", self.sid, payload)
        waiting = self.harness.request(b"POST", self.sid, b"4waiting")
        self.harness.clock.advance(0)
        self.assertEqual(len(self.handler.messages), PACKETS_PER_TURN + 10)
        self.assertEqual(self.handler.reasons, ["transport close"])
        self.assertEqual(written(long), b"ok")
        self.assertEqual(waiting.responseCode, 400)

    def test_client_gone(self) -> None:
        """
        A long POST whose client went away still has its packets handled,
        and is not answered.
        """
        request = self.harness.request(b"POST", self.sid, self.long_payload(PACKETS_PER_TURN + 1))
        request.processingFailed(Failure(ConnectionLost()))
        self.harness.clock.advance(0)
        self.assertEqual(len(self.handler.messages), PACKETS_PER_TURN + 1)
        self.assertEqual(request.written, [])

    def test_bad_packet_refuses_whole_payload(self) -> None:
        """
        A long payload with one bad packet is refused before any of its
        packets is handled.
        """
        request = self.harness.request(b"POST", self.sid, self.long_payload(5000, b"9"))
        self.assertEqual(request.responseCode, 400)
        self.assertEqual(self.handler.messages, [])

    def test_get_waits_for_data(self) -> None:
        """
        A GET with nothing to send waits; what is sent next answers it.
        """
        request = self.harness.request(sid=self.sid)
        self.assertEqual(request.finished, 0)
        self.connection.send("4hello")
        self.assertEqual(written(request), b"4hello")
        self.assertEqual(request.finished, 1)

    def test_get_takes_queue(self) -> None:
        """
        Packets sent between polls are all returned by the next GET.
        """
        self.connection.send("4a")
        self.connection.send_many(["451-[]", b"\x01"])
        self.assertEqual(written(self.harness.request(sid=self.sid)), b"4a\x1e451-[]\x1ebAQ==")

    def test_heartbeat(self) -> None:
        """
        The server pings every interval; pongs keep the session open.
        """
        for _ in range(3):
            request = self.harness.request(sid=self.sid)
            self.harness.clock.advance(25)
            self.assertEqual(written(request), b"2")
            self.harness.clock.advance(10)
            self.harness.request(b"POST", self.sid, b"3")
        self.assertIn(self.sid, self.harness.server.sessions)

    def test_ping_timeout(self) -> None:
        """
        Without a pong the session closes and its sid is no longer known.
        """
        self.harness.clock.advance(25)
        self.harness.clock.advance(20)
        self.assertEqual(self.handler.reasons, ["ping timeout"])
        self.assertEqual(self.harness.request(sid=self.sid).responseCode, 400)

    def test_overdue_timer_runs_first(self) -> None:
        """
        A request arriving after the pong deadline finds the session
        closed even if the timer has not run yet.
        """
        self.harness.clock.advance(25)
        self.harness.clock.rightNow += 21
        self.assertEqual(self.harness.request(sid=self.sid).responseCode, 400)

    def test_duplicate_get(self) -> None:
        """
        A second concurrent GET is refused and closes the session; the
        first gets the close packet.
        """
        first = self.harness.request(sid=self.sid)
        second = self.harness.request(sid=self.sid)
        self.assertEqual(second.responseCode, 400)
        self.assertEqual(written(first), b"1")
        self.assertEqual(self.handler.reasons, ["transport error"])
        self.assertEqual(self.harness.request(sid=self.sid).responseCode, 400)

    def test_client_close(self) -> None:
        """
        A close packet answers the waiting GET with a noop and ends the
        session.
        """
        waiting = self.harness.request(sid=self.sid)
        self.assertEqual(written(self.harness.request(b"POST", self.sid, b"1")), b"ok")
        self.assertEqual(written(waiting), b"6")
        self.assertEqual(self.handler.reasons, ["transport close"])
        self.assertEqual(self.harness.request(sid=self.sid).responseCode, 400)

    def test_server_close_delivered_later(self) -> None:
        """
        When the server closes a session with no GET waiting, the next GET
        still gets what was queued and the close packet.
        """
        self.connection.send("4bye")
        self.connection.close()
        self.assertEqual(self.handler.reasons, ["forced close"])
        self.assertEqual(written(self.harness.request(sid=self.sid)), b"4bye\x1e1")
        self.assertEqual(self.harness.request(sid=self.sid).responseCode, 400)

    def test_close_packet_not_kept_forever(self) -> None:
        """
        A close packet nobody fetches is forgotten after a heartbeat's
        worth of time.
        """
        self.connection.close()
        self.harness.clock.advance(25 + 20)
        self.assertEqual(self.harness.request(sid=self.sid).responseCode, 400)
        self.assertEqual(self.harness.clock.getDelayedCalls(), [])

    def test_headers(self) -> None:
        """
        The handshake request's headers are kept with lower-case names.
        """
        harness = EngineHarness()
        harness.request(headers={b"X-Custom": b"yes", b"Authorization": b"Bearer t"})
        headers = harness.handlers[0].connection.headers
        self.assertEqual(headers["x-custom"], "yes")
        self.assertEqual(headers["authorization"], "Bearer t")

    def test_bad_packet(self) -> None:
        """
        An undecodable packet is a 400 and closes the session.
        """
        self.assertEqual(self.harness.request(b"POST", self.sid, b"abc").responseCode, 400)
        self.assertEqual(self.handler.reasons, ["parse error"])
        self.assertEqual(self.harness.request(sid=self.sid).responseCode, 400)

    def test_binary_junk(self) -> None:
        """
        A body that is not UTF-8 is a 400 and closes the session.
        """
        self.assertEqual(self.harness.request(b"POST", self.sid, b"\xff\x00\x01").responseCode, 400)
        self.assertEqual(self.handler.reasons, ["parse error"])

    def test_oversize_payload(self) -> None:
        """
        A body over the maximum payload is a 413 and closes the session.
        """
        harness = EngineHarness(max_payload=10)
        sid = harness.open_polling()
        self.assertEqual(harness.request(b"POST", sid, b"4" + b"x" * 10).responseCode, 413)
        self.assertEqual(harness.handlers[0].reasons, ["transport error"])

    def test_wrong_method(self) -> None:
        """
        Methods other than GET and POST are refused.
        """
        self.assertEqual(self.harness.request(b"PUT", self.sid).responseCode, 400)

    def test_queue_bound(self) -> None:
        """
        A client that stops polling is dropped once its queue passes the
        buffer limit.
        """
        harness = EngineHarness(max_buffer=100)
        harness.open_polling()
        connection = harness.handlers[0].connection
        for _ in range(20):
            connection.send("4" + "x" * 9)
        self.assertEqual(harness.handlers[0].reasons, ["transport error"])
        self.assertEqual(harness.server.sessions, {})

    def test_lost_poll(self) -> None:
        """
        A GET whose client went away is forgotten; the next one works.
        """
        request = self.harness.request(sid=self.sid)
        request.processingFailed(Exception("gone"))  # type: ignore[no-untyped-call]
        self.flushLoggedErrors()
        second = self.harness.request(sid=self.sid)
        self.assertIsNone(second.responseCode)
        self.connection.send("4x")
        self.assertEqual(written(second), b"4x")


class PollingCloseTests(SynchronousTestCase):
    """
    What a polling client's ``GET`` gets when its session ends, with a
    ``GET`` waiting and without, for each way a session ends (the cases not
    covered by `PollingTests`).
    """

    def setUp(self) -> None:
        self.harness = EngineHarness(max_payload=100, max_buffer=1000)
        self.sid = self.harness.open_polling()
        self.handler = self.harness.handlers[0]
        self.connection = self.handler.connection

    def assertForgotten(self) -> None:
        """
        The session is no longer known: a ``GET`` is refused.
        """
        self.assertEqual(self.harness.request(sid=self.sid).responseCode, 400)

    def test_transport_close_without_poll(self) -> None:
        """
        A client that closes the session with no ``GET`` waiting gets a
        noop with its next one, and nothing that was queued.
        """
        self.connection.send("4queued")
        self.harness.request(b"POST", self.sid, b"1")
        self.assertEqual(written(self.harness.request(sid=self.sid)), b"6")
        self.assertEqual(self.handler.reasons, ["transport close"])
        self.assertForgotten()

    def test_ping_timeout_with_poll(self) -> None:
        """
        A ``GET`` waiting when the pong is overdue gets a close packet.
        """
        self.harness.clock.advance(25)
        self.assertEqual(written(self.harness.request(sid=self.sid)), b"2")
        waiting = self.harness.request(sid=self.sid)
        self.harness.clock.advance(20)
        self.assertEqual(written(waiting), b"1")
        self.assertEqual(self.handler.reasons, ["ping timeout"])
        self.assertForgotten()

    def test_parse_error_with_poll(self) -> None:
        """
        A ``GET`` waiting when the client sends something undecodable gets
        a close packet.
        """
        waiting = self.harness.request(sid=self.sid)
        self.assertEqual(self.harness.request(b"POST", self.sid, b"abc").responseCode, 400)
        self.assertEqual(written(waiting), b"1")
        self.assertEqual(self.handler.reasons, ["parse error"])
        self.assertForgotten()

    def test_forced_close_with_poll(self) -> None:
        """
        A ``GET`` waiting when the server closes the session gets a close
        packet, and nothing is kept for a later one.
        """
        waiting = self.harness.request(sid=self.sid)
        self.connection.close()
        self.assertEqual(written(waiting), b"1")
        self.assertEqual(self.handler.reasons, ["forced close"])
        self.assertForgotten()

    def test_oversize_post_with_poll(self) -> None:
        """
        A ``GET`` waiting when the client posts too much gets a close
        packet.
        """
        waiting = self.harness.request(sid=self.sid)
        oversize = self.harness.request(b"POST", self.sid, b"4" + b"x" * 100)
        self.assertEqual(oversize.responseCode, 413)
        self.assertEqual(written(waiting), b"1")
        self.assertEqual(self.handler.reasons, ["transport error"])
        self.assertForgotten()

    def test_oversize_post_without_poll(self) -> None:
        """
        After posting too much with no ``GET`` waiting, the client's next
        ``GET`` gets what was queued and a close packet.
        """
        self.connection.send("4queued")
        oversize = self.harness.request(b"POST", self.sid, b"4" + b"x" * 100)
        self.assertEqual(oversize.responseCode, 413)
        self.assertEqual(written(self.harness.request(sid=self.sid)), b"4queued\x1e1")
        self.assertEqual(self.handler.reasons, ["transport error"])
        self.assertForgotten()

    def test_overflow_with_poll(self) -> None:
        """
        A packet too large for the buffer, sent while a ``GET`` waits, is
        dropped and the ``GET`` gets a close packet.
        """
        waiting = self.harness.request(sid=self.sid)
        self.connection.send("4" + "x" * 1000)
        self.assertEqual(written(waiting), b"1")
        self.assertEqual(self.handler.reasons, ["transport error"])
        self.assertForgotten()

    def test_overflow_without_poll(self) -> None:
        """
        A client that stops polling loses what was queued, and its session
        is forgotten at once.
        """
        for _ in range(20):
            self.connection.send("4" + "x" * 99)
        self.assertEqual(self.handler.reasons, ["transport error"])
        self.assertForgotten()


class WebSocketTests(SynchronousTestCase):
    """
    Sessions on WebSocket, and upgrades from polling.
    """

    def test_messages(self) -> None:
        """
        Text and binary messages pass both ways, one packet per frame.
        """
        harness = EngineHarness()
        ws = harness.open_websocket()
        ws.received()
        ws.receive("4hello")
        ws.receive(b"\x01\x02")
        handler = harness.handlers[0]
        self.assertEqual(handler.messages, ["hello", b"\x01\x02"])
        handler.connection.send("4back")
        handler.connection.send(b"\x03")
        self.assertEqual(ws.received(), ["4back", b"\x03"])

    def test_heartbeat_and_timeout(self) -> None:
        """
        Pings go out every interval; a missing pong closes the WebSocket.
        """
        harness = EngineHarness()
        ws = harness.open_websocket()
        ws.received()
        harness.clock.advance(25)
        self.assertEqual(ws.received(), ["2"])
        ws.receive("3")
        harness.clock.advance(25)
        self.assertEqual(ws.received(), ["2"])
        harness.clock.advance(20)
        self.assertTrue(ws.closed)
        self.assertEqual(harness.handlers[0].reasons, ["ping timeout"])

    def test_bad_packet(self) -> None:
        """
        An undecodable packet closes the session.
        """
        harness = EngineHarness()
        ws = harness.open_websocket()
        ws.receive("abc")
        self.assertTrue(ws.closed)
        self.assertEqual(harness.handlers[0].reasons, ["parse error"])

    def test_client_close_and_lost(self) -> None:
        """
        A close packet, or the connection going away, ends the session.
        """
        harness = EngineHarness()
        ws = harness.open_websocket()
        ws.receive("1")
        self.assertTrue(ws.closed)
        other = harness.open_websocket()
        other.lose()
        self.assertEqual([h.reasons for h in harness.handlers], [["transport close"]] * 2)
        self.assertEqual(harness.server.sessions, {})

    def test_server_close(self) -> None:
        """
        The server closes the WebSocket without a close packet, so that
        clients treat it as a lost connection.
        """
        harness = EngineHarness()
        ws = harness.open_websocket()
        ws.received()
        harness.handlers[0].connection.close()
        self.assertEqual(ws.received(), [])
        self.assertTrue(ws.closed)
        self.assertEqual(harness.handlers[0].reasons, ["forced close"])

    def test_nothing_after_close_frame(self) -> None:
        """
        When a close frame is about to be sent, frames held for the end of
        the turn go first and later sends are dropped.
        """
        harness = EngineHarness()
        ws = harness.open_websocket()
        ws.received()
        connection = harness.handlers[0].connection
        connection.defer_frames(b"\x81\x02" + b"4a")
        connection.ws_closing(ws)  # type: ignore[arg-type]
        connection.send("4b")
        harness.clock.advance(0)
        self.assertEqual(ws.received(), ["4a"])

    def test_slow_reader(self) -> None:
        """
        Writes beyond the buffer limit while the kernel buffer is full drop
        the connection.
        """
        harness = EngineHarness(max_buffer=1000)
        ws = harness.open_websocket()
        connection = harness.handlers[0].connection
        producer = ws.transport.producer
        producer.pauseProducing()
        connection.send("4" + "x" * 500)
        self.assertFalse(ws.dropped)
        producer.resumeProducing()
        producer.pauseProducing()
        connection.send("4" + "x" * 500)
        connection.send("4" + "x" * 500)
        self.assertTrue(ws.dropped)
        self.assertEqual(harness.handlers[0].reasons, ["transport error"])

    def test_upgrade(self) -> None:
        """
        Probe, noop to the waiting poll, upgrade; then the queued packets
        go out on the WebSocket and polling is refused.
        """
        harness = EngineHarness()
        sid = harness.open_polling()
        connection = harness.handlers[0].connection
        waiting = harness.request(sid=sid)
        ws = harness.open_websocket(sid)
        ws.receive("2probe")
        self.assertEqual(ws.received(), ["3probe"])
        self.assertEqual(written(waiting), b"6")
        # while upgrading, polls are released at once and data waits
        connection.send("4queued")
        self.assertEqual(written(harness.request(sid=sid)), b"6")
        ws.receive("5")
        self.assertEqual(ws.received(), ["4queued"])
        ws.receive("4hi")
        self.assertEqual(harness.handlers[0].messages, ["hi"])
        self.assertEqual(harness.request(sid=sid).responseCode, 400)
        self.assertEqual(harness.request(b"POST", sid, b"4x").responseCode, 400)
        again = harness.open_websocket(sid)
        self.assertTrue(again.closed)
        connection.send("4direct")
        self.assertEqual(ws.received(), ["4direct"])

    def test_second_candidate_refused(self) -> None:
        """
        Only one WebSocket may try to take over a session.
        """
        harness = EngineHarness()
        sid = harness.open_polling()
        harness.open_websocket(sid)
        self.assertTrue(harness.open_websocket(sid).closed)

    def test_candidate_lost(self) -> None:
        """
        When the candidate goes away, the session stays on polling.
        """
        harness = EngineHarness()
        sid = harness.open_polling()
        ws = harness.open_websocket(sid)
        ws.lose()
        request = harness.request(sid=sid)
        harness.handlers[0].connection.send("4still")
        self.assertEqual(written(request), b"4still")

    def test_candidate_timeout(self) -> None:
        """
        A candidate that never finishes is closed after the upgrade timeout.
        """
        harness = EngineHarness(ping_interval=100.0, ping_timeout=100.0)
        sid = harness.open_polling()
        ws = harness.open_websocket(sid)
        harness.clock.advance(states.UPGRADE_TIMEOUT)
        self.assertTrue(ws.closed)
        self.assertIn(sid, harness.server.sessions)

    def test_candidate_junk(self) -> None:
        """
        An undecodable packet on a candidate closes only the candidate.
        """
        harness = EngineHarness()
        sid = harness.open_polling()
        ws = harness.open_websocket(sid)
        ws.receive("")
        self.assertTrue(ws.closed)
        self.assertIn(sid, harness.server.sessions)
        self.assertEqual(decode_packet("4x"), EnginePacket(4, "x"))

    def test_after_candidate_junk(self) -> None:
        """
        After its candidate sent something undecodable, the session is no
        longer upgrading: polls wait for data again, and another WebSocket
        may try the upgrade.
        """
        harness = EngineHarness()
        sid = harness.open_polling()
        harness.open_websocket(sid).receive("")
        waiting = harness.request(sid=sid)
        self.assertEqual(waiting.finished, 0)
        harness.handlers[0].connection.send("4x")
        self.assertEqual(written(waiting), b"4x")
        again = harness.open_websocket(sid)
        self.assertFalse(again.closed)
        again.receive("2probe")
        self.assertEqual(again.received(), ["3probe"])
