"""
Tests for L{realtimed.store.sessions}: recoverable sessions kept in the
database, and replay of the messages a client missed, against PostgreSQL.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from realtimed.store.migrations import migrate
from realtimed.store.pool import ConnectionPool
from realtimed.store.positions import Position, Snapshot
from realtimed.store.sessions import SavedSubscription, Session, SessionStore, is_pid, new_pid
from tests.support import create_database, run_sql


def snapshot(url: str) -> Position:
    """
    The position of everything committed on C{url} so far.
    """
    [(text,)] = run_sql(url, "SELECT pg_current_snapshot()::text")
    return Position(Snapshot.parse(text))


def publish(url: str, channel: str, *events: str) -> list[str]:
    """
    Store one message per event on C{channel}, in one transaction.
    """
    rows = run_sql(
        url,
        "SELECT realtime.publish(%s, e, '{}'::jsonb) FROM unnest(%s::text[]) WITH ORDINALITY"
        " AS t (e, n) ORDER BY n",
        (channel, list(events)),
    )
    return [str(row[0]) for row in rows]


class SessionStoreTests(TestCase):
    """
    A migrated database with channels, and two session stores on it, as
    two processes would have.
    """

    @inlineCallbacks
    def setUp(self) -> Any:  # type: ignore[override]
        self.url = create_database(self)
        yield migrate(reactor, self.url)
        self.pool = ConnectionPool(reactor, self.url, size=2)
        yield self.pool.start()
        self.addCleanup(self.pool.close)
        [(self.rooms,)] = run_sql(
            self.url, "INSERT INTO realtime.channels (pattern) VALUES ('room:*') RETURNING id"
        )
        self.rooms = str(self.rooms)
        self.one = self.store(window=60)
        self.other = self.store(window=60)

    def store(self, window: float) -> SessionStore:
        store = SessionStore(self.pool, reactor, window)
        store.startService()
        self.addCleanup(store.stopService)
        return store

    def session(self, **changes: Any) -> Session:
        values: dict[str, Any] = {
            "pid": new_pid(),
            "sid": "sid-1",
            "role": "authenticated",
            "sender_id": "user-1",
            "connected_at": snapshot(self.url),
            "subscriptions": (SavedSubscription("room:1", self.rooms, snapshot(self.url)),),
        }
        values.update(changes)
        return Session(**values)

    @inlineCallbacks
    def test_claimed_elsewhere(self) -> Any:
        """
        A session saved by one process is claimed, whole, by another; the
        first process's later writes about it no longer touch it.
        """
        saved = self.session()
        self.one.save(saved)
        yield self.one.flush()
        claimed = yield self.other.claim(saved.pid)
        self.assertEqual(claimed, saved)
        self.one.forget(saved.pid)
        yield self.one.flush()
        again = yield self.other.claim(saved.pid)
        self.assertEqual(again, saved)

    @inlineCallbacks
    def test_gone_within_window(self) -> Any:
        """
        A session whose socket went away may be claimed within the window,
        not after it; a forgotten one, or an unknown id, never.
        """
        kept = self.session()
        self.one.save(kept)
        self.one.gone(kept.pid)
        yield self.one.flush()
        self.assertEqual((yield self.other.claim(kept.pid)), kept)

        closed = self.store(window=0)
        late = self.session()
        closed.save(late)
        closed.gone(late.pid)
        yield closed.flush()
        self.assertIsNone((yield closed.claim(late.pid)))

        forgotten = self.session()
        self.one.save(forgotten)
        self.one.forget(forgotten.pid)
        yield self.one.flush()
        self.assertIsNone((yield self.other.claim(forgotten.pid)))
        self.assertIsNone((yield self.other.claim("no-such-pid")))

    @inlineCallbacks
    def test_dead_process(self) -> Any:
        """
        The sessions of a process whose heartbeat stopped count as gone at
        its last heartbeat: past the window they cannot be claimed.
        """
        saved = self.session()
        self.one.save(saved)
        yield self.one.flush()
        run_sql(
            self.url,
            "UPDATE realtime.processes SET last_seen = now() - interval '1 hour' WHERE id = %s",
            (self.one.process,),
        )
        self.assertIsNone((yield self.other.claim(saved.pid)))

    @inlineCallbacks
    def test_replay(self) -> Any:
        """
        Replay gives the messages after one position and up to another, on
        the subscriptions, each from where it was subscribed, in order;
        the oldest or the newest when there are more than asked for.
        """
        start = snapshot(self.url)
        first = publish(self.url, "room:1", "a", "b")
        publish(self.url, "room:2", "c")
        middle = snapshot(self.url)
        publish(self.url, "room:1", "d")
        publish(self.url, "room:2", "e")
        end = snapshot(self.url)
        publish(self.url, "room:1", "too late")

        def events(replay: Any) -> list[str]:
            return [m.event for m in replay.messages]

        one = [SavedSubscription("room:1", self.rooms, start)]
        replay = yield self.one.replay(start, end, one, 10)
        self.assertEqual((events(replay), replay.complete), (["a", "b", "d"], True))
        self.assertEqual(replay.messages[0].message_id, first[0])

        pattern = [SavedSubscription("room:*", self.rooms, start)]
        replay = yield self.one.replay(start, end, pattern, 10)
        self.assertEqual(events(replay), ["a", "b", "c", "d", "e"])
        replay = yield self.one.replay(middle, end, pattern, 10)
        self.assertEqual(events(replay), ["d", "e"])

        later = [
            SavedSubscription("room:1", self.rooms, start),
            SavedSubscription("room:2", self.rooms, middle),
        ]
        replay = yield self.one.replay(start, end, later, 10)
        self.assertEqual(events(replay), ["a", "b", "d", "e"])

        replay = yield self.one.replay(start, end, pattern, 2)
        self.assertEqual((events(replay), replay.complete), (["a", "b"], False))
        replay = yield self.one.replay(start, end, pattern, 2, newest=True)
        self.assertEqual((events(replay), replay.complete), (["d", "e"], False))

    @inlineCallbacks
    def test_position_of(self) -> Any:
        """
        Replay from the position of a message id gives what was stored
        after it; an unknown id has no position.
        """
        start = snapshot(self.url)
        ids = publish(self.url, "room:1", "a", "b")
        publish(self.url, "room:1", "c")
        end = snapshot(self.url)
        after = yield self.one.position_of(ids[0])
        subscription = [SavedSubscription("room:1", self.rooms, start)]
        replay = yield self.one.replay(after, end, subscription, 10)
        self.assertEqual([m.event for m in replay.messages], ["b", "c"])
        self.assertIsNone((yield self.one.position_of("00000000-0000-0000-0000-000000000000")))


class PidTests(SynchronousTestCase):
    def test_only_what_new_pid_makes(self) -> None:
        """
        Ids L{new_pid} makes are pids; a client's claim of any other shape
        (empty, too long, a NUL, a lone surrogate, other characters) is
        not, so it is never sent to the database.
        """
        for _ in range(100):
            self.assertTrue(is_pid(new_pid()))
        pid = new_pid()
        for claim in [
            "",
            pid[:-1],
            pid + "a",
            "\x00" * 24,
            pid[:-1] + "\ud800",
            "=" * 24,
            "a" * 10**6,
        ]:
            self.assertFalse(is_pid(claim), repr(claim[:30]))
