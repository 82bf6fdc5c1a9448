"""
Two real realtimed daemons (``twistd -n realtimed`` processes) on one
database: a subscriber on either receives what is published on the other,
and what SQL publishes, exactly once and in the same order.
"""

from __future__ import annotations

import time
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.processes import start_daemon
from tests.support import create_database, run_sql
from tests.test_realtime import PATIENCE, Client, marker_events, sleep, token


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
            counts = run_sql(
                url, "SELECT DISTINCT realtime.ws_audience_count(m) FROM realtime.messages m"
            )
            if counts == [(2,)]:
                break
            yield sleep(0.1)
        self.assertEqual(counts, [(2,)])
