"""
Tests for realtimed.embedded: the PostgreSQL realtimed runs itself when no
database URL is configured.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import psycopg2
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from realtimed.embedded import EmbeddedNotStarted, EmbeddedPostgres


def query(url: str, statement: str) -> list[tuple[Any, ...]]:
    connection = psycopg2.connect(url)
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(statement)
            return list(cursor.fetchall()) if cursor.description else []
    finally:
        connection.close()


class EmbeddedPostgresTests(TestCase):
    """
    The embedded server starts under the data directory, serves the
    C{realtimed} database, stops, and keeps its data for the next start.
    """

    timeout = 180

    def setUp(self) -> None:
        self.data_dir = tempfile.mkdtemp(prefix="realtimed-test-data-")
        self.addCleanup(shutil.rmtree, self.data_dir, ignore_errors=True)

    def service(self) -> EmbeddedPostgres:
        service = EmbeddedPostgres(reactor, self.data_dir)
        self.addCleanup(service.stop)
        return service

    @inlineCallbacks
    def test_start_stop_restart(self) -> Any:
        """
        The service starts a server under C{<data-dir>/postgres} whose URL
        answers queries on the C{realtimed} database; stopping it stops the
        server; starting again reuses the files and the data.
        """
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)

        first = self.service()
        first.startService()
        url = yield first.whenReady()
        self.assertEqual(first.url, url)
        self.assertTrue((Path(self.data_dir) / "postgres" / "PG_VERSION").exists())
        rows = yield deferToThread(query, url, "SELECT 1, current_database()")
        self.assertEqual(rows, [(1, "realtimed")])
        yield deferToThread(query, url, "CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)")

        yield first.stopService()
        self.assertIsNone(first.url)
        yield self.assertFailure(deferToThread(query, url, "SELECT 1"), psycopg2.OperationalError)

        second = self.service()
        second.startService()
        url = yield second.whenReady()
        rows = yield deferToThread(query, url, "SELECT x FROM kept")
        self.assertEqual(rows, [(42,)])
        yield second.stopService()

        messages = [e.get("log_format", "") for e in events]
        self.assertIn("Starting embedded PostgreSQL in {directory}", messages)
        self.assertIn("Embedded PostgreSQL ready at {url}", messages)

    def test_not_started(self) -> None:
        """
        Before it starts there is no URL to wait for.
        """
        service = EmbeddedPostgres(reactor, self.data_dir)
        self.failureResultOf(service.whenReady(), EmbeddedNotStarted)
        self.assertIsNone(service.url)
        self.successResultOf(service.stop())

    @inlineCallbacks
    def test_start_fails(self) -> Any:
        """
        When the server cannot start, C{start} and every C{whenReady} fail
        with the reason (left to the caller to report), and starting may be
        tried again.
        """
        blocker = Path(self.data_dir) / "file"
        blocker.write_text("not a directory")
        service = EmbeddedPostgres(reactor, str(blocker / "data"))
        waiting = service.start()
        also = service.whenReady()
        yield self.assertFailure(waiting, OSError)
        yield self.assertFailure(also, OSError)
        self.assertIsNone(service.url)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 0)
        yield self.assertFailure(service.start(), OSError)
        yield service.stop()

    @inlineCallbacks
    def test_slow_start(self) -> Any:
        """
        When pgserver gives up waiting for C{pg_ctl start} while the server
        goes on starting, the service waits for it, takes it over, and
        stops it as usual.
        """
        from pgserver import postgres_server

        real = postgres_server.pg_ctl

        def slow(args: list[str], **kwargs: Any) -> str:
            output = real(args, **kwargs)
            if "start" in args:
                raise subprocess.TimeoutExpired(args, kwargs.get("timeout", 10))
            return str(output)

        self.patch(postgres_server, "pg_ctl", slow)
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        service = self.service()
        url = yield service.start()
        rows = yield deferToThread(query, url, "SELECT 1")
        self.assertEqual(rows, [(1,)])
        self.assertTrue(any("slow to start" in e.get("log_format", "") for e in events))
        yield service.stop()
        yield self.assertFailure(deferToThread(query, url, "SELECT 1"), psycopg2.OperationalError)
