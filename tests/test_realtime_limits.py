"""
Tests for what one socket may ask of realtime channels
(L{realtimed.realtime.limits}), token refresh, and subscriptions that end
when their channel row changes, with an in-memory namespace and database.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg2
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from realtimed.realtime.limits import Limits, TokenBucket
from realtimed.realtime.service import Realtime
from realtimed.store.publisher import Publisher
from realtimed.testing import FakeClock, FakePool
from tests.test_realtime_handlers import (
    KEYS,
    NOW,
    Acks,
    FakeNamespace,
    FakeSocket,
    token,
)


class TokenBucketTests(SynchronousTestCase):
    def test_burst_then_rate(self) -> None:
        """
        A full bucket allows its capacity at once, then one more per
        1/rate seconds.
        """
        bucket = TokenBucket(10.0, 20.0, tokens=20.0, updated=0.0)
        self.assertEqual(sum(bucket.take(0.0) for _ in range(30)), 20)
        self.assertFalse(bucket.take(0.05))
        self.assertTrue(bucket.take(0.1))
        self.assertFalse(bucket.take(0.1))
        self.assertEqual(sum(bucket.take(100.0) for _ in range(30)), 20)

    @given(st.lists(st.floats(min_value=0, max_value=0.5), max_size=200))
    def test_never_more_than_allowed(self, gaps: list[float]) -> None:
        """
        However requests are spaced, no span of time lets through more
        than the capacity plus the rate times its length.
        """
        bucket = TokenBucket(5.0, 10.0, tokens=10.0, updated=0.0)
        now = 0.0
        taken = 0
        for gap in gaps:
            now += gap
            taken += bucket.take(now)
        self.assertLessEqual(taken, 10 + 5.0 * now + 1e-9)

    def test_off(self) -> None:
        """
        A rate of 0 means no bucket: no limit.
        """
        self.assertIsNone(Limits(max_publish_rate=0).publish_bucket(0.0))
        bucket = Limits(max_publish_rate=3).publish_bucket(0.0)
        assert bucket is not None
        self.assertEqual((bucket.rate, bucket.capacity), (3, 6))


class LimitTestCase(SynchronousTestCase):
    limits = Limits(max_subscriptions=2, max_publish_rate=5, max_pending=100)

    def setUp(self) -> None:
        self.clock = FakeClock(NOW)
        self.namespace = FakeNamespace()
        self.pool = FakePool()
        self.realtime = Realtime(
            namespace=self.namespace,  # type: ignore[arg-type]
            pool=self.pool,
            keys=KEYS,
            clock=self.clock,
            limits=self.limits,
        )

    def connect(self, sid: str, auth: Any) -> FakeSocket:
        socket = FakeSocket(sid)
        self.namespace.connect(socket, auth)
        return socket

    def emit(self, socket: FakeSocket, event: str, data: Any, ack: Any = None) -> None:
        self.namespace.handlers[event](socket, [data], ack)

    def subscribe(self, socket: FakeSocket, channel: str, channel_id: str = "c1") -> Any:
        acks = Acks()
        self.emit(socket, "REALTIME_SUBSCRIBE", {"channel": channel}, acks)
        self.pool.pop("authorize_subscribes").answer([(channel_id, "allowed", None)])
        return acks.values[0]

    def publish(self, socket: FakeSocket, acks: Acks, channel: str = "orders") -> None:
        self.emit(socket, "REALTIME_PUBLISH", {"channel": channel, "event": "e"}, acks)


class LimitTests(LimitTestCase):
    def test_subscriptions(self) -> None:
        """
        A socket holding the most subscriptions is refused another with
        REALTIME_LIMIT_EXCEEDED; subscribing again to one it holds, or after
        leaving one, is fine; other sockets are not affected.
        """
        socket = self.connect("s", {"token": token("alice")})
        self.assertTrue(self.subscribe(socket, "a")["ok"])
        self.assertTrue(self.subscribe(socket, "b")["ok"])
        acks = Acks()
        self.emit(socket, "REALTIME_SUBSCRIBE", {"channel": "c"}, acks)
        self.assertEqual(self.pool.pending, [])
        self.assertEqual(acks.values[0]["error"]["code"], "REALTIME_LIMIT_EXCEEDED")
        self.assertIn("at most 2 subscriptions", acks.values[0]["error"]["message"])
        again = Acks()
        self.emit(socket, "REALTIME_SUBSCRIBE", {"channel": "a"}, again)
        self.assertTrue(again.values[0]["ok"])
        self.emit(socket, "REALTIME_UNSUBSCRIBE", {"channel": "a"}, Acks())
        self.assertTrue(self.subscribe(socket, "c")["ok"])
        other = self.connect("o", {"token": token("bob")})
        self.assertTrue(self.subscribe(other, "a")["ok"])

    def test_publish_rate(self) -> None:
        """
        Publishes beyond the burst are refused at once with
        REALTIME_RATE_LIMITED (never stored); the rate comes back with
        time; another socket has its own.
        """
        socket = self.connect("s", {"token": token("alice")})
        self.subscribe(socket, "orders")
        acks = Acks()
        for _ in range(12):
            self.publish(socket, acks)
        self.assertEqual([a["error"]["code"] for a in acks.values], ["REALTIME_RATE_LIMITED"] * 2)
        query = self.pool.pop("publish_batch")
        self.assertEqual(json.loads(query.params[0]).__len__(), 1)
        self.clock.advance(1.0)
        later = Acks()
        self.publish(socket, later)
        self.assertEqual(later.values, [])
        other = self.connect("o", {"token": token("bob")})
        self.subscribe(other, "orders")
        theirs = Acks()
        self.publish(other, theirs)
        self.assertEqual(theirs.values, [])

    def test_error_event_without_ack(self) -> None:
        """
        A refusal for a request sent without an acknowledgement callback
        comes as the event realtime:error.
        """
        socket = self.connect("s", {"token": token("alice")})
        self.subscribe(socket, "orders")
        for _ in range(11):
            self.emit(socket, "REALTIME_PUBLISH", {"channel": "orders", "event": "e"})
        self.assertEqual(
            socket.emitted[-1],
            (
                "realtime:error",
                (
                    {
                        "channel": "orders",
                        "code": "REALTIME_RATE_LIMITED",
                        "message": "At most 5 publishes per second",
                    },
                ),
            ),
        )


class PendingTests(LimitTestCase):
    limits = Limits(max_subscriptions=2, max_publish_rate=5, max_pending=4)

    def test_pending(self) -> None:
        """
        Requests past the bound of those waiting for an answer are refused
        with REALTIME_RATE_LIMITED rather than queued; once answers come,
        requests are taken again.
        """
        socket = self.connect("s", {"token": token("alice")})
        acks = Acks()
        for channel in ("a", "b", "c", "d", "e", "f"):
            self.emit(socket, "REALTIME_SUBSCRIBE", {"channel": channel}, acks)
        self.assertEqual(
            [(a["channel"], a["error"]["code"]) for a in acks.values],
            [("e", "REALTIME_RATE_LIMITED"), ("f", "REALTIME_RATE_LIMITED")],
        )
        self.assertIn("More than 4 requests", acks.values[0]["error"]["message"])
        for channel_id in ("c1", "c2"):
            self.pool.pop("authorize_subscribes").answer([(channel_id, "allowed", None)])
        self.assertEqual(len(acks.values), 6)
        # subscriptions 3 and 4 are past the limit of 2: refused at once
        self.assertEqual(
            [a["error"]["code"] for a in acks.values[4:]], ["REALTIME_LIMIT_EXCEEDED"] * 2
        )
        self.emit(socket, "REALTIME_UNSUBSCRIBE", {"channel": "a"}, acks)
        self.assertEqual(acks.values[-1], {"ok": True, "channel": "a"})


class UnlimitedTests(LimitTestCase):
    limits = Limits(max_subscriptions=0, max_publish_rate=0, max_pending=0)

    def test_off(self) -> None:
        """
        With every limit set to 0, nothing is refused for being too many or
        too fast.
        """
        socket = self.connect("s", {"token": token("alice")})
        for i in range(150):
            self.assertTrue(self.subscribe(socket, f"c{i}")["ok"])
        acks = Acks()
        for _ in range(500):
            self.publish(socket, acks, "c1")
        self.assertEqual(acks.values, [])


class TokenRefreshTests(LimitTestCase):
    def test_refresh(self) -> None:
        """
        REALTIME_AUTH with a valid token of the same user replaces the
        credential: the ack gives the new expiry, and the socket is
        disconnected at the new exp, not the old one.
        """
        socket = self.connect("s", {"token": token("alice", exp=NOW + 60)})
        acks = Acks()
        self.emit(socket, "REALTIME_AUTH", {"token": token("alice", exp=NOW + 120)}, acks)
        self.assertEqual(acks.values, [{"ok": True, "expiresAt": "2027-01-15T08:02:00.000Z"}])
        self.clock.advance(90)
        self.assertFalse(socket.disconnected)
        self.clock.advance(30)
        self.assertTrue(socket.disconnected)

    def test_no_expiry(self) -> None:
        """
        A token without exp keeps the socket connected; the ack says null.
        """
        socket = self.connect("s", {"token": token("alice", exp=NOW + 60)})
        acks = Acks()
        self.emit(socket, "realtime:auth", {"token": token("alice")}, acks)
        self.assertEqual(acks.values, [{"ok": True, "expiresAt": None}])
        self.clock.advance(3600)
        self.assertFalse(socket.disconnected)

    def test_refused(self) -> None:
        """
        A token of another user, of another role, expired or not valid is
        refused with REALTIME_UNAUTHORIZED and changes nothing.
        """
        socket = self.connect("s", {"token": token("alice", exp=NOW + 60)})
        for other, reason in [
            (token("bob"), "same role and sub"),
            (KEYS.anon_key, "same role and sub"),
            (token("alice", exp=NOW - 1), "Token expired"),
            ("garbage", "Invalid token"),
        ]:
            acks = Acks()
            self.emit(socket, "REALTIME_AUTH", {"token": other}, acks)
            (ack,) = acks.values
            self.assertEqual(set(ack), {"ok", "error"})
            self.assertEqual(ack["error"]["code"], "REALTIME_UNAUTHORIZED")
            self.assertIn(reason, ack["error"]["message"])
        acks = Acks()
        self.emit(socket, "REALTIME_AUTH", {}, acks)
        self.assertEqual(acks.values[0]["error"]["code"], "INVALID_INPUT")
        self.clock.advance(60)
        self.assertTrue(socket.disconnected)


class ChannelChangeTests(LimitTestCase):
    limits = Limits()

    def changed(self, payload: Any) -> Any:
        """
        Announce a change of channel rows; answer the check with each
        subscription's grant as the test says.
        """
        self.realtime.channels_changed(None if payload is None else json.dumps(payload))
        return self.pool.pop("owning_channel")

    def test_revoked(self) -> None:
        """
        Subscriptions whose row no longer grants them end, with
        realtime:error REALTIME_UNAUTHORIZED; the others stay; messages of
        an ended subscription no longer reach the socket.
        """
        alice = self.connect("a", {"token": token("alice")})
        bob = self.connect("b", {"token": token("bob")})
        self.subscribe(alice, "order:1", "r1")
        self.subscribe(bob, "order:1", "r1")
        self.subscribe(alice, "chat:*", "r2")
        check = self.changed({"changes": []})
        held = sorted(zip(check.params[0], check.params[1], strict=True))
        self.assertEqual(held, [("chat:*", "r2"), ("order:1", "r1")])
        check.answer([("order:1", "r1", False, 1.0), ("chat:*", "r2", True, 2.0)])
        for socket in (alice, bob):
            self.assertEqual(socket.emitted[-1][0], "realtime:error")
            error = socket.emitted[-1][1][0]
            self.assertEqual(
                (error["channel"], error["code"]), ("order:1", "REALTIME_UNAUTHORIZED")
            )
        self.assertEqual(self.realtime.subscriptions.audience("order:1", "r1"), set())
        self.assertEqual(self.realtime.subscriptions.audience("chat:9", "r2"), {alice})

    def test_takeover(self) -> None:
        """
        A pattern subscription whose row loses names to a row that the
        change made an owner is told so, and kept.
        """
        alice = self.connect("a", {"token": token("alice")})
        self.subscribe(alice, "order:*", "r1")
        check = self.changed(
            {
                "changes": [
                    {
                        "id": "r9",
                        "old": None,
                        "new": {"pattern": "order:vip*", "enabled": True, "created_at": 9.0},
                    },
                    {
                        "id": "r8",
                        "old": {"pattern": "zzz*", "enabled": True, "created_at": 8.0},
                        "new": {"pattern": "zzz*", "enabled": True, "created_at": 8.0},
                    },
                ]
            }
        )
        check.answer([("order:*", "r1", True, 1.0)])
        ((event, (error,)),) = alice.emitted
        self.assertEqual((event, error["channel"]), ("realtime:error", "order:*"))
        self.assertIn("order:vip*", error["message"])
        self.assertTrue(self.realtime.subscriptions.is_subscribed(alice, "order:*"))

    def test_nothing_held(self) -> None:
        """
        A process without subscriptions asks nothing.
        """
        self.realtime.channels_changed("{}")
        self.assertEqual(self.pool.pending, [])

    def test_decided_during_a_change(self) -> None:
        """
        A subscribe decided while the channels changed is checked again
        once it is added.
        """
        alice = self.connect("a", {"token": token("alice")})
        self.emit(alice, "REALTIME_SUBSCRIBE", {"channel": "orders"}, Acks())
        self.realtime.channels_changed("{}")
        self.pool.pop("authorize_subscribes").answer([("r1", "allowed", None)])
        check = self.pool.pop("owning_channel")
        self.assertEqual(list(check.params[0]), ["orders"])


class BatchIsolationTests(LimitTestCase):
    limits = Limits(max_subscriptions=0, max_publish_rate=0)

    def setUp(self) -> None:
        super().setUp()
        # One lane, so that the publishes of different sockets share
        # batches, as they do within one lane.
        self.realtime.publisher = Publisher(self.pool, lanes=1)

    def test_failed_batch_retried_alone(self) -> None:
        """
        A batch of publishes whose statement fails is tried again one
        publish at a time, in order: one that fails alone gets
        INTERNAL_ERROR, its neighbours are stored.
        """
        sockets = [self.connect(sid, {"token": token(sid)}) for sid in "abcd"]
        for socket in sockets:
            self.subscribe(socket, "orders")
        acks = [Acks() for _ in sockets]
        for socket, ack in zip(sockets, acks, strict=True):
            self.publish(socket, ack)
        first = self.pool.pop("publish_batch")
        first.answer([("m0", "stored", None, None, None, 0, "1", False)])
        batch = self.pool.pop("publish_batch")
        self.assertEqual(len(json.loads(batch.params[0])), 3)
        batch.fail(psycopg2.errors.InvalidTextRepresentation("bad"))
        for n, outcome in [(1, "stored"), (2, "error"), (3, "stored")]:
            alone = self.pool.pop("publish_batch")
            (item,) = json.loads(alone.params[0])
            self.assertEqual(item["claims"]["sub"], "abcd"[n])
            if outcome == "stored":
                alone.answer([(f"m{n}", "stored", None, None, None, 0, "1", False)])
            else:
                alone.fail(psycopg2.errors.InvalidTextRepresentation("bad"))
        self.assertEqual(
            [a.values[0].get("messageId") or a.values[0]["error"]["code"] for a in acks],
            ["m0", "m1", "INTERNAL_ERROR", "m3"],
        )
        self.flushLoggedErrors()

    def test_lost_connection_fails_the_batch(self) -> None:
        """
        A batch lost with its connection fails whole, at once: trying its
        publishes one by one against a database that is away would only
        make them wait longer.
        """
        sockets = [self.connect(sid, {"token": token(sid)}) for sid in "abc"]
        for socket in sockets:
            self.subscribe(socket, "orders")
        acks = [Acks() for _ in sockets]
        for socket, ack in zip(sockets, acks, strict=True):
            self.publish(socket, ack)
        self.pool.pop("publish_batch").fail(psycopg2.OperationalError("server closed"))
        self.pool.pop("publish_batch").fail(psycopg2.OperationalError("server closed"))
        self.assertEqual([a.values[0]["error"]["code"] for a in acks], ["INTERNAL_ERROR"] * 3)
        self.assertEqual(self.pool.pending, [])
        self.flushLoggedErrors()
