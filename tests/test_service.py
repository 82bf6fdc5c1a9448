"""
Tests for the daemon service, L{realtimed.service}, and its HTTP root,
L{realtimed.web}: a real realtimed on port 0 against a real PostgreSQL.
"""

from __future__ import annotations

import io
import json
from typing import Any

import psycopg2
import treq
from twisted.internet import reactor
from twisted.internet.defer import fail, gatherResults, inlineCallbacks, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from realtimed.config import load
from realtimed.service import RealtimeService
from realtimed.store.messages import StoredMessage
from realtimed.web import Health, HealthProbe
from tests.support import create_database, run_sql, server_url, wait_for


def start_realtimed(test: TestCase, database_url: str | None = None, **settings: Any) -> Any:
    """
    Start a realtimed on a free port of 127.0.0.1, stopped at cleanup.

    @return: A Deferred firing with the running L{RealtimeService}.
    """
    command_line: dict[str, Any] = {
        "port": ("tcp:0:interface=127.0.0.1",),
        "data-dir": test.mktemp(),
        "database-url": database_url or create_database(test),
    }
    command_line.update({name.replace("_", "-"): value for name, value in settings.items()})
    service = RealtimeService(
        load(command_line, {}), reactor, out=io.StringIO(), stop_on_failure=False
    )
    service.startService()
    test.addCleanup(service.stopService)
    return service.ready


def base_url(service: RealtimeService) -> str:
    return f"http://127.0.0.1:{service.ports[0].getHost().port}"


class WebhookServiceTests(TestCase):
    def test_from_config(self) -> None:
        """
        The daemon's settings give the webhook service its private-address
        rule and its retry horizon.
        """
        from twisted.internet.testing import MemoryReactorClock

        from realtimed.service import webhook_service
        from realtimed.testing import FakePool

        secret = "whsec_" + "a" * 40
        config = load({"webhook-allow-private": True, "webhook-retry-hours": 2.0}, environ={})
        service = webhook_service(MemoryReactorClock(), config, FakePool(), secret)
        self.assertTrue(service.allow_private)
        self.assertEqual(service.policy.horizon, 7200.0)
        self.assertEqual(service.secret, secret)


class HealthProbeTests(TestCase):
    def test_shared_answer(self) -> None:
        """
        Checks made while one is under way share its answer: one ping.
        """
        pings: list[Any] = []

        class Pool:
            def ping(self, timeout: float) -> Any:
                from twisted.internet.defer import Deferred

                d: Any = Deferred()
                pings.append(d)
                return d

        probe = HealthProbe(Pool())  # type: ignore[arg-type]
        first, second = probe.check(), probe.check()
        self.assertEqual(len(pings), 1)
        pings[0].callback(True)
        self.assertEqual((self.successResultOf(first), self.successResultOf(second)), (True, True))
        third = probe.check()
        self.assertEqual(len(pings), 2)
        pings[1].callback(False)
        self.assertFalse(self.successResultOf(third))


class HealthTests(TestCase):
    @inlineCallbacks
    def get(self, check: Any) -> Any:
        root = Resource()
        root.putChild(b"healthz", Health(check))
        port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        response = yield treq.get(
            f"http://127.0.0.1:{port.getHost().port}/healthz", persistent=False
        )
        body = yield response.json()
        return response.code, body

    @inlineCallbacks
    def test_healthy(self) -> Any:
        """
        A passing check answers 200 {"status": "ok"}.
        """
        self.assertEqual((yield self.get(lambda: succeed(True))), (200, {"status": "ok"}))

    @inlineCallbacks
    def test_unhealthy(self) -> Any:
        """
        A check that says no, or that fails, answers 503.
        """
        self.assertEqual((yield self.get(lambda: succeed(False))), (503, {"status": "unavailable"}))
        self.assertEqual(
            (yield self.get(lambda: fail(RuntimeError("down")))), (503, {"status": "unavailable"})
        )
        self.flushLoggedErrors(RuntimeError)


class ServiceTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_serves_health(self) -> Any:
        """
        realtimed starts against a database URL, applies the schema, and
        /healthz answers 200 while the database is reachable and 503 once it
        is gone.
        """
        url = create_database(self)
        service = yield start_realtimed(self, url)
        self.assertEqual(
            run_sql(url, "SELECT count(*) > 0 FROM realtime.schema_migrations"), [(True,)]
        )
        response = yield treq.get(base_url(service) + "/healthz", persistent=False)
        self.assertEqual(response.code, 200)
        self.assertEqual((yield response.json()), {"status": "ok"})

        [(name,)] = run_sql(url, "SELECT current_database()")
        run_sql(server_url(), f'DROP DATABASE "{name}" WITH (FORCE)')
        response = yield treq.get(base_url(service) + "/healthz", persistent=False)
        self.assertEqual(response.code, 503)
        yield response.content()
        self.flushLoggedErrors()

    @inlineCallbacks
    def test_announces_generated_secrets(self) -> Any:
        """
        A first start that generates secrets says where realtimed listens and
        where the secrets are kept, without writing them out when the output
        is not a terminal; a later start says nothing.
        """
        url = create_database(self)
        data_dir = self.mktemp()
        settings = {
            "port": ("tcp:0:interface=127.0.0.1",),
            "data-dir": data_dir,
            "database-url": url,
        }
        for expected in (True, False):
            out = io.StringIO()
            service = RealtimeService(load(settings, {}), reactor, out=out, stop_on_failure=False)
            service.startService()
            yield service.ready
            yield service.stopService()
            text = out.getvalue()
            if expected:
                self.assertIn("realtimed is listening on http://127.0.0.1:", text)
                self.assertIn(f"{data_dir}/secrets.json", text)
                with open(f"{data_dir}/secrets.json") as f:
                    for secret in json.load(f).values():
                        self.assertNotIn(secret, text)
            else:
                self.assertEqual(text, "")

    @inlineCallbacks
    def test_owns_its_pieces(self) -> Any:
        """
        The daemon's pieces are its services, started in dependency order;
        once it has stopped, none of its database connections is left and
        its port no longer answers.
        """
        url = create_database(self)
        service = yield start_realtimed(self, url)
        self.assertEqual(
            [type(child).__name__ for child in service],
            [
                "SystemdNotify",
                "GivenDatabase",
                "SchemaMigrations",
                "ConnectionPool",
                "ConnectionPool",
                "ConnectionPool",
                "MessageListener",
                "WebhookService",
                "MessageRetention",
                "SharedPresence",
                "SocketIOService",
                "Realtime",
                "ListeningPort",
            ],
        )
        self.assertTrue(all(child.running for child in service))
        connections = (
            "SELECT application_name FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " ORDER BY application_name"
        )
        self.assertEqual(
            {name for (name,) in run_sql(url, connections)},
            {"realtimed", "realtimed health", "realtimed listener", "realtimed webhooks"},
        )
        address = base_url(service)
        yield service.stopService()
        self.assertFalse(any(child.running for child in service))
        yield wait_for(lambda: run_sql(url, connections) == [], "every connection to close")
        yield self.assertFailure(
            treq.get(address + "/healthz", persistent=False), ConnectionRefusedError
        )

    @inlineCallbacks
    def test_health_never_queues(self) -> Any:
        """
        /healthz answers while every connection of the query pool is busy
        and more statements wait for one: the probe has a connection of its
        own.  The pool's statements run with a statement timeout.
        """
        url = create_database(self)
        service = yield start_realtimed(self, url)
        holder = psycopg2.connect(url)
        self.addCleanup(holder.close)
        holder.autocommit = True
        holder.cursor().execute("SELECT pg_advisory_lock(4242)")
        size = service.pool.size
        blocked = [
            service.pool.runQuery("SELECT pg_advisory_xact_lock(4242)") for _ in range(size + 2)
        ]
        answered: list[object] = []
        for d in blocked:
            d.addCallback(lambda rows: answered.append(rows) or rows)
        yield wait_for(
            lambda: (
                run_sql(
                    url,
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND datname = current_database()",
                )
                == [(size,)]
            ),
            "the pool's connections to wait for the lock",
        )
        response = yield treq.get(base_url(service) + "/healthz", persistent=False)
        self.assertEqual(response.code, 200)
        yield response.content()
        self.assertEqual(answered, [])
        holder.cursor().execute("SELECT pg_advisory_unlock_all()")
        holder.close()
        yield gatherResults(blocked)
        rows = yield service.pool.runQuery("SHOW statement_timeout")
        self.assertEqual(rows, [("10s",)])

    @inlineCallbacks
    def test_embedded_database(self) -> Any:
        """
        Without a database URL the daemon runs its own PostgreSQL under the
        data directory, serves with it, and stops it when it stops.
        """
        data_dir = self.mktemp()
        config = load({"port": ("tcp:0:interface=127.0.0.1",), "data-dir": data_dir}, {})
        service = RealtimeService(config, reactor, out=io.StringIO(), stop_on_failure=False)
        service.startService()
        self.addCleanup(service.stopService)
        yield service.ready
        self.assertEqual(type(service.database).__name__, "EmbeddedPostgres")
        response = yield treq.get(base_url(service) + "/healthz", persistent=False)
        self.assertEqual(response.code, 200)
        yield response.content()
        url = service.database_url
        assert url is not None
        self.assertEqual(run_sql(url, "SELECT current_database()"), [("realtimed",)])
        yield service.stopService()
        self.assertRaises(psycopg2.OperationalError, run_sql, url, "SELECT 1")

    @inlineCallbacks
    def test_start_failure(self) -> Any:
        """
        When the database cannot be reached, start-up fails with the reason.
        """
        service = RealtimeService(
            load(
                {
                    "port": ("tcp:0",),
                    "data-dir": self.mktemp(),
                    "database-url": "postgresql://postgres@127.0.0.1:1/none",
                },
                {},
            ),
            reactor,
            out=io.StringIO(),
            stop_on_failure=False,
        )
        service.startService()
        self.addCleanup(service.stopService)
        yield self.assertFailure(service.ready, Exception)
        self.flushLoggedErrors()


class MountTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_admin_api_mounted(self) -> Any:
        """
        The admin REST API answers under /api/realtime/ with the API key, and
        refuses a request without a credential.
        """
        service = yield start_realtimed(self, api_key="ik_" + "k" * 32)
        url = base_url(service) + "/api/realtime/channels"
        response = yield treq.get(
            url, headers={"Authorization": "Bearer ik_" + "k" * 32}, persistent=False
        )
        self.assertEqual((response.code, (yield response.json())), (200, []))
        response = yield treq.get(url, persistent=False)
        self.assertEqual(response.code, 401)
        yield response.content()

    @inlineCallbacks
    def test_socketio_mounted(self) -> Any:
        """
        Engine.IO answers a polling handshake under /socket.io/ with its open
        packet.
        """
        service = yield start_realtimed(self)
        response = yield treq.get(
            base_url(service) + "/socket.io/?EIO=4&transport=polling", persistent=False
        )
        body = yield response.text()
        self.assertEqual(response.code, 200)
        self.assertTrue(body.startswith("0{"), body)
        self.assertIn('"sid"', body)

    @inlineCallbacks
    def test_webhooks_delivered(self) -> Any:
        """
        A message published through the REST API is POSTed, signed with the
        daemon's webhook secret, to its channel's webhook URL.
        """
        from standardwebhooks.webhooks import Webhook
        from twisted.internet.defer import Deferred
        from twisted.web.resource import Resource as WebResource

        received: Deferred[tuple[dict[str, str], bytes]] = Deferred()

        class Receiver(WebResource):
            isLeaf = True

            def render_POST(self, request: Any) -> bytes:
                headers = {
                    k.decode().lower(): v[0].decode()
                    for k, v in request.requestHeaders.getAllRawHeaders()
                }
                if not received.called:
                    received.callback((headers, request.content.read()))
                return b"ok"

        receiver = reactor.listenTCP(0, Site(Receiver()), interface="127.0.0.1")
        self.addCleanup(receiver.stopListening)
        api_key = "ik_" + "k" * 32
        service = yield start_realtimed(self, api_key=api_key, webhook_allow_private=True)
        authorization = {"Authorization": "Bearer " + api_key}
        hook = f"http://127.0.0.1:{receiver.getHost().port}/hook"
        response = yield treq.post(
            base_url(service) + "/api/realtime/channels",
            json={"pattern": "orders", "webhookUrls": [hook]},
            headers=authorization,
            persistent=False,
        )
        self.assertEqual(response.code, 201, (yield response.text()))
        response = yield treq.post(
            base_url(service) + "/api/realtime/messages",
            json={"channel": "orders", "event": "order.created", "payload": {"id": 1}},
            headers=authorization,
            persistent=False,
        )
        self.assertEqual(response.code, 201)
        stored = yield response.json()
        headers, body = yield received
        assert service.keys is not None
        delivered = Webhook(service.keys.webhook_secret).verify(body, headers)
        self.assertEqual(headers["webhook-id"], stored["id"])
        self.assertEqual(headers["x-realtime-event"], "order.created")
        self.assertEqual(headers["x-realtime-channel"], "orders")
        self.assertEqual(
            (
                delivered["channel"],
                delivered["event"],
                delivered["messageId"],
                delivered["payload"],
            ),
            ("orders", "order.created", stored["id"], {"id": 1}),
        )

    @inlineCallbacks
    def test_webhooks_woken(self) -> Any:
        """
        A message stored while the daemon runs (here by SQL) goes to its
        webhook at once: the daemon's LISTEN connection wakes the webhook
        service, whose poll is an hour away in this test.
        """
        from twisted.internet.defer import Deferred
        from twisted.web.resource import Resource as WebResource

        import realtimed.service
        from realtimed.webhooks.service import WebhookService

        original = realtimed.service.webhook_service

        def hourly(reactor: Any, config: Any, pool: Any, secret: str) -> WebhookService:
            webhooks = original(reactor, config, pool, secret)
            webhooks.poll_interval = 3600.0
            return webhooks

        self.patch(realtimed.service, "webhook_service", hourly)
        received: Deferred[str] = Deferred()

        class Receiver(WebResource):
            isLeaf = True

            def render_POST(self, request: Any) -> bytes:
                if not received.called:
                    received.callback(request.getHeader("webhook-id"))
                return b"ok"

        receiver = reactor.listenTCP(0, Site(Receiver()), interface="127.0.0.1")
        self.addCleanup(receiver.stopListening)
        url = create_database(self)
        yield start_realtimed(self, url, webhook_allow_private=True)
        hook = f"http://127.0.0.1:{receiver.getHost().port}/hook"
        run_sql(
            url,
            "INSERT INTO realtime.channels (pattern, webhook_urls) VALUES ('orders', %s)",
            ([hook],),
        )
        message_id = run_sql(url, "SELECT realtime.publish('orders', 'created', '{}')::text")
        received.addTimeout(10.0, reactor)
        webhook_id = yield received
        self.assertEqual(webhook_id, message_id[0][0])

    @inlineCallbacks
    def test_webhooks_woken_only_for_deliveries(self) -> Any:
        """
        A stored message wakes the webhook service only when it queued
        webhook deliveries, so messages on channels without webhooks cost
        the sender nothing.
        """
        url = create_database(self)
        service = yield start_realtimed(self, url, webhook_allow_private=True)
        wakes: list[None] = []
        self.patch(service.webhooks, "wake", lambda: wakes.append(None))
        run_sql(
            url,
            "INSERT INTO realtime.channels (pattern, webhook_urls) VALUES"
            " ('quiet', NULL), ('hooked', ARRAY['http://127.0.0.1:9/hook'])",
        )
        seen: list[StoredMessage] = []
        original = service.realtime.deliver
        self.patch(service.realtime, "deliver", lambda n: (seen.append(n), original(n))[1])
        run_sql(url, "SELECT realtime.publish('quiet', 'a', '{}')")
        run_sql(url, "SELECT realtime.publish('hooked', 'b', '{}')")
        yield wait_for(lambda: len(seen) >= 2, what="both messages")
        self.assertEqual([message.webhooks for message in seen], [0, 1])
        self.assertEqual(len(wakes), 1)
