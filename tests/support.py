"""
What integration tests share: a PostgreSQL server to create throw-away
databases on; waiting for an event (L{wait_for}) rather than for a span of
time; and a site whose connections a test can wait to see closed
(L{TrackingSite}).

``REALTIMED_TEST_POSTGRES`` picks the server:

- a ``postgresql://`` URL of a role that may create databases (default:
  ``postgresql://postgres@127.0.0.1:5432/postgres``);
- ``embedded``: an embedded PostgreSQL (the ``pgserver`` package, as the
  daemon uses when no database is configured), started once for the test run
  in a temporary directory and stopped when the run ends.

Every test that needs a database creates its own with `create_database` and
drops it in cleanup, so test runs never see each other's data.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg2
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.server import Site

DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"

#: The environment variable that picks the server.
SERVER_VARIABLE = "REALTIMED_TEST_POSTGRES"

_embedded: Any = None


def server_url() -> str:
    """
    The URL of a maintenance database on the test PostgreSQL server.
    """
    choice = os.environ.get(SERVER_VARIABLE, DEFAULT_SERVER)
    if choice != "embedded":
        return choice
    global _embedded
    if _embedded is None:
        import pgserver

        directory = tempfile.mkdtemp(prefix="realtimed-test-pg-")
        _embedded = pgserver.get_server(directory, cleanup_mode="delete")
        atexit.register(shutil.rmtree, directory, ignore_errors=True)
    return str(_embedded.get_uri("postgres"))


def with_database(url: str, name: str) -> str:
    """
    C{url} with its database replaced by C{name}.
    """
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


def _admin(statement: str) -> None:
    connection = psycopg2.connect(server_url())
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(statement)
    finally:
        connection.close()


def create_database(test: TestCase) -> str:
    """
    Create an empty database for C{test}, dropped (with any connection still
    open to it) when the test is cleaned up.

    @return: Its URL.
    """
    name = "realtimed_test_" + uuid.uuid4().hex[:16]
    _admin(f'CREATE DATABASE "{name}"')
    test.addCleanup(_admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return with_database(server_url(), name)


def run_sql(url: str, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
    """
    Run one statement on C{url} in its own committed transaction, blocking;
    for setting up and checking from tests.

    @return: The rows it returned, if any.
    """
    connection = psycopg2.connect(url)
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(statement, params)
            if cursor.description is None:
                return []
            return list(cursor.fetchall())
    finally:
        connection.close()


@inlineCallbacks
def wait_for(condition: Callable[[], object], what: str = "", timeout: float = 30.0) -> Any:
    """
    Check C{condition} every 20 ms, letting the reactor run in between,
    until it holds; fail after C{timeout} seconds, a bound that only a
    broken behaviour reaches, with a message naming C{what} was awaited.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what or condition}")
        yield deferLater(reactor, 0.02, lambda: None)


class TrackingSite(Site):
    """
    A site that remembers the connections it accepts, so that a test can
    wait until every one of them is closed (L{all_closed}) or close them
    (L{abort_all}) and leave no connection behind.

    Connections are followed by their transports, which stay the same when
    a WebSocket upgrade hands a connection to another protocol.
    """

    def __init__(self, resource: Any, **kwargs: Any) -> None:
        super().__init__(resource, **kwargs)
        self.transports: list[Any] = []

    def log(self, request: Any) -> None:
        pass

    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)
        if channel is not None:
            make_connection = channel.makeConnection

            def makeConnection(transport: Any) -> None:
                self.transports.append(transport)
                make_connection(transport)

            channel.makeConnection = makeConnection
        return channel

    def open_connections(self) -> list[Any]:
        """
        The transports of the accepted connections not yet closed.
        """
        self.transports = [t for t in self.transports if t.connected]
        return list(self.transports)

    def all_closed(self, timeout: float = 30.0) -> Deferred[Any]:
        """
        Fires once every accepted connection is closed.
        """
        return wait_for(
            lambda: not self.open_connections(), what="every connection to close", timeout=timeout
        )

    def abort_all(self) -> Deferred[Any]:
        """
        Close every accepted connection at once; fires once they are closed.
        """
        for transport in self.open_connections():
            transport.abortConnection()
        return self.all_closed()
