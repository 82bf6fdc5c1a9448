"""
The SQL of shared presence (migration 0013): each process's heartbeat and
member rows, their announcements on ``realtime_presence``, and the sweep of
processes that stopped beating.  Run against the server that
REALTIMED_TEST_POSTGRES names, as every database test.
"""

from __future__ import annotations

import json
import select
import time
from typing import Any

import psycopg2

from realtimed.realtime.presence import Held, Member, Unwritten
from realtimed.realtime.shared_presence import PRESENCE_CHANNEL, unwritten_json
from tests.support import run_sql
from tests.test_store_schema import SchemaTestCase, query

T1 = "2026-01-01T00:00:01.000Z"


def held(channel: str, presence_id: str) -> Held:
    return Held(channel, Member(presence_id, "user", T1))


class SharedPresenceSQLTests(SchemaTestCase):
    def sync(
        self,
        process: str,
        timeout: float = 20.0,
        held: tuple[Held, ...] = (),
        released: tuple[tuple[str, str], ...] = (),
    ) -> bool:
        removes, adds = unwritten_json(Unwritten(held, released))
        rows = run_sql(
            self.url,
            "SELECT realtime.presence_sync(%s, %s, %s::jsonb, %s::jsonb)",
            (process, timeout, removes, adds),
        )
        return bool(rows[0][0])

    def rows(self) -> list[tuple[Any, ...]]:
        return run_sql(
            self.url,
            "SELECT process, channel, presence_id, presence_type, joined_at"
            " FROM realtime.presence_members ORDER BY process, channel, presence_id",
        )

    def listen(self) -> Any:
        listener = self.connect()
        query(listener, f"LISTEN {PRESENCE_CHANNEL}; LISTEN presence_done")
        return listener

    def announcements(self, listener: Any) -> list[dict[str, Any]]:
        """
        What C{listener} was told so far, decoded.
        """
        run_sql(self.url, "NOTIFY presence_done")
        found = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            listener.poll()
            while listener.notifies:
                notify = listener.notifies.pop(0)
                if notify.channel == "presence_done":
                    return found
                found.append(json.loads(notify.payload))
            select.select([listener], [], [], 0.1)
        raise AssertionError("the marker notification did not arrive")

    def test_rows_and_announcements(self) -> None:
        """
        A process's first sync creates its heartbeat row; members it holds
        are added once and removed when released, and each row added or
        removed is announced with the whole member.
        """
        listener = self.listen()
        self.assertTrue(self.sync("p1", held=(held("room", "alice"), held("room", "bob"))))
        self.assertFalse(self.sync("p1", held=(held("room", "alice"),)))
        self.assertEqual(
            self.rows(),
            [("p1", "room", "alice", "user", T1), ("p1", "room", "bob", "user", T1)],
        )
        self.assertFalse(self.sync("p1", released=(("room", "alice"), ("room", "nobody"))))
        self.assertEqual(self.rows(), [("p1", "room", "bob", "user", T1)])
        member = {"channel": "room", "type": "user", "joinedAt": T1, "process": "p1"}
        self.assertEqual(
            self.announcements(listener),
            [
                {"op": "+", "presenceId": "alice", **member},
                {"op": "+", "presenceId": "bob", **member},
                {"op": "-", "presenceId": "alice", **member},
            ],
        )

    def test_sweep(self) -> None:
        """
        A sync deletes every other process whose heartbeat is older than
        that process's own timeout, with its members, each announced as
        leaving; a process beating within its timeout stays, and a process
        that was swept learns it at its next sync.
        """
        self.sync("dead", timeout=5, held=(held("room", "alice"),))
        self.sync("slow", timeout=600, held=(held("room", "bob"),))
        self.sync("alive", held=(held("room", "carol"),))
        run_sql(
            self.url,
            "UPDATE realtime.presence_processes SET last_seen = now() - interval '10 seconds'"
            " WHERE id IN ('dead', 'slow')",
        )
        listener = self.listen()
        self.assertFalse(self.sync("alive"))
        self.assertEqual(
            [r[:3] for r in self.rows()], [("alive", "room", "carol"), ("slow", "room", "bob")]
        )
        self.assertEqual(
            [(a["op"], a["process"], a["presenceId"]) for a in self.announcements(listener)],
            [("-", "dead", "alice")],
        )
        self.assertEqual(
            run_sql(self.url, "SELECT id FROM realtime.presence_processes ORDER BY id"),
            [("alive",), ("slow",)],
        )
        self.assertTrue(self.sync("dead", timeout=5))

    def test_oversized_row(self) -> None:
        """
        A row too large for a notification is announced as one asking to
        read every row again; it is stored like any other.
        """
        listener = self.listen()
        self.sync("p1", held=(held("room", "u" * 8000),))
        self.assertEqual(self.announcements(listener), [{"op": "*"}])
        self.assertEqual(len(self.rows()), 1)

    def test_process_row_removal_takes_members(self) -> None:
        """
        Deleting a process's heartbeat row (its graceful stop) removes its
        members, announced as leaving.
        """
        self.sync("p1", held=(held("room", "alice"), held("other", "alice")))
        listener = self.listen()
        run_sql(self.url, "DELETE FROM realtime.presence_processes WHERE id = 'p1'")
        self.assertEqual(self.rows(), [])
        self.assertEqual(
            sorted((a["op"], a["channel"]) for a in self.announcements(listener)),
            [("-", "other"), ("-", "room")],
        )

    def test_not_for_application_roles(self) -> None:
        """
        The presence tables and function are realtimed's own: the
        application's roles may neither read nor write them.
        """
        self.sync("p1", held=(held("room", "alice"),))
        for role in ("anon", "authenticated", "project_admin", "realtime_publisher"):
            for statement in (
                "SELECT * FROM realtime.presence_members",
                "SELECT * FROM realtime.presence_processes",
                "DELETE FROM realtime.presence_processes",
                "SELECT realtime.presence_sync('x', 1, '[]', '[]')",
            ):
                with self.assertRaises(
                    psycopg2.errors.InsufficientPrivilege, msg=(role, statement)
                ):
                    self.as_role(role, statement)
