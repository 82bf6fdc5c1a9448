"""
Tests for L{realtimed.realtime.publication}: one rule set for what may be
published, shared by sockets and the REST API.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from realtimed.realtime.client_events import ERROR_EVENT, PUBLISH, Publish, Refusal, parse
from realtimed.realtime.presence import Identity, Presence
from realtimed.realtime.publication import (
    DATABASE_EVENTS,
    MAX_PAYLOAD_DEPTH,
    MAX_PAYLOAD_PROBLEMS,
    SERVER_EVENTS,
    InvalidInput,
    Sender,
    publication_problems,
)
from realtimed.rest import validation

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(alphabet=st.characters(codec=None), max_size=4)
    | st.sampled_from(["\x00", "\ud800", "a\udfffb"]),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.text(max_size=3) | st.sampled_from(["\x00", "\ud800"]), inner, max_size=3
        )
    ),
    max_leaves=8,
)
channels = st.none() | st.integers() | st.sampled_from(["orders", "order:*", "a b", "", "x" * 256])
events = (
    st.none()
    | st.integers()
    | st.sampled_from(["e", "", "connect", "e\x00", "e\ud800", "x" * 256])
    | st.sampled_from(sorted(DATABASE_EVENTS | SERVER_EVENTS))
)


def rest_answer(channel: Any, event: Any, payload: Any) -> str | None:
    """
    What the REST API says of a publication: its problems, or C{None}.
    """
    try:
        validation.publication({"channel": channel, "event": event, "payload": payload})
    except InvalidInput as e:
        return e.message
    return None


def socket_answer(channel: Any, event: Any, payload: Any) -> str | None:
    """
    What a socket is told of the same publication.
    """
    parsed = parse(PUBLISH, [{"channel": channel, "event": event, "payload": payload}])
    if isinstance(parsed, Refusal):
        return parsed.message
    assert isinstance(parsed, Publish)
    return None


class SharedRulesTests(SynchronousTestCase):
    @given(channels, events, json_values)
    def test_same_answer(self, channel: Any, event: Any, payload: Any) -> None:
        """
        A socket and the REST API accept and refuse the same publications,
        naming the same problems; only the events reserved for the
        database and the server are the backends' alone.
        """
        rest = rest_answer(channel, event, payload)
        socket = socket_answer(channel, event, payload)
        if event in DATABASE_EVENTS or event in SERVER_EVENTS:
            self.assertIsNotNone(socket)
            self.assertEqual(
                rest,
                ", ".join(publication_problems(channel, event, payload, Sender.BACKEND)) or None,
            )
        else:
            self.assertEqual(rest, socket)

    def test_lone_surrogates(self) -> None:
        """
        A lone surrogate anywhere in the event name or the payload is a
        problem, on both faces.
        """
        for event, payload in [
            ("e\ud800", {}),
            ("e", "\udc00"),
            ("e", {"k": ["ok", "a\ud800"]}),
            ("e", {"\ud800": 1}),
        ]:
            for answer in (rest_answer, socket_answer):
                self.assertIn("invalid unicode", (answer("orders", event, payload) or "").lower())

    def test_depth(self) -> None:
        """
        A payload nested L{MAX_PAYLOAD_DEPTH} levels deep is accepted; one
        level more is not, on both faces.
        """
        payload: Any = 1
        for _ in range(MAX_PAYLOAD_DEPTH):
            payload = [payload]
        self.assertIsNone(rest_answer("orders", "e", payload))
        self.assertIsNone(socket_answer("orders", "e", payload))
        deeper = [payload]
        problem = "payload" + ".0" * (MAX_PAYLOAD_DEPTH + 1) + ": Nested more than 64 levels deep"
        self.assertEqual(rest_answer("orders", "e", deeper), problem)
        self.assertEqual(socket_answer("orders", "e", deeper), problem)

    def test_problems_bounded(self) -> None:
        """
        However many bad strings a payload holds, at most
        L{MAX_PAYLOAD_PROBLEMS} are named.
        """
        problems = publication_problems("orders", "e", ["\x00"] * 10_000, Sender.CLIENT)
        self.assertEqual(len(problems), MAX_PAYLOAD_PROBLEMS)

    def test_server_events(self) -> None:
        """
        The events the server sends (errors, presence changes) are the ones
        clients may not publish.
        """
        presence: Presence[str] = Presence()
        presence.join("c", "s1", Identity("a", "user"), "t")
        _, join = presence.join("c", "s2", Identity("b", "user"), "t")
        leave = presence.leave("c", "s2", Identity("b", "user"))
        assert join is not None and leave is not None
        self.assertEqual(SERVER_EVENTS, {ERROR_EVENT, join.event()[0], leave.event()[0]})
