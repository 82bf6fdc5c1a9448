"""
Tests for realtimed.store.pool against a real PostgreSQL.
"""

from __future__ import annotations

import os
import resource
from typing import Any

import psycopg2
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, gatherResults, inlineCallbacks
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from realtimed.store.pool import ConnectionPool, PoolBusy, redact_dsn
from tests.support import create_database, run_sql, wait_for


class RedactTests(SynchronousTestCase):
    """
    Connection strings are logged without their password.
    """

    def test_url(self) -> None:
        """
        The password of a URL becomes C{***}; user, host and database stay.
        """
        self.assertEqual(
            redact_dsn("postgresql://me:s3cret@db.example:5432/app?sslmode=require"),
            "postgresql://me:***@db.example:5432/app?sslmode=require",
        )

    def test_url_query_password(self) -> None:
        """
        A password given as a URL query parameter is hidden too.
        """
        self.assertEqual(
            redact_dsn("postgresql:///app?host=/run&password=s3cret"),
            "postgresql:///app?host=/run&password=***",
        )

    def test_keywords(self) -> None:
        """
        A libpq C{key=value} string loses its password value.
        """
        self.assertEqual(
            redact_dsn("host=db user=me password='s e cret' dbname=app"),
            "host=db user=me password=*** dbname=app",
        )

    def test_no_password(self) -> None:
        """
        A URL without a password is unchanged.
        """
        url = "postgresql://postgres@127.0.0.1:5432/postgres"
        self.assertEqual(redact_dsn(url), url)


class ConnectionPoolTests(TestCase):
    """
    Queries through the pool.
    """

    def setUp(self) -> None:
        self.url = create_database(self)
        self.pool = ConnectionPool(reactor, self.url, size=2)
        self.addCleanup(self.pool.close)
        return self.pool.start()

    @inlineCallbacks
    def test_query_and_operation(self) -> Any:
        """
        C{runOperation} changes the database and C{runQuery} returns rows.
        """
        yield self.pool.runOperation("CREATE TABLE t (x int)")
        yield self.pool.runOperation("INSERT INTO t VALUES (%s), (%s)", (1, 2))
        rows = yield self.pool.runQuery("SELECT x FROM t ORDER BY x")
        self.assertEqual(rows, [(1,), (2,)])

    @inlineCallbacks
    def test_interaction_commits(self) -> Any:
        """
        An interaction that succeeds is committed and its result returned.
        """
        yield self.pool.runOperation("CREATE TABLE t (x int)")

        @inlineCallbacks
        def work(cursor: Any, value: int) -> Any:
            yield cursor.execute("INSERT INTO t VALUES (%s)", (value,))
            yield cursor.execute("SELECT count(*) FROM t")
            return cursor.fetchall()[0][0]

        count = yield self.pool.runInteraction(work, 7)
        self.assertEqual(count, 1)
        self.assertEqual(run_sql(self.url, "SELECT x FROM t"), [(7,)])

    @inlineCallbacks
    def test_interaction_rolls_back(self) -> Any:
        """
        An interaction that fails is rolled back and its failure returned.
        """
        yield self.pool.runOperation("CREATE TABLE t (x int)")

        @inlineCallbacks
        def work(cursor: Any) -> Any:
            yield cursor.execute("INSERT INTO t VALUES (1)")
            raise ValueError("no")

        yield self.assertFailure(self.pool.runInteraction(work), ValueError)
        self.assertEqual(run_sql(self.url, "SELECT x FROM t"), [])

    @inlineCallbacks
    def test_error_keeps_connection(self) -> Any:
        """
        An SQL error fails only its query; the pool goes on working.
        """
        yield self.assertFailure(
            self.pool.runQuery("SELECT * FROM no_such_table"), psycopg2.errors.UndefinedTable
        )
        rows = yield self.pool.runQuery("SELECT 2")
        self.assertEqual(rows, [(2,)])

    @inlineCallbacks
    def test_size_limit(self) -> Any:
        """
        More concurrent queries than connections all complete, on at most
        C{size} server backends.
        """
        queries = [
            self.pool.runQuery("SELECT pg_backend_pid() FROM pg_sleep(0.02)") for _ in range(8)
        ]
        results = yield gatherResults(queries, consumeErrors=True)
        backends = {rows[0][0] for rows in results}
        self.assertLessEqual(len(backends), 2)
        self.assertEqual(len(results), 8)

    @inlineCallbacks
    def test_ping(self) -> Any:
        """
        C{ping} answers C{True} while the database answers.
        """
        alive = yield self.pool.ping()
        self.assertIs(alive, True)

    @inlineCallbacks
    def test_terminated_connection_replaced(self) -> Any:
        """
        A connection the server terminated is not handed out again: the next
        query runs on a new one.
        """
        rows = yield self.pool.runQuery("SELECT pg_backend_pid()")
        pid = rows[0][0]
        run_sql(self.url, "SELECT pg_terminate_backend(%s, 10000)", (pid,))
        rows = yield self.pool.runQuery("SELECT pg_backend_pid()")
        self.assertNotEqual(rows[0][0], pid)

    @inlineCallbacks
    def test_failed_query_on_dead_connection(self) -> Any:
        """
        A query that fails because its connection died fails with that
        error, and the following query works on a fresh connection.
        """
        rows = yield self.pool.runQuery("SELECT pg_backend_pid()")
        pid = rows[0][0]
        failure = yield self.pool.runQuery(
            "SELECT pg_terminate_backend(pg_backend_pid())"
        ).addCallbacks(lambda _: [], lambda f: [f])
        for f in failure:
            self.assertTrue(f.check(psycopg2.OperationalError, psycopg2.InterfaceError))
        rows = yield self.pool.runQuery("SELECT pg_backend_pid()")
        self.assertNotEqual(rows[0][0], pid)

    def test_closed(self) -> Any:
        """
        After C{close}, queries fail and C{ping} answers C{False}.
        """
        self.pool.close()
        self.assertIs(self.successResultOf(self.pool.ping()), False)

    @inlineCallbacks
    def test_service(self) -> Any:
        """
        As a service, the pool is ready once its first connection is open;
        stopping it waits for the connections in use, then none is left.
        """
        pool = ConnectionPool(reactor, self.url, size=2, application_name="pool under test")
        pool.startService()
        yield pool.whenReady()
        named = (
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = 'pool under test'"
        )
        self.assertEqual(run_sql(self.url, named), [(1,)])
        busy = pool.runQuery("SELECT 7 FROM pg_sleep(0.1)")
        stopped = pool.stopService()
        self.assertNoResult(stopped)
        self.assertEqual((yield busy), [(7,)])
        yield stopped
        yield wait_for(lambda: run_sql(self.url, named) == [(0,)], "the connection to close")

    @inlineCallbacks
    def test_waiting_bounded(self) -> Any:
        """
        Past the most statements waiting for a connection, a statement
        fails at once with PoolBusy instead of queueing; the others run.
        """
        pool = ConnectionPool(reactor, self.url, size=1, max_waiting=2)
        self.addCleanup(pool.close)
        running = pool.runQuery("SELECT 1 FROM pg_sleep(0.2)")
        waiting = [pool.runQuery("SELECT 2"), pool.runQuery("SELECT 3")]
        self.failureResultOf(pool.runQuery("SELECT 4"), PoolBusy)
        self.assertEqual((yield running), [(1,)])
        self.assertEqual((yield gatherResults(waiting)), [[(2,)], [(3,)]])

    @inlineCallbacks
    def test_statement_timeout(self) -> Any:
        """
        The pool's statements are cancelled by PostgreSQL past the statement
        timeout (txpostgres reports that as CancelledError); the pool goes
        on.
        """
        pool = ConnectionPool(reactor, self.url, statement_timeout=0.1)
        self.addCleanup(pool.close)
        yield self.assertFailure(pool.runQuery("SELECT pg_sleep(30)"), CancelledError)
        self.assertEqual((yield pool.runQuery("SHOW statement_timeout")), [("100ms",)])

    @inlineCallbacks
    def test_service_unreachable(self) -> Any:
        """
        A pool whose server cannot be reached fails its readiness.
        """
        pool = ConnectionPool(reactor, "postgresql://postgres@127.0.0.1:1/none")
        pool.startService()
        self.addCleanup(pool.stopService)
        yield self.assertFailure(pool.whenReady(), psycopg2.OperationalError)
        self.flushLoggedErrors()


def occupy_low_descriptors(case: TestCase, above: int) -> None:
    """
    Take every free file descriptor below C{above}, until C{case} ends, so
    that the sockets opened meanwhile get numbers at least C{above}.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = above + 256
    if soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            raise SkipTest(f"needs {wanted} open files; the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        case.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
    taken: list[int] = []

    def release() -> None:
        for fd in taken:
            os.close(fd)

    case.addCleanup(release)
    while True:
        fd = os.open(os.devnull, os.O_RDONLY)
        if fd >= above:
            os.close(fd)
            return
        taken.append(fd)


class HighDescriptorTests(TestCase):
    """
    A process with thousands of client sockets opens its database
    connections on file descriptors that C{select(2)} cannot watch.
    """

    def setUp(self) -> None:
        self.url = create_database(self)
        occupy_low_descriptors(self, 1100)
        self.pool = ConnectionPool(reactor, self.url, size=2)
        self.addCleanup(self.pool.close)
        return self.pool.start()  # type: ignore[return-value]

    @inlineCallbacks
    def test_idle_connections_reused(self) -> Any:
        """
        Idle connections above descriptor 1024 are checked and handed out
        again: queries keep being answered on the same backends.
        """
        first = yield self.pool.runQuery("SELECT pg_backend_pid()")
        for _ in range(3):
            rows = yield self.pool.runQuery("SELECT pg_backend_pid()")
            self.assertEqual(rows, first)

    @inlineCallbacks
    def test_terminated_connection_replaced(self) -> Any:
        """
        An idle connection above descriptor 1024 that the server terminated
        is noticed when it is checked out, and the query runs on a new one.
        """
        rows = yield self.pool.runQuery("SELECT pg_backend_pid()")
        pid = rows[0][0]
        run_sql(self.url, "SELECT pg_terminate_backend(%s, 10000)", (pid,))
        rows = yield self.pool.runQuery("SELECT pg_backend_pid()")
        self.assertNotEqual(rows[0][0], pid)


class SetupTests(TestCase):
    """
    Statements run on each new connection of a pool.
    """

    def setUp(self) -> None:
        self.url = create_database(self)

    def pool(self, setup: tuple[str, ...], size: int = 1) -> ConnectionPool:
        pool = ConnectionPool(reactor, self.url, size=size, setup=setup)
        self.addCleanup(pool.close)
        return pool

    @inlineCallbacks
    def test_every_connection(self) -> Any:
        """
        Session settings and prepared statements of C{setup} are in place
        on every connection, the one replacing a terminated one included.
        """
        pool = self.pool(("SET application_name TO 'set up'", "PREPARE two AS SELECT 2"), size=2)
        queries = [
            pool.runQuery(
                "SELECT pg_backend_pid(), current_setting('application_name') FROM pg_sleep(0.05)"
            )
            for _ in range(2)
        ]
        results = yield gatherResults(queries, consumeErrors=True)
        self.assertEqual(len({rows[0][0] for rows in results}), 2)
        self.assertEqual({rows[0][1] for rows in results}, {"set up"})
        for rows in results:
            run_sql(self.url, "SELECT pg_terminate_backend(%s, 10000)", (rows[0][0],))
        rows = yield pool.runQuery("EXECUTE two")
        self.assertEqual(rows, [(2,)])
        rows = yield pool.runQuery("SELECT current_setting('application_name')")
        self.assertEqual(rows, [("set up",)])

    @inlineCallbacks
    def test_failing_statement(self) -> Any:
        """
        When a statement of C{setup} fails, the query that wanted the
        connection fails with that error, the connection is closed, and
        the next query tries a new one.
        """
        pool = self.pool(("PREPARE first AS SELECT x FROM later",))
        yield self.assertFailure(pool.runQuery("EXECUTE first"), psycopg2.errors.UndefinedTable)
        others = (
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        yield wait_for(
            lambda: run_sql(self.url, others) == [(0,)], "the failed connection to close"
        )
        # With room for one connection, this only works if the failed one
        # gave its place back.
        run_sql(self.url, "CREATE TABLE later (x int)")
        run_sql(self.url, "INSERT INTO later VALUES (7)")
        rows = yield pool.runQuery("EXECUTE first")
        self.assertEqual(rows, [(7,)])


class SilentLinkTests(TestCase):
    """
    A database that stops answering.
    """

    @inlineCallbacks
    def test_ping_times_out(self) -> Any:
        """
        C{ping} answers C{False} when the database does not answer in time,
        and the pool works again once the stuck connection is gone.
        """
        from tests.test_store_listener import start_proxy

        url = create_database(self)
        proxy, proxied = yield start_proxy(self, url)
        pool = ConnectionPool(reactor, proxied, size=1)
        self.addCleanup(pool.close)
        yield pool.start()
        alive = yield pool.ping()
        self.assertIs(alive, True)
        proxy.freeze()
        alive = yield pool.ping(timeout=0.2)
        self.assertIs(alive, False)
        for pipe in proxy.pipes:
            pipe.transport.loseConnection()
        alive = yield pool.ping(timeout=10.0)
        self.assertIs(alive, True)


class UnreachableTests(TestCase):
    """
    A pool whose server cannot be reached.
    """

    @inlineCallbacks
    def test_ping_false(self) -> Any:
        """
        C{ping} answers C{False} (and does not fail) when the server cannot
        be reached; C{start} fails.
        """
        pool = ConnectionPool(reactor, "postgresql://nobody@127.0.0.1:1/none", size=1)
        self.addCleanup(pool.close)
        yield self.assertFailure(pool.start(), psycopg2.OperationalError)
        alive = yield pool.ping()
        self.assertIs(alive, False)
        self.flushLoggedErrors()
