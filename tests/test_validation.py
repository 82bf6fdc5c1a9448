"""
Tests for L{realtimed.rest.validation}.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import assume, given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from realtimed.engineio.socket_packets import RESERVED_EVENTS
from realtimed.rest import validation
from realtimed.rest.validation import (
    UNSET,
    ChannelCreation,
    ChannelUpdate,
    InvalidInput,
    MessageQuery,
    Publication,
    StatsQuery,
)


def json_of(text: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    """
    JSON values whose strings are drawn from C{text}.
    """
    return st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False, allow_infinity=False)
        | text,
        lambda children: (
            st.lists(children, max_size=4) | st.dictionaries(text, children, max_size=4)
        ),
        max_leaves=20,
    )


storable_text = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    max_size=40,
)
json_values = json_of(st.text(max_size=8))
storable_json_values = json_of(storable_text)
patterns = st.from_regex(r"[A-Za-z0-9_\-:.@*]{1,40}", fullmatch=True)
names = st.from_regex(r"[A-Za-z0-9_\-:.@]{1,40}", fullmatch=True)
hosts = st.from_regex(r"[a-z0-9]{1,10}(\.[a-z0-9]{1,10}){0,3}", fullmatch=True)
urls = st.builds(
    lambda scheme, host, port, path: f"{scheme}://{host}{port}{path}",
    st.sampled_from(["http", "https", "HTTPS"]),
    hosts,
    st.sampled_from(["", ":8080", ":1"]),
    st.from_regex(r"(/[A-Za-z0-9._~%-]{0,10}){0,3}(\?[a-z]=[0-9]+)?", fullmatch=True),
)


def problems(call: Any, *args: Any) -> list[str]:
    """
    The problems C{call(*args)} reports; fails if it reports none.
    """
    try:
        call(*args)
    except InvalidInput as e:
        assert e.message == ", ".join(e.problems)
        return list(e.problems)
    raise AssertionError(f"{call.__name__}{args!r} raised nothing")


class JSONBodyTests(SynchronousTestCase):
    """
    L{validation.parse_json_body}.
    """

    @given(json_values)
    def test_round_trip(self, value: Any) -> None:
        """
        Any JSON value under the size limit is parsed back.
        """
        raw = json.dumps(value).encode()
        self.assertEqual(validation.parse_json_body(raw), value)

    @given(st.binary(max_size=64))
    def test_any_bytes(self, raw: bytes) -> None:
        """
        Any bytes either parse or raise L{InvalidInput}; nothing else.
        """
        try:
            validation.parse_json_body(raw)
        except InvalidInput as e:
            self.assertEqual(len(e.problems), 1)
            self.assertTrue(e.message.startswith("body: "))

    def test_not_json(self) -> None:
        """
        What JSON does not allow, Python's parser included (C{NaN},
        C{Infinity}, numbers beyond a double), is "Invalid JSON"; as is
        nesting deeper than the parser goes.
        """
        for raw in (
            b"{",
            b"NaN",
            b"[Infinity]",
            b"-Infinity",
            b"1e400",
            b"[" * 100_000,
        ):
            self.assertEqual(
                problems(validation.parse_json_body, raw),
                ["body: Invalid JSON"],
                raw[:10],
            )

    def test_empty(self) -> None:
        """
        An empty or blank body is "Required".
        """
        for raw in (b"", b"  \n"):
            self.assertEqual(
                problems(validation.parse_json_body, raw), ["body: Required"]
            )

    def test_not_utf8(self) -> None:
        """
        A body that is not UTF-8 is refused as such.
        """
        self.assertEqual(
            problems(validation.parse_json_body, b'"\xc3\x28"'), ["body: Invalid UTF-8"]
        )


class ChannelBodyTests(SynchronousTestCase):
    """
    L{validation.channel_creation} and L{validation.channel_update}.
    """

    @given(
        patterns, st.none() | storable_text, st.lists(urls, max_size=4), st.booleans()
    )
    def test_valid_creation(
        self,
        pattern: str,
        description: str | None,
        webhook_urls: list[str],
        enabled: bool,
    ) -> None:
        """
        Every well-formed body describes the channel it says, an empty list
        of webhook URLs being none, and a URL given twice kept once.
        """
        body = {
            "pattern": pattern,
            "description": description,
            "webhookUrls": webhook_urls,
            "enabled": enabled,
        }
        self.assertEqual(
            validation.channel_creation(body),
            ChannelCreation(
                pattern,
                description,
                tuple(dict.fromkeys(webhook_urls)) or None,
                enabled,
            ),
        )

    def test_defaults(self) -> None:
        """
        Only the pattern is required.
        """
        self.assertEqual(
            validation.channel_creation({"pattern": "orders"}),
            ChannelCreation("orders", None, None, True),
        )

    @given(json_values)
    def test_any_value(self, body: Any) -> None:
        """
        Any JSON value either describes a channel or raises L{InvalidInput}
        with one or more problems.
        """
        for call in (validation.channel_creation, validation.channel_update):
            try:
                call(body)
            except InvalidInput as e:
                self.assertTrue(e.problems)

    def test_reference_examples(self) -> None:
        """
        The reference's two messages, exactly.
        """
        self.assertEqual(
            problems(validation.channel_creation, {"description": "d"}),
            ["pattern: Channel pattern is required"],
        )
        self.assertEqual(
            problems(
                validation.channel_creation,
                {"pattern": "orders", "webhookUrls": ["nope"]},
            ),
            ["webhookUrls.0: Invalid url"],
        )

    @given(
        st.lists(
            st.one_of(
                urls.map(lambda u: (u, None)),
                st.sampled_from(
                    [
                        ("not a url", "Invalid url"),
                        ("https://", "Invalid url"),
                        ("//example.com/x", "Invalid url"),
                        ("http://exa mple.com", "Invalid url"),
                        ("http://example.com:99999/", "Invalid url"),
                        ("ftp://example.com/", "Must be an http or https URL"),
                        ("javascript://example.com/", "Must be an http or https URL"),
                        ("https://" + "a" * 2050, "At most 2048 characters"),
                    ]
                ),
                st.sampled_from(
                    [
                        (1, "Expected string, received number"),
                        (None, "Expected string, received null"),
                    ]
                ),
            ),
            max_size=6,
        )
    )
    def test_each_url_named(self, cases: list[tuple[Any, str | None]]) -> None:
        """
        Each bad webhook URL is a problem naming its index.
        """
        body = {"pattern": "orders", "webhookUrls": [url for url, _ in cases]}
        expected = [
            f"webhookUrls.{index}: {reason}"
            for index, (_, reason) in enumerate(cases)
            if reason is not None
        ]
        if expected:
            self.assertEqual(problems(validation.channel_creation, body), expected)
        else:
            validation.channel_creation(body)

    def test_every_problem(self) -> None:
        """
        All problems are reported, known fields in the documented order,
        then unknown fields.
        """
        self.assertEqual(
            problems(
                validation.channel_creation,
                {
                    "zzz": 1,
                    "enabled": None,
                    "webhookUrls": {},
                    "description": ["x"],
                    "pattern": "",
                },
            ),
            [
                "pattern: Invalid channel pattern"
                " (1-255 characters from A-Z a-z 0-9 _ - : . @ * %)",
                "description: Expected string, received array",
                "webhookUrls: Expected array, received object",
                "enabled: Expected boolean, received null",
                "zzz: Unknown field",
            ],
        )

    def test_unstorable_text(self) -> None:
        """
        Text PostgreSQL cannot store is refused: a NUL character, a lone
        surrogate.
        """
        self.assertEqual(
            problems(
                validation.channel_creation, {"pattern": "a", "description": "\x00"}
            ),
            ["description: Must not contain NUL characters"],
        )
        self.assertEqual(
            problems(
                validation.channel_creation, {"pattern": "a", "description": "\ud800"}
            ),
            ["description: Invalid Unicode"],
        )

    def test_not_an_object(self) -> None:
        """
        A body that is not an object says what it is.
        """
        for body, kind in (
            ([], "array"),
            ("x", "string"),
            (None, "null"),
            (1.5, "number"),
        ):
            self.assertEqual(
                problems(validation.channel_creation, body),
                [f"body: Expected object, received {kind}"],
            )

    def test_update(self) -> None:
        """
        An update sets exactly the fields given; C{null} clears the
        description and the webhook URLs.
        """
        self.assertEqual(
            validation.channel_update({"enabled": False}), ChannelUpdate(enabled=False)
        )
        update = validation.channel_update({"webhookUrls": None, "description": None})
        self.assertEqual(update.changes(), {"description": None, "webhook_urls": None})
        self.assertIs(update.pattern, UNSET)
        self.assertEqual(
            validation.channel_update(
                {"webhookUrls": ["https://a.example/"]}
            ).changes(),
            {"webhook_urls": ("https://a.example/",)},
        )

    def test_empty_update(self) -> None:
        """
        An update without fields is refused.
        """
        self.assertEqual(
            problems(validation.channel_update, {}),
            ["body: At least one field is required"],
        )

    def test_update_nulls(self) -> None:
        """
        The pattern and C{enabled} cannot be C{null}.
        """
        self.assertEqual(
            problems(validation.channel_update, {"pattern": None, "enabled": None}),
            [
                "pattern: Expected string, received null",
                "enabled: Expected boolean, received null",
            ],
        )


class PublicationTests(SynchronousTestCase):
    """
    L{validation.publication}.
    """

    @given(names, storable_text.filter(bool), storable_json_values)
    def test_valid(self, channel: str, event: str, payload: Any) -> None:
        """
        A channel name, an event that is not reserved, and any storable
        payload make a publication.
        """
        assume(event not in RESERVED_EVENTS)
        body = {"channel": channel, "event": event, "payload": payload}
        self.assertEqual(
            validation.publication(body), Publication(channel, event, payload)
        )

    def test_default_payload(self) -> None:
        """
        Without a payload, the payload is an empty object.
        """
        self.assertEqual(
            validation.publication({"channel": "a", "event": "INSERT"}),
            Publication("a", "INSERT", {}),
        )

    def test_reserved(self) -> None:
        """
        Socket.IO's reserved event names are refused.
        """
        for event in sorted(RESERVED_EVENTS):
            self.assertEqual(
                problems(validation.publication, {"channel": "a", "event": event}),
                [f"event: {event} is a reserved event name"],
            )

    def test_payload_depth(self) -> None:
        """
        A payload nested deeper than 64 levels is refused; 64 is fine.
        """
        payload: Any = 1
        for _ in range(64):
            payload = [payload]
        validation.publication({"channel": "a", "event": "e", "payload": payload})
        self.assertEqual(
            problems(
                validation.publication,
                {"channel": "a", "event": "e", "payload": [payload]},
            ),
            ["payload" + ".0" * 65 + ": Nested more than 64 levels deep"],
        )

    def test_unstorable_payload(self) -> None:
        """
        Payload strings and keys PostgreSQL cannot store are named by path.
        """
        self.assertEqual(
            problems(
                validation.publication,
                {
                    "channel": "a",
                    "event": "e",
                    "payload": {"k": ["ok", "\x00"], "\ud800": 1},
                },
            ),
            [
                "payload.k.1: Must not contain NUL characters",
                "payload: Key invalid Unicode",
            ],
        )

    def test_names(self) -> None:
        """
        The channel must be a name (no wildcard); the event 1 to 255
        characters.
        """
        self.assertEqual(
            problems(validation.publication, {"channel": "a b", "event": "x" * 256}),
            [
                "channel: Invalid channel name (1-255 characters from A-Z a-z 0-9 _ - : . @)",
                "event: Must be 1-255 characters",
            ],
        )
        self.assertEqual(
            problems(validation.publication, {"channel": "a*", "event": "e"}),
            ["channel: A pattern cannot be published to; publish to a channel name"],
        )


class QueryTests(SynchronousTestCase):
    """
    L{validation.message_query}, L{validation.stats_query} and
    L{validation.channel_id}.
    """

    def test_defaults(self) -> None:
        """
        Without parameters: no filters, 100 messages from the newest.
        """
        self.assertEqual(validation.message_query({}), MessageQuery(None, None, 100, 0))
        self.assertEqual(validation.stats_query({}), StatsQuery(None, None))

    @given(st.integers())
    def test_limit(self, limit: int) -> None:
        """
        A limit is accepted exactly when it is 1 to 1000.
        """
        args = {"limit": [str(limit)]}
        if 1 <= limit <= 1000:
            self.assertEqual(validation.message_query(args).limit, limit)
        else:
            self.assertEqual(
                problems(validation.message_query, args),
                ["limit: Must be between 1 and 1000"],
            )

    @given(st.integers(min_value=0, max_value=2**31 - 1))
    def test_offset(self, offset: int) -> None:
        """
        Any offset from 0 to 2**31 - 1 is accepted.
        """
        self.assertEqual(
            validation.message_query({"offset": [str(offset)]}).offset, offset
        )

    @given(st.text(max_size=30))
    def test_any_text(self, text: str) -> None:
        """
        Any text in any parameter is parsed or refused with problems.
        """
        for name in ("limit", "offset", "channelId", "eventName"):
            try:
                validation.message_query({name: [text]})
            except InvalidInput as e:
                self.assertTrue(all(p.startswith(f"{name}: ") for p in e.problems))
        for name in ("channelId", "since"):
            try:
                validation.stats_query({name: [text]})
            except InvalidInput as e:
                self.assertTrue(all(p.startswith(f"{name}: ") for p in e.problems))

    def test_malformed(self) -> None:
        """
        Each malformed parameter is named, all together.
        """
        self.assertEqual(
            problems(
                validation.message_query,
                {
                    "channelId": ["x"],
                    "eventName": [""],
                    "limit": ["1.5"],
                    "offset": ["9" * 40],
                },
            ),
            [
                "channelId: Invalid uuid",
                "eventName: Must be 1-255 characters",
                "limit: Expected integer",
                "offset: Must be between 0 and 2147483647",
            ],
        )
        self.assertEqual(
            problems(validation.message_query, {"limit": ["1", "2"]}),
            ["limit: Must be given once"],
        )

    @given(st.uuids(), st.booleans())
    def test_uuid(self, value: uuid.UUID, upper: bool) -> None:
        """
        A UUID in either letter case is accepted, in lower case.
        """
        text = str(value).upper() if upper else str(value)
        self.assertEqual(validation.channel_id(text), str(value))

    def test_not_uuid(self) -> None:
        """
        Other spellings of UUIDs, and anything else, are refused.
        """
        value = uuid.uuid4()
        for text in (
            value.hex,
            f"{{{value}}}",
            f"urn:uuid:{value}",
            "",
            "x",
            f" {value}",
        ):
            self.assertEqual(
                problems(validation.channel_id, text), ["id: Invalid uuid"]
            )

    @given(
        st.datetimes(
            min_value=datetime(1900, 1, 1),
            max_value=datetime(9000, 1, 1),
            timezones=st.sampled_from(
                [UTC, timezone(timedelta(hours=-5, minutes=-30))]
            ),
        )
    )
    def test_since(self, moment: datetime) -> None:
        """
        An RFC 3339 date-time names its instant, whatever its offset.
        """
        text = moment.isoformat().replace("+00:00", "Z")
        self.assertEqual(validation.stats_query({"since": [text]}).since, moment)

    def test_since_forms(self) -> None:
        """
        A date-time without offset is UTC; a date alone its midnight UTC;
        anything else is refused.
        """
        midnight = datetime(2024, 1, 1, tzinfo=UTC)
        for text in ("2024-01-01T00:00:00", "2024-01-01", "2024-01-01T00:00:00.000z"):
            self.assertEqual(validation.stats_query({"since": [text]}).since, midnight)
        for text in ("yesterday", "2024-13-01T00:00:00Z", "1700000000"):
            self.assertEqual(
                problems(validation.stats_query, {"since": [text]}),
                ["since: Invalid datetime"],
            )
