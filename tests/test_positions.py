"""
Tests for L{realtimed.store.positions}: positions in the stream of stored
messages, and their encoding, checked against PostgreSQL's own reading of
snapshots.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from realtimed.store.migrations import migrate
from realtimed.store.positions import MAX_ENCODED, Position, Snapshot
from tests.support import create_database, run_sql


@st.composite
def snapshots(draw: Any) -> Snapshot:
    xmin = draw(st.integers(min_value=3, max_value=2**40))
    xmax = xmin + draw(st.integers(min_value=0, max_value=20))
    xip = draw(st.sets(st.integers(min_value=xmin, max_value=max(xmin, xmax - 1)), max_size=5))
    return Snapshot(xmin, xmax, tuple(sorted(x for x in xip if x < xmax)))


@st.composite
def positions(draw: Any) -> Position:
    since = draw(snapshots())
    handed = tuple(
        sorted(
            draw(st.sets(st.integers(min_value=since.xmin, max_value=since.xmax + 20), max_size=3))
        )
    )
    upto = draw(st.none() | snapshots())
    xact = draw(st.none() | st.integers(min_value=since.xmin, max_value=since.xmax + 30))
    seq = None if xact is None else draw(st.integers(min_value=1, max_value=10**9))
    return Position(since, handed, upto, xact, seq)


def _near(position: Position) -> set[int]:
    """
    The transaction ids at and around every bound of C{position}: where
    what it covers can change.
    """
    marks = [position.since.xmin, position.since.xmax, *position.since.xip, *position.handed]
    if position.upto is not None:
        marks += [position.upto.xmin, position.upto.xmax, *position.upto.xip]
    if position.xact is not None:
        marks.append(position.xact)
    return {x + d for x in marks for d in (-1, 0, 1) if x + d >= 0}


class SnapshotTests(SynchronousTestCase):
    def test_visible(self) -> None:
        """
        A snapshot sees what finished before C{xmin} and what is below
        C{xmax} but not in progress.
        """
        snapshot = Snapshot.parse("100:105:101,103")
        self.assertEqual(
            [x for x in range(98, 108) if snapshot.visible(x)], [98, 99, 100, 102, 104]
        )
        self.assertTrue(Snapshot.parse("10:10:").visible(7))
        self.assertFalse(Snapshot.parse("10:10:").visible(10))
        self.assertEqual(snapshot.text(), "100:105:101,103")


class PositionTests(SynchronousTestCase):
    @given(positions())
    def test_round_trip(self, position: Position) -> None:
        """
        A position comes back from its text unchanged, and the text is
        short.
        """
        text = position.encode()
        self.assertEqual(Position.decode(text), position)
        self.assertLess(len(text), 200)

    def test_covers(self) -> None:
        """
        A position covers what its snapshot sees, the transactions handed
        over, and, up to its message, the poll in progress or its own
        transaction.
        """
        since = Snapshot.parse("100:110:105")
        polled = Position(since, (112,), Snapshot.parse("100:120:117"), 111, 3)
        self.assertTrue(polled.covers(104, 9))
        self.assertTrue(polled.covers(112, 9))
        self.assertTrue(polled.covers(105, 1))
        self.assertTrue(polled.covers(111, 3))
        self.assertFalse(polled.covers(111, 4))
        self.assertFalse(polled.covers(113, 1))
        self.assertFalse(polled.covers(117, 1))
        self.assertFalse(polled.covers(125, 1))
        local = Position(since, (), None, 115, 2)
        self.assertTrue(local.covers(115, 2))
        self.assertFalse(local.covers(115, 3))
        self.assertFalse(local.covers(111, 1))

    @given(positions(), positions())
    def test_includes(self, position: Position, other: Position) -> None:
        """
        A position said to include another covers every message the other
        covers.
        """
        if not position.includes(other):
            return
        for xact in sorted(_near(position) | _near(other)):
            for seq in (1, 10**9):
                if other.covers(xact, seq):
                    self.assertTrue(position.covers(xact, seq), (xact, seq))

    def test_includes_earlier(self) -> None:
        """
        A later snapshot includes an earlier one; transactions handed over
        make up for what a snapshot does not see yet.
        """
        earlier = Position(
            Snapshot.parse("100:110:105"), (112,), Snapshot.parse("100:115:"), 113, 2
        )
        later = Position(Snapshot.parse("105:120:116"))
        self.assertTrue(later.includes(earlier))
        self.assertTrue(later.includes(later))
        self.assertFalse(earlier.includes(later))
        self.assertFalse(Position(Snapshot.parse("100:111:")).includes(earlier))
        self.assertTrue(Position(Snapshot.parse("100:111:"), (111, 112, 113)).includes(earlier))
        self.assertFalse(Position(Snapshot.parse("100:120:105")).includes(earlier))
        self.assertTrue(Position(Snapshot.parse("100:120:105"), (105,)).includes(earlier))

    def test_refused(self) -> None:
        """
        Text that is not a position, or too long, is refused with
        ValueError.
        """
        self.assertEqual(Position.decode("1.2.;;;;"), Position(Snapshot(1, 2)))
        for text in [
            "",
            "x",
            "1.2.;;;;;",
            "a.b.c;;;zz;",
            "1.2.;;;5;",
            "1.2." * 1000,
            "-1.2.;;;;",
            "2.1.;;;;",
        ]:
            with self.assertRaises(ValueError, msg=text):
                Position.decode(text)
        self.assertGreater(len("1.2." * 1000), MAX_ENCODED)


class SQLAgreementTests(TestCase):
    """
    realtime.covered answers as L{Position.covers} does.
    """

    @inlineCallbacks
    def setUp(self) -> Any:  # type: ignore[override]
        self.url = create_database(self)
        yield migrate(reactor, self.url)

    def test_covered(self) -> None:
        """
        For sample positions and messages, PostgreSQL and Python agree.
        """
        since = Snapshot.parse("100:110:105")
        cases = [
            Position(since),
            Position(since, (112, 115)),
            Position(since, (112,), Snapshot.parse("100:120:117"), 111, 3),
            Position(since, (), None, 115, 2),
        ]
        messages = [
            (x, s) for x in (99, 104, 105, 107, 111, 112, 115, 117, 125) for s in (1, 2, 3, 4)
        ]
        for position in cases:
            rows = run_sql(
                self.url,
                "SELECT x, s, realtime.covered(%s::pg_snapshot, %s::xid8[], %s::pg_snapshot,"
                " %s::xid8, %s, x::text::xid8, s)"
                " FROM unnest(%s::bigint[], %s::bigint[]) AS m (x, s)",
                (
                    position.since.text(),
                    [str(x) for x in position.handed],
                    None if position.upto is None else position.upto.text(),
                    None if position.xact is None else str(position.xact),
                    position.seq,
                    [x for x, _ in messages],
                    [s for _, s in messages],
                ),
            )
            self.assertEqual(
                {(x, s): covered for x, s, covered in rows},
                {(x, s): position.covers(x, s) for x, s in messages},
                position,
            )
