"""
Tests for the pure parts of realtime channels: L{realtimed.realtime.subscriptions}
and L{realtimed.realtime.client_events}.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from realtimed.realtime.client_events import (
    EVENTS,
    INVALID_INPUT,
    PUBLISH,
    SUBSCRIBE,
    UNSUBSCRIBE,
    Publish,
    Refusal,
    Subscribe,
    Unsubscribe,
    member_text,
    parse,
    published_ack,
    subscribed_ack,
)
from realtimed.realtime.subscriptions import Subscription, Subscriptions

#: JSON values: what a payload may be.
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)


class SubscriptionsTests(SynchronousTestCase):
    def test_name_and_pattern_audience(self) -> None:
        """
        A message reaches the sockets subscribed to its name and those
        subscribed to the pattern of its owning channel, each once.
        """
        subs: Subscriptions[str] = Subscriptions()
        self.assertTrue(subs.add("a", Subscription("order:1", "c1")))
        self.assertTrue(subs.add("b", Subscription("order:*", "c1")))
        self.assertTrue(subs.add("c", Subscription("order:2", "c1")))
        self.assertTrue(subs.add("a", Subscription("order:*", "c1")))
        self.assertFalse(subs.add("a", Subscription("order:1", "c1")))
        self.assertEqual(subs.audience("order:1", "c1"), {"a", "b"})
        self.assertEqual(subs.audience("order:2", "c1"), {"a", "b", "c"})
        self.assertEqual(subs.audience("order:3", "c2"), set())
        self.assertEqual(subs.audience("order:1", None), {"a"})

    def test_remove(self) -> None:
        """
        Unsubscribing removes the socket from the audience; removing a
        socket removes all its subscriptions.
        """
        subs: Subscriptions[str] = Subscriptions()
        subs.add("a", Subscription("x", "c1"))
        subs.add("a", Subscription("y*", "c2"))
        self.assertIsNone(subs.remove("a", "z"))
        self.assertIsNone(subs.remove("b", "x"))
        self.assertEqual(subs.remove("a", "x"), Subscription("x", "c1"))
        self.assertEqual(subs.audience("x", "c1"), set())
        self.assertEqual(subs.remove_socket("a"), [Subscription("y*", "c2")])
        self.assertEqual(subs.audience("y1", "c2"), set())
        self.assertEqual(subs.remove_socket("a"), [])
        self.assertFalse(subs.receives("a", "y1"))

    def test_receives(self) -> None:
        """
        A socket receives a name it subscribed to, or one its pattern
        subscriptions match.
        """
        subs: Subscriptions[str] = Subscriptions()
        subs.add("a", Subscription("chat:*", "c1"))
        subs.add("a", Subscription("orders", "c2"))
        self.assertTrue(subs.receives("a", "chat:room123"))
        self.assertTrue(subs.receives("a", "orders"))
        self.assertFalse(subs.receives("a", "order"))
        self.assertFalse(subs.receives("b", "orders"))
        self.assertTrue(subs.is_subscribed("a", "chat:*"))
        self.assertFalse(subs.is_subscribed("a", "chat:room123"))

    @given(
        st.lists(
            st.tuples(
                st.booleans(),
                st.sampled_from("abc"),
                st.sampled_from(["n1", "n2", "p*"]),
            )
        )
    )
    def test_model(self, steps: list[tuple[bool, str, str]]) -> None:
        """
        After any adds and removes, each audience is exactly the sockets
        holding a matching subscription.
        """
        subs: Subscriptions[str] = Subscriptions()
        model: set[tuple[str, str]] = set()
        for adding, socket, channel in steps:
            if adding:
                subs.add(socket, Subscription(channel, "c"))
                model.add((socket, channel))
            else:
                subs.remove(socket, channel)
                model.discard((socket, channel))
        for name in ["n1", "n2"]:
            expected = {s for s, c in model if c in (name, "p*")}
            self.assertEqual(subs.audience(name, "c"), expected)


class ParseTests(SynchronousTestCase):
    def test_event_names(self) -> None:
        """
        Both spellings of each event ask for the same operation.
        """
        self.assertEqual(EVENTS["REALTIME_SUBSCRIBE"], EVENTS["realtime:subscribe"])
        self.assertEqual(EVENTS["REALTIME_UNSUBSCRIBE"], EVENTS["realtime:unsubscribe"])
        self.assertEqual(EVENTS["REALTIME_PUBLISH"], EVENTS["realtime:publish"])

    def test_subscribe(self) -> None:
        """
        Subscribe and unsubscribe take a name or a pattern.
        """
        self.assertEqual(parse(SUBSCRIBE, [{"channel": "orders"}]), Subscribe("orders"))
        self.assertEqual(parse(SUBSCRIBE, [{"channel": "order:*"}]), Subscribe("order:*"))
        self.assertEqual(parse(UNSUBSCRIBE, [{"channel": "a"}]), Unsubscribe("a"))

    def test_publish(self) -> None:
        """
        A publish carries channel, event and any JSON payload ({} when
        absent), encoded for storage.
        """
        parsed = parse(
            PUBLISH, [{"channel": "orders", "event": "order.created", "payload": {"a": [1, "é"]}}]
        )
        self.assertEqual(
            parsed, Publish("orders", "order.created", {"a": [1, "é"]}, '{"a":[1,"é"]}')
        )
        parsed = parse(PUBLISH, [{"channel": "o", "event": "e"}])
        assert isinstance(parsed, Publish)
        self.assertEqual(parsed.payload, {})

    def test_malformed(self) -> None:
        """
        Malformed data is refused with INVALID_INPUT and says what is wrong;
        the channel is echoed only when it was a string.
        """
        cases: list[tuple[str, list[Any], str | None, str]] = [
            (SUBSCRIBE, [], None, "data: Expected object, received null"),
            (SUBSCRIBE, ["orders"], None, "data: Expected object, received string"),
            (SUBSCRIBE, [None], None, "data: Expected object, received null"),
            (SUBSCRIBE, [{}], None, "channel: Channel name is required"),
            (SUBSCRIBE, [{"channel": 5}], None, "channel: Expected string, received number"),
            (SUBSCRIBE, [{"channel": ""}], "", "channel: Invalid channel"),
            (SUBSCRIBE, [{"channel": "a b"}], "a b", "channel: Invalid channel"),
            (UNSUBSCRIBE, [{"channel": "x" * 256}], "x" * 256, "channel: Invalid channel"),
            (PUBLISH, [{"channel": "o:*", "event": "e"}], "o:*", "pattern cannot be published"),
            (PUBLISH, [{"event": "e"}], None, "channel: Channel name is required"),
            (PUBLISH, [{"channel": "o"}], "o", "event: Event name is required"),
            (PUBLISH, [{"channel": "o", "event": 1}], "o", "event: Expected string"),
            (PUBLISH, [{"channel": "o", "event": ""}], "o", "event: Must be 1-255"),
            (PUBLISH, [{"channel": "o", "event": "e" * 256}], "o", "event: Must be 1-255"),
            (PUBLISH, [{"channel": "o", "event": "INSERT"}], "o", "reserved for database"),
            (PUBLISH, [{"channel": "o", "event": "UPDATE"}], "o", "reserved for database"),
            (PUBLISH, [{"channel": "o", "event": "DELETE"}], "o", "reserved for database"),
            (PUBLISH, [{"channel": "o", "event": "connect"}], "o", "reserved event name"),
            (PUBLISH, [{"channel": "o", "event": "disconnecting"}], "o", "reserved event name"),
            (PUBLISH, [{"channel": "o", "event": "newListener"}], "o", "reserved event name"),
            (PUBLISH, [{"channel": "o", "event": "presence:join"}], "o", "reserved event name"),
            (PUBLISH, [{"channel": "o", "event": "realtime:error"}], "o", "reserved event name"),
            (PUBLISH, [{"channel": "o", "event": "e\ud800"}], "o", "event: Invalid Unicode"),
            (
                PUBLISH,
                [{"channel": "o", "event": "e", "payload": b"\x00"}],
                "o",
                "payload: Must be JSON",
            ),
            (
                PUBLISH,
                [{"channel": "o", "event": "e", "payload": float("nan")}],
                "o",
                "payload: Must be a finite number",
            ),
            (
                PUBLISH,
                [{"channel": "o", "event": "e", "payload": {"a": "\x00"}}],
                "o",
                "payload.a: Must not contain NUL characters",
            ),
            (
                PUBLISH,
                [{"channel": "o", "event": "e", "payload": ["\udfff"]}],
                "o",
                "payload.0: Invalid Unicode",
            ),
            (
                PUBLISH,
                [{"channel": 1, "event": "", "payload": {"\ud800": 1}}],
                None,
                "channel: Expected string, received number, event: Must be 1-255 characters,"
                " payload: Key invalid Unicode",
            ),
        ]
        for operation, args, channel, message in cases:
            refusal = parse(operation, args)
            assert isinstance(refusal, Refusal), (operation, args)
            self.assertEqual((refusal.code, refusal.channel), (INVALID_INPUT, channel), args)
            self.assertIn(message, refusal.message, args)

    def test_shapes(self) -> None:
        """
        Acks and error events have the contract's shapes.
        """
        refusal = Refusal("c", "REALTIME_UNAUTHORIZED", "no")
        self.assertEqual(
            refusal.ack(),
            {
                "ok": False,
                "channel": "c",
                "error": {"code": "REALTIME_UNAUTHORIZED", "message": "no"},
            },
        )
        self.assertEqual(
            refusal.error_event(),
            {"channel": "c", "code": "REALTIME_UNAUTHORIZED", "message": "no"},
        )
        self.assertEqual(
            subscribed_ack("c", []), {"ok": True, "channel": "c", "presence": {"members": []}}
        )
        self.assertEqual(published_ack("c", "m"), {"ok": True, "channel": "c", "messageId": "m"})

    @given(
        st.recursive(
            st.none()
            | st.booleans()
            | st.integers()
            | st.floats(allow_nan=False, allow_infinity=False)
            | st.text(),
            lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
            max_leaves=20,
        )
    )
    def test_any_json_payload(self, payload: object) -> None:
        """
        Any JSON value without NUL characters or lone surrogates is a
        payload, and its encoding decodes to it.
        """
        parsed = parse(PUBLISH, [{"channel": "o", "event": "e", "payload": payload}])
        text = json.dumps(payload)
        try:
            text.encode("utf-8")
            json.dumps(payload, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            self.assertIsInstance(parsed, Refusal)
            return
        if "\\u0000" in text:
            self.assertIsInstance(parsed, Refusal)
            return
        assert isinstance(parsed, Publish), parsed
        self.assertEqual(json.loads(parsed.payload_json), payload)


anything = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)


class ParseAnythingTests(SynchronousTestCase):
    @given(
        st.sampled_from([SUBSCRIBE, UNSUBSCRIBE, PUBLISH]),
        st.lists(
            anything
            | st.fixed_dictionaries(
                {"channel": st.text(max_size=8) | anything},
                optional={"event": st.text(max_size=8) | anything, "payload": anything},
            ),
            max_size=3,
        ),
    )
    def test_never_raises(self, operation: str, args: list[object]) -> None:
        """
        Whatever a client sends, checking it gives a request or an
        INVALID_INPUT refusal whose channel is the one sent, if a string;
        a publish that passes encodes as JSON.
        """
        parsed = parse(operation, args)
        if isinstance(parsed, Refusal):
            self.assertEqual(parsed.code, INVALID_INPUT)
            data = args[0] if args else None
            if parsed.channel is not None:
                assert isinstance(data, dict)
                self.assertEqual(parsed.channel, data["channel"])
        elif isinstance(parsed, Publish):
            json.loads(parsed.payload_json)


class MemberTextTests(SynchronousTestCase):
    """
    L{member_text} finds the text a client wrote for one member of an
    event's data.
    """

    def test_as_written(self) -> None:
        text = '["E",{"channel":"a","payload":{"x": 1.10, "y":[1,2]} , "event":"e"}]'
        self.assertEqual(member_text(text, "payload"), '{"x": 1.10, "y":[1,2]}')

    def test_whitespace_and_repeats(self) -> None:
        """
        Whitespace anywhere JSON allows it; of a member given twice, the
        last, as the decoded data has it; a key written with escapes.
        """
        text = ' [ "E" ,\n{ "payload" : 1 , "p\\u0061yload"\t:\r"last" } , 3 ] '
        self.assertEqual(member_text(text, "payload"), '"last"')
        self.assertEqual(json.loads(text)[1]["payload"], "last")

    def test_not_there(self) -> None:
        for text in [
            '["E",{"channel":"a"}]',
            '["E",{}]',
            '["E",[1]]',
            '["E"]',
            "[]",
            '{"payload":1}',
            '"payload"',
        ]:
            self.assertIsNone(member_text(text, "payload"), text)

    @given(
        payload=json_values,
        others=st.dictionaries(st.text(max_size=5), json_values, max_size=3),
        indent=st.sampled_from([None, 0, 2]),
        separators=st.sampled_from([(",", ":"), (", ", ": "), (" ,", " : ")]),
    )
    def test_decodes_to_the_member(
        self, payload: Any, others: dict[str, Any], indent: Any, separators: Any
    ) -> None:
        """
        Whatever the data and however it is laid out, the text found decodes
        to the member's value.
        """
        data = {**others, "payload": payload}
        text = json.dumps(["E", data, 1], indent=indent, separators=separators)
        found = member_text(text, "payload")
        assert found is not None
        self.assertEqual(json.loads(found), payload)
