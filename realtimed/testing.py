"""
Fakes of realtimed's seams, shipped with the package for the tests of code
that uses them, and held to the behaviour of the real things by shared
tests (``tests/test_testing.py`` runs the same checks on the fake and on
the real one).

- `FakePool`: an `IQueries` connection pool whose statements wait for the
  test to answer them, or are answered by a function the test gives.
- `FakeClock`: Twisted's `Clock`, starting at a given time and refusing a
  negative delay as the reactor does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from attrs import define, field
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import Clock
from zope.interface import implementer

from realtimed.store.pool import IQueries

#: A function that answers a statement as the database would: with its rows,
#: or with the exception it fails with.
Responder = Callable[[str, Any], "list[tuple[Any, ...]] | BaseException"]


class FakeClock(Clock):
    """
    A clock for tests: time stands still until advanced.  Like the reactor
    (and unlike Twisted's plain `Clock`), it refuses to schedule a call in
    the past.
    """

    def __init__(self, now: float = 0.0) -> None:
        super().__init__()
        self.rightNow = now

    def callLater(
        self, delay: float, callable: Callable[..., Any], *args: Any, **kw: Any
    ) -> IDelayedCall:
        # The reactor asserts exactly this.
        assert delay >= 0, f"{delay} is not greater than or equal to 0 seconds"
        return super().callLater(delay, callable, *args, **kw)


@define(eq=False)
class PendingQuery:
    """
    A statement sent to a `FakePool`, waiting for its answer.
    """

    sql: str
    params: Any
    done: Deferred[Any]

    def answer(self, rows: list[tuple[Any, ...]] | None = None) -> None:
        """
        The database answers with C{rows} (nothing, for an operation).
        """
        self.done.callback(rows)

    def fail(self, error: BaseException) -> None:
        """
        The statement fails with C{error}.
        """
        self.done.errback(error)


@implementer(IQueries)
@define(eq=False, slots=False)
class FakePool:
    """
    A connection pool that records each statement in L{pending}; the test
    answers it (L{pop}, then L{PendingQuery.answer} or
    L{PendingQuery.fail}).  Given a C{respond} function and a C{clock}, it
    answers each statement itself, at the next turn of the clock, as the
    function says.

    Transactions of several statements (C{runInteraction}) are not faked.
    """

    respond: Responder | None = None
    clock: Any = None
    pending: list[PendingQuery] = field(factory=list, init=False)
    closed: bool = field(default=False, init=False)

    def runQuery(self, sql: str, params: Any = None) -> Deferred[list[tuple[Any, ...]]]:
        """
        Send C{sql}; the Deferred fires when it is answered.
        """
        if self.closed:
            return fail(CancelledError("the connection pool is closed"))
        query = PendingQuery(sql, params, Deferred())
        if self.respond is None:
            self.pending.append(query)
        else:
            self.clock.callLater(0, self._respond, query)
        return query.done

    def runOperation(self, sql: str, params: Any = None) -> Deferred[None]:
        """
        Send C{sql} for no rows; the Deferred fires when it is answered.
        """
        d: Deferred[Any] = self.runQuery(sql, params)
        return d.addCallback(lambda _: None)

    def runInteraction(
        self, interaction: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Deferred[Any]:
        """
        Not faked: a fake pool has no cursor to run an interaction on.
        """
        return fail(NotImplementedError("FakePool runs no interactions"))

    def pop(self, containing: str) -> PendingQuery:
        """
        The oldest pending statement whose text contains C{containing},
        taken off the list.

        @raise AssertionError: If there is none.
        """
        for index, query in enumerate(self.pending):
            if containing in query.sql:
                del self.pending[index]
                return query
        raise AssertionError(
            f"no statement with {containing!r} among {[q.sql for q in self.pending]}"
        )

    def close(self) -> None:
        """
        Later statements fail, as with a closed pool.
        """
        self.closed = True

    def _respond(self, query: PendingQuery) -> None:
        assert self.respond is not None
        try:
            outcome = self.respond(query.sql, query.params)
        except Exception as e:
            outcome = e
        if isinstance(outcome, BaseException):
            query.fail(outcome)
        else:
            query.answer(outcome)
