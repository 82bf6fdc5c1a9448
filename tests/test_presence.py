"""
Tests for L{realtimed.realtime.presence}.
"""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from realtimed.realtime.presence import (
    ANONYMOUS,
    USER,
    Held,
    Identity,
    Member,
    Presence,
    PresenceChange,
    Unwritten,
)
from realtimed.realtime.shared_presence import parse_notification, unwritten_json

ALICE = Identity("alice", USER)
BOB = Identity("bob", USER)
T1 = "2026-01-01T00:00:01.000Z"
T2 = "2026-01-01T00:00:02.000Z"
T3 = "2026-01-01T00:00:03.000Z"


class PresenceTests(SynchronousTestCase):
    def test_first_member(self) -> None:
        """
        The first socket in a channel sees itself as the only member and
        nobody is told.
        """
        presence: Presence[str] = Presence()
        members, change = presence.join("room", "s1", ALICE, T1)
        self.assertEqual(members, [Member("alice", USER, T1)])
        self.assertIsNone(change)

    def test_join_announced_to_others(self) -> None:
        """
        A new member is announced to the sockets already present, and sees
        every member, oldest first.
        """
        presence: Presence[str] = Presence()
        presence.join("room", "s1", ALICE, T1)
        members, change = presence.join("room", "s2", BOB, T2)
        self.assertEqual(members, [Member("alice", USER, T1), Member("bob", USER, T2)])
        assert change is not None
        self.assertEqual(change.recipients, frozenset({"s1"}))
        self.assertEqual(
            change.event(),
            (
                "presence:join",
                {
                    "channel": "room",
                    "member": {"presenceId": "bob", "type": "user", "joinedAt": T2},
                    "meta": {"channel": "room"},
                },
            ),
        )

    def test_second_socket_same_user(self) -> None:
        """
        A user's second socket adds no member and no join; the member keeps
        its first join time; it leaves only when its last socket does.
        """
        presence: Presence[str] = Presence()
        presence.join("room", "b1", BOB, T1)
        presence.join("room", "a1", ALICE, T2)
        members, change = presence.join("room", "a2", ALICE, T3)
        self.assertIsNone(change)
        self.assertEqual(members, [Member("bob", USER, T1), Member("alice", USER, T2)])
        self.assertIsNone(presence.leave("room", "a1", ALICE))
        change = presence.leave("room", "a2", ALICE)
        assert change is not None
        self.assertEqual(change.kind, "leave")
        self.assertEqual(change.member, Member("alice", USER, T2))
        self.assertEqual(change.recipients, frozenset({"b1"}))
        self.assertEqual(change.event()[0], "presence:leave")

    def test_anonymous_sockets_are_separate_members(self) -> None:
        """
        Anonymous sockets are one member each, named by the socket id.
        """
        presence: Presence[str] = Presence()
        presence.join("room", "x", Identity("x", ANONYMOUS), T1)
        members, change = presence.join("room", "y", Identity("y", ANONYMOUS), T2)
        self.assertEqual([m.presence_id for m in members], ["x", "y"])
        assert change is not None
        self.assertEqual(change.recipients, frozenset({"x"}))

    def test_channels_are_separate(self) -> None:
        """
        Presence in one channel says nothing about another; the last leave
        forgets the channel.
        """
        presence: Presence[str] = Presence()
        presence.join("a", "s1", ALICE, T1)
        members, change = presence.join("b", "s2", BOB, T2)
        self.assertEqual(members, [Member("bob", USER, T2)])
        self.assertIsNone(change)
        self.assertIsNone(presence.leave("a", "s1", ALICE))
        self.assertEqual(presence.members("a"), [])
        self.assertIsNone(presence.leave("a", "s1", ALICE))
        self.assertIsNone(presence.leave("zzz", "s1", ALICE))

    @given(
        st.lists(
            st.tuples(st.booleans(), st.sampled_from("abcdef"), st.sampled_from("uvw")),
            max_size=40,
        )
    )
    def test_model(self, steps: list[tuple[bool, str, str]]) -> None:
        """
        After any sequence of joins and leaves, the members are exactly the
        users with a socket present, and joins and leaves are announced
        exactly when a user appears or disappears, to the other users'
        sockets.
        """
        presence: Presence[str] = Presence()
        # socket -> user, for sockets present
        model: dict[str, str] = {}
        user_of = {s: u for s, u in zip("abcdef", "uuvvww", strict=True)}
        for joining, socket, _ in steps:
            user = user_of[socket]
            identity = Identity(user, USER)
            before = set(model.values())
            others = {s for s, u in model.items() if u != user}
            if joining:
                members, change = presence.join("c", socket, identity, T1)
                model[socket] = user
                self.assertEqual({m.presence_id for m in members}, set(model.values()))
                if user not in before and others:
                    assert change is not None
                    self.assertEqual((change.kind, change.recipients), ("join", frozenset(others)))
                else:
                    self.assertIsNone(change)
            else:
                change = presence.leave("c", socket, identity)
                model.pop(socket, None)
                gone = user in before and user not in model.values()
                if gone and others:
                    assert change is not None
                    self.assertEqual((change.kind, change.recipients), ("leave", frozenset(others)))
                else:
                    self.assertIsNone(change)
            self.assertEqual({m.presence_id for m in presence.members("c")}, set(model.values()))


class SharedPresenceTests(SynchronousTestCase):
    """
    Presence with the members other processes hold.
    """

    def test_remote_members_listed_and_announced(self) -> None:
        """
        A member held by another process is listed with this process's
        own, oldest first, and its join and leave are announced to the
        sockets here.
        """
        presence: Presence[str] = Presence()
        presence.join("room", "a1", ALICE, T2)
        change = presence.remote_join("B", "room", Member("bob", USER, T1))
        assert change is not None
        self.assertEqual((change.kind, change.recipients), ("join", frozenset({"a1"})))
        self.assertEqual(
            presence.members("room"), [Member("bob", USER, T1), Member("alice", USER, T2)]
        )
        self.assertEqual(presence.local_members("room"), [Member("alice", USER, T2)])
        change = presence.remote_leave("B", "room", "bob")
        assert change is not None
        self.assertEqual((change.kind, change.member), ("leave", Member("bob", USER, T1)))
        self.assertEqual(presence.members("room"), [Member("alice", USER, T2)])

    def test_nobody_here_nobody_told(self) -> None:
        """
        Changes elsewhere in a channel with no socket here are remembered
        but announced to nobody; the first socket here sees them in its
        member list.
        """
        presence: Presence[str] = Presence()
        self.assertIsNone(presence.remote_join("B", "room", Member("bob", USER, T1)))
        members, change = presence.join("room", "a1", ALICE, T2)
        self.assertIsNone(change)
        self.assertEqual([m.presence_id for m in members], ["bob", "alice"])

    def test_user_on_two_processes_is_one_member(self) -> None:
        """
        A user with sockets here and elsewhere is one member, with its
        earliest join time; it joins when it first appears anywhere and
        leaves only when it is gone everywhere.
        """
        presence: Presence[str] = Presence()
        presence.join("room", "b1", BOB, T1)
        self.assertIsNotNone(presence.remote_join("B", "room", Member("alice", USER, T2)))
        members, change = presence.join("room", "a1", ALICE, T3)
        self.assertIsNone(change)
        self.assertEqual(members, [Member("bob", USER, T1), Member("alice", USER, T2)])
        self.assertIsNone(presence.remote_join("C", "room", Member("alice", USER, T3)))
        self.assertIsNone(presence.remote_leave("B", "room", "alice"))
        self.assertIsNone(presence.leave("room", "a1", ALICE))
        change = presence.remote_leave("C", "room", "alice")
        assert change is not None
        self.assertEqual((change.kind, change.recipients), ("leave", frozenset({"b1"})))
        self.assertEqual(presence.members("room"), [Member("bob", USER, T1)])
        self.assertIsNone(presence.remote_leave("C", "room", "alice"))
        self.assertIsNone(presence.remote_leave("C", "nowhere", "alice"))

    def test_replace_remote(self) -> None:
        """
        Starting again from the rows as they are announces the members that
        appeared and those that went meanwhile, and nothing for those that
        stayed or are held here too.
        """
        presence: Presence[str] = Presence()
        presence.join("room", "a1", ALICE, T1)
        presence.remote_join("B", "room", Member("bob", USER, T1))
        presence.remote_join("B", "room", Member("carol", USER, T1))
        presence.remote_join("B", "room", Member("alice", USER, T2))
        changes = presence.replace_remote(
            [
                ("B", Held("room", Member("carol", USER, T1))),
                ("C", Held("room", Member("dave", USER, T3))),
                ("C", Held("other", Member("erin", USER, T3))),
            ]
        )
        self.assertEqual(
            [(c.kind, c.member.presence_id, c.recipients) for c in changes],
            [("leave", "bob", frozenset({"a1"})), ("join", "dave", frozenset({"a1"}))],
        )
        self.assertEqual(
            [m.presence_id for m in presence.members("room")], ["alice", "carol", "dave"]
        )
        self.assertEqual([m.presence_id for m in presence.members("other")], ["erin"])

    def test_unwritten(self) -> None:
        """
        The rows to write follow what this process holds: a member's first
        socket here adds its row, its last removes it, and a member that
        came and went between two writes needs none; a failed write is
        written again, and after the rows were lost every member is.
        """
        presence: Presence[str] = Presence()
        self.assertFalse(presence.has_unwritten())
        presence.join("room", "a1", ALICE, T1)
        presence.join("room", "a2", ALICE, T2)
        presence.join("room", "b1", BOB, T1)
        self.assertEqual(
            presence.take_unwritten(),
            Unwritten(
                (Held("room", Member("alice", USER, T1)), Held("room", Member("bob", USER, T1)))
            ),
        )
        self.assertFalse(presence.has_unwritten())
        presence.leave("room", "a1", ALICE)
        self.assertFalse(presence.has_unwritten())
        presence.leave("room", "a2", ALICE)
        unwritten = presence.take_unwritten()
        self.assertEqual(unwritten, Unwritten((), (("room", "alice"),)))
        presence.restore(unwritten)
        self.assertEqual(presence.take_unwritten(), unwritten)
        presence.rewrite_all()
        self.assertEqual(
            presence.take_unwritten(), Unwritten((Held("room", Member("bob", USER, T1)),))
        )

    def test_notifications(self) -> None:
        """
        A row's notification reads back as the member added or removed, and
        the rows to write encode as the database function takes them.
        """
        payload = json.dumps(
            {
                "op": "+",
                "process": "p1",
                "channel": "room",
                "presenceId": "bob",
                "type": "user",
                "joinedAt": T1,
            }
        )
        self.assertEqual(
            parse_notification(payload), (True, "p1", Held("room", Member("bob", USER, T1)))
        )
        removed = parse_notification(payload.replace('"+"', '"-"'))
        assert removed is not None
        self.assertFalse(removed[0])
        for bad in ("", "[]", "{}", payload.replace('"+"', '"?"')):
            self.assertIsNone(parse_notification(bad))
        released, held = unwritten_json(
            Unwritten((Held("room", Member("bob", USER, T1)),), (("room", "alice"),))
        )
        self.assertEqual(released, '[{"channel": "room", "presenceId": "alice"}]')
        self.assertEqual(
            held,
            json.dumps([{"channel": "room", "presenceId": "bob", "type": "user", "joinedAt": T1}]),
        )


#: Sockets of the model below: (process, user) of each.
SOCKETS = {
    "a1": ("A", "u"),
    "a2": ("A", "u"),
    "a3": ("A", "v"),
    "b1": ("B", "u"),
    "b2": ("B", "w"),
    "c1": ("C", "v"),
}


class ProcessesModelTests(SynchronousTestCase):
    """
    Three processes sharing presence through a table whose changes reach
    each other process in order, late or early.
    """

    @given(
        st.lists(
            st.one_of(
                st.tuples(st.just("join"), st.sampled_from(sorted(SOCKETS))),
                st.tuples(st.just("leave"), st.sampled_from(sorted(SOCKETS))),
                st.tuples(st.just("write"), st.sampled_from("ABC")),
                st.tuples(st.just("deliver"), st.sampled_from("ABC")),
            ),
            max_size=60,
        )
    )
    def test_model(self, steps: list[tuple[str, str]]) -> None:
        """
        However joins, leaves, writes and notifications interleave: no
        socket is told a member joined (or left) twice in a row, and once
        everything is written and delivered, every process lists exactly
        the users with a socket present anywhere, and every socket present
        was told of each change it missed no more than once.
        """
        processes = {name: Presence[str]() for name in "ABC"}
        table: dict[tuple[str, str], Member] = {}  # (process, user) -> member
        inbox: dict[str, list[tuple[bool, str, Member]]] = {name: [] for name in "ABC"}
        present: set[str] = set()
        told: dict[tuple[str, str], str] = {}  # (socket, user) -> last kind told

        def tell(change: PresenceChange[str] | None) -> None:
            if change is None:
                return
            for socket in change.recipients:
                self.assertIn(socket, present)
                key = (socket, change.member.presence_id)
                self.assertNotEqual(told.get(key), change.kind, (key, steps))
                told[key] = change.kind

        def write(name: str) -> None:
            unwritten = processes[name].take_unwritten()
            for _channel, user in unwritten.released:
                if table.pop((name, user), None) is not None:
                    for other in inbox:
                        if other != name:
                            inbox[other].append((False, name, Member(user, USER, T1)))
            for held in unwritten.held:
                key = (name, held.member.presence_id)
                if key not in table:
                    table[key] = held.member
                    for other in inbox:
                        if other != name:
                            inbox[other].append((True, name, held.member))

        def deliver(name: str) -> None:
            if not inbox[name]:
                return
            added, process, member = inbox[name].pop(0)
            presence = processes[name]
            if added:
                tell(presence.remote_join(process, "c", member))
            else:
                tell(presence.remote_leave(process, "c", member.presence_id))

        def joined(socket: str) -> None:
            name, user = SOCKETS[socket]
            members, change = processes[name].join("c", socket, Identity(user, USER), T1)
            tell(change)
            present.add(socket)
            for member in members:
                told[(socket, member.presence_id)] = "join"

        for action, target in steps:
            if action == "join" and target not in present:
                joined(target)
            elif action == "leave" and target in present:
                name, user = SOCKETS[target]
                present.discard(target)
                tell(processes[name].leave("c", target, Identity(user, USER)))
                for key in [k for k in told if k[0] == target]:
                    del told[key]
            elif action == "write":
                write(target)
            elif action == "deliver":
                deliver(target)
        for name in "ABC":
            write(name)
        for name in "ABC":
            while inbox[name]:
                deliver(name)
        users = {SOCKETS[s][1] for s in present}
        for name, presence in processes.items():
            self.assertEqual({m.presence_id for m in presence.members("c")}, users, name)
        for socket in present:
            for user in users:
                if user != SOCKETS[socket][1]:
                    self.assertEqual(told.get((socket, user)), "join", (socket, user))
            for (s, user), kind in told.items():
                if s == socket and user not in users:
                    self.assertEqual(kind, "leave", (socket, user))
