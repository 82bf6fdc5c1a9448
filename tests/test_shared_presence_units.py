"""
Tests for L{realtimed.realtime.shared_presence.SharedPresence} with a fake
pool and clock: when it writes, what it does with failures and
notifications, and how it reads the others' members again.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from realtimed.realtime.presence import USER, Identity, Presence, PresenceChange
from realtimed.realtime.shared_presence import SharedPresence
from realtimed.testing import FakeClock, FakePool

ALICE = Identity("alice", USER)
T1 = "2026-01-01T00:00:01.000Z"


def notification(op: str, process: str, presence_id: str, channel: str = "room") -> str:
    return json.dumps(
        {
            "op": op,
            "process": process,
            "channel": channel,
            "presenceId": presence_id,
            "type": "user",
            "joinedAt": T1,
        }
    )


class SharedPresenceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.pool = FakePool()
        self.clock = FakeClock(1000.0)
        self.presence: Presence[str] = Presence()
        self.announced: list[PresenceChange[str]] = []
        self.sharing = SharedPresence(
            self.pool, self.clock, self.presence, self.announced.append, "me", timeout=20.0
        )

    def start(self) -> None:
        """
        Start, and answer the first heartbeat (which creates the row).
        """
        self.sharing.startService()
        ready = self.sharing.whenReady()
        self.assertNoResult(ready)
        self.pool.pop("presence_sync").answer([(True,)])
        self.successResultOf(ready)

    def sync_params(self) -> tuple[str, float, list[Any], list[Any]]:
        query = self.pool.pending[0]
        process, timeout, released, held = query.params
        return process, timeout, json.loads(released), json.loads(held)

    def test_heartbeat(self) -> None:
        """
        The heartbeat is written at start and every quarter of the timeout,
        naming the process and its timeout.
        """
        self.start()
        self.assertEqual(self.pool.pending, [])
        self.clock.advance(4.9)
        self.assertEqual(self.pool.pending, [])
        self.clock.advance(0.1)
        self.assertEqual(self.sync_params(), ("me", 20.0, [], []))
        self.pool.pop("presence_sync").answer([(False,)])
        self.clock.advance(5)
        self.pool.pop("presence_sync").answer([(False,)])

    def test_changes_written_one_write_at_a_time(self) -> None:
        """
        A change is written at once; changes made while a write is in
        flight go together in the next write, and a member that came and
        went meanwhile is only removed.
        """
        self.start()
        self.presence.join("room", "s1", ALICE, T1)
        self.sharing.changed()
        self.assertEqual(
            self.sync_params()[2:],
            ([], [{"channel": "room", "presenceId": "alice", "type": "user", "joinedAt": T1}]),
        )
        self.presence.leave("room", "s1", ALICE)
        self.sharing.changed()
        self.presence.join("other", "s1", ALICE, T1)
        self.presence.leave("other", "s1", ALICE)
        self.sharing.changed()
        self.assertEqual(len(self.pool.pending), 1)
        self.pool.pop("presence_sync").answer([(False,)])
        self.assertEqual(
            self.sync_params()[2:],
            (
                [
                    {"channel": "room", "presenceId": "alice"},
                    {"channel": "other", "presenceId": "alice"},
                ],
                [],
            ),
        )

    def test_failed_write_retried(self) -> None:
        """
        A write that fails is written again at the next heartbeat.
        """
        self.start()
        self.presence.join("room", "s1", ALICE, T1)
        self.sharing.changed()
        self.pool.pop("presence_sync").fail(RuntimeError("database away"))
        self.assertEqual(self.pool.pending, [])
        self.clock.advance(5)
        self.assertEqual([h["presenceId"] for h in self.sync_params()[3]], ["alice"])

    def test_taken_for_dead(self) -> None:
        """
        If a heartbeat finds that this process's row was deleted (the
        others took it for dead), every member held here is written again.
        """
        self.start()
        self.presence.join("room", "s1", ALICE, T1)
        self.sharing.changed()
        self.pool.pop("presence_sync").answer([(False,)])
        self.clock.advance(5)
        self.assertEqual(self.sync_params()[3], [])
        self.pool.pop("presence_sync").answer([(True,)])
        self.assertEqual([h["presenceId"] for h in self.sync_params()[3]], ["alice"])

    def test_notifications(self) -> None:
        """
        Another process's rows are announced as joins and leaves to the
        sockets here; this process's own are ignored.
        """
        self.presence.join("room", "s1", ALICE, T1)
        self.sharing.notified(notification("+", "other", "bob"))
        self.sharing.notified(notification("+", "me", "alice"))
        self.sharing.notified(notification("-", "other", "bob"))
        self.sharing.notified("not json")
        self.assertEqual(
            [(c.kind, c.member.presence_id) for c in self.announced],
            [("join", "bob"), ("leave", "bob")],
        )

    def test_reload(self) -> None:
        """
        After the listener reconnects, the others' rows are read again;
        notifications that arrive meanwhile are applied after them, and the
        differences are announced.
        """
        self.presence.join("room", "s1", ALICE, T1)
        self.sharing.notified(notification("+", "B", "bob"))
        self.sharing.notified(None)
        query = self.pool.pop("FROM realtime.presence_members")
        self.assertEqual(query.params, ("me",))
        self.sharing.notified(notification("+", "C", "dave"))
        self.assertEqual(len(self.announced), 1)
        query.answer([("C", "room", "carol", "user", T1)])
        self.assertEqual(
            [(c.kind, c.member.presence_id) for c in self.announced],
            [("join", "bob"), ("leave", "bob"), ("join", "carol"), ("join", "dave")],
        )

    def test_read_again(self) -> None:
        """
        A notification asking to read every row again does so.
        """
        self.sharing.notified('{"op": "*"}')
        self.pool.pop("FROM realtime.presence_members").answer([])

    def test_reload_retried(self) -> None:
        """
        A failed read is tried again a second later.
        """
        self.sharing.notified(None)
        self.pool.pop("FROM realtime.presence_members").fail(RuntimeError("away"))
        self.clock.advance(1)
        self.pool.pop("FROM realtime.presence_members").answer([])

    def test_stop(self) -> None:
        """
        Stopping waits for the write in flight, then deletes this process's
        row; no heartbeat follows.
        """
        self.start()
        self.presence.join("room", "s1", ALICE, T1)
        self.sharing.changed()
        stopped = self.sharing.stopService()
        self.assertNoResult(stopped)
        self.pool.pop("presence_sync").answer([(False,)])
        delete = self.pool.pop("DELETE FROM realtime.presence_processes")
        self.assertEqual(delete.params, ("me",))
        delete.answer()
        self.successResultOf(stopped)
        self.sharing.changed()
        self.clock.advance(60)
        self.assertEqual(self.pool.pending, [])
