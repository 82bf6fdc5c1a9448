"""
Tests for L{realtimed.realtime.presence}.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from realtimed.realtime.presence import ANONYMOUS, USER, Identity, Member, Presence

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
