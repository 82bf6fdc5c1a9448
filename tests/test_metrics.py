"""
Tests for L{realtimed.metrics}: the figures themselves with a fake clock,
and a real daemon's ``/metrics`` scraped as Prometheus would, moving with
real traffic.
"""

from __future__ import annotations

import io
import time
from typing import Any

import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from realtimed.config import load
from realtimed.metrics import MAX_PENDING, Metrics
from realtimed.service import RealtimeService
from realtimed.webhooks.outbox import Delivery, Outcome
from realtimed.webhooks.service import _attempt_outcome
from tests.support import create_database, run_sql
from tests.test_realtime import KEYS, PATIENCE, Client, sleep, token

ADMIN = {"Authorization": [f"Bearer {KEYS.api_key}"]}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """
    Every sample of a Prometheus text exposition, by name and labels.
    """
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


class MetricsTests(SynchronousTestCase):
    """
    L{Metrics} with a fake clock.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.metrics = Metrics(self.clock)

    def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        body, content_type = self.metrics.exposition()
        self.assertTrue(content_type.startswith("text/plain"))
        return samples(body.decode())

    def test_publish_to_write(self) -> None:
        """
        The latency of a publish runs from its arrival to the delivery of
        its message to sockets here; a message nobody here receives is not
        observed, and neither is one that was not published here.
        """
        self.metrics.publish_arrived("m1")
        self.metrics.publish_arrived("m2")
        self.clock.advance(0.02)
        self.metrics.delivered("m1", "2023-11-14T22:13:20.000Z", 3)
        self.metrics.delivered("m2", "2023-11-14T22:13:20.000Z", 0)
        self.metrics.delivered("m3", "2023-11-14T22:13:20.000Z", 2)
        found = self.scrape()
        self.assertEqual(value(found, "realtimed_publish_to_write_seconds_count"), 1)
        self.assertAlmostEqual(value(found, "realtimed_publish_to_write_seconds_sum"), 0.02)
        self.assertEqual(value(found, "realtimed_publish_to_write_seconds_bucket", le="0.01"), 0)
        self.assertEqual(value(found, "realtimed_publish_to_write_seconds_bucket", le="0.025"), 1)
        self.assertEqual(value(found, "realtimed_deliveries_total"), 5)

    def test_listener_lag(self) -> None:
        """
        The listener's lag runs from the message's C{createdAt} to its
        hand-over; a C{createdAt} that cannot be read is not observed.
        """
        self.clock.advance(0.5)
        self.metrics.delivered("m1", "2023-11-14T22:13:20.000Z", 0)
        self.metrics.delivered("m2", "soon", 0)
        found = self.scrape()
        self.assertEqual(value(found, "realtimed_listener_lag_seconds_count"), 1)
        self.assertAlmostEqual(value(found, "realtimed_listener_lag_seconds_sum"), 0.5)

    def test_not_stored_forgotten(self) -> None:
        """
        A publish that was not stored is forgotten; arrivals never piling
        up beyond a bound even when their batches fail.
        """
        self.metrics.publish_arrived("m1")
        self.metrics.publish_not_stored("m1")
        self.metrics.delivered("m1", "", 1)
        self.assertEqual(value(self.scrape(), "realtimed_publish_to_write_seconds_count"), 0)
        for i in range(MAX_PENDING + 5):
            self.metrics.publish_arrived(str(i))
        self.assertLessEqual(len(self.metrics._arrived), MAX_PENDING)
        self.metrics.delivered(str(MAX_PENDING + 4), "", 1)
        self.assertEqual(value(self.scrape(), "realtimed_publish_to_write_seconds_count"), 1)

    def test_live_gauges(self) -> None:
        """
        Connections by transport, subscriptions and statements waiting for
        a connection are read when scraped; both transports always appear.
        """
        self.metrics.transports = lambda: ["websocket", "polling", "websocket"]
        self.metrics.subscriptions = lambda: 7
        self.metrics.pool_waiting["queries"] = lambda: 2
        found = self.scrape()
        self.assertEqual(value(found, "realtimed_connections", transport="websocket"), 2)
        self.assertEqual(value(found, "realtimed_connections", transport="polling"), 1)
        self.assertEqual(value(found, "realtimed_subscriptions"), 7)
        self.assertEqual(value(found, "realtimed_database_pool_waiting", pool="queries"), 2)
        self.assertIn(("realtimed_database_pool_waiting", (("pool", "webhooks"),)), found)
        self.metrics.transports = tuple
        found = self.scrape()
        self.assertEqual(value(found, "realtimed_connections", transport="websocket"), 0)
        self.assertIn(("realtimed_connections", (("transport", "polling"),)), found)

    def test_registries_apart(self) -> None:
        """
        Each daemon's metrics are its own.
        """
        other = Metrics(self.clock)
        self.metrics.publishes("stored", 4)
        self.assertEqual(value(self.scrape(), "realtimed_publishes_total", outcome="stored"), 4)
        self.assertEqual(
            value(
                samples(other.exposition()[0].decode()),
                "realtimed_publishes_total",
                outcome="stored",
            ),
            0,
        )

    def test_webhook_outcomes(self) -> None:
        """
        Webhook attempts are counted as delivered, retry, failed or
        refused.
        """
        delivery = Delivery(
            id=1,
            url="https://example.com/",
            host="example.com",
            attempts=1,
            age=0.0,
            message_id="m",
            event="e",
            channel="c",
            body=b"{}",
        )
        self.assertEqual(_attempt_outcome(Outcome(delivery, "delivered")), "delivered")
        self.assertEqual(_attempt_outcome(Outcome(delivery, "pending")), "retry")
        self.assertEqual(_attempt_outcome(Outcome(delivery, "failed", http_status=410)), "failed")
        self.assertEqual(
            _attempt_outcome(Outcome(delivery, "failed", error="refused: private address")),
            "refused",
        )


class ScrapeTests(TestCase):
    """
    A real daemon with a metrics endpoint, real clients, real scrapes.
    """

    timeout = 120

    @inlineCallbacks
    def setUp(self) -> Any:  # type: ignore[override]
        self.url = create_database(self)
        config = load(
            {
                "port": ("tcp:0:interface=127.0.0.1",),
                "metrics-port": "tcp:0:interface=127.0.0.1",
                "database-url": self.url,
                "data-dir": self.mktemp(),
                "jwt-secret": KEYS.jwt_secret,
                "api-key": KEYS.api_key,
                "anon-key": KEYS.anon_key,
                "webhook-secret": KEYS.webhook_secret,
            },
            {},
        )
        self.service = RealtimeService(config, reactor, out=io.StringIO(), stop_on_failure=False)
        self.service.startService()
        self.addCleanup(self.service.stopService)
        yield self.service.ready
        self.address = f"http://127.0.0.1:{self.service.ports[0].getHost().port}"  # type: ignore[attr-defined]
        assert self.service.metrics_port is not None and self.service.metrics_port.port is not None
        scrape_port = self.service.metrics_port.port.getHost().port  # type: ignore[attr-defined]
        self.scrape_address = f"http://127.0.0.1:{scrape_port}"
        run_sql(
            self.url,
            "INSERT INTO realtime.channels (pattern, webhook_urls) VALUES"
            " ('orders', NULL), ('hooked', ARRAY['http://127.0.0.1:9/hook'])",
        )

    @inlineCallbacks
    def scrape(self, base: str | None = None, headers: Any = ADMIN) -> Any:
        response = yield treq.get(
            (base or self.address) + "/metrics", headers=headers, persistent=False
        )
        body = yield response.text()
        self.assertEqual(response.code, 200, body)
        self.assertEqual(
            response.headers.getRawHeaders(b"content-type")[0].split(b";")[0], b"text/plain"
        )
        return samples(body)

    def client(self, transports: list[str]) -> Any:
        client = Client(self.address)
        self.addCleanup(deferToThread, client.close)
        d = deferToThread(client.connect, {"token": token("alice")}, transports=transports)
        return d.addCallback(lambda _: client)

    @inlineCallbacks
    def test_credential(self) -> Any:
        """
        On the daemon's port, ``/metrics`` takes the admin credential, as
        the REST API does; on the metrics port it takes none, and serves
        nothing else.
        """
        response = yield treq.get(self.address + "/metrics", persistent=False)
        self.assertEqual(response.code, 401)
        self.assertEqual((yield response.json())["error"], "UNAUTHORIZED")
        response = yield treq.get(
            self.address + "/metrics",
            headers={"Authorization": [f"Bearer {token('alice')}"]},
            persistent=False,
        )
        self.assertEqual(response.code, 403)
        yield response.content()
        response = yield treq.get(
            self.address + "/metrics", headers={"x-api-key": [KEYS.api_key]}, persistent=False
        )
        self.assertEqual(response.code, 200)
        yield response.content()
        found = yield self.scrape(self.scrape_address, headers={})
        self.assertIn(("realtimed_subscriptions", ()), found)
        for path in ("/healthz", "/api/realtime/channels", "/socket.io/?EIO=4&transport=polling"):
            response = yield treq.get(self.scrape_address + path, persistent=False)
            self.assertEqual(response.code, 404, path)
            yield response.content()

    @inlineCallbacks
    def test_figures_move_with_traffic(self) -> Any:
        """
        Connections by transport, subscriptions, publishes by outcome,
        deliveries, the publish-to-write latency, the listener's lag, pool
        waits and webhook attempts all move with real traffic.
        """
        before = yield self.scrape()
        websocket = yield self.client(["websocket"])
        polling = yield self.client(["polling"])
        for client in (websocket, polling):
            ack = yield deferToThread(client.request, "REALTIME_SUBSCRIBE", {"channel": "orders"})
            self.assertTrue(ack["ok"], ack)
        ack = yield deferToThread(websocket.request, "REALTIME_SUBSCRIBE", {"channel": "hooked"})
        self.assertTrue(ack["ok"], ack)
        found = yield self.scrape()
        self.assertEqual(value(found, "realtimed_connections", transport="websocket"), 1)
        self.assertEqual(value(found, "realtimed_connections", transport="polling"), 1)
        self.assertEqual(value(found, "realtimed_subscriptions"), 3)

        for i in range(3):
            ack = yield deferToThread(
                websocket.request,
                "REALTIME_PUBLISH",
                {"channel": "orders", "event": "e", "payload": {"i": i}},
            )
            self.assertTrue(ack["ok"], ack)
        ack = yield deferToThread(
            websocket.request, "REALTIME_PUBLISH", {"channel": "todos", "event": "e"}
        )
        self.assertEqual(ack["error"]["code"], "REALTIME_NOT_SUBSCRIBED")
        ack = yield deferToThread(websocket.request, "REALTIME_PUBLISH", {"channel": "orders"})
        self.assertEqual(ack["error"]["code"], "INVALID_INPUT")
        ack = yield deferToThread(
            websocket.request, "REALTIME_PUBLISH", {"channel": "hooked", "event": "h"}
        )
        self.assertTrue(ack["ok"], ack)
        for client in (websocket, polling):
            for _ in range(3):
                yield deferToThread(client.next_event, "e")

        # The refused webhook attempt is made once its delivery is claimed.
        deadline = time.monotonic() + PATIENCE
        while True:
            found = yield self.scrape()
            if value(found, "realtimed_webhook_attempts_total", outcome="refused") >= 1:
                break
            self.assertLess(time.monotonic(), deadline, "no webhook attempt")
            yield sleep(0.05)
        publishes = {
            outcome: value(found, "realtimed_publishes_total", outcome=outcome)
            - value(before, "realtimed_publishes_total", outcome=outcome)
            for outcome in ("stored", "not_subscribed", "invalid", "failed")
        }
        self.assertEqual(publishes, {"stored": 4, "not_subscribed": 1, "invalid": 1, "failed": 0})
        self.assertGreaterEqual(value(found, "realtimed_deliveries_total"), 7)
        self.assertGreaterEqual(value(found, "realtimed_publish_to_write_seconds_count"), 4)
        self.assertGreaterEqual(value(found, "realtimed_listener_lag_seconds_count"), 4)
        self.assertGreater(
            value(found, "realtimed_database_pool_wait_seconds_count", pool="queries"), 0
        )
        self.assertGreater(
            value(found, "realtimed_database_pool_wait_seconds_count", pool="webhooks"), 0
        )
        self.assertEqual(value(found, "realtimed_webhook_attempts_total", outcome="refused"), 1)
        self.assertGreater(value(found, "realtimed_process_resident_memory_bytes"), 0)
