"""
Versioned schema migrations.

Each ``migrations/NNNN_name.sql`` file is applied once per database, in
order, in its own transaction, and recorded in
``realtime.schema_migrations``.  The whole run holds a session advisory lock,
so several realtimed processes starting together against one database wait
for each other and each migration is applied exactly once.
"""

from __future__ import annotations

import re
from collections.abc import Generator
from importlib import resources
from typing import Any

import psycopg2
from attrs import define, field, frozen
from twisted.application.service import Service
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.logger import Logger

from realtimed.lifecycle import Readiness
from realtimed.store.pool import open_connection, redact_dsn

log = Logger()

# pg_advisory_lock key: the bytes "realtime" as a bigint.
MIGRATION_LOCK = 0x7265616C74696D65

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@frozen
class Migration:
    version: int
    name: str
    sql: str


def available_migrations() -> list[Migration]:
    """
    Every migration shipped with realtimed, oldest first.
    """
    found = []
    for entry in resources.files("realtimed.store").joinpath("migrations").iterdir():
        match = _NAME.match(entry.name)
        if match is not None:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    return found


_BOOTSTRAP = """
CREATE SCHEMA IF NOT EXISTS realtime;
CREATE TABLE IF NOT EXISTS realtime.schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
"""


@inlineCallbacks
def migrate(
    reactor: Any, dsn: str, migrations: list[Migration] | None = None
) -> Generator[Deferred[Any], Any, list[int]]:
    """
    Bring the database at C{dsn} up to date.

    @return: A Deferred firing with the versions applied by this call (empty
        when the schema was already current).
    """
    if migrations is None:
        migrations = available_migrations()
    connection = yield open_connection(reactor, dsn)
    applied: list[int] = []
    try:
        yield connection.runOperation("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        try:
            yield connection.runOperation(_BOOTSTRAP)
            rows = yield connection.runQuery("SELECT version FROM realtime.schema_migrations")
            done = {row[0] for row in rows}
            for migration in migrations:
                if migration.version in done:
                    continue
                log.info(
                    "Applying schema migration {version} ({name})",
                    version=migration.version,
                    name=migration.name,
                )
                yield connection.runInteraction(_apply, migration)
                applied.append(migration.version)
        finally:
            # The lock also ends with the session, closed just below; a
            # failing unlock must not hide why the run failed.
            if connection.isOpen:
                try:
                    yield connection.runOperation(
                        "SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,)
                    )
                except psycopg2.Error:
                    pass
    finally:
        connection.close()
    return applied


@inlineCallbacks
def _apply(cursor: Any, migration: Migration) -> Generator[Deferred[Any], Any, None]:
    yield cursor.execute(migration.sql)
    yield cursor.execute(
        "INSERT INTO realtime.schema_migrations (version, name) VALUES (%s, %s)",
        (migration.version, migration.name),
    )


@define(eq=False)
class SchemaMigrations(Service):
    """
    Brings the database up to date when started; ready once it is.
    """

    reactor: Any
    dsn: str = field(repr=redact_dsn)
    _ready: Readiness = field(factory=Readiness, init=False)

    def startService(self) -> None:
        Service.startService(self)
        self._ready.reset()
        d = migrate(self.reactor, self.dsn)

        def migrated(applied: list[int]) -> None:
            log.info(
                "Database {database} ready ({count} migrations applied now)",
                database=redact_dsn(self.dsn),
                count=len(applied),
            )
            self._ready.succeed(applied)

        d.addCallbacks(migrated, self._ready.fail)

    def whenReady(self) -> Deferred[list[int]]:
        """
        A Deferred firing with the versions this start applied, or failing
        with the reason the migrations could not be applied.
        """
        return self._ready.wait()
