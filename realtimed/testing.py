"""
Fakes of realtimed's seams, shipped with the package for the tests of code
that uses them, and proven against the real things by shared tests
(``tests/test_testing.py`` runs the same checks on the fake and on the real
one).

- `FakePool`: a connection pool whose statements wait for the test to
  answer them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from attrs import define, field
from twisted.internet.defer import CancelledError, Deferred, fail


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
        The database answers with C{rows} (nothing for an operation).
        """
        self.done.callback(rows)

    def fail(self, error: BaseException) -> None:
        """
        The statement fails with C{error}.
        """
        self.done.errback(error)


@define(eq=False, slots=False)
class FakePool:
    """
    A connection pool (see `realtimed.store.pool.Queries`) that records each
    statement; the test answers it or fails it.
    """

    pending: list[PendingQuery] = field(factory=list)
    closed: bool = False

    def runQuery(self, sql: str, params: Any = None) -> Deferred[list[tuple[Any, ...]]]:
        """
        Send C{sql}; the Deferred fires when the test answers it.
        """
        if self.closed:
            return fail(CancelledError("the connection pool is closed"))
        d: Deferred[Any] = Deferred()
        self.pending.append(PendingQuery(sql, params, d))
        return d

    def runOperation(self, sql: str, params: Any = None) -> Deferred[None]:
        """
        Send C{sql} for no rows; the Deferred fires when the test answers it.
        """
        d: Deferred[Any] = self.runQuery(sql, params)
        return d.addCallback(lambda _: None)

    def runInteraction(
        self, interaction: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Deferred[Any]:
        """
        Transactions are not faked: a fake pool cannot run a cursor.
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
