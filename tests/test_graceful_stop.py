"""
A graceful stop (SIGTERM) of a real ``twistd realtimed`` process while a
client has a burst of publishes in flight: every publish it had received is
answered, every acknowledged publish is stored and every stored one was
acknowledged, the process exits within 20 seconds, and the client carries
on with another process of the same database.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg2
import socketio
from twisted.logger import Logger
from twisted.trial.unittest import TestCase

from tests.processes import RealtimedProcess
from tests.support import create_database, run_sql
from tests.test_realtime import PATIENCE, token

log = Logger()


#: Publishes sent in one burst, without waiting for their acks, by each of
#: CLIENTS sockets (a socket may have at most 256 requests unanswered).
BURST = 250
CLIENTS = 4


def wait_until(condition: Callable[[], object], what: str) -> None:
    """
    Check C{condition} every 10 ms until it holds, blocking; fail after
    L{PATIENCE} seconds, a bound only a broken behaviour reaches.
    """
    deadline = time.monotonic() + PATIENCE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {PATIENCE:g} s waiting for {what}")
        time.sleep(0.01)


def started(test: TestCase, url: str, *options: str) -> RealtimedProcess:
    """
    A realtimed on C{url} answering C{/healthz}, killed when C{test} ends.
    Its publish rate is not limited: the tests send bursts far above a
    socket's limit, which is not what they test.
    """
    daemon = RealtimedProcess(
        url, Path(test.mktemp()).resolve(), "--max-publish-rate", "0", *options
    )
    daemon.start()
    test.addCleanup(daemon.kill)
    daemon.wait_healthy()
    return daemon


class GracefulStopTests(TestCase):
    timeout = 180

    def test_publishes_in_flight(self) -> None:
        """
        SIGTERM while a burst of publishes is in flight: each publish the
        client got an ok ack for is stored, each stored one was acked, the
        process exits within 20 s, and the client, connecting to the other
        process, subscribes and publishes there.
        """
        url = create_database(self)
        first = started(self, url)
        second = started(self, url)
        run_sql(url, "INSERT INTO realtime.channels (pattern) VALUES ('burst')")

        acks: dict[tuple[int, int], Any] = {}
        closed: list[threading.Event] = []
        clients = []
        for _ in range(CLIENTS):
            client = socketio.Client(reconnection=False)
            gone = threading.Event()
            closed.append(gone)
            client.on("disconnect", lambda *_, gone=gone: gone.set())
            client.connect(
                first.address,
                auth={"token": token("alice")},
                transports=["websocket"],
                wait_timeout=PATIENCE,
            )
            self.addCleanup(client.disconnect)
            ack = client.call("REALTIME_SUBSCRIBE", {"channel": "burst"}, timeout=PATIENCE)
            self.assertTrue(ack["ok"], ack)
            clients.append(client)

        def answered(n: int, i: int) -> Any:
            return lambda value: acks.__setitem__((n, i), value)

        # The burst waits for the messages table, held until the stop has
        # begun: publishes are surely in flight when it does.
        holder = psycopg2.connect(url)
        self.addCleanup(holder.close)
        with holder.cursor() as cursor:
            cursor.execute("LOCK TABLE realtime.messages IN EXCLUSIVE MODE")

        for i in range(BURST):
            for n, client in enumerate(clients):
                client.emit(
                    "REALTIME_PUBLISH",
                    {"channel": "burst", "event": "n", "payload": {"i": i, "n": n}},
                    callback=answered(n, i),
                )
        waiting = (
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        wait_until(lambda: run_sql(url, waiting) != [(0,)], "a publish waiting for the table")
        in_flight = BURST * CLIENTS - len(acks)
        stopping = time.monotonic()
        first.process.send_signal(signal.SIGTERM)
        wait_until(lambda: "realtimed is stopping" in first.output(), "the stop to begin")
        holder.rollback()
        for gone in closed:
            self.assertTrue(gone.wait(PATIENCE), "a socket was not closed")
        self.assertIn(first.process.wait(timeout=30), (0, -signal.SIGTERM))
        stop_duration = time.monotonic() - stopping

        acked = {value["messageId"] for value in acks.values() if value.get("ok")}
        refused = [value for value in acks.values() if not value.get("ok")]
        stored = {
            row[0]
            for row in run_sql(
                url, "SELECT id::text FROM realtime.messages WHERE channel_name = 'burst'"
            )
        }
        figures = (
            f"burst {BURST * CLIENTS} from {CLIENTS} sockets, in flight at SIGTERM {in_flight},"
            f" answered {len(acks)}, acked ok {len(acked)}, refused {len(refused)},"
            f" stored {len(stored)}, stop {stop_duration:.2f} s"
        )
        log.info("Graceful stop: {figures}", figures=figures)
        self.assertLess(stop_duration, 20.0, figures)
        self.assertGreater(in_flight, 0, figures)
        self.assertEqual(acked - stored, set(), "acknowledged but not stored: " + figures)
        self.assertEqual(stored - acked, set(), "stored but not acknowledged: " + figures)
        self.assertTrue(acked, figures)
        for value in refused:
            self.assertEqual(value["error"]["code"], "INTERNAL_ERROR", value)

        # The client goes on with the other process.
        again = socketio.Client(reconnection=False)
        received = threading.Event()
        again.on("n", lambda *_: received.set())
        again.connect(
            second.address,
            auth={"token": token("alice")},
            transports=["websocket"],
            wait_timeout=PATIENCE,
        )
        self.addCleanup(again.disconnect)
        ack = again.call("REALTIME_SUBSCRIBE", {"channel": "burst"}, timeout=PATIENCE)
        self.assertTrue(ack["ok"], ack)
        ack = again.call(
            "REALTIME_PUBLISH",
            {"channel": "burst", "event": "n", "payload": {"after": True}},
            timeout=PATIENCE,
        )
        self.assertTrue(ack["ok"], ack)
        self.assertTrue(received.wait(PATIENCE))
        output = first.output()
        self.assertIn("realtimed stopped in", output)

    def test_webhook_in_flight(self) -> None:
        """
        SIGTERM while a webhook attempt waits for a receiver that never
        answers: the process exits within 20 s, and the delivery is pending
        again in the database, due at once, for another process to make.
        """
        url = create_database(self)
        silent = socket.socket()
        self.addCleanup(silent.close)
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        daemon = started(self, url, "--webhook-allow-private")
        run_sql(
            url,
            "INSERT INTO realtime.channels (pattern, webhook_urls) VALUES ('hooked', %s)",
            ([f"http://127.0.0.1:{silent.getsockname()[1]}/hook"],),
        )
        run_sql(url, "SELECT realtime.publish('hooked', 'created', '{}')")
        wait_until(
            lambda: run_sql(url, "SELECT attempts FROM realtime.webhook_deliveries") == [(1,)],
            "the attempt to start",
        )
        stopping = time.monotonic()
        daemon.process.send_signal(signal.SIGTERM)
        self.assertIn(daemon.process.wait(timeout=30), (0, -signal.SIGTERM))
        self.assertLess(time.monotonic() - stopping, 20.0)
        self.assertEqual(
            run_sql(
                url,
                "SELECT status, attempts, last_error, next_attempt_at <= now()"
                " FROM realtime.webhook_deliveries",
            ),
            [("pending", 1, "handed back: realtimed stopped", True)],
        )
