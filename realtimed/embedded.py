"""
The embedded PostgreSQL: with no ``--database-url``, realtimed runs its own
server from the ``pgserver`` package, with its files under
``<data-dir>/postgres``, reachable only through a unix socket, and stops it
on shutdown.  A later start reuses the same files.

pgserver's calls block (initdb, pg_ctl), so they run in the reactor's
thread pool.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg2
from attrs import define, field
from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from realtimed.store.pool import redact_dsn

log = Logger()

DATABASE = "realtimed"

# Seconds a slow embedded server is waited for beyond pgserver's own wait.
START_TIMEOUT = 120.0


class EmbeddedNotStarted(Exception):
    """
    The embedded PostgreSQL has not been started, or has been stopped.
    """


@define(eq=False)
class EmbeddedPostgres(Service):
    """
    A PostgreSQL server under C{data_dir}/postgres, with a database
    C{database} (created when absent).

    @ivar reactor: Runs the blocking pgserver calls in its thread pool.
    @ivar data_dir: realtimed's data directory.
    @ivar url: The database URL once the server is ready (a unix socket,
        no password), else C{None}.
    """

    reactor: Any
    data_dir: str
    database: str = DATABASE
    url: str | None = field(default=None, init=False)
    _server: Any = field(default=None, init=False)
    _starting: Deferred[None] | None = field(default=None, init=False)
    _waiters: list[Deferred[str]] = field(factory=list, init=False)

    @property
    def directory(self) -> Path:
        """
        Where the server's files live.
        """
        return Path(self.data_dir).expanduser().resolve() / "postgres"

    def startService(self) -> None:
        Service.startService(self)
        d = self.start()
        d.addErrback(lambda f: log.failure("The embedded PostgreSQL did not start", f))

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        return self.stop()

    def whenReady(self) -> Deferred[str]:
        """
        A Deferred firing with the database URL once the server is up, or
        failing if it cannot start.
        """
        if self.url is not None:
            return succeed(self.url)
        if self._starting is None:
            return fail(EmbeddedNotStarted())
        waiter: Deferred[str] = Deferred()
        self._waiters.append(waiter)
        return waiter

    def start(self) -> Deferred[str]:
        """
        Start the server (initializing its directory on first use) and make
        sure the database exists.

        @return: A Deferred firing with the database URL.
        """
        if self._starting is not None:
            return self.whenReady()
        log.info("Starting embedded PostgreSQL in {directory}", directory=str(self.directory))
        d: Deferred[Any] = deferToThreadPool(
            self.reactor, self.reactor.getThreadPool(), self._startBlocking
        )
        self._starting = d
        waiter = self.whenReady()

        def ready(url: str) -> None:
            self.url = url
            log.info("Embedded PostgreSQL ready at {url}", url=redact_dsn(url))
            self._settle(url)

        def failed(reason: Failure) -> None:
            self._starting = None
            self._settle(reason)

        d.addCallbacks(ready, failed)
        d.addErrback(lambda f: log.failure("Starting the embedded PostgreSQL failed", f))
        return waiter

    def _settle(self, outcome: str | Failure) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if isinstance(outcome, Failure):
                waiter.errback(outcome)
            else:
                waiter.callback(outcome)

    def stop(self) -> Deferred[None]:
        """
        Stop the server (unless another process still uses it), once any
        start under way has finished.
        """
        starting, self._starting = self._starting, None
        self.url = None
        if starting is None:
            return succeed(None)
        d: Deferred[Any] = Deferred()
        starting.addBoth(lambda _: d.callback(None))

        def stopNow(_: object) -> Deferred[None]:
            self.url = None
            server, self._server = self._server, None
            if server is None:
                return succeed(None)
            log.info("Stopping embedded PostgreSQL in {directory}", directory=str(self.directory))
            return deferToThreadPool(self.reactor, self.reactor.getThreadPool(), server.cleanup)

        d.addCallback(stopNow)
        d.addErrback(lambda f: log.failure("Stopping the embedded PostgreSQL failed", f))
        return d

    def _startBlocking(self) -> str:
        os.makedirs(self.directory.parent, mode=0o700, exist_ok=True)
        server = _get_server(self.directory, lambda: self.reactor.callFromThread(self._slow))
        self._server = server
        _ensure_database(str(server.get_uri("postgres")), self.database)
        return str(server.get_uri(self.database))

    def _slow(self) -> None:
        log.warn(
            "Embedded PostgreSQL in {directory} is slow to start; still waiting",
            directory=str(self.directory),
        )


def _get_server(directory: Path, slow: Callable[[], object]) -> Any:
    """
    pgserver's server for C{directory}, started if need be.

    pgserver gives C{pg_ctl start} ten seconds; a loaded machine can take
    longer, and the server then carries on starting without pgserver.  In
    that case wait for it to be ready and take it over.
    """
    import pgserver
    from pgserver.postgres_server import PostgresServer

    try:
        return pgserver.get_server(directory, cleanup_mode="stop")
    except subprocess.TimeoutExpired:
        broken = PostgresServer._instances.pop(directory, None)
        if broken is not None:
            atexit.unregister(broken._cleanup)
        slow()
        _wait_until_ready(directory, START_TIMEOUT)
        return pgserver.get_server(directory, cleanup_mode="stop")


def _wait_until_ready(directory: Path, timeout: float) -> None:
    from pgserver.utils import PostmasterInfo

    deadline = time.monotonic() + timeout
    while True:
        info = PostmasterInfo.read_from_pgdata(directory)
        if info is not None and info.is_running() and info.status == "ready":
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"PostgreSQL in {directory} not ready after {timeout}s")
        time.sleep(0.2)


def _ensure_database(maintenance_url: str, name: str) -> None:
    """
    Create the database C{name} unless it exists (another process may be
    creating it at the same time).
    """
    connection = psycopg2.connect(maintenance_url)
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cursor.fetchone() is None:
                try:
                    cursor.execute(f'CREATE DATABASE "{name}"')
                except (psycopg2.errors.DuplicateDatabase, psycopg2.errors.UniqueViolation):
                    pass
    finally:
        connection.close()
