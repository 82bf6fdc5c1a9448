"""
A small pool of txpostgres connections for the daemon's queries.

Connections are opened on demand up to a limit and kept while they work.  A
connection whose server went away (a PostgreSQL restart, a terminated
backend, a dropped link) is closed and forgotten rather than handed out
again, so the first query after the server is back opens a fresh one.

`DatabaseConnection` is the txpostgres connection both the pool and the
LISTEN connection use: it turns a read error on an idle connection into an
orderly loss (reported to whoever asked) instead of an unhandled exception
in the reactor.
"""

from __future__ import annotations

import re
import select
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import psycopg2
from attrs import define, field
from twisted.application.service import Service
from twisted.internet import main
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from txpostgres.txpostgres import Connection, RollbackFailed
from zope.interface import Interface, implementer

from realtimed.lifecycle import Readiness

log = Logger()

T = TypeVar("T")

# Seconds a connection attempt may take before it is given up.
CONNECT_TIMEOUT = 10.0

# libpq TCP keepalives, so that a link that died silently in the middle of a
# query is noticed (no effect on unix sockets).
TCP_KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}


class IQueries(Interface):
    """
    What the rest of realtimed uses of a connection pool: statements, each
    in its own transaction, and transactions of several.  The answer to a
    statement always comes later, never before the call returns.
    `realtimed.testing.FakePool` is the fake, held to the same behaviour.
    """

    def runQuery(sql: str, params: Any = None) -> Deferred[list[tuple[Any, ...]]]:
        """
        Run one statement; fires with its rows, or fails with the database's
        error (a C{psycopg2.Error}), or with C{CancelledError} once closed.
        """

    def runOperation(sql: str, params: Any = None) -> Deferred[None]:
        """
        Run one statement for no rows; fires with C{None}.
        """

    def runInteraction(interaction: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
        """
        Run C{interaction(cursor, *args, **kwargs)} in one transaction,
        committed when it succeeds and rolled back when it fails.
        """


class PoolBusy(Exception):
    """
    Every connection of the pool is in use and as many statements as it
    lets wait are waiting: the statement is refused rather than queued.
    """


def redact_dsn(dsn: str) -> str:
    """
    C{dsn} (a URL or a libpq C{key=value} string) with any password replaced
    by C{***}, fit for logs.
    """
    if "://" in dsn:
        dsn = re.sub(r"^([a-z]+://[^:/@?]*:)[^@/?]*@", r"\1***@", dsn)
        return re.sub(r"(?i)([?&]password=)[^&]*", r"\1***", dsn)
    return re.sub(r"(?i)(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", dsn)


def is_disconnect(failure: Failure) -> bool:
    """
    Does C{failure} mean the connection it happened on is unusable?
    """
    return (
        failure.check(psycopg2.OperationalError, psycopg2.InterfaceError, RollbackFailed)
        is not None
    )


class DatabaseConnection(Connection):  # type: ignore[misc]
    """
    A txpostgres connection that reports its loss.

    txpostgres keeps an idle connection registered with the reactor to see
    NOTIFY events; when the server closes it, reading raises and the reactor
    would log that as an unhandled error.  Here the error is taken as the
    end of the connection, and C{lost} (if set) is called once with the
    reason.
    """

    lost: Callable[[Failure], None] | None = None
    _reportedLoss = False

    def connectionLost(self, reason: Failure) -> None:
        if self._connection is not None:
            Connection.connectionLost(self, reason)
        self._reportLoss(reason)

    def _reportLoss(self, reason: Failure) -> None:
        if self._reportedLoss:
            return
        self._reportedLoss = True
        if self._connection is not None:
            self.reactor.removeReader(self)
            self.reactor.removeWriter(self)
        if self._connection is not None and not self._connection.closed:
            try:
                self._connection.close()
            except psycopg2.Error:
                pass
        if self.lost is not None:
            self.lost(reason)

    def doRead(self) -> Any:
        try:
            Connection.doRead(self)
        except psycopg2.Error as e:
            # Whatever arrived with the error is still handed over.
            self.checkForNotifies()
            return e
        if self._connection is not None and self._connection.closed:
            return main.CONNECTION_LOST
        return None

    def checkForNotifies(self) -> None:
        """
        Hand every received NOTIFY to the observers now, in the order the
        server sent them.  (txpostgres spreads this over a cooperator, where
        the events of two reads can interleave.)
        """
        if self._connection is not None and self._connection.notifies:
            for _ in self._checkForNotifies():
                pass

    @property
    def isOpen(self) -> bool:
        """
        Is the connection open as far as this side knows?
        """
        return (
            not self._reportedLoss and self._connection is not None and not self._connection.closed
        )

    def stillOpen(self) -> bool:
        """
        Check, without blocking, whether an idle connection is still usable:
        when the server has closed it, the goodbye is already waiting on the
        socket.
        """
        if not self.isOpen:
            return False
        if self.lock.locked or self._cursors:
            return True
        if not _readable(self._connection):
            return True
        # Reading may close the socket, which must leave the reactor first.
        self.reactor.removeReader(self)
        try:
            # The server's last message and the end of the stream may need
            # a read each.
            for _ in range(4):
                self._connection.poll()
                if self._connection.closed or self._connection.fileno() < 0:
                    break
                if not _readable(self._connection):
                    break
        except (psycopg2.Error, OSError, ValueError):
            self._reportLoss(Failure())
            return False
        if self._connection.closed or self._connection.fileno() < 0:
            self._reportLoss(Failure(main.CONNECTION_LOST))
            return False
        self.reactor.addReader(self)
        self.checkForNotifies()
        return True

    def close(self) -> None:
        if self._connection is None:
            self._reportLoss(Failure(main.CONNECTION_DONE))
            return
        Connection.close(self)


def _readable(source: Any) -> bool:
    """
    Is there something to read on C{source} (an object with C{fileno()}),
    or has its peer hung up?  Never blocks.

    This uses C{poll(2)} rather than C{select(2)}: a daemon holding
    thousands of client sockets opens its database connections on file
    descriptors above C{FD_SETSIZE} (1024), which C{select} cannot watch.
    """
    poller = select.poll()
    poller.register(source, select.POLLIN | select.POLLPRI)
    return bool(poller.poll(0))


def open_connection(
    reactor: Any,
    dsn: str,
    timeout: float = CONNECT_TIMEOUT,
    clock: Any = None,
    **parameters: Any,
) -> Deferred[DatabaseConnection]:
    """
    Open a L{DatabaseConnection} to C{dsn}, giving up after C{timeout}
    seconds (libpq's own C{connect_timeout} does not apply to non-blocking
    connections).  C{parameters} are further libpq connection parameters.
    """
    if clock is None:
        clock = reactor
    connection = DatabaseConnection(reactor=reactor)
    d: Deferred[Any] = connection.connect(dsn, **parameters)

    def timedOut() -> None:
        connection.close()

    timer = clock.callLater(timeout, timedOut)

    def connected(_: object) -> DatabaseConnection:
        if timer.active():
            timer.cancel()
        return connection

    def failed(reason: Failure) -> Failure:
        if timer.active():
            timer.cancel()
        else:
            reason = Failure(psycopg2.OperationalError(f"connecting timed out after {timeout}s"))
        connection.close()
        return reason

    d.addCallbacks(connected, failed)
    return d


@implementer(IQueries)
@define(eq=False)
class ConnectionPool(Service):
    """
    At most C{size} connections to C{dsn}, opened as needed.

    As a service it opens its first connection when started (ready once it
    is open, see L{whenReady}) and closes them all when stopped.

    @ivar reactor: The reactor (file descriptors and time).
    @ivar dsn: libpq URL or C{key=value} string; never logged as is.
    @ivar size: The most connections open at once.
    @ivar setup: Statements run, in order, on each new connection before it
        is used (session settings, prepared statements).  A connection on
        which one fails is closed, and the query that wanted it fails.
    @ivar warn_connect_failures: Whether a connection that cannot be opened
        is logged here; an owner that reports its failed queries itself
        turns this off.
    @ivar application_name: How the pool's connections are named in
        PostgreSQL's ``pg_stat_activity``, unless C{dsn} names them.
    @ivar statement_timeout: Seconds a statement of the pool may run before
        PostgreSQL cancels it; C{None} for no limit.
    @ivar max_waiting: How many statements may wait for a connection;
        past that they fail at once with L{PoolBusy}.
    @ivar on_wait: Called with the seconds each statement waited for its
        connection (opening one included), if set.
    """

    reactor: Any
    dsn: str = field(repr=redact_dsn)
    size: int = 4
    connect_timeout: float = CONNECT_TIMEOUT
    setup: Sequence[str] = ()
    warn_connect_failures: bool = True
    application_name: str = "realtimed"
    statement_timeout: float | None = 10.0
    max_waiting: int = 1000
    on_wait: Callable[[float], object] | None = None
    _idle: list[DatabaseConnection] = field(factory=list, init=False)
    _open: int = field(default=0, init=False)
    _waiting: deque[Deferred[DatabaseConnection]] = field(factory=deque, init=False)
    _closed: bool = field(default=False, init=False)
    _ready: Readiness = field(factory=Readiness, init=False)
    _drained: Readiness = field(factory=Readiness, init=False)

    def startService(self) -> None:
        Service.startService(self)
        self._ready.reset()
        self.start().addCallbacks(self._ready.succeed, self._ready.fail)

    def stopService(self) -> Deferred[None]:
        """
        Close the pool; the Deferred fires once every connection is closed,
        those in use once their work is done.
        """
        Service.stopService(self)
        self.close()
        return self._drained.wait()

    def whenReady(self) -> Deferred[None]:
        """
        Once started as a service: a Deferred firing when its first
        connection is open, or failing if it cannot be opened.
        """
        return self._ready.wait()

    def start(self) -> Deferred[None]:
        """
        Open the first connection, so a server that cannot be reached is
        known at once.

        @return: A Deferred firing when it is open, or failing.
        """
        self._closed = False
        self._drained.reset()
        d: Deferred[Any] = self._checkout()
        d.addCallback(self._checkin)
        return d

    def close(self) -> None:
        """
        Close every idle connection; connections in use are closed as they
        come back.  Later queries fail.
        """
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            self._open -= 1
            connection.close()
        waiting, self._waiting = self._waiting, deque()
        for waiter in waiting:
            waiter.errback(CancelledError("the connection pool is closed"))
        self._check_drained()

    def runQuery(self, *args: Any, **kwargs: Any) -> Deferred[list[tuple[Any, ...]]]:
        """
        Run one query in its own transaction; fires with its rows.
        """
        return self._using(lambda c: c.runQuery(*args, **kwargs))

    def runOperation(self, *args: Any, **kwargs: Any) -> Deferred[None]:
        """
        Run one statement in its own transaction; fires with C{None}.
        """
        return self._using(lambda c: c.runOperation(*args, **kwargs))

    def runInteraction(
        self, interaction: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Deferred[Any]:
        """
        Run C{interaction(cursor, *args, **kwargs)} inside a transaction,
        committed when it succeeds and rolled back when it fails; fires with
        its result.
        """
        return self._using(lambda c: c.runInteraction(interaction, *args, **kwargs))

    def ping(self, timeout: float = 5.0) -> Deferred[bool]:
        """
        Can the database be queried right now?  Answers C{False} when it
        cannot within C{timeout} seconds; never fails.
        """
        answer: Deferred[bool] = Deferred()
        query: Deferred[Any] = self.runQuery("SELECT 1")

        def tooLate() -> None:
            if not answer.called:
                answer.callback(False)

        timer = self.reactor.callLater(timeout, tooLate)

        def done(alive: bool) -> None:
            if timer.active():
                timer.cancel()
            if not answer.called:
                answer.callback(alive)

        query.addCallbacks(lambda rows: rows == [(1,)], lambda _: False)
        query.addCallback(done)
        query.addErrback(lambda f: log.failure("Pinging the database failed", f))
        return answer

    @property
    def waiting(self) -> int:
        """
        How many statements wait for a connection now.
        """
        return len(self._waiting)

    def _using(self, work: Callable[[DatabaseConnection], Deferred[T]]) -> Deferred[T]:
        on_wait = self.on_wait
        asked = self.reactor.seconds() if on_wait is not None else 0.0
        d: Deferred[Any] = self._checkout()

        def run(connection: DatabaseConnection) -> Deferred[T]:
            if on_wait is not None:
                on_wait(self.reactor.seconds() - asked)
            result = work(connection)

            def done(outcome: object) -> object:
                if isinstance(outcome, Failure) and is_disconnect(outcome) and connection.isOpen:
                    connection.close()
                self._checkin(connection)
                return outcome

            result.addBoth(done)
            return result

        d.addCallback(run)
        return d

    def _checkout(self) -> Deferred[DatabaseConnection]:
        if self._closed:
            return fail(CancelledError("the connection pool is closed"))
        while self._idle:
            connection = self._idle.pop()
            try:
                usable = connection.stillOpen()
            except Exception:
                # A connection that cannot even be checked is not handed out;
                # the query goes to another one.
                log.failure("Checking an idle database connection failed")
                usable = False
                if connection.isOpen:
                    connection.close()
            if usable:
                return succeed(connection)
            self._open -= 1
            self._check_drained()
        if self._open < self.size:
            self._open += 1
            d = open_connection(
                self.reactor,
                self.dsn,
                self.connect_timeout,
                fallback_application_name=self.application_name,
                **TCP_KEEPALIVES,
            )
            if self.setup or self.statement_timeout is not None:
                d.addCallback(self._setUp)

            def failed(reason: Failure) -> Failure:
                self._open -= 1
                self._check_drained()
                if self.warn_connect_failures:
                    log.warn(
                        "Cannot connect to PostgreSQL at {dsn}: {error}",
                        dsn=redact_dsn(self.dsn),
                        error=reason.getErrorMessage().strip(),
                    )
                self._serveWaiter()
                return reason

            d.addErrback(failed)
            return d
        if len(self._waiting) >= self.max_waiting:
            return fail(PoolBusy(f"{len(self._waiting)} statements wait for a connection"))
        waiter: Deferred[DatabaseConnection] = Deferred()
        self._waiting.append(waiter)
        return waiter

    def _setUp(self, connection: DatabaseConnection) -> Deferred[DatabaseConnection]:
        def run(_: object, statement: str) -> Any:
            return connection.runOperation(statement)

        d: Deferred[Any] = succeed(None)
        setup = list(self.setup)
        if self.statement_timeout is not None:
            milliseconds = int(self.statement_timeout * 1000)
            setup.insert(0, f"SET statement_timeout TO {milliseconds}")
        for statement in setup:
            d.addCallback(run, statement)

        def failed(reason: Failure) -> Failure:
            connection.close()
            return reason

        d.addCallbacks(lambda _: connection, failed)
        return d

    def _checkin(self, connection: DatabaseConnection) -> None:
        if self._closed or not connection.isOpen:
            self._open -= 1
            self._check_drained()
            if connection.isOpen:
                connection.close()
            self._serveWaiter()
            return
        if self._waiting:
            self._waiting.popleft().callback(connection)
            return
        self._idle.append(connection)

    def _check_drained(self) -> None:
        if self._closed and self._open == 0:
            self._drained.succeed(None)

    def _serveWaiter(self) -> None:
        """
        A slot came free without a connection: let the next waiter open one.
        """
        if self._waiting and self._open < self.size:
            waiter = self._waiting.popleft()
            self._checkout().chainDeferred(waiter)
