"""
Tests for realtimed.store.listener against a real PostgreSQL: delivery,
order, large messages, dozing off and waking up with storing transactions
under way, and catching up after the connection or the whole server went
away.
"""

from __future__ import annotations

import json
import random
import select
import shutil
import tempfile
import time
from collections import Counter
from typing import Any
from urllib.parse import parse_qs, urlsplit

import attrs
import psycopg2
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, gatherResults, inlineCallbacks
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    UNIXClientEndpoint,
    connectProtocol,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from realtimed.auth import ADMIN_PRINCIPAL
from realtimed.store.listener import APPLICATION_NAME, MessageListener, Phase
from realtimed.store.messages import StoredMessage
from realtimed.store.migrations import migrate
from realtimed.store.pool import ConnectionPool
from realtimed.store.publisher import Publisher
from tests.support import create_database, run_sql, wait_for


class WatchedListener(MessageListener):
    """
    A listener that keeps the trail of the phases it went through and
    counts the polls it finished, so that a test can wait for what the
    listener does rather than for a span of time.
    """

    trail: list[Phase]
    polls = 0

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "phase":
            trail = vars(self).setdefault("trail", [])
            if not trail or trail[-1] is not value:
                trail.append(value)
        super().__setattr__(name, value)

    def _poll(self, generation: int) -> Any:
        def finished(result: object) -> object:
            self.polls += 1
            return result

        return super()._poll(generation).addBoth(finished)

    def asleep(self) -> Deferred[Any]:
        """
        Wait until the listener is asleep: it has read everything there was
        and polled in vain enough times to fall asleep, so nothing more will
        be handed over until something is stored.
        """
        return wait_for(lambda: self.phase is Phase.ASLEEP, what="the listener to fall asleep")

    def polled(self, count: int = 1) -> Deferred[Any]:
        """
        Wait until the listener has finished C{count} more polls.
        """
        target = self.polls + count
        return wait_for(lambda: self.polls >= target, what=f"{count} more polls")


def listener_pid(url: str) -> int | None:
    """
    The server process of the listener's connection to C{url}, found by
    the name it gives its connection; C{None} while it has none (or the
    server cannot be asked).
    """
    try:
        rows = run_sql(
            url,
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND application_name = %s",
            (APPLICATION_NAME,),
        )
    except psycopg2.OperationalError:
        return None
    return int(rows[0][0]) if len(rows) == 1 else None


def publish(url: str, channel: str, event: str, payload: Any) -> str:
    """
    Publish with C{realtime.publish()} in a transaction of its own.
    """
    rows = run_sql(
        url, "SELECT realtime.publish(%s, %s, %s::jsonb)", (channel, event, json.dumps(payload))
    )
    return str(rows[0][0])


@inlineCallbacks
def prepare(url: str) -> Any:
    """
    Migrate C{url} and give it an enabled channel for C{room:*}.
    """
    yield migrate(reactor, url)
    rows = run_sql(url, "INSERT INTO realtime.channels (pattern) VALUES ('room:*') RETURNING id")
    return str(rows[0][0])


class ListenerMixin:
    """
    Start a L{MessageListener} that records what it is handed.
    """

    received: list[StoredMessage]

    def startListener(self: Any, url: str, **kwargs: Any) -> WatchedListener:
        self.received = []
        kwargs.setdefault("initial_delay", 0.1)
        kwargs.setdefault("max_delay", 1.0)
        listener = WatchedListener(reactor, url, self.received.append, **kwargs)
        listener.startService()
        self.addCleanup(listener.stopService)
        return listener

    def events(self) -> list[str]:
        return [message.event for message in self.received]

    def waitForEvents(self, *events: str) -> Deferred[Any]:
        """
        Wait until every one of C{events} was received.
        """
        return wait_for(lambda: set(events) <= set(self.events()))


class MessageListenerTests(ListenerMixin, TestCase):
    """
    Messages stored in the database reach the listener.
    """

    @inlineCallbacks
    def test_when_connected(self) -> Any:
        """
        C{whenConnected} fires once the listener has connected and polled;
        after its connection is lost, a new waiter waits for the next one;
        a waiter still waiting when the listener stops is failed.
        """
        listener = self.startListener(self.url)
        yield listener.whenConnected()
        self.assertTrue(listener.connected)
        old = listener_pid(self.url)
        run_sql(self.url, "SELECT pg_terminate_backend(%s, 10000)", (old,))
        yield wait_for(lambda: not listener.connected)
        yield listener.whenConnected()
        self.assertNotIn(listener_pid(self.url), (None, old))
        unreachable = MessageListener(reactor, "postgresql://postgres@127.0.0.1:1/none", list)
        unreachable.startService()
        waiting = unreachable.whenConnected()
        unreachable.stopService()
        yield self.assertFailure(waiting, CancelledError)
        self.flushLoggedErrors()

    @inlineCallbacks
    def setUp(self) -> Any:
        self.url = create_database(self)
        self.channel_id = yield prepare(self.url)

    @inlineCallbacks
    def test_delivers_in_commit_order(self) -> Any:
        """
        Each stored message is handed over once, in commit order and, within
        a transaction, in the order stored, in the delivered shape.
        """
        listener = self.startListener(self.url)
        yield wait_for(lambda: listener.connected)
        ids = [publish(self.url, "room:1", f"e{i}", {"i": i}) for i in range(15)]
        run_sql(
            self.url,
            "SELECT realtime.publish('room:2', 'x' || i, '{}') FROM generate_series(1, 30) AS i",
        )
        yield self.waitForEvents("e14", "x30")
        yield listener.asleep()
        self.assertEqual(
            self.events(), [f"e{i}" for i in range(15)] + [f"x{i}" for i in range(1, 31)]
        )
        first = self.received[0]
        self.assertEqual(first.webhooks, 0)
        self.assertEqual(first.channel_id, self.channel_id)
        self.assertEqual(
            set(first.body),
            {"channel", "event", "messageId", "senderType", "senderId", "payload", "createdAt"},
        )
        self.assertEqual(first.body["messageId"], ids[0])
        self.assertEqual(first.body["channel"], "room:1")
        self.assertEqual(first.body["payload"], {"i": 0})
        self.assertEqual(first.body["senderType"], "system")

    @inlineCallbacks
    def test_after_messages(self) -> Any:
        """
        C{after_messages} is called once the messages one query read were
        handed over, and not after a query that found none.
        """
        log: list[str] = []
        listener = WatchedListener(
            reactor,
            self.url,
            lambda message: log.append(message.event),
            after_messages=lambda: log.append("after"),
            page_size=4,
        )
        listener.startService()
        self.addCleanup(listener.stopService)
        yield wait_for(lambda: listener.connected)
        # Asleep: it polled in vain many times.
        yield listener.asleep()
        self.assertEqual(log, [])
        run_sql(
            self.url,
            "SELECT realtime.publish('room:1', 'm' || i, '{}') FROM generate_series(1, 6) AS i",
        )
        yield wait_for(lambda: len(log) >= 8)
        yield listener.asleep()
        self.assertEqual(log, ["m1", "m2", "m3", "m4", "after", "m5", "m6", "after"])

    @inlineCallbacks
    def test_large_message(self) -> Any:
        """
        A message larger than a NOTIFY could carry is handed over whole, in
        the same shape, and in its place in the order.
        """
        listener = self.startListener(self.url)
        yield wait_for(lambda: listener.connected)
        big = {"text": "x" * 9000}
        publish(self.url, "room:1", "before", {})
        message_id = publish(self.url, "room:1", "big", big)
        publish(self.url, "room:1", "after", {})
        yield self.waitForEvents("before", "big", "after")
        self.assertEqual(self.events(), ["before", "big", "after"])
        received = self.received[1]
        expected = run_sql(
            self.url,
            "SELECT realtime.message_json(m) FROM realtime.messages m WHERE id = %s",
            (message_id,),
        )[0][0]
        self.assertEqual(received, StoredMessage(expected, self.channel_id, 0))
        self.assertEqual(received.body["payload"], big)

    @inlineCallbacks
    def test_terminated_connection_catches_up(self) -> Any:
        """
        When the server terminates the LISTEN connection, the listener
        reconnects and hands over, exactly once, the messages stored while
        it was away, including those of transactions open across the gap.
        """
        listener = self.startListener(self.url, initial_delay=0.3, page_size=2)
        yield wait_for(lambda: listener.connected)
        publish(self.url, "room:1", "a", {})
        yield self.waitForEvents("a")

        across = psycopg2.connect(self.url)
        self.addCleanup(across.close)
        with across.cursor() as cursor:
            cursor.execute("SELECT realtime.publish('room:1', 'across', '{}')")
        during = psycopg2.connect(self.url)
        self.addCleanup(during.close)
        with during.cursor() as cursor:
            cursor.execute("SELECT realtime.publish('room:1', 'during', '{}')")

        old = listener_pid(self.url)
        run_sql(self.url, "SELECT pg_terminate_backend(%s, 10000)", (old,))
        for name in ("b", "c", "d"):
            publish(self.url, "room:1", name, {})
        yield wait_for(lambda: not listener.connected)
        during.commit()
        publish(self.url, "room:1", "e", {})
        yield wait_for(lambda: listener_pid(self.url) not in (None, old))
        across.commit()
        publish(self.url, "room:1", "f", {})
        yield self.waitForEvents("a", "b", "c", "d", "e", "f", "across", "during")
        publish(self.url, "room:1", "last", {})
        yield self.waitForEvents("last")
        counts = Counter(self.events())
        self.assertEqual(
            counts,
            Counter(["a", "b", "c", "d", "e", "f", "across", "during", "last"]),
        )
        self.assertEqual(self.events()[0], "a")
        self.assertEqual(self.events()[-1], "last")
        self.flushLoggedErrors()

    @inlineCallbacks
    def test_repeated_drops(self) -> Any:
        """
        Several drops in a row, with messages stored around each, still
        hand every message over exactly once.
        """
        listener = self.startListener(self.url, initial_delay=0.05, keepalive_interval=0.1)
        yield wait_for(lambda: listener.connected)
        expected = []
        for round in range(4):
            for i in range(3):
                name = f"r{round}m{i}"
                publish(self.url, "room:1", name, {})
                expected.append(name)
            old = listener_pid(self.url)
            run_sql(self.url, "SELECT pg_terminate_backend(%s, 10000)", (old,))
            name = f"r{round}gap"
            publish(self.url, "room:1", name, {})
            expected.append(name)
            yield wait_for(lambda old=old: listener_pid(self.url) not in (None, old))
        publish(self.url, "room:1", "last", {})
        yield self.waitForEvents("last", *expected)
        self.assertEqual(Counter(self.events()), Counter([*expected, "last"]))
        self.flushLoggedErrors()

    @inlineCallbacks
    def test_catch_up_failure_retried(self) -> Any:
        """
        When the catch-up itself fails, the listener starts over with a
        growing delay instead of skipping it, and once the catch-up works
        the missed messages arrive, once.
        """
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)

        def refusals() -> list[float]:
            return [e["delay"] for e in events if "does not exist" in str(e.get("error", ""))]

        listener = self.startListener(self.url, initial_delay=0.05, max_delay=0.2)
        yield wait_for(lambda: listener.connected)
        signature = "realtime.messages_between(pg_snapshot, pg_snapshot, xid8, bigint, integer)"
        run_sql(self.url, f"ALTER FUNCTION {signature} RENAME TO messages_between_away")
        old = listener_pid(self.url)
        run_sql(self.url, "SELECT pg_terminate_backend(%s, 10000)", (old,))
        publish(self.url, "room:1", "missed", {})
        # Without the function that reads messages, each catch-up fails,
        # and the listener waits longer each time.
        yield wait_for(lambda: len(refusals()) >= 3)
        self.assertEqual(refusals()[:3], [0.05, 0.1, 0.2])
        self.assertEqual(self.received, [])
        run_sql(
            self.url,
            "ALTER FUNCTION realtime.messages_between_away"
            "(pg_snapshot, pg_snapshot, xid8, bigint, integer) RENAME TO messages_between",
        )
        yield self.waitForEvents("missed")
        publish(self.url, "room:1", "later", {})
        yield self.waitForEvents("later")
        self.assertEqual(self.events(), ["missed", "later"])
        self.flushLoggedErrors()

    @inlineCallbacks
    def test_stop(self) -> Any:
        """
        A stopped listener hands nothing over and is not connected.
        """
        listener = self.startListener(self.url)
        received = self.received
        yield wait_for(lambda: listener.connected)
        listener.stopService()
        self.assertFalse(listener.connected)
        yield wait_for(lambda: listener_pid(self.url) is None, what="its connection to close")
        # Another listener is handed the message meanwhile.
        other = self.startListener(self.url)
        yield wait_for(lambda: other.connected)
        publish(self.url, "room:1", "ignored", {})
        yield self.waitForEvents("ignored")
        self.assertEqual(received, [])

    @inlineCallbacks
    def test_handler_failure(self) -> Any:
        """
        A handler that raises is logged and the next message is still
        handed over.
        """
        seen: list[str] = []

        def handler(message: StoredMessage) -> None:
            seen.append(message.event)
            if len(seen) == 1:
                raise RuntimeError("boom")

        listener = MessageListener(reactor, self.url, handler)
        listener.startService()
        self.addCleanup(listener.stopService)
        yield wait_for(lambda: listener.connected)
        publish(self.url, "room:1", "one", {})
        publish(self.url, "room:1", "two", {})
        yield wait_for(lambda: seen == ["one", "two"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class BackoffTests(TestCase):
    """
    Reconnecting waits longer after each failed attempt, up to a cap.
    """

    @inlineCallbacks
    def test_backoff(self) -> Any:
        """
        Failed attempts are retried after 0.5, 1, 2, 2 ... seconds of the
        given clock, and each attempt is logged.
        """
        clock = Clock()
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        listener = MessageListener(
            reactor,
            "postgresql://nobody:secret@127.0.0.1:1/none",
            lambda body: None,
            clock=clock,
            initial_delay=0.5,
            max_delay=2.0,
        )
        listener.startService()
        self.addCleanup(listener.stopService)

        def retries() -> list[float]:
            return [e["delay"] for e in events if "reconnecting in" in e.get("log_format", "")]

        delays: list[float] = []
        for attempt in range(1, 5):
            yield wait_for(lambda attempt=attempt: len(retries()) == attempt)
            delays.append(retries()[-1])
            clock.advance(delays[-1])
        self.assertEqual(delays, [0.5, 1.0, 2.0, 2.0])
        self.assertFalse(listener.connected)
        attempts = [
            e for e in events if "attempt" in e and e.get("log_namespace", "").endswith("listener")
        ]
        self.assertEqual([e["attempt"] for e in attempts], [1, 2, 3, 4, 5])
        text = repr(events)
        self.assertNotIn("secret", text)


class ServerRestartTests(ListenerMixin, TestCase):
    """
    The listener survives a restart of its PostgreSQL server.  The test runs
    its own embedded server, which it may restart.
    """

    timeout = 180

    @inlineCallbacks
    def setUp(self) -> Any:
        import pgserver

        directory = tempfile.mkdtemp(prefix="realtimed-test-restart-")
        self.addCleanup(shutil.rmtree, directory, ignore_errors=True)
        self.server = yield deferToThread(pgserver.get_server, directory, cleanup_mode="delete")
        self.addCleanup(deferToThread, self.server.cleanup)
        self.url = self.server.get_uri("postgres")
        yield prepare(self.url)

    def restart(self) -> None:
        """
        Restart the server, blocking.
        """
        from pgserver import pg_ctl

        pg_ctl(
            ["-w", "-m", "fast", "-l", str(self.server.log), "restart"],
            pgdata=self.server.pgdata,
            user=self.server.system_user,
            timeout=60,
        )

    @inlineCallbacks
    def test_restart(self) -> Any:
        """
        Messages stored before and after a server restart are all handed
        over, exactly once.
        """
        listener = self.startListener(self.url, initial_delay=0.1, max_delay=0.5)
        yield wait_for(lambda: listener.connected)
        publish(self.url, "room:1", "before", {})
        yield self.waitForEvents("before")
        publish(self.url, "room:1", "just-before", {})
        # While the server restarts, the listener finds it gone and retries.
        old = listener_pid(self.url)
        yield deferToThread(self.restart)
        publish(self.url, "room:1", "after1", {})
        yield wait_for(lambda: listener_pid(self.url) not in (None, old), timeout=60)
        publish(self.url, "room:1", "reconnected", {})
        yield self.waitForEvents("before", "just-before", "after1", "reconnected")

        # Restarting without letting the listener run: everything stored
        # after the restart reaches it by catching up.
        old = listener_pid(self.url)
        publish(self.url, "room:1", "before2", {})
        self.restart()
        publish(self.url, "room:1", "after2", {})
        publish(self.url, "room:1", "after3", {})
        yield wait_for(lambda: listener_pid(self.url) not in (None, old), timeout=60)
        publish(self.url, "room:1", "last", {})
        yield self.waitForEvents("before2", "after2", "after3", "last")
        self.assertEqual(
            Counter(self.events()),
            Counter(
                [
                    "before",
                    "just-before",
                    "after1",
                    "reconnected",
                    "before2",
                    "after2",
                    "after3",
                    "last",
                ]
            ),
        )
        self.assertEqual(self.events()[:2], ["before", "just-before"])
        self.flushLoggedErrors()


class _Pipe(Protocol):
    """
    One side of a proxied connection; drops what it receives while frozen.
    """

    peer: _Pipe | None = None
    frozen = False
    buffered: bytes = b""

    def dataReceived(self, data: bytes) -> None:
        if self.frozen:
            return
        if self.peer is None:
            self.buffered += data
        else:
            self.peer.transport.write(data)

    def connectionLost(self, reason: Any = None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.loseConnection()


class _Proxy(Factory):
    """
    A loopback TCP proxy to PostgreSQL whose existing connections can be
    made to go silent, like a link that died without a word.
    """

    def __init__(self, target: Any) -> None:
        self.target = target
        self.pipes: list[_Pipe] = []

    def buildProtocol(self, addr: Any) -> _Pipe:
        near = _Pipe()
        self.pipes.append(near)

        def connected(far: _Pipe) -> None:
            far.peer, near.peer = near, far
            self.pipes.append(far)
            if near.buffered:
                far.transport.write(near.buffered)
                near.buffered = b""

        d = connectProtocol(self.target, _Pipe())
        d.addCallbacks(connected, lambda f: near.transport.loseConnection())
        return near

    def freeze(self) -> None:
        for pipe in self.pipes:
            pipe.frozen = True


@inlineCallbacks
def start_proxy(test: TestCase, url: str) -> Any:
    """
    Start a L{_Proxy} to the server of C{url}, stopped at cleanup.

    @return: The proxy, and the URL of the same database through it.
    """
    parts = urlsplit(url)
    socket_dir = parse_qs(parts.query).get("host", [None])[0]
    if socket_dir is not None:
        target = UNIXClientEndpoint(reactor, f"{socket_dir}/.s.PGSQL.{parts.port or 5432}")
    else:
        target = TCP4ClientEndpoint(reactor, parts.hostname, parts.port or 5432)
    proxy = _Proxy(target)
    port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(proxy)
    test.addCleanup(port.stopListening)
    user = parts.username or "postgres"
    return proxy, f"postgresql://{user}@127.0.0.1:{port.getHost().port}{parts.path}"


class SilentLinkTests(ListenerMixin, TestCase):
    """
    A link that goes silent is found by the unanswered poll.
    """

    @inlineCallbacks
    def setUp(self) -> Any:
        self.url = create_database(self)
        yield prepare(self.url)
        self.proxy, self.proxied = yield start_proxy(self, self.url)

    @inlineCallbacks
    def test_keepalive_timeout(self) -> Any:
        """
        When the link stops answering, the unanswered poll drops it; the
        listener reconnects and catches up on what was stored meanwhile.
        """
        listener = self.startListener(
            self.proxied, keepalive_interval=0.2, query_timeout=0.5, initial_delay=0.1
        )
        yield wait_for(lambda: listener.connected)
        publish(self.url, "room:1", "before", {})
        yield self.waitForEvents("before")
        old = listener_pid(self.url)
        self.proxy.freeze()
        publish(self.url, "room:1", "silent1", {})
        publish(self.url, "room:1", "silent2", {})
        yield wait_for(lambda: listener_pid(self.url) not in (None, old))
        publish(self.url, "room:1", "after", {})
        yield self.waitForEvents("before", "silent1", "silent2", "after")
        self.assertEqual(Counter(self.events()), Counter(["before", "silent1", "silent2", "after"]))
        self.flushLoggedErrors()


def sleepers(url: str) -> list[int]:
    """
    The server processes holding the listeners' sleep lock in the database
    at C{url} (advisory locks of other databases show in pg_locks too).
    """
    rows = run_sql(
        url,
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        " AND (classid::bigint << 32 | objid::bigint) = realtime.sleep_lock_key()"
        " ORDER BY pid",
    )
    return [pid for (pid,) in rows]


class Doorbell:
    """
    A separate connection LISTENing for the doorbell.
    """

    def __init__(self, test: TestCase, url: str) -> None:
        self.connection = psycopg2.connect(url)
        self.connection.autocommit = True
        test.addCleanup(self.connection.close)
        with self.connection.cursor() as cursor:
            cursor.execute("LISTEN realtime_wakeup; LISTEN realtime_test_marker")

    def rings(self) -> int:
        """
        How many doorbell notifications were sent since the last call.

        Notifications arrive in commit order, so once a marker notified now
        has arrived, so has every ring committed before it.
        """
        with self.connection.cursor() as cursor:
            cursor.execute("NOTIFY realtime_test_marker")
        deadline = time.monotonic() + 5
        seen: list[str] = []
        while "realtime_test_marker" not in seen:
            if time.monotonic() > deadline:
                raise AssertionError("the marker notification did not arrive")
            select.select([self.connection], [], [], 0.1)
            self.connection.poll()
            seen.extend(n.channel for n in self.connection.notifies)
            del self.connection.notifies[:]
        return seen.count("realtime_wakeup")


class DozingTests(ListenerMixin, TestCase):
    """
    An idle listener dozes off and falls asleep; storing transactions ring
    the doorbell only while a listener sleeps, and no message is lost while
    the listener changes phase.
    """

    @inlineCallbacks
    def setUp(self) -> Any:
        self.url = create_database(self)
        yield prepare(self.url)

    @inlineCallbacks
    def test_awake_listener_needs_no_doorbell(self) -> Any:
        """
        While the listener is awake, storing transactions send no NOTIFY,
        and the listener finds their messages by polling.
        """
        doorbell = Doorbell(self, self.url)
        listener = self.startListener(self.url, idle_polls=10**9, keepalive_interval=60)
        yield wait_for(lambda: listener.connected)
        for i in range(5):
            publish(self.url, "room:1", f"m{i}", {})
        yield self.waitForEvents(*[f"m{i}" for i in range(5)])
        self.assertIs(listener.phase, Phase.AWAKE)
        self.assertEqual(sleepers(self.url), [])
        self.assertEqual(doorbell.rings(), 0)

    @inlineCallbacks
    def test_asleep_listener_is_woken(self) -> Any:
        """
        An idle listener falls asleep holding the sleep lock; a storing
        transaction then rings the doorbell, and the listener hands its
        message over long before its next keepalive poll.
        """
        doorbell = Doorbell(self, self.url)
        listener = self.startListener(
            self.url, poll_interval=0.002, idle_polls=3, keepalive_interval=60
        )
        yield wait_for(lambda: listener.phase is Phase.ASLEEP)
        self.assertEqual(sleepers(self.url), [listener_pid(self.url)])
        publish(self.url, "room:1", "ring", {})
        yield wait_for(lambda: self.events() == ["ring"], timeout=5)
        self.assertEqual(doorbell.rings(), 1)
        # Idle again, it goes back to sleep.
        yield wait_for(lambda: listener.phase is Phase.ASLEEP)
        publish(self.url, "room:1", "again", {})
        yield wait_for(lambda: self.events() == ["ring", "again"], timeout=5)

    @inlineCallbacks
    def test_open_transaction_keeps_it_dozing(self) -> Any:
        """
        A transaction that stored a message while the listener was awake
        rang no doorbell.  While it is open the listener dozes but cannot
        fall asleep, and it finds the message by polling once the
        transaction commits.
        """
        doorbell = Doorbell(self, self.url)
        listener = self.startListener(
            self.url,
            poll_interval=0.002,
            idle_polls=10**9,
            max_doze_interval=0.02,
            keepalive_interval=60,
        )
        yield wait_for(lambda: listener.connected)
        writer = psycopg2.connect(self.url)
        self.addCleanup(writer.close)
        with writer.cursor() as cursor:
            cursor.execute("SELECT realtime.publish('room:1', 'late', '{}')")
        listener.idle_polls = 3
        yield wait_for(lambda: listener.phase is Phase.DOZING)
        yield listener.polled(10)
        self.assertIs(listener.phase, Phase.DOZING)
        self.assertNotIn(Phase.ASLEEP, listener.trail)
        self.assertEqual(self.received, [])
        writer.commit()
        yield wait_for(lambda: self.events() == ["late"], timeout=2)
        self.assertEqual(doorbell.rings(), 0)
        yield wait_for(lambda: listener.phase is Phase.ASLEEP)

    @inlineCallbacks
    def test_no_message_lost_across_phases(self) -> Any:
        """
        Writers storing messages at irregular intervals, in transactions of
        one to three messages and through a tracked table, while two
        listeners keep dozing off, falling asleep and waking up: each
        listener hands every message over exactly once, each writer's in
        the order stored.
        """
        run_sql(self.url, "CREATE TABLE public.ticks (writer int, n int)")
        run_sql(self.url, "INSERT INTO realtime.channels (pattern) VALUES ('ticks')")
        run_sql(self.url, "SELECT realtime.track_table('public.ticks')")
        settings = dict(
            poll_interval=0.001, idle_polls=2, max_doze_interval=0.004, keepalive_interval=60
        )
        first = self.startListener(self.url, **settings)
        first_received = self.received
        second = self.startListener(self.url, **settings)
        second_received = self.received
        listeners = [first, second]
        yield wait_for(lambda: first.connected and second.connected)

        def write(writer: int, count: int) -> list[str]:
            rng = random.Random(writer)
            connection = psycopg2.connect(self.url)
            stored = []
            try:
                n = 0
                while n < count:
                    with connection.cursor() as cursor:
                        for _ in range(min(rng.randint(1, 3), count - n)):
                            if rng.random() < 0.3:
                                cursor.execute(
                                    "INSERT INTO public.ticks VALUES (%s, %s)", (writer, n)
                                )
                            else:
                                cursor.execute(
                                    "SELECT realtime.publish('room:1', %s, '{}')",
                                    (f"w{writer}n{n}",),
                                )
                            stored.append(f"w{writer}n{n}")
                            n += 1
                    connection.commit()
                    time.sleep(rng.choice([0, 0, 0.001, 0.005, 0.02, 0.05]))
            finally:
                connection.close()
            return stored

        written = yield gatherResults([deferToThread(write, w, 60) for w in range(4)])
        expected = [name for names in written for name in names]

        def names(received: list[StoredMessage]) -> list[str]:
            return [
                message.event
                if message.channel != "ticks"
                else "w{writer}n{n}".format(**message.body["payload"])
                for message in received
            ]

        for received in (first_received, second_received):
            yield wait_for(lambda r=received: len(r) >= len(expected), timeout=10)
        for listener in listeners:
            yield listener.asleep()
        for received in (first_received, second_received):
            got = names(received)
            self.assertEqual(Counter(got), Counter(expected))
            for writer, names_of_writer in enumerate(written):
                self.assertEqual(
                    [name for name in got if name.startswith(f"w{writer}n")], names_of_writer
                )
        for listener in listeners:
            self.assertEqual(set(listener.trail), {Phase.AWAKE, Phase.DOZING, Phase.ASLEEP})


class LocalDeliveryTests(ListenerMixin, TestCase):
    """
    Publishes this process stores reach its listener at once when settled,
    exactly once, and never ahead of a message committed before them.
    """

    @inlineCallbacks
    def setUp(self) -> Any:
        self.url = create_database(self)
        yield prepare(self.url)
        self.pool = ConnectionPool(reactor, self.url)
        self.addCleanup(self.pool.close)

    def quietListener(self) -> WatchedListener:
        """
        A listener that polls only when asked to.
        """
        return self.startListener(
            self.url, poll_interval=600, idle_polls=10**9, keepalive_interval=600
        )

    @inlineCallbacks
    def test_settled_batch_at_once(self) -> Any:
        """
        A settled batch is handed over without a poll; the poll that later
        reads its transaction skips it.
        """
        listener = self.quietListener()
        yield wait_for(lambda: listener.connected)
        publisher = Publisher(self.pool, listener)
        yield publisher.publish(ADMIN_PRINCIPAL, "room:1", "local", "{}")
        self.assertEqual(self.events(), ["local"])
        # The next batch, with no poll in between, is settled too.
        yield publisher.publish(ADMIN_PRINCIPAL, "room:1", "local1", "{}")
        self.assertEqual(self.events(), ["local", "local1"])
        publish(self.url, "room:1", "other", {})
        listener.poll_soon()
        yield self.waitForEvents("other")
        yield publisher.publish(ADMIN_PRINCIPAL, "room:1", "local2", "{}")
        listener.poll_soon()
        publish(self.url, "room:1", "last", {})
        listener.poll_soon()
        yield self.waitForEvents("last")
        self.assertEqual(self.events(), ["local", "local1", "other", "local2", "last"])

    @inlineCallbacks
    def test_unsettled_batch_waits(self) -> Any:
        """
        When a message was committed before the batch and not read yet, the
        batch is not handed over ahead of it: the listener polls and hands
        both over in order.
        """
        listener = self.quietListener()
        yield wait_for(lambda: listener.connected)
        publish(self.url, "room:1", "earlier", {})
        publisher = Publisher(self.pool, listener)
        yield publisher.publish(ADMIN_PRINCIPAL, "room:1", "later", "{}")
        yield self.waitForEvents("earlier", "later")
        listener.poll_soon()
        yield listener.polled()
        self.assertEqual(self.events(), ["earlier", "later"])

    @inlineCallbacks
    def test_already_polled(self) -> Any:
        """
        A batch whose transaction a poll has read already is not handed
        over a second time.
        """
        listener = self.quietListener()
        yield wait_for(lambda: listener.connected)
        message_id = publish(self.url, "room:1", "polled", {})
        listener.poll_soon()
        yield self.waitForEvents("polled")
        (xact,) = run_sql(
            self.url, "SELECT xact_id::text FROM realtime.messages WHERE id = %s", (message_id,)
        )[0]
        listener.stored_here(xact, list(self.received), True)
        self.assertEqual(self.events(), ["polled"])

    @inlineCallbacks
    def test_local_and_remote_writers(self) -> Any:
        """
        Publishes stored here and messages stored by other transactions at
        irregular intervals, while the listener changes phase: every message
        is handed over exactly once, each writer's in order.
        """
        listener = self.startListener(
            self.url,
            poll_interval=0.001,
            idle_polls=2,
            max_doze_interval=0.004,
            keepalive_interval=60,
        )
        yield wait_for(lambda: listener.connected)
        publisher = Publisher(self.pool, listener)

        def remote(writer: int, count: int) -> list[str]:
            rng = random.Random(writer)
            connection = psycopg2.connect(self.url)
            connection.autocommit = True
            try:
                for n in range(count):
                    with connection.cursor() as cursor:
                        cursor.execute(
                            "SELECT realtime.publish('room:1', %s, '{}')", (f"w{writer}n{n}",)
                        )
                    time.sleep(rng.choice([0, 0.001, 0.005, 0.02]))
            finally:
                connection.close()
            return [f"w{writer}n{n}" for n in range(count)]

        @inlineCallbacks
        def local(count: int) -> Any:
            rng = random.Random(99)
            sent = []
            for n in range(count):
                burst = [
                    publisher.publish(ADMIN_PRINCIPAL, "room:1", f"l{n}b{b}", "{}")
                    for b in range(rng.randint(1, 4))
                ]
                yield gatherResults(burst)
                sent.extend(f"l{n}b{b}" for b in range(len(burst)))
                yield deferLater(reactor, rng.choice([0, 0.001, 0.005, 0.02]), lambda: None)
            return sent

        results = yield gatherResults(
            [deferToThread(remote, w, 60) for w in range(3)] + [local(60)]
        )
        expected = [name for names in results for name in names]
        yield wait_for(lambda: len(self.received) >= len(expected), timeout=10)
        yield listener.asleep()
        got = self.events()
        self.assertEqual(Counter(got), Counter(expected))
        for names in results:
            prefix = names[0][:2] if names[0].startswith("w") else "l"
            self.assertEqual([g for g in got if g.startswith(prefix)], names)


class ReachedTests(ListenerMixin, TestCase):
    """
    Positions handed over, and waiting for another listener's position.
    """

    @inlineCallbacks
    def setUp(self) -> Any:
        self.url = create_database(self)
        yield prepare(self.url)

    @inlineCallbacks
    def test_reached_across_listeners(self) -> Any:
        """
        A position one listener gave a message is reached by a second
        listener once that one has handed the message over too; mid-way
        through a poll read page by page, the handed-over position covers
        exactly what was handed over.
        """
        first = self.startListener(self.url, page_size=3)
        yield first.whenConnected()
        seen: list[StoredMessage] = []
        positions = []

        def record(message: StoredMessage) -> None:
            seen.append(message)
            positions.append(second.handed_position())

        second = MessageListener(reactor, self.url, record, page_size=3)
        second.startService()
        self.addCleanup(second.stopService)
        yield second.whenConnected()
        run_sql(
            self.url,
            "SELECT realtime.publish('room:1', 'e' || i, '{}') FROM generate_series(1, 10) AS i",
        )
        yield self.waitForEvents("e10")
        last = self.received[-1].position
        assert last is not None
        self.assertTrue(all(m.position is not None for m in self.received))
        reached = yield second.reached(last)
        self.assertEqual([m.event for m in seen], [f"e{i}" for i in range(1, 11)])
        self.assertTrue(reached.includes(last))
        for message in seen:
            assert message.position is not None
            self.assertTrue(reached.covers(message.position.xact or 0, message.seq))
        # While a page was handed over, the position moved page by page.
        middle = positions[4]
        assert middle is not None and seen[2].position is not None
        self.assertTrue(middle.includes(seen[2].position))
        assert seen[3].position is not None
        self.assertFalse(middle.covers(seen[3].position.xact or 0, seen[3].seq))
        # A position already reached is reached at once.
        self.assertTrue(second.reached(last).called)

    @inlineCallbacks
    def test_cancelled_and_stopped(self) -> Any:
        """
        A wait may be cancelled; waits still open when the listener stops
        fail.
        """
        listener = self.startListener(self.url)
        yield listener.whenConnected()
        current = listener.handed_position()
        assert current is not None
        ahead = attrs.evolve(
            current, since=attrs.evolve(current.since, xmax=current.since.xmax + 5)
        )
        cancelled = listener.reached(ahead)
        cancelled.cancel()
        yield self.assertFailure(cancelled, CancelledError)
        stopped = listener.reached(ahead)
        listener.stopService()
        yield self.assertFailure(stopped, CancelledError)
