"""
Presence shared by two realtimed processes on one database: daemons in this
reactor, and a real ``twistd`` process killed without a goodbye, on the
server that REALTIMED_TEST_POSTGRES names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import treq
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread

from tests.processes import RealtimedProcess
from tests.test_realtime import KEYS, Client, Daemon, RealtimeTestCase, token

ADMIN = {"Authorization": [f"Bearer {KEYS.api_key}"]}

#: A short presence timeout, so that a killed process's members leave soon.
SHORT_TIMEOUT = 2.0


def ids(members: list[dict[str, Any]]) -> list[str]:
    return [m["presenceId"] for m in members]


class TwoProcessesTests(RealtimeTestCase):
    """
    Two daemons on one database, A (C{self.daemon}) and B (C{self.other}).
    """

    @inlineCallbacks
    def setUp(self) -> Any:  # type: ignore[override]
        yield super().setUp()
        self.other = yield self.start_daemon()

    @inlineCallbacks
    def subscribe(self, client: Client, channel: str = "chat:1") -> Any:
        ack = yield self.call(client.request, "REALTIME_SUBSCRIBE", {"channel": channel})
        self.assertTrue(ack["ok"], ack)
        return ack

    def knows(self, daemon: Daemon, channel: str, *members: str) -> bool:
        """
        Whether C{daemon} lists exactly C{members} in C{channel}.
        """
        return sorted(ids(daemon.realtime.members(channel))) == sorted(members)

    @inlineCallbacks
    def presence_route(self, daemon: Daemon, channel: str = "chat:1") -> Any:
        response = yield treq.get(
            daemon.address + "/api/realtime/presence",
            params={"channel": channel},
            headers=ADMIN,
            persistent=False,
        )
        self.assertEqual(response.code, 200)
        body = yield response.json()
        return body["members"]

    @inlineCallbacks
    def test_join_and_leave_across_processes(self) -> Any:
        """
        A member on A sees a member join and leave on B; the ack on B lists
        the members of both, and the presence route gives the same answer
        from either process.
        """
        alice = yield self.client("alice")
        yield self.subscribe(alice)
        yield self.wait_for(lambda: self.knows(self.other, "chat:1", "alice"), "B to see alice")
        bob = yield self.client("bob", daemon=self.other)
        ack = yield self.subscribe(bob)
        self.assertEqual(ids(ack["presence"]["members"]), ["alice", "bob"])
        _, join = yield self.call(alice.next_event, "presence:join")
        self.assertEqual(
            (join["channel"], join["meta"], join["member"]),
            ("chat:1", {"channel": "chat:1"}, ack["presence"]["members"][1]),
        )
        here = yield self.presence_route(self.daemon)
        there = yield self.presence_route(self.other)
        self.assertEqual(here, ack["presence"]["members"])
        self.assertEqual(there, ack["presence"]["members"])
        yield self.call(bob.request, "REALTIME_UNSUBSCRIBE", {"channel": "chat:1"})
        _, leave = yield self.call(alice.next_event, "presence:leave")
        self.assertEqual(leave["member"], join["member"])
        self.assertEqual(ids((yield self.presence_route(self.daemon))), ["alice"])

    @inlineCallbacks
    def test_disconnect_leaves_everywhere(self) -> Any:
        """
        A socket that disconnects from B leaves, as seen from A.
        """
        alice = yield self.client("alice")
        yield self.subscribe(alice)
        bob = yield self.client("bob", daemon=self.other)
        yield self.subscribe(bob)
        _, join = yield self.call(alice.next_event, "presence:join")
        self.assertEqual(join["member"]["presenceId"], "bob")
        yield self.call(bob.disconnect)
        _, leave = yield self.call(alice.next_event, "presence:leave")
        self.assertEqual(leave["member"]["presenceId"], "bob")

    @inlineCallbacks
    def test_user_on_two_processes_is_one_member(self) -> Any:
        """
        A user with a socket on each process is one member: it joins once,
        as seen from a third user's socket, stays while either socket
        does, and leaves once when both are gone.
        """
        dave = yield self.client("dave", daemon=self.other)
        yield self.subscribe(dave)
        carol_a = yield self.client("carol")
        yield self.subscribe(carol_a)
        _, join = yield self.call(dave.next_event, "presence:join")
        self.assertEqual(join["member"]["presenceId"], "carol")
        carol_b = yield self.client("carol", daemon=self.other)
        ack = yield self.subscribe(carol_b)
        self.assertEqual(sorted(ids(ack["presence"]["members"])), ["carol", "dave"])
        # Carol's first join time stands for the member.
        self.assertIn(join["member"], ack["presence"]["members"])
        yield self.call(carol_a.request, "REALTIME_UNSUBSCRIBE", {"channel": "chat:1"})
        # A's writes reach B in order: once erin's join (made on A after
        # carol left there) reaches dave, carol's departure from A has too.
        erin = yield self.client("erin")
        erin_ack = yield self.subscribe(erin)
        _, marker = yield self.call(dave.next_event, "presence:join")
        self.assertEqual(marker["member"]["presenceId"], "erin")
        self.assertNotIn("presence:leave", [event for event, _ in dave.seen])
        for daemon in (self.daemon, self.other):
            yield self.wait_for(
                lambda d=daemon: self.knows(d, "chat:1", "carol", "dave", "erin"),
                "both processes to list carol, dave and erin",
            )
        yield self.call(carol_b.request, "REALTIME_UNSUBSCRIBE", {"channel": "chat:1"})
        _, leave = yield self.call(dave.next_event, "presence:leave")
        self.assertEqual(leave["member"]["presenceId"], "carol")
        _, leave = yield self.call(erin.next_event, "presence:leave")
        self.assertEqual(leave["member"]["presenceId"], "carol")
        # Erin learnt of carol once: in her ack, or by one join.
        joins = [d["member"]["presenceId"] for e, d in erin.seen if e == "presence:join"]
        in_ack = "carol" in ids(erin_ack["presence"]["members"])
        self.assertEqual(joins.count("carol") + in_ack, 1)

    @inlineCallbacks
    def test_graceful_stop_leaves_at_once(self) -> Any:
        """
        A process that stops removes its members at once: the others see
        them leave.
        """
        alice = yield self.client("alice")
        yield self.subscribe(alice)
        bob = yield self.client("bob", daemon=self.other)
        yield self.subscribe(bob)
        yield self.call(alice.next_event, "presence:join")
        yield self.other.stop()
        _, leave = yield self.call(alice.next_event, "presence:leave")
        self.assertEqual(leave["member"]["presenceId"], "bob")


class KilledProcessTests(RealtimeTestCase):
    """
    A real realtimed process killed with SIGKILL, beside a daemon in this
    reactor.
    """

    @inlineCallbacks
    def setUp(self) -> Any:  # type: ignore[override]
        yield super().setUp()
        # The daemon in this reactor sweeps at every heartbeat, a quarter of
        # its own timeout.
        self.survivor = yield self.start_daemon({"presence-timeout": SHORT_TIMEOUT})
        self.doomed = RealtimedProcess(
            self.url, Path(self.mktemp()).absolute(), "--presence-timeout", str(SHORT_TIMEOUT)
        )
        self.doomed.start()
        self.addCleanup(self.doomed.kill)
        yield deferToThread(self.doomed.wait_healthy)

    @inlineCallbacks
    def test_members_of_a_killed_process_leave(self) -> Any:
        """
        The members of a process killed without a goodbye leave, as seen
        from another process, once its timeout has passed; its own
        members' other sockets keep them present.
        """
        alice = yield self.client("alice", daemon=self.survivor)
        ack = yield self.call(alice.request, "REALTIME_SUBSCRIBE", {"channel": "chat:1"})
        self.assertTrue(ack["ok"], ack)
        bob = Client(self.doomed.address)
        self.addCleanup(self.call, bob.close)
        yield self.call(bob.connect, {"token": token("bob")})
        alice_there = Client(self.doomed.address)
        self.addCleanup(self.call, alice_there.close)
        yield self.call(alice_there.connect, {"token": token("alice")})
        for client in (bob, alice_there):
            ack = yield self.call(client.request, "REALTIME_SUBSCRIBE", {"channel": "chat:1"})
            self.assertTrue(ack["ok"], ack)
        _, join = yield self.call(alice.next_event, "presence:join")
        self.assertEqual(join["member"]["presenceId"], "bob")
        yield deferToThread(self.doomed.kill)
        _, leave = yield self.call(alice.next_event, "presence:leave")
        self.assertEqual(leave["member"]["presenceId"], "bob")
        self.assertEqual(ids(self.survivor.realtime.members("chat:1")), ["alice"])
