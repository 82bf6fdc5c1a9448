"""
Two real realtimed daemons (``twistd -n realtimed`` processes) on one
database: a subscriber on either receives what is published on the other,
and what SQL publishes, exactly once and in the same order.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.support import create_database, run_sql
from tests.test_realtime import KEYS, PATIENCE, Client, marker_events, sleep, token

TWISTD = Path(sys.executable).with_name("twistd")
LISTENING = re.compile(r"realtimed listening on (http://127\.0\.0\.1:\d+)/")


class Process:
    """
    One ``twistd -n realtimed`` on a loopback port chosen by the system.
    """

    def __init__(self, url: str, *options: str) -> None:
        self.directory = tempfile.mkdtemp(prefix="realtimed-daemon-")
        self.log = Path(self.directory) / "out.log"
        self.address: str | None = None
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                [
                    str(TWISTD),
                    "-n",
                    "--pidfile=",
                    "realtimed",
                    "--database-url",
                    url,
                    "--port",
                    "tcp:0:interface=127.0.0.1",
                    "--data-dir",
                    self.directory,
                    "--jwt-secret",
                    KEYS.jwt_secret,
                    "--api-key",
                    KEYS.api_key,
                    "--anon-key",
                    KEYS.anon_key,
                    "--webhook-secret",
                    KEYS.webhook_secret,
                    *options,
                ],
                cwd=self.directory,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def found_address(self) -> str | None:
        match = LISTENING.search(self.output())
        return match.group(1) if match else None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=PATIENCE)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@inlineCallbacks
def start_daemon(test: TestCase, url: str, *options: str) -> Any:
    """
    Start a daemon on C{url} with C{options}, stopped when C{test} ends.

    @return: A Deferred firing with its L{Process} once it listens.
    """
    process = Process(url, *options)
    test.addCleanup(process.stop)
    deadline = time.monotonic() + 60
    while process.address is None:
        process.address = process.found_address()
        if process.process.poll() is not None or time.monotonic() > deadline:
            test.fail("realtimed did not start:\n" + process.output())
        yield sleep(0.1)
    return process


class TwoDaemonsTests(TestCase):
    timeout = 120

    def start(self, url: str) -> Any:
        return start_daemon(self, url)

    @inlineCallbacks
    def test_exactly_once_in_order(self) -> Any:
        """
        Publishes made through one daemon and messages published by SQL
        reach the subscribers of both daemons exactly once, in the same
        order, and the audience count adds both daemons' sockets.
        """
        url = create_database(self)
        first = yield self.start(url)
        second = yield self.start(url)
        run_sql(url, "INSERT INTO realtime.channels (pattern) VALUES ('orders')")
        from twisted.internet.threads import deferToThread

        clients = []
        for process, sub in ((first, "alice"), (second, "bob")):
            client = Client(process.address or "")
            self.addCleanup(deferToThread, client.close)
            yield deferToThread(client.connect, {"token": token(sub)})
            ack = yield deferToThread(client.request, "REALTIME_SUBSCRIBE", {"channel": "orders"})
            self.assertTrue(ack["ok"], ack)
            clients.append(client)
        publisher = clients[1]
        acks = []
        for i in range(6):
            ack = yield deferToThread(
                publisher.request,
                "REALTIME_PUBLISH",
                {"channel": "orders", "event": "n", "payload": {"i": i}},
            )
            self.assertTrue(ack["ok"], ack)
            acks.append(ack)
            if i == 2:
                run_sql(url, "SELECT realtime.publish('orders', 'n', '{\"i\": \"sql\"}')")
        expected: list[Any] = [0, 1, 2, "sql", 3, 4, 5]
        for client in clients:
            got = []
            for _ in expected:
                _event, message = yield deferToThread(client.next_event, "n")
                got.append(message["payload"]["i"])
            self.assertEqual(got, expected)
            self.assertEqual((yield marker_events(url, client, "orders", "n")), [])
        deadline = time.monotonic() + PATIENCE
        counts: list[tuple[Any, ...]] = []
        while time.monotonic() < deadline:
            counts = run_sql(url, "SELECT DISTINCT ws_audience_count FROM realtime.messages")
            if counts == [(2,)]:
                break
            yield sleep(0.1)
        self.assertEqual(counts, [(2,)])
