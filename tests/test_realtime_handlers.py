"""
Tests for L{realtimed.realtime.Realtime} with an in-memory namespace and
database, for what end-to-end tests cannot easily arrange: the order of a
socket's requests, disconnects while the database is deciding, token expiry,
database failures, fan-out calls.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import jwt
from twisted.internet.defer import Deferred, succeed
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from realtimed.auth import Keys
from realtimed.engineio.socketio import ConnectRefused
from realtimed.realtime.service import Realtime, credential_of, rfc3339
from realtimed.store.messages import StoredMessage
from realtimed.store.positions import Position, Snapshot
from realtimed.store.sessions import SessionStore, new_pid
from realtimed.testing import FakeClock, FakePool

KEYS = Keys(
    jwt_secret="handler-test-secret-" + "s" * 32,
    api_key="ik_" + "a" * 40,
    anon_key="anon_" + "b" * 40,
    webhook_secret="whsec_" + base64.b64encode(b"k" * 32).decode(),
)
NOW = 1_800_000_000.0


def token(sub: str, **claims: Any) -> str:
    return jwt.encode({"sub": sub, **claims}, KEYS.jwt_secret, algorithm="HS256")


class FakeSocket:
    def __init__(self, sid: str, headers: dict[str, str] | None = None) -> None:
        self.sid = sid
        self.headers = headers or {}
        self.data: dict[str, Any] = {}
        self.emitted: list[tuple[str, tuple[Any, ...]]] = []
        self.disconnected = False

    def emit(self, event: str, *args: Any, ack: Any = None) -> None:
        self.emitted.append((event, args))

    def disconnect(self) -> None:
        self.disconnected = True


class FakeNamespace:
    def __init__(self) -> None:
        self.handlers: dict[str, Any] = {}
        self.connect: Any = None
        self.disconnect: Any = None
        self.fanouts: list[tuple[set[str], str, tuple[Any, ...]]] = []
        self.sockets: dict[str, FakeSocket] = {}

    def on_connect(self, handler: Any) -> None:
        self.connect = handler

    def on(self, event: str, handler: Any, with_text: bool = False) -> None:
        self.handlers[event] = handler

    def on_disconnect(self, handler: Any) -> None:
        self.disconnect = handler

    def emit_many(self, sockets: Any, event: str, *args: Any) -> None:
        self.fanouts.append(({s.sid for s in sockets}, event, args))


class Acks:
    def __init__(self) -> None:
        self.values: list[Any] = []

    def __call__(self, *values: Any) -> None:
        self.values.append(values[0] if len(values) == 1 else list(values))


class HandlerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = FakeClock(NOW)
        self.namespace = FakeNamespace()
        self.pool = FakePool()
        self.realtime = Realtime(
            namespace=self.namespace,  # type: ignore[arg-type]
            pool=self.pool,
            keys=KEYS,
            clock=self.clock,
        )

    def connect(self, sid: str, auth: Any) -> FakeSocket:
        socket = FakeSocket(sid)
        self.namespace.connect(socket, auth)
        self.namespace.sockets[sid] = socket
        return socket

    def emit(self, socket: FakeSocket, event: str, data: Any, ack: Any = None) -> None:
        self.namespace.handlers[event](socket, [data], ack)

    def allow_subscribe(self, channel_id: str = "c1") -> None:
        d = self.pool.pop("authorize_subscribes").done
        d.callback([(channel_id, "allowed", None)])

    def test_credentials(self) -> None:
        """
        The auth payload's token or apiKey, else the bearer header, is the
        credential; a bad one refuses the connection with its reason.
        """
        self.assertEqual(credential_of({"token": "t"}, {}), "t")
        self.assertEqual(credential_of({"apiKey": "k"}, {"authorization": "Bearer h"}), "k")
        self.assertEqual(credential_of(None, {"authorization": "Bearer h"}), "h")
        self.assertEqual(credential_of({"token": ""}, {"authorization": "Bearer h"}), "h")
        self.assertIsNone(credential_of("x", {}))
        with self.assertRaises(ConnectRefused) as raised:
            self.connect("s", None)
        self.assertEqual(raised.exception.message, "No authentication provided")
        with self.assertRaises(ConnectRefused) as raised:
            self.connect("s", {"token": ["x"]})
        self.assertEqual(raised.exception.message, "Invalid token")
        socket = self.connect("s", {"apiKey": KEYS.api_key})
        self.assertIn("realtime", socket.data)

    def test_connect_logs_nothing(self) -> None:
        """
        Accepting a socket emits no log event: the daemon's log records
        everything it is given, and a line per connection costs more than
        checking the connection's token.
        """
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.connect("s", {"token": token("alice")})
        self.assertEqual(
            [e for e in events if e.get("log_namespace", "").startswith("realtimed")], []
        )

    def test_requests_in_order(self) -> None:
        """
        A publish sent right after a subscribe, without waiting for its ack,
        is checked once the subscribe is decided, so it is accepted.
        """
        socket = self.connect("s", {"token": token("alice")})
        sub_acks, pub_acks = Acks(), Acks()
        self.emit(socket, "REALTIME_SUBSCRIBE", {"channel": "orders"}, sub_acks)
        self.emit(
            socket, "REALTIME_PUBLISH", {"channel": "orders", "event": "e", "payload": 1}, pub_acks
        )
        self.assertEqual(pub_acks.values, [])
        self.allow_subscribe()
        self.assertEqual(sub_acks.values[0]["ok"], True)
        query = self.pool.pop("publish_batch")
        params, d = query.params, query.done
        self.assertIn('"payload":1', params[0])
        self.assertIn('"sender_id":"alice"', params[0])
        d.callback([("m1", "stored", None)])
        self.assertEqual(pub_acks.values, [{"ok": True, "channel": "orders", "messageId": "m1"}])

    def test_client_cannot_choose_identity(self) -> None:
        """
        Whatever else a publish carries (a role, a sender, claims), it is
        stored as the socket's principal.
        """
        socket = self.connect("s", {"token": token("alice")})
        self.emit(
            socket, "REALTIME_SUBSCRIBE", {"channel": "orders", "role": "project_admin"}, Acks()
        )
        query = self.pool.pop("authorize_subscribes")
        params, d = query.params, query.done
        self.assertIn('"role":"authenticated"', params[0])
        self.assertNotIn("project_admin", params[0])
        d.callback([("c1", "allowed", None)])
        data = {
            "channel": "orders",
            "event": "e",
            "payload": {},
            "role": "project_admin",
            "senderType": "system",
            "senderId": "mallory",
            "claims": {"sub": "mallory"},
        }
        self.emit(socket, "REALTIME_PUBLISH", data, Acks())
        query = self.pool.pop("publish_batch")
        params, d = query.params, query.done
        [item] = json.loads(params[0])
        self.assertEqual(
            (item["role"], item["sender_type"], item["sender_id"], item["claims"]["sub"]),
            ("authenticated", "user", "alice", "alice"),
        )
        d.callback([("m1", "stored", None)])

    def test_publishes_batched(self) -> None:
        """
        Publishes made while one is being stored go together in the next
        statement.
        """
        socket = self.connect("s", {"token": token("alice")})
        self.emit(socket, "REALTIME_SUBSCRIBE", {"channel": "orders"}, Acks())
        self.allow_subscribe()
        acks = Acks()
        for i in range(4):
            self.emit(
                socket, "REALTIME_PUBLISH", {"channel": "orders", "event": "e", "payload": i}, acks
            )
        query = self.pool.pop("publish_batch")
        params, d = query.params, query.done
        self.assertEqual(params[0].count('"event"'), 1)
        d.callback([("m0", "stored", None)])
        query = self.pool.pop("publish_batch")
        params, d = query.params, query.done
        self.assertEqual(params[0].count('"event"'), 3)
        d.callback([("m1", "stored", None), ("m2", "denied", "no"), ("m3", "stored", None)])
        self.assertEqual([a["ok"] for a in acks.values], [True, True, False, True])
        self.assertEqual(acks.values[2]["error"]["code"], "REALTIME_UNAUTHORIZED")

    def test_payload_as_written(self) -> None:
        """
        A publish's payload is stored as the JSON text the client wrote,
        numbers and all, not as decoded and encoded again.
        """
        socket = self.connect("s", {"token": token("alice")})
        self.emit(socket, "REALTIME_SUBSCRIBE", {"channel": "orders"}, Acks())
        self.allow_subscribe()
        text = (
            '["REALTIME_PUBLISH", {"channel": "orders", "event": "e",'
            ' "payload": {"price": 1.10, "big": 123456789012345678901234567890.5}}]'
        )
        event, data = json.loads(text)
        self.namespace.handlers[event](socket, [data], Acks(), text)
        batch = self.pool.pop("publish_batch").params[0]
        self.assertIn('"payload":{"price": 1.10, "big": 123456789012345678901234567890.5}', batch)
        # The batch is one JSON array of items, each with that payload.
        self.assertEqual(json.loads(batch)[0]["payload"]["price"], 1.1)

    def test_stop_answers_what_was_received(self) -> None:
        """
        A stop refuses requests that arrive from then on, and finishes only
        once the publishes received before it are stored and acknowledged.
        """
        socket = self.connect("s", {"token": token("alice")})
        self.emit(socket, "REALTIME_SUBSCRIBE", {"channel": "orders"}, Acks())
        self.allow_subscribe()
        acks = Acks()
        for i in range(2):
            self.emit(
                socket, "REALTIME_PUBLISH", {"channel": "orders", "event": "e", "payload": i}, acks
            )
        self.realtime.startService()
        stopped = self.realtime.stopService()
        late = Acks()
        self.emit(socket, "REALTIME_PUBLISH", {"channel": "orders", "event": "e"}, late)
        self.assertEqual(
            late.values,
            [
                {
                    "ok": False,
                    "channel": "orders",
                    "error": {
                        "code": "INTERNAL_ERROR",
                        "message": "realtimed is stopping; reconnect and try again",
                    },
                }
            ],
        )
        self.clock.advance(1)
        self.assertNoResult(stopped)
        self.pool.pop("publish_batch").done.callback([("m0", "stored", None)])
        self.clock.advance(1)
        self.assertNoResult(stopped)
        self.pool.pop("publish_batch").done.callback([("m1", "stored", None)])
        self.clock.advance(0.01)
        self.successResultOf(stopped)
        self.assertEqual([a["messageId"] for a in acks.values], ["m0", "m1"])

    def test_stop_bounded(self) -> None:
        """
        A publish the database never answers holds a stop for
        C{drain_timeout} seconds at most.
        """
        socket = self.connect("s", {"token": token("alice")})
        self.emit(socket, "REALTIME_SUBSCRIBE", {"channel": "orders"}, Acks())
        self.allow_subscribe()
        self.emit(socket, "REALTIME_PUBLISH", {"channel": "orders", "event": "e"}, Acks())
        self.realtime.startService()
        stopped = self.realtime.stopService()
        self.clock.advance(self.realtime.drain_timeout - 0.5)
        self.assertNoResult(stopped)
        self.clock.advance(1)
        self.successResultOf(stopped)

    def test_disconnect_while_deciding(self) -> None:
        """
        A socket that disconnects while its subscribe is being decided is
        not subscribed afterwards.
        """
        socket = self.connect("s", {"token": token("alice")})
        acks = Acks()
        self.emit(socket, "REALTIME_SUBSCRIBE", {"channel": "orders"}, acks)
        self.namespace.disconnect(socket, "transport close")
        self.allow_subscribe()
        self.assertFalse(self.realtime.subscriptions.receives(socket, "orders"))
        self.assertEqual(self.realtime.subscriptions.audience("orders", None), set())
        self.assertEqual(self.realtime.presence.members("orders"), [])

    def test_database_failure(self) -> None:
        """
        A subscribe the database cannot decide is answered INTERNAL_ERROR;
        without an ack callback, as realtime:error.
        """
        socket = self.connect("s", {"token": token("alice")})
        acks = Acks()
        self.emit(socket, "REALTIME_SUBSCRIBE", {"channel": "orders"}, acks)
        d = self.pool.pop("authorize_subscribes").done
        d.errback(RuntimeError("database gone"))
        self.assertEqual(acks.values[0]["error"]["code"], "INTERNAL_ERROR")
        self.emit(socket, "REALTIME_SUBSCRIBE", {"channel": "orders"})
        d = self.pool.pop("authorize_subscribes").done
        d.errback(RuntimeError("database gone"))
        self.assertEqual(socket.emitted[-1][0], "realtime:error")
        self.assertEqual(socket.emitted[-1][1][0]["code"], "INTERNAL_ERROR")
        self.flushLoggedErrors(RuntimeError)

    def test_query_that_cannot_start(self) -> None:
        """
        When the pool raises instead of returning a Deferred, the publishes
        of that batch are answered INTERNAL_ERROR and later publishes are
        still stored: the batch queue does not stay blocked.
        """
        socket = self.connect("s", {"token": token("alice")})
        self.emit(socket, "REALTIME_SUBSCRIBE", {"channel": "orders"}, Acks())
        self.allow_subscribe()
        working = self.pool.runQuery

        def broken(sql: str, params: Any = None) -> Deferred[Any]:
            raise ValueError("cannot check the connection")

        self.pool.runQuery = broken  # type: ignore[method-assign]
        acks = Acks()
        publish = {"channel": "orders", "event": "e", "payload": 1}
        self.emit(socket, "REALTIME_PUBLISH", publish, acks)
        self.assertEqual(acks.values[0]["error"]["code"], "INTERNAL_ERROR")
        self.pool.runQuery = working  # type: ignore[method-assign]
        self.emit(socket, "REALTIME_PUBLISH", publish, acks)
        d = self.pool.pop("publish_batch").done
        d.callback([("m1", "stored", None)])
        self.assertEqual(acks.values[1], {"ok": True, "channel": "orders", "messageId": "m1"})
        self.flushLoggedErrors(ValueError)

    def test_audience_write_that_cannot_start(self) -> None:
        """
        Audience counts whose statement cannot even be started are kept and
        written with the next flush.
        """
        socket = self.connect("s", {"token": token("alice")})
        self.emit(socket, "REALTIME_SUBSCRIBE", {"channel": "orders"}, Acks())
        self.allow_subscribe()
        working = self.pool.runOperation

        def broken(sql: str, params: Any = None) -> Deferred[Any]:
            raise ValueError("cannot check the connection")

        self.pool.runOperation = broken  # type: ignore[method-assign]
        message = {"channel": "orders", "event": "e", "messageId": "m1"}
        self.realtime.deliver(StoredMessage(message, "c1"))
        self.clock.advance(1)
        self.pool.runOperation = working  # type: ignore[method-assign]
        self.clock.advance(1)
        query = self.pool.pop("ws_audience_count")
        params, d = query.params, query.done
        self.assertEqual(params, (["m1"], [1]))
        d.callback(None)
        self.flushLoggedErrors(ValueError)

    def test_token_expiry(self) -> None:
        """
        A socket is disconnected when its token expires; one that left
        earlier is not touched.
        """
        socket = self.connect("s", {"token": token("alice", exp=NOW + 60)})
        other = self.connect("o", {"token": token("bob", exp=NOW + 60)})
        self.namespace.disconnect(other, "transport close")
        self.clock.advance(59)
        self.assertFalse(socket.disconnected)
        self.clock.advance(1)
        self.assertTrue(socket.disconnected)
        self.assertFalse(other.disconnected)

    def test_deliver(self) -> None:
        """
        A stored message goes out with one fan-out call to the sockets of
        its name and of its owning row's pattern, and their number is
        written as its audience later, in one statement.
        """
        sockets = []
        for sid, channel, row in [
            ("a", "chat:1", "c1"),
            ("b", "chat:*", "c1"),
            ("c", "chat:2", "c1"),
        ]:
            socket = self.connect(sid, {"token": token(sid)})
            self.emit(socket, "REALTIME_SUBSCRIBE", {"channel": channel}, Acks())
            self.allow_subscribe(row)
            sockets.append(socket)
        message = {"channel": "chat:1", "event": "message", "messageId": "m1"}
        self.namespace.fanouts.clear()
        self.realtime.deliver(StoredMessage(message, "c1"))
        self.realtime.deliver(
            StoredMessage({**message, "channel": "other", "messageId": "m2"}, None)
        )
        self.assertEqual(self.namespace.fanouts, [({"a", "b"}, "message", (message,))])
        self.clock.advance(1)
        query = self.pool.pop("ws_audience_count")
        params, d = query.params, query.done
        self.assertEqual(params, (["m1"], [2]))
        d.callback(None)

    def test_presence_announcements(self) -> None:
        """
        Joins and leaves go to the other members' sockets with the
        contract's shape; disconnect leaves every channel.
        """
        alice = self.connect("a", {"token": token("alice")})
        self.emit(alice, "REALTIME_SUBSCRIBE", {"channel": "room"}, Acks())
        self.allow_subscribe()
        bob = self.connect("b", {"token": token("bob")})
        acks = Acks()
        self.emit(bob, "realtime:subscribe", {"channel": "room"}, acks)
        self.allow_subscribe()
        joined = rfc3339(NOW)
        self.assertEqual(
            acks.values[0]["presence"]["members"],
            [
                {"presenceId": "alice", "type": "user", "joinedAt": joined},
                {"presenceId": "bob", "type": "user", "joinedAt": joined},
            ],
        )
        member = {"presenceId": "bob", "type": "user", "joinedAt": joined}
        self.assertEqual(
            self.namespace.fanouts[-1],
            (
                {"a"},
                "presence:join",
                ({"channel": "room", "member": member, "meta": {"channel": "room"}},),
            ),
        )
        self.namespace.disconnect(bob, "transport close")
        self.assertEqual(
            self.namespace.fanouts[-1],
            (
                {"a"},
                "presence:leave",
                ({"channel": "room", "member": member, "meta": {"channel": "room"}},),
            ),
        )

    def test_rfc3339(self) -> None:
        """
        Times are written as the database writes them.
        """
        self.assertEqual(rfc3339(0.5), "1970-01-01T00:00:00.500Z")


class _Stream:
    """
    A listener that has handed over everything up to one position.
    """

    def __init__(self, position: Position) -> None:
        self.position = position

    def handed_position(self) -> Position | None:
        return self.position

    def reached(self, position: Position) -> Deferred[Position]:
        return succeed(self.position)


class _RecoverableSocket(FakeSocket):
    pid: str | None = None

    def keep_session(self, pid: str, sid: str | None = None) -> None:
        self.pid = pid
        if sid is not None:
            self.sid = sid


class RecoveryHandlerTests(SynchronousTestCase):
    def test_database_away(self) -> None:
        """
        A socket reconnecting with a session id while the database cannot
        be asked about it connects afresh, with a new session id, instead
        of being refused (a refused client would not try again).
        """
        clock = FakeClock(NOW)
        namespace = FakeNamespace()
        pool = FakePool()
        Realtime(
            namespace=namespace,  # type: ignore[arg-type]
            pool=pool,
            keys=KEYS,
            clock=clock,
            stream=_Stream(Position(Snapshot(10, 10))),
            sessions=SessionStore(pool, clock, 60.0),
            recovery_window=60.0,
        )
        socket = _RecoverableSocket("s1")
        former = new_pid()
        connected = namespace.connect(socket, {"token": token("alice"), "pid": former})
        self.assertIsNone(self.successResultOf(connected))
        self.assertIsNotNone(socket.pid)
        self.assertNotEqual(socket.pid, former)
        self.assertEqual(len(self.flushLoggedErrors(NotImplementedError)), 1)
