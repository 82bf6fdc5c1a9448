"""
Tests for realtimed.store.migrations against a real PostgreSQL.
"""

from __future__ import annotations

from typing import Any

import psycopg2
from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.trial.unittest import TestCase
from txpostgres.txpostgres import RollbackFailed

from realtimed.store.migrations import (
    MIGRATION_LOCK,
    Migration,
    available_migrations,
    migrate,
)
from tests.support import create_database, run_sql


class MigrateTests(TestCase):
    """
    Migrations bring a database up to date, once.
    """

    def setUp(self) -> None:
        self.url = create_database(self)
        self.versions = [m.version for m in available_migrations()]

    def recorded(self) -> list[int]:
        return [
            row[0]
            for row in run_sql(
                self.url, "SELECT version FROM realtime.schema_migrations ORDER BY version"
            )
        ]

    def test_available(self) -> None:
        """
        The shipped migrations start with 0001, in order, each once.
        """
        self.assertEqual(self.versions[0], 1)
        self.assertEqual(self.versions, sorted(set(self.versions)))

    @inlineCallbacks
    def test_empty_database(self) -> Any:
        """
        On an empty database every migration is applied and recorded, and
        the schema's tables exist.
        """
        applied = yield migrate(reactor, self.url)
        self.assertEqual(applied, self.versions)
        self.assertEqual(self.recorded(), self.versions)
        tables = run_sql(
            self.url,
            "SELECT tablename FROM pg_tables WHERE schemaname = 'realtime' ORDER BY tablename",
        )
        self.assertIn(("channels",), tables)
        self.assertIn(("messages",), tables)

    @inlineCallbacks
    def test_rerun_is_noop(self) -> Any:
        """
        Running the migrations again applies nothing.
        """
        yield migrate(reactor, self.url)
        applied = yield migrate(reactor, self.url)
        self.assertEqual(applied, [])
        self.assertEqual(self.recorded(), self.versions)

    @inlineCallbacks
    def test_concurrent(self) -> Any:
        """
        Two processes starting together both succeed, and each migration is
        applied by exactly one of them.
        """
        first, second = yield gatherResults(
            [migrate(reactor, self.url), migrate(reactor, self.url)], consumeErrors=True
        )
        self.assertEqual(sorted(first + second), self.versions)
        self.assertEqual(self.recorded(), self.versions)

    @inlineCallbacks
    def test_failure_rolls_back(self) -> Any:
        """
        A migration that fails leaves nothing behind, is not recorded, and
        releases the lock, so a later run can apply it.
        """
        good = Migration(1, "first", "CREATE TABLE realtime.first (x int);")
        bad = Migration(2, "second", "CREATE TABLE realtime.second (x int); SELECT 1/0;")
        yield self.assertFailure(
            migrate(reactor, self.url, [good, bad]), psycopg2.errors.DivisionByZero
        )
        self.assertEqual(self.recorded(), [1])
        self.assertEqual(
            run_sql(self.url, "SELECT to_regclass('realtime.second') IS NULL"), [(True,)]
        )
        self.assertEqual(
            run_sql(
                self.url,
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = %s "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                (MIGRATION_LOCK & 0xFFFFFFFF,),
            ),
            [(0,)],
        )
        fixed = Migration(2, "second", "CREATE TABLE realtime.second (x int);")
        applied = yield migrate(reactor, self.url, [good, fixed])
        self.assertEqual(applied, [2])

    @inlineCallbacks
    def test_connection_lost(self) -> Any:
        """
        A run whose connection dies fails with that reason (not hidden by
        the unlock), and the next run applies the migration.
        """
        dying = Migration(1, "first", "SELECT pg_terminate_backend(pg_backend_pid());")
        yield self.assertFailure(
            migrate(reactor, self.url, [dying]), RollbackFailed, psycopg2.OperationalError
        )
        self.flushLoggedErrors(psycopg2.OperationalError, psycopg2.InterfaceError)
        good = Migration(1, "first", "CREATE TABLE realtime.first (x int);")
        applied = yield migrate(reactor, self.url, [good])
        self.assertEqual(applied, [1])
