"""
The fakes of L{realtimed.testing} behave as the real things do, as far as
realtimed's code relies on them: each check below runs on the fake and on
the real one.
"""

from __future__ import annotations

from typing import Any

import psycopg2
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks
from twisted.internet.error import AlreadyCalled
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from realtimed.store.pool import ConnectionPool, IQueries
from realtimed.testing import FakeClock, FakePool
from tests.support import create_database

ROWS = "SELECT 1::int, 'one'::text"
MISSING = "SELECT * FROM no_such_table"


def like_postgresql(sql: str, params: Any) -> list[tuple[Any, ...]] | BaseException:
    """
    What PostgreSQL answers to the statements of these checks.
    """
    if sql == ROWS:
        return [(1, "one")]
    if sql == MISSING:
        return psycopg2.errors.UndefinedTable('relation "no_such_table" does not exist')
    raise AssertionError(f"unexpected statement {sql!r}")


class QueriesContract:
    """
    What realtimed relies on from an L{IQueries}.
    """

    pool: Any

    def make_pool(self: Any) -> Any:
        raise NotImplementedError

    def test_provides(self: Any) -> None:
        """
        It provides L{IQueries}.
        """
        self.assertTrue(verifyObject(IQueries, self.make_pool()))

    @inlineCallbacks
    def test_rows_later(self: Any) -> Any:
        """
        A query's rows come as a list of tuples, never before the call
        returns.
        """
        pool = self.make_pool()
        d = pool.runQuery(ROWS)
        self.assertNoResult(d)
        self.assertEqual((yield d), [(1, "one")])

    @inlineCallbacks
    def test_operation(self: Any) -> Any:
        """
        An operation fires with C{None}.
        """
        pool = self.make_pool()
        self.assertIsNone((yield pool.runOperation(ROWS)))

    @inlineCallbacks
    def test_failure(self: Any) -> Any:
        """
        A failing statement fails with the database's error, and the pool
        goes on answering.
        """
        pool = self.make_pool()
        yield self.assertFailure(pool.runQuery(MISSING), psycopg2.errors.UndefinedTable)
        self.assertEqual((yield pool.runQuery(ROWS)), [(1, "one")])

    def test_closed(self: Any) -> None:
        """
        Once closed, statements fail at once.
        """
        pool = self.make_pool()
        pool.close()
        self.failureResultOf(pool.runQuery(ROWS), CancelledError)


class RealPoolTests(QueriesContract, TestCase):
    def make_pool(self) -> ConnectionPool:
        if not hasattr(self, "url"):
            self.url = create_database(self)
        pool = ConnectionPool(reactor, self.url)
        self.addCleanup(pool.close)
        return pool


class FakePoolTests(QueriesContract, TestCase):
    def make_pool(self) -> FakePool:
        return FakePool(like_postgresql, reactor)

    def test_answered_by_the_test(self) -> None:
        """
        Without a responder, statements wait until the test answers them.
        """
        pool = FakePool()
        first = pool.runQuery("SELECT a")
        second = pool.runOperation("UPDATE b")
        pool.pop("UPDATE").answer()
        self.assertIsNone(self.successResultOf(second))
        self.assertNoResult(first)
        pool.pop("SELECT").fail(ValueError("no"))
        self.failureResultOf(first, ValueError)
        self.assertRaises(AssertionError, pool.pop, "SELECT")


class ClockContract:
    """
    What realtimed relies on from a clock (C{IReactorTime}).
    """

    clock: Any

    def advance(self: Any, seconds: float) -> Deferred[None]:
        raise NotImplementedError

    @inlineCallbacks
    def test_call_later(self: Any) -> Any:
        """
        A call runs once its delay has passed, not while scheduling it;
        its due time is when it was scheduled plus the delay; once it ran
        it is no longer active and cannot be cancelled.
        """
        ran: list[float] = []
        start = self.clock.seconds()
        call = self.clock.callLater(0.01, lambda: ran.append(self.clock.seconds()))
        scheduled = self.clock.seconds()
        self.assertTrue(start + 0.01 <= call.getTime() <= scheduled + 0.01)
        self.assertTrue(call.active())
        self.assertEqual(ran, [])
        yield self.advance(0.05)
        self.assertEqual(len(ran), 1)
        self.assertGreaterEqual(ran[0], start + 0.01)
        self.assertFalse(call.active())
        self.assertRaises(AlreadyCalled, call.cancel)

    @inlineCallbacks
    def test_cancel(self: Any) -> Any:
        """
        A cancelled call never runs and is no longer active.
        """
        ran: list[None] = []
        call = self.clock.callLater(0, ran.append, None)
        call.cancel()
        self.assertFalse(call.active())
        yield self.advance(0.01)
        self.assertEqual(ran, [])

    def test_no_past(self: Any) -> None:
        """
        A negative delay is refused.
        """
        self.assertRaises(AssertionError, self.clock.callLater, -1, lambda: None)


class ReactorClockTests(ClockContract, TestCase):
    def setUp(self) -> None:
        self.clock = reactor

    def advance(self, seconds: float) -> Deferred[None]:
        return deferLater(reactor, seconds, lambda: None)


class FakeClockTests(ClockContract, TestCase):
    def setUp(self) -> None:
        self.clock = FakeClock(1_800_000_000.0)

    def advance(self, seconds: float) -> Deferred[None]:
        self.clock.advance(seconds)
        d: Deferred[None] = Deferred()
        d.callback(None)
        return d

    def test_starts_at(self) -> None:
        """
        The fake clock starts at the time it is given.
        """
        self.assertEqual(self.clock.seconds(), 1_800_000_000.0)
