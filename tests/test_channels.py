"""
Tests for L{realtimed.realtime.channels}, and for its agreement with the same rules
written in SQL (C{realtime.pattern_matches}, C{realtime.owning_channel}).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg2
import psycopg2.errors
from attrs import frozen
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from realtimed.realtime.channels import (
    canonical_pattern,
    is_valid_name,
    is_valid_pattern,
    is_wildcard,
    literal_length,
    matches,
    overlap,
    takes_names_from,
)
from realtimed.store.migrations import migrate
from tests.support import create_database

NAME_CHARACTERS = "ABCXYZabcxyz0189_-:.@"
# A small alphabet so that random patterns and names often match.
SMALL = "ab:_."

names = st.text(alphabet=NAME_CHARACTERS, min_size=1, max_size=255)
small_names = st.text(alphabet=SMALL, min_size=1, max_size=8)
small_patterns = st.text(alphabet=SMALL + "*", min_size=1, max_size=8)
#: Patterns written with either spelling of the wildcard.
either_patterns = st.text(alphabet=SMALL + "*%", min_size=1, max_size=8)

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


@frozen
class Row:
    """
    A channel row, as far as ownership goes.
    """

    pattern: str
    created_at: datetime


# The ownership rule as the product contract states it, written plainly in
# Python; PostgreSQL's realtime.owning_channel() is held against it.


def owner(rows: list[Row], name: str) -> Row | None:
    """
    The row among C{rows} (all enabled) that owns C{name}: the exact
    pattern, else the matching pattern with the most literal characters,
    else the oldest; C{None} when none matches.
    """
    matching = [row for row in rows if matches(row.pattern, name)]
    return max(
        matching,
        key=lambda row: (
            row.pattern == name,
            literal_length(row.pattern),
            -row.created_at.timestamp(),
        ),
        default=None,
    )


class NameTests(SynchronousTestCase):
    @given(names)
    def test_valid_names(self, name: str) -> None:
        """
        Any 1-255 characters from the name alphabet is a name and a pattern.
        """
        self.assertTrue(is_valid_name(name))
        self.assertTrue(is_valid_pattern(name))

    def test_invalid_names(self) -> None:
        """
        Empty, too long, other characters, wildcards and non-strings are not
        names.
        """
        for bad in ["", "a" * 256, "a b", "a/b", "é", "a*", "a\x00", "a\n", 3, None, b"ab"]:
            self.assertFalse(is_valid_name(bad), bad)

    def test_patterns(self) -> None:
        """
        A pattern may hold C{*} (or C{%}) anywhere, but is otherwise a name.
        """
        for good in ["*", "order:*", "*:x", "a*b*c", "x" * 254 + "*", "order:%"]:
            self.assertTrue(is_valid_pattern(good), good)
        for bad in ["", "order:?", "a b*", "x" * 256, 1]:
            self.assertFalse(is_valid_pattern(bad), bad)


class MatchTests(SynchronousTestCase):
    def test_reference_examples(self) -> None:
        """
        The reference's table: C{orders} matches only itself, C{order:*}
        matches names under C{order:}, also with more colons and the empty
        rest.
        """
        self.assertTrue(matches("orders", "orders"))
        self.assertFalse(matches("orders", "orders2"))
        for name in ["order:123", "order:456", "order:abc", "order:a:b", "order:"]:
            self.assertTrue(matches("order:*", name), name)
        self.assertFalse(matches("order:*", "orders"))
        self.assertFalse(matches("order:*", "xorder:1"))
        self.assertTrue(matches("chat:room:*", "chat:room:general"))
        self.assertFalse(matches("chat:room:*", "chat:lobby"))

    def test_dots_are_literal(self) -> None:
        """
        Characters that are special in regular expressions or LIKE match only
        themselves.
        """
        self.assertFalse(matches("a.c", "abc"))
        self.assertFalse(matches("a_c", "abc"))
        self.assertTrue(matches("a.*", "a.b"))

    @given(small_names)
    def test_without_wildcard_only_itself(self, name: str) -> None:
        """
        A pattern without C{*} matches exactly the equal name.
        """
        self.assertTrue(matches(name, name))
        self.assertFalse(matches(name, name + "a"))

    @given(small_patterns, st.data())
    def test_replacing_wildcards_matches(self, pattern: str, data: st.DataObject) -> None:
        """
        Replacing each C{*} with any run of name characters (the empty run
        too) gives a name the pattern matches.
        """
        parts = pattern.split("*")
        fills = [data.draw(st.text(alphabet=SMALL, max_size=4)) for _ in parts[1:]]
        name = parts[0] + "".join(f + p for f, p in zip(fills, parts[1:], strict=True))
        if name:
            self.assertTrue(matches(pattern, name))
            self.assertEqual(literal_length(pattern), len(name) - sum(map(len, fills)))

    def test_owner_precedence(self) -> None:
        """
        The exact pattern wins, then the most literal characters, then the
        oldest; no match gives C{None}.
        """
        old = Row("*", EPOCH)
        order = Row("order:*", EPOCH + timedelta(seconds=1))
        order2 = Row("order:1*", EPOCH + timedelta(seconds=2))
        exact = Row("order:12", EPOCH + timedelta(seconds=3))
        late = Row("order*", EPOCH + timedelta(seconds=4))
        rows = [old, order, order2, exact, late]
        self.assertIs(owner(rows, "order:12"), exact)
        self.assertIs(owner(rows, "order:13"), order2)
        self.assertIs(owner(rows, "order:2"), order)
        self.assertIs(owner(rows, "zzz"), old)
        self.assertIsNone(owner([order], "zzz"))
        same_a = Row("a*", EPOCH + timedelta(seconds=5))
        same_b = Row("*a", EPOCH + timedelta(seconds=6))
        self.assertIs(owner([same_b, same_a], "aa"), same_a)
        self.assertTrue(is_wildcard("a*") and not is_wildcard("a"))


def every_name(alphabet: str, longest: int) -> list[str]:
    """
    Every name of 1 to C{longest} characters from C{alphabet}.
    """
    found = [""]
    for _ in range(longest):
        found += [n + c for n in found if len(n) == len(found[-1]) for c in alphabet]
    return [n for n in dict.fromkeys(found) if n]


TINY = "ab"
TINY_NAMES = every_name(TINY, 8)
tiny_patterns = st.text(alphabet=TINY + "*", min_size=1, max_size=4)


class OverlapTests(SynchronousTestCase):
    @given(tiny_patterns, tiny_patterns)
    def test_overlap(self, first: str, second: str) -> None:
        """
        Two patterns overlap exactly when some name matches both (names of
        up to 8 characters are enough for patterns of up to 4).
        """
        common = any(matches(first, n) and matches(second, n) for n in TINY_NAMES)
        self.assertEqual(overlap(first, second), common)

    @given(tiny_patterns, tiny_patterns, st.booleans())
    def test_takes_names_from(self, newer: str, older: str, newer_is_older: bool) -> None:
        """
        A row takes names from a wildcard row exactly when, with both
        enabled, it owns some name the wildcard row matches.
        """
        if not is_wildcard(older):
            return
        newer_created = EPOCH + timedelta(seconds=-1 if newer_is_older else 1)
        rows = [Row(older, EPOCH), Row(newer, newer_created)]
        taken = (
            any(matches(older, n) and owner(rows, n) is rows[1] for n in TINY_NAMES)
            and newer != older
        )
        self.assertEqual(
            takes_names_from(newer, newer_created.timestamp(), older, EPOCH.timestamp()),
            taken,
        )


class PercentWildcardTests(SynchronousTestCase):
    """
    ``%``, upstream's spelling of the wildcard, means the same as ``*``.
    """

    def test_canonical_form(self) -> None:
        """
        The canonical form of a pattern writes every wildcard as ``*``.
        """
        self.assertEqual(canonical_pattern("order:%"), "order:*")
        self.assertEqual(canonical_pattern("%a%b*"), "*a*b*")
        self.assertEqual(canonical_pattern("orders"), "orders")

    def test_valid_pattern(self) -> None:
        """
        A pattern may hold ``%``; a name may not.
        """
        self.assertTrue(is_valid_pattern("order:%"))
        self.assertFalse(is_valid_name("order:%"))
        self.assertTrue(is_wildcard("order:%"))

    @given(either_patterns, small_names)
    def test_same_as_star(self, pattern: str, name: str) -> None:
        """
        A pattern matches what its canonical form matches.
        """
        self.assertEqual(matches(pattern, name), matches(canonical_pattern(pattern), name))


class SQLAgreementTests(TestCase):
    """
    The pure matcher and ownership rule agree with PostgreSQL's on random
    patterns and names.
    """

    def setUp(self) -> object:  # type: ignore[override]
        self.url = create_database(self)
        d = migrate(reactor, self.url)

        def connect(_: object) -> None:
            self.connection = psycopg2.connect(self.url)
            self.connection.autocommit = True
            self.addCleanup(self.connection.close)

        d.addCallback(connect)
        return d

    def sql(self, statement: str, params: object = None) -> list[tuple]:
        with self.connection.cursor() as cursor:
            cursor.execute(statement, params)
            return list(cursor.fetchall()) if cursor.description else []

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(either_patterns, small_names)
    def test_pattern_matches(self, pattern: str, name: str) -> None:
        """
        C{matches} and C{realtime.pattern_matches} give the same answer,
        for patterns written with ``*`` or ``%``.
        """
        [(answer,)] = self.sql("SELECT realtime.pattern_matches(%s, %s)", (pattern, name))
        self.assertEqual(matches(pattern, name), answer)

    @settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        st.lists(small_patterns, min_size=1, max_size=8, unique=True),
        st.lists(st.booleans(), min_size=8, max_size=8),
        st.permutations(list(range(8))),
        small_names,
    )
    def test_owning_channel(
        self, patterns: list[str], enabled: list[bool], ages: list[int], name: str
    ) -> None:
        """
        C{owner} over the enabled rows and C{realtime.owning_channel} pick the
        same row.
        """
        self.sql("DELETE FROM realtime.channels")
        rows = []
        for i, pattern in enumerate(patterns):
            created = EPOCH + timedelta(seconds=ages[i])
            self.sql(
                "INSERT INTO realtime.channels (pattern, enabled, created_at) VALUES (%s, %s, %s)",
                (pattern, enabled[i], created),
            )
            if enabled[i]:
                rows.append(Row(pattern, created))
        [(chosen,)] = self.sql("SELECT (realtime.owning_channel(%s)).pattern", (name,))
        expected = owner(rows, name)
        self.assertEqual(expected.pattern if expected else None, chosen)

    def test_percent_stored_as_star(self) -> None:
        """
        A channel row written with ``%`` by any SQL is stored with ``*``, so
        ``order:%`` and ``order:*`` collide on the unique pattern; a
        subscription to ``order:%`` refers to the row ``order:*``.
        """
        [(channel_id,)] = self.sql(
            "INSERT INTO realtime.channels (pattern) VALUES ('order:%') RETURNING id::text"
        )
        self.assertEqual(
            self.sql("SELECT pattern::text FROM realtime.channels"), [("order:*",)]
        )
        with self.assertRaises(psycopg2.errors.UniqueViolation):
            self.sql("INSERT INTO realtime.channels (pattern) VALUES ('order:*')")
        self.sql("INSERT INTO realtime.channels (pattern) VALUES ('chat:*')")
        self.sql("UPDATE realtime.channels SET pattern = '%:room' WHERE pattern = 'chat:*'")
        self.assertEqual(
            self.sql("SELECT pattern::text FROM realtime.channels ORDER BY pattern"),
            [("*:room",), ("order:*",)],
        )
        self.assertEqual(
            self.sql("SELECT realtime.subscribed_channel('order:%')::text"), [(channel_id,)]
        )
