"""
Tests for L{realtimed.webhooks}: deliveries from a real PostgreSQL outbox to
real receivers on loopback ports.
"""

from __future__ import annotations

import atexit
import base64
import ipaddress
import json
import os
import sys
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, cast
from urllib.parse import urlsplit

import psycopg2
from standardwebhooks.webhooks import Webhook
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, fail, inlineCallbacks
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.ssl import Certificate, PrivateCertificate
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from realtimed.rest.api import went_away
from realtimed.store.migrations import migrate
from realtimed.store.pool import ConnectionPool, IQueries
from realtimed.testing import FakeClock, FakePool
from realtimed.webhooks.endpoint import webhook_http_client
from realtimed.webhooks.outbox import Outbox, outbox_pool
from realtimed.webhooks.policy import RetryPolicy
from realtimed.webhooks.service import WebhookService
from realtimed.webhooks.signing import encode_webhook_secret
from tests.support import TrackingSite, run_sql, server_url, wait_for, with_database

reactor: Any = _reactor

SECRET = encode_webhook_secret(b"webhook-test-key-" + b"x" * 15)

#: Quick retries, so tests need not wait.
QUICK = RetryPolicy(base_delay=0.05, max_delay=0.2, horizon=60.0)


class Receiver(Resource):
    """
    A webhook receiver that records each request and answers from a
    script: each entry is a status, or a status and extra headers; once the
    script is used up, 200.

    @ivar delay: Seconds to wait before answering.
    @ivar holding: Whether requests are left unanswered until L{release}.
    """

    isLeaf = True

    def __init__(
        self, script: list[Any] | None = None, delay: float = 0.0, holding: bool = False
    ) -> None:
        super().__init__()
        self.script = list(script or [])
        self.delay = delay
        self.holding = holding
        self.held: list[tuple[Request, Callable[[], bool]]] = []
        self.requests: list[tuple[dict[str, str], bytes, float]] = []
        self.answering: set[Any] = set()
        self.paths: list[bytes] = []
        #: Requests being answered now, and the most at any time.
        self.active = 0
        self.most = 0

    def render_POST(self, request: Request) -> bytes | int:
        headers = {
            name.decode().lower(): values[0].decode("utf-8")
            for name, values in request.requestHeaders.getAllRawHeaders()
        }
        assert request.content is not None
        body = request.content.read()
        self.requests.append((headers, body, reactor.seconds()))
        self.paths.append(request.uri)
        status: int = 200
        extra: dict[str, str] = {}
        if self.script:
            entry = self.script.pop(0)
            status, extra = entry if isinstance(entry, tuple) else (entry, {})
        request.setResponseCode(status)
        for name, value in extra.items():
            request.setHeader(name, value)
        if not self.delay and not self.holding:
            return b"thanks"
        self.active += 1
        self.most = max(self.most, self.active)
        request.notifyFinish().addBoth(self._finished)
        gone = went_away(request)
        if self.holding:
            self.held.append((request, gone))
            return NOT_DONE_YET

        def answer() -> None:
            self.answering.discard(call)
            self._answer(request, gone)

        call = reactor.callLater(self.delay, answer)
        self.answering.add(call)
        return NOT_DONE_YET

    def _answer(self, request: Request, gone: Callable[[], bool]) -> None:
        if not gone():
            request.write(b"thanks")
            request.finish()

    def _finished(self, _: object) -> None:
        self.active -= 1

    def release(self) -> None:
        """
        Answer the requests held so far, and hold no more.
        """
        self.holding = False
        held, self.held = self.held, []
        for request, gone in held:
            self._answer(request, gone)

    def stop(self) -> None:
        """
        Drop the answers not given yet.
        """
        for call in self.answering:
            call.cancel()
        self.answering.clear()
        self.held.clear()

    def ids(self) -> list[str]:
        return [headers["webhook-id"] for headers, _, _ in self.requests]


def statement_kind(sql: str) -> str:
    """
    Which of the outbox's statements C{sql} is: C{"claim"}, C{"record"},
    C{"prune"}, or C{"other"}.
    """
    for word, kind in (
        ("webhook_claim", "claim"),
        ("webhook_record", "record"),
        ("DELETE", "prune"),
    ):
        if word in sql:
            return kind
    return "other"


@implementer(IQueries)
class WatchedPool:
    """
    A real connection pool that counts the statements it has sent and those
    that have finished (answered or failed), by L{statement_kind}: a test
    waits for the service's next claim rather than for a span of time.
    """

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self.sent: Counter[str] = Counter()
        self.finished: Counter[str] = Counter()

    def _watch(self, sql: str, d: Deferred[Any]) -> Deferred[Any]:
        kind = statement_kind(sql)
        self.sent[kind] += 1

        def finished(result: object) -> object:
            self.finished[kind] += 1
            return result

        return d.addBoth(finished)

    def runQuery(self, sql: str, params: Any = None) -> Deferred[Any]:
        return self._watch(sql, self.pool.runQuery(sql, params))

    def runOperation(self, sql: str, params: Any = None) -> Deferred[Any]:
        return self._watch(sql, self.pool.runOperation(sql, params))

    def runInteraction(self, interaction: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return self.pool.runInteraction(interaction, *args, **kwargs)

    def close(self) -> Any:
        return self.pool.close()


#: A delivery service in a process of its own: started with the database
#: URL and the secret as arguments, it says "started" and runs until its
#: standard input closes.
CHILD_SERVICE = """
import sys
from twisted.internet import reactor, stdio
from twisted.internet.protocol import Protocol
from realtimed.webhooks.policy import RetryPolicy
from realtimed.webhooks.outbox import outbox_pool
from realtimed.webhooks.service import WebhookService

pool = outbox_pool(reactor, sys.argv[1])
service = WebhookService(
    reactor, pool, sys.argv[2], allow_private=True,
    policy=RetryPolicy(0.05, 0.2, 60.0), poll_interval=0.2, max_in_flight=4, per_host=4,
)

class StopAtEOF(Protocol):
    def connectionLost(self, reason=None):
        service.stopService().addBoth(lambda _: pool.close()).addBoth(lambda _: reactor.stop())

stdio.StandardIO(StopAtEOF())
service.startService()
print("started", flush=True)
reactor.run()
"""


def named(url: str, application_name: str) -> str:
    """
    C{url} with an C{application_name} parameter, which tells its
    connections apart in C{pg_stat_activity}.
    """
    return f"{url}{'&' if '?' in url else '?'}application_name={application_name}"


class ServiceProcess(ProcessProtocol):
    """
    Watches a L{CHILD_SERVICE} process.
    """

    def __init__(self) -> None:
        self.started: Deferred[None] = Deferred()
        self.ended: Deferred[None] = Deferred()
        self.output = b""

    def outReceived(self, data: bytes) -> None:
        self.output += data
        if b"started" in self.output and not self.started.called:
            self.started.callback(None)

    def errReceived(self, data: bytes) -> None:
        self.output += data

    def processEnded(self, reason: Any) -> None:
        if not self.started.called:
            self.started.errback(RuntimeError(self.output.decode(errors="replace")))
        self.ended.callback(None)

    def stop(self) -> Deferred[None]:
        """
        Close its input (it stops its service and exits); fires when it
        has ended.
        """
        transport: Any = self.transport
        if not self.ended.called and transport is not None:
            transport.closeStdin()
        return self.ended


#: The database these tests share (on the server REALTIMED_TEST_POSTGRES
#: names, see tests.support): created and migrated once, emptied before each
#: test, dropped when the run ends.  Creating a database per test cost more
#: than all the tests themselves.
_shared: list[str] = []


def _drop_shared() -> None:
    for url in _shared:
        run_sql(
            server_url(), f'DROP DATABASE IF EXISTS "{urlsplit(url).path.lstrip("/")}" WITH (FORCE)'
        )


@inlineCallbacks
def shared_database() -> Any:
    """
    The shared database, empty.
    """
    if not _shared:
        name = "realtimed_test_webhooks_" + uuid.uuid4().hex[:12]
        run_sql(server_url(), f'CREATE DATABASE "{name}"')
        _shared.append(with_database(server_url(), name))
        atexit.register(_drop_shared)
        yield migrate(reactor, _shared[0])
    else:
        run_sql(
            _shared[0],
            "TRUNCATE realtime.webhook_deliveries, realtime.messages, realtime.channels"
            " RESTART IDENTITY CASCADE",
        )
    return _shared[0]


class WebhookTestCase(TestCase):
    """
    An empty migrated database per test, and helpers to run receivers and
    services against it.
    """

    @inlineCallbacks
    def setUp(self) -> Any:  # type: ignore[override]
        self.database = yield shared_database()
        self.log_events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, self.log_events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def listen(self, receiver: Resource, port: int = 0) -> int:
        """
        Serve C{receiver} on 127.0.0.1 until the test ends.

        @return: Its port.
        """
        site = TrackingSite(receiver)
        listening = reactor.listenTCP(port, site, interface="127.0.0.1")

        @inlineCallbacks
        def close() -> Any:
            if isinstance(receiver, Receiver):
                receiver.stop()
            yield listening.stopListening()
            yield site.abort_all()

        self.addCleanup(close)
        self.close_receiver = close
        return int(listening.getHost().port)

    def free_port(self) -> int:
        """
        A loopback port with nothing listening (just now).
        """
        listening = reactor.listenTCP(0, Site(Resource()), interface="127.0.0.1")
        port = int(listening.getHost().port)
        listening.stopListening()
        return port

    def service(self, **kwargs: Any) -> WebhookService:
        """
        A started delivery service on the test database, stopped when the
        test ends (unless stopped before).
        """
        options: dict[str, Any] = {
            "allow_private": True,
            "policy": QUICK,
            "poll_interval": 0.2,
        }
        options.update(kwargs)
        pool = self.pool = WatchedPool(outbox_pool(reactor, self.database))
        self.addCleanup(pool.close)
        service = WebhookService(reactor, pool, SECRET, **options)
        service.startService()

        def stop() -> Any:
            if service.running:
                return service.stopService()
            return None

        self.addCleanup(stop)
        return service

    def channel(self, pattern: str, *urls: str) -> None:
        run_sql(
            self.database,
            "INSERT INTO realtime.channels (pattern, webhook_urls) VALUES (%s, %s)",
            (pattern, list(urls)),
        )

    def publish(self, channel: str, event: str = "evt", payload: Any = None) -> str:
        rows = run_sql(
            self.database,
            "SELECT realtime.publish(%s, %s, %s)::text",
            (channel, event, json.dumps(payload if payload is not None else {"a": 1})),
        )
        return str(rows[0][0])

    def deliveries(self) -> list[tuple[Any, ...]]:
        return run_sql(
            self.database,
            "SELECT message_id::text, url, status, attempts, last_status, last_error"
            " FROM realtime.webhook_deliveries ORDER BY id",
        )

    def counts(self, message_id: str) -> tuple[int, int]:
        rows = run_sql(
            self.database,
            "SELECT wh_audience_count, wh_delivered_count FROM realtime.messages WHERE id = %s",
            (message_id,),
        )
        return rows[0][0], rows[0][1]

    def wait_for(
        self, condition: Callable[[], object], timeout: float = 30.0, what: str = ""
    ) -> Deferred[Any]:
        """
        Poll C{condition} until it holds; fail the test after C{timeout}
        (see L{tests.support.wait_for}).
        """
        return wait_for(condition, what, timeout)

    @inlineCallbacks
    def claims_from_now(self) -> Any:
        """
        Wait until the service has finished a claim that started after this
        call: claims run one at a time, so the second to finish from now
        did.
        """
        seen = self.pool.finished["claim"]
        yield self.wait_for(lambda: self.pool.finished["claim"] >= seen + 2, what="a new claim")

    def claiming(self) -> set[str]:
        """
        The application names of the connections whose last statement was a
        claim (a service claims as it starts, and at each poll).
        """
        rows = run_sql(
            self.database,
            "SELECT DISTINCT application_name FROM pg_stat_activity"
            " WHERE datname = current_database() AND query LIKE 'EXECUTE webhook_claim%%'",
        )
        return {row[0] for row in rows}

    def connections(self) -> int:
        """
        How many connections other than this question's are open to the
        test database.
        """
        rows = run_sql(
            self.database,
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        return int(rows[0][0])

    def settled(self) -> bool:
        """
        Whether no delivery is pending.
        """
        return not any(row[2] == "pending" for row in self.deliveries())

    def logged(self, text: str) -> list[str]:
        lines = []
        for event in self.log_events:
            if "log_format" in event:
                line = formatEvent(event)
                if text in line:
                    lines.append(line)
        return lines


class DeliveryTests(WebhookTestCase):
    @inlineCallbacks
    def test_signed_delivery(self) -> Any:
        """
        A published message reaches the channel's webhook as the message
        JSON delivered on sockets, signed so that the standardwebhooks
        library verifies it, with the event and channel headers, and is
        counted as delivered.
        """
        receiver = Receiver()
        port = self.listen(receiver)
        self.channel("room:*", f"http://127.0.0.1:{port}/hook?token=t")
        self.service()
        message_id = self.publish("room:1", "chat", {"text": "héllo", "n": [1, 2]})
        yield self.wait_for(lambda: self.settled() and len(receiver.requests) == 1)
        headers, body, _ = receiver.requests[0]
        verified = Webhook(SECRET).verify(body, headers)
        expected = run_sql(
            self.database,
            "SELECT realtime.message_json(m) FROM realtime.messages m WHERE id = %s",
            (message_id,),
        )[0][0]
        self.assertEqual(verified, expected)
        self.assertEqual(verified["payload"], {"text": "héllo", "n": [1, 2]})
        self.assertEqual(verified["messageId"], message_id)
        self.assertEqual(headers["webhook-id"], message_id)
        self.assertEqual(headers["content-type"], "application/json")
        self.assertEqual(headers["x-realtime-event"], "chat")
        self.assertEqual(headers["x-realtime-channel"], "room:1")
        self.assertTrue(headers["webhook-signature"].startswith("v1,"))
        self.assertEqual(
            self.deliveries(),
            [
                (
                    message_id,
                    f"http://127.0.0.1:{port}/hook?token=t",
                    "delivered",
                    1,
                    200,
                    None,
                )
            ],
        )
        self.assertEqual(self.counts(message_id), (1, 1))

    @inlineCallbacks
    def test_credentials_in_url(self) -> Any:
        """
        User information in a webhook URL is sent as Basic authorization,
        never in the Host header or the request line.
        """
        receiver = Receiver()
        port = self.listen(receiver)
        self.channel("room:*", f"http://hook:s3cr%40t@127.0.0.1:{port}/in?x=1")
        self.service()
        self.publish("room:1")
        yield self.wait_for(self.settled)
        headers, _, _ = receiver.requests[0]
        self.assertEqual(
            headers["authorization"], "Basic " + base64.b64encode(b"hook:s3cr@t").decode()
        )
        self.assertEqual(headers["host"], f"127.0.0.1:{port}")
        self.assertEqual(receiver.paths, [b"/in?x=1"])
        self.assertEqual(self.deliveries()[0][2], "delivered")

    @inlineCallbacks
    def test_unicode_event(self) -> Any:
        """
        An event name outside ASCII reaches the event header as UTF-8, and
        control characters in it do not split the header.
        """
        receiver = Receiver()
        self.channel("room:*", f"http://127.0.0.1:{self.listen(receiver)}/")
        self.service()
        self.publish("room:1", "zählung\r\nx-injected: 1")
        yield self.wait_for(self.settled)
        headers, body, _ = receiver.requests[0]
        self.assertEqual(headers["x-realtime-event"], "zählung  x-injected: 1")
        self.assertNotIn("x-injected", headers)
        self.assertEqual(json.loads(body)["event"], "zählung\r\nx-injected: 1")

    @inlineCallbacks
    def test_every_url(self) -> Any:
        """
        Each of the channel's webhook URLs gets the message once, and the
        audience counts them.
        """
        first, second = Receiver(), Receiver()
        urls = [f"http://127.0.0.1:{self.listen(r)}/" for r in (first, second)]
        self.channel("room:*", *urls)
        self.service()
        message_id = self.publish("room:1")
        yield self.wait_for(self.settled)
        self.assertEqual((first.ids(), second.ids()), ([message_id], [message_id]))
        self.assertEqual(self.counts(message_id), (2, 2))

    @inlineCallbacks
    def test_per_host_limit(self) -> Any:
        """
        A receiver that does not answer gets no more requests at once than
        the per-host limit, and its backlog does not hold up another host's
        deliveries.
        """
        stuck, fast = Receiver(holding=True), Receiver()
        self.channel("stuck", f"http://127.0.0.1:{self.listen(stuck)}/")
        self.channel("fast", f"http://localhost:{self.listen(fast)}/")
        stuck_ids = [self.publish("stuck") for _ in range(10)]
        self.service(per_host=2, max_in_flight=10)
        yield self.wait_for(lambda: len(stuck.requests) == 2, what="the stuck host")
        fast_ids = [self.publish("fast") for _ in range(5)]
        yield self.wait_for(lambda: len(fast.requests) == 5, what="the other host")
        self.assertEqual(len(stuck.requests), 2)
        stuck.release()
        yield self.wait_for(self.settled)
        self.assertEqual(Counter(stuck.ids()), Counter(stuck_ids))
        self.assertEqual(Counter(fast.ids()), Counter(fast_ids))
        self.assertEqual(stuck.most, 2)

    @inlineCallbacks
    def test_500_twice(self) -> Any:
        """
        A receiver that answers 500 twice and then 200 gets the message on
        the third attempt, the same webhook-id each time.
        """
        receiver = Receiver([500, 503])
        port = self.listen(receiver)
        self.channel("room:*", f"http://127.0.0.1:{port}/")
        self.service()
        message_id = self.publish("room:1")
        yield self.wait_for(self.settled)
        self.assertEqual(receiver.ids(), [message_id] * 3)
        self.assertEqual(self.deliveries()[0][2:5], ("delivered", 3, 200))
        self.assertEqual(self.counts(message_id), (1, 1))
        for headers, body, _ in receiver.requests:
            Webhook(SECRET).verify(body, headers)

    @inlineCallbacks
    def test_down_then_up(self) -> Any:
        """
        A receiver that is down when the message is published gets it once
        it comes up.
        """
        port = self.free_port()
        self.channel("room:*", f"http://127.0.0.1:{port}/")
        self.service()
        message_id = self.publish("room:1")
        yield self.wait_for(lambda: self.deliveries()[0][3] >= 2, what="two failed attempts")
        row = self.deliveries()[0]
        self.assertEqual(row[2], "pending")
        self.assertIn("refused", row[5].lower())
        receiver = Receiver()
        self.listen(receiver, port)
        yield self.wait_for(self.settled)
        self.assertEqual(receiver.ids(), [message_id])
        self.assertEqual(self.counts(message_id), (1, 1))

    @inlineCallbacks
    def test_410_final(self) -> Any:
        """
        A 410 answer is final: the delivery is failed after one attempt and
        not counted as delivered.
        """
        receiver = Receiver([410])
        port = self.listen(receiver)
        self.channel("room:*", f"http://127.0.0.1:{port}/")
        self.service()
        message_id = self.publish("room:1")
        yield self.wait_for(self.settled)
        self.assertEqual(self.deliveries()[0][2:6], ("failed", 1, 410, "HTTP 410"))
        self.assertEqual(self.counts(message_id), (1, 0))
        # A wrong retry would be claimed by the next poll.
        yield self.claims_from_now()
        self.assertEqual(self.deliveries()[0][3], 1)
        self.assertEqual(receiver.ids(), [message_id])
        self.assertTrue(self.logged("which is final"))

    @inlineCallbacks
    def test_redirect_not_followed(self) -> Any:
        """
        A redirect is not followed, and is final.
        """
        target = Receiver()
        target_port = self.listen(target)
        receiver = Receiver([(307, {"location": f"http://127.0.0.1:{target_port}/"})])
        port = self.listen(receiver)
        self.channel("room:*", f"http://127.0.0.1:{port}/")
        self.service()
        self.publish("room:1")
        yield self.wait_for(self.settled)
        self.assertEqual(self.deliveries()[0][2:5], ("failed", 1, 307))
        self.assertEqual(target.requests, [])

    @inlineCallbacks
    def test_retry_after(self) -> Any:
        """
        A 429 with Retry-After is retried no sooner than it asks, although
        the backoff alone would retry at once.
        """
        receiver = Receiver([(429, {"retry-after": "1"})])
        port = self.listen(receiver)
        self.channel("room:*", f"http://127.0.0.1:{port}/")
        self.service(policy=RetryPolicy(base_delay=0.001, max_delay=0.001, horizon=60))
        message_id = self.publish("room:1")
        yield self.wait_for(self.settled)
        self.assertEqual(receiver.ids(), [message_id] * 2)
        first, second = receiver.requests[0][2], receiver.requests[1][2]
        self.assertGreaterEqual(second - first, 0.9)
        self.assertEqual(self.deliveries()[0][2:5], ("delivered", 2, 200))

    @inlineCallbacks
    def test_horizon(self) -> Any:
        """
        A receiver that keeps failing is given up on at the horizon, and the
        delivery is failed.
        """
        receiver = Receiver([500] * 1000)
        port = self.listen(receiver)
        self.channel("room:*", f"http://127.0.0.1:{port}/")
        self.service(policy=RetryPolicy(base_delay=0.05, max_delay=0.1, horizon=3600.0))
        message_id = self.publish("room:1")
        yield self.wait_for(lambda: len(receiver.requests) >= 2, what="a retry")
        # The horizon passes: the delivery was queued two hours ago.
        run_sql(
            self.database,
            "UPDATE realtime.webhook_deliveries SET created_at = now() - interval '2 hours'",
        )
        yield self.wait_for(self.settled)
        row = self.deliveries()[0]
        self.assertEqual(row[2:6:2], ("failed", 500))
        self.assertGreaterEqual(row[3], 2)
        self.assertEqual(len(receiver.requests), row[3])
        self.assertEqual(self.counts(message_id), (1, 0))
        self.assertTrue(self.logged("no more retries"))

    @inlineCallbacks
    def test_timeout(self) -> Any:
        """
        A receiver slower than the timeout is retried.
        """
        receiver = Receiver(holding=True)
        port = self.listen(receiver)
        self.channel("room:*", f"http://127.0.0.1:{port}/")
        self.service(timeout=0.3)
        self.publish("room:1")
        yield self.wait_for(lambda: len(receiver.requests) >= 2, what="a retry")
        row = self.deliveries()[0]
        self.assertIn("no answer within 0.3 s", row[5] or "")

    @inlineCallbacks
    def test_large_answer(self) -> Any:
        """
        A receiver answering with a large body still counts as delivered;
        the body is not read to its end.
        """

        class Chatty(Receiver):
            def render_POST(self, request: Request) -> bytes | int:
                super().render_POST(request)
                return b"x" * 1_000_000

        receiver = Chatty()
        port = self.listen(receiver)
        self.channel("room:*", f"http://127.0.0.1:{port}/")
        self.service()
        message_id = self.publish("room:1")
        yield self.wait_for(self.settled)
        self.assertEqual(self.counts(message_id), (1, 1))


class SafetyTests(WebhookTestCase):
    @inlineCallbacks
    def test_loopback_refused(self) -> Any:
        """
        Without allow_private, a URL pointing at 127.0.0.1 is refused: the
        receiver gets nothing, the delivery is failed, and a log line says
        why.
        """
        receiver = Receiver()
        port = self.listen(receiver)
        self.channel("room:*", f"http://127.0.0.1:{port}/hook?secret=s3cr3t")
        self.service(allow_private=False)
        message_id = self.publish("room:1")
        yield self.wait_for(self.settled)
        row = self.deliveries()[0]
        self.assertEqual(row[2:4], ("failed", 1))
        self.assertIn("loopback", row[5])
        self.assertEqual(receiver.requests, [])
        self.assertEqual(self.counts(message_id), (1, 0))
        lines = self.logged("refused")
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("127.0.0.1 is a loopback address", lines[0])
        self.assertIn("--webhook-allow-private", lines[0])
        self.assertNotIn("s3cr3t", lines[0])

    @inlineCallbacks
    def test_localhost_name_refused(self) -> Any:
        """
        A host name is judged by the addresses it resolves to: localhost is
        refused too.
        """
        port = self.listen(Receiver())
        self.channel("room:*", f"http://localhost:{port}/")
        self.service(allow_private=False)
        self.publish("room:1")
        yield self.wait_for(self.settled)
        row = self.deliveries()[0]
        self.assertEqual(row[2], "failed")
        self.assertIn("localhost resolves to", row[5])

    @inlineCallbacks
    def test_scheme_refused(self) -> Any:
        """
        A URL that is not http or https is refused and failed.
        """
        self.channel("room:*", "ftp://127.0.0.1/x")
        self.service()
        self.publish("room:1")
        yield self.wait_for(self.settled)
        row = self.deliveries()[0]
        self.assertEqual(row[2:4], ("failed", 1))
        self.assertIn("only http and https", row[5])
        lines = self.logged("refused")
        self.assertEqual(len(lines), 1, lines)
        self.assertNotIn("--webhook-allow-private", lines[0])

    @inlineCallbacks
    def test_client_rejects_url(self) -> Any:
        """
        A URL the HTTP client will not even try is failed at once, and the
        service carries on with the next delivery.
        """

        class Fussy:
            def __init__(self) -> None:
                self.calls = 0

            def request(self, method: str, url: str, **kwargs: Any) -> Any:
                self.calls += 1
                raise ValueError("no such URL")

        client = Fussy()
        self.channel("room:*", "http://one.example/", "http://two.example/")
        self.service(http=client)
        self.publish("room:1")
        yield self.wait_for(self.settled)
        self.assertEqual(client.calls, 2)
        for row in self.deliveries():
            self.assertEqual(row[2:4], ("failed", 1))
            self.assertIn("ValueError: no such URL", row[5])


def self_signed() -> tuple[PrivateCertificate, Certificate]:
    """
    A key and self-signed certificate for 127.0.0.1 and localhost, and the
    certificate alone (to trust).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "realtimed test receiver")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = certificate.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return PrivateCertificate.loadPEM(cert_pem + key_pem), Certificate.loadPEM(cert_pem)


class HTTPSTests(WebhookTestCase):
    def listen_tls(self, receiver: Receiver, identity: PrivateCertificate) -> int:
        site = TrackingSite(receiver)
        listening = reactor.listenSSL(0, site, identity.options(), interface="127.0.0.1")

        @inlineCallbacks
        def close() -> Any:
            receiver.stop()
            yield listening.stopListening()
            yield site.abort_all()

        self.addCleanup(close)
        return int(listening.getHost().port)

    def client(self, trust_root: Any) -> Any:
        """
        A webhook HTTP client trusting C{trust_root}, its connections closed
        when the test ends (after the service has stopped).
        """
        client, pool = webhook_http_client(reactor, allow_private=True, trust_root=trust_root)
        self.addCleanup(pool.closeCachedConnections)
        return client

    @inlineCallbacks
    def test_https(self) -> Any:
        """
        An https webhook is delivered over TLS to the checked address, the
        certificate verified against the URL's host.
        """
        identity, certificate = self_signed()
        receiver = Receiver()
        port = self.listen_tls(receiver, identity)
        self.channel("room:*", f"https://127.0.0.1:{port}/hook")
        self.service(http=self.client(certificate))
        message_id = self.publish("room:1")
        yield self.wait_for(self.settled)
        headers, body, _ = receiver.requests[0]
        self.assertEqual(Webhook(SECRET).verify(body, headers)["messageId"], message_id)
        self.assertEqual(self.counts(message_id), (1, 1))

    @inlineCallbacks
    def test_untrusted_certificate(self) -> Any:
        """
        A receiver whose certificate is not trusted gets nothing; the
        delivery is retried, not counted.
        """
        identity, _ = self_signed()
        other, _ = self_signed()
        receiver = Receiver()
        port = self.listen_tls(receiver, identity)
        self.channel("room:*", f"https://127.0.0.1:{port}/hook")
        self.service(http=self.client(Certificate.loadPEM(other.dumpPEM())))
        message_id = self.publish("room:1")
        yield self.wait_for(lambda: self.deliveries()[0][3] >= 2, what="two attempts")
        row = self.deliveries()[0]
        self.assertEqual(row[2], "pending")
        self.assertIn("certificate verify failed", row[5])
        self.assertEqual(receiver.requests, [])
        self.assertEqual(self.counts(message_id), (1, 0))


class DurabilityTests(WebhookTestCase):
    @inlineCallbacks
    def test_restart(self) -> Any:
        """
        A service stopped while deliveries are pending (some in flight)
        leaves them to the next one: every delivery arrives, none twice.
        """
        receiver = Receiver(delay=0.05)
        port = self.listen(receiver)
        self.channel("room:*", f"http://127.0.0.1:{port}/")
        published = [self.publish("room:1", payload={"n": n}) for n in range(40)]
        first = self.service(max_in_flight=4, per_host=2)
        yield self.wait_for(lambda: len(receiver.requests) >= 5, what="some deliveries")
        yield first.stopService()
        pending = [row for row in self.deliveries() if row[2] == "pending"]
        self.assertTrue(pending, "all delivered before the stop")
        self.assertEqual(receiver.ids(), list(dict.fromkeys(receiver.ids())))
        self.service()
        yield self.wait_for(self.settled)
        self.assertEqual(Counter(receiver.ids()), Counter(published))
        self.assertEqual(
            run_sql(
                self.database,
                "SELECT count(*) FROM realtime.messages"
                " WHERE wh_audience_count = 1 AND wh_delivered_count = 1",
            ),
            [(40,)],
        )

    @inlineCallbacks
    def test_stop_hands_back_in_flight(self) -> Any:
        """
        A stop waits for attempts in flight for the grace period only; those
        still unanswered are cancelled and left pending, due at once, so
        another process sends them without waiting for a lease to end.
        """
        receiver = Receiver(holding=True)
        port = self.listen(receiver)
        self.channel("room:*", f"http://127.0.0.1:{port}/")
        self.publish("room:1")
        service = self.service(stop_grace=0.2)
        yield self.wait_for(lambda: receiver.requests, what="the attempt")
        started = reactor.seconds()
        yield service.stopService()
        self.assertLess(reactor.seconds() - started, 5.0)
        rows = run_sql(
            self.database,
            "SELECT status, attempts, last_error, next_attempt_at <= now()"
            " FROM realtime.webhook_deliveries",
        )
        self.assertEqual(rows, [("pending", 1, "handed back: realtimed stopped", True)])
        receiver.release()
        self.service()
        yield self.wait_for(self.settled)
        self.assertEqual(self.deliveries()[0][2:4], ("delivered", 2))

    @inlineCallbacks
    def test_crashed_lease(self) -> Any:
        """
        A delivery claimed by a process that died is retried once its lease
        has run out.
        """
        receiver = Receiver()
        port = self.listen(receiver)
        self.channel("room:*", f"http://127.0.0.1:{port}/")
        message_id = self.publish("room:1")
        # What a claim leaves behind: the attempt counted, the row leased.
        run_sql(
            self.database,
            "UPDATE realtime.webhook_deliveries"
            " SET attempts = 1, next_attempt_at = now() + interval '1 hour'",
        )
        self.service()
        yield self.claims_from_now()
        self.assertEqual(receiver.requests, [])
        self.assertEqual(self.deliveries()[0][3], 1)
        # The lease runs out.
        run_sql(self.database, "UPDATE realtime.webhook_deliveries SET next_attempt_at = now()")
        yield self.wait_for(self.settled)
        self.assertEqual(receiver.ids(), [message_id])
        self.assertEqual(self.deliveries()[0][2:4], ("delivered", 2))

    @inlineCallbacks
    def test_two_services(self) -> Any:
        """
        Two services on one database share the outbox: each delivery is sent
        exactly once.
        """
        first, second = Receiver(), Receiver()
        urls = [f"http://127.0.0.1:{self.listen(r)}/" for r in (first, second)]
        self.channel("room:*", *urls)
        self.service(max_in_flight=8, per_host=4)
        self.service(max_in_flight=8, per_host=4)
        published = [self.publish("room:1", payload={"n": n}) for n in range(60)]
        yield self.wait_for(self.settled)
        self.assertEqual(Counter(first.ids()), Counter(published))
        self.assertEqual(Counter(second.ids()), Counter(published))
        self.assertEqual(
            run_sql(
                self.database,
                "SELECT count(*) FROM realtime.messages"
                " WHERE wh_audience_count = 2 AND wh_delivered_count = 2",
            ),
            [(60,)],
        )

    @inlineCallbacks
    def test_database_connections_lost(self) -> Any:
        """
        When the database drops the service's connections, the service
        connects again, with its statements prepared anew, and carries on
        delivering (no polling here: woken, as the daemon wakes it).
        """
        receiver = Receiver()
        port = self.listen(receiver)
        self.channel("room:*", f"http://127.0.0.1:{port}/")
        service = self.service(poll_interval=3600.0)
        first = self.publish("room:1")
        service.wake()
        yield self.wait_for(self.settled)
        self.assertGreater(self.connections(), 0)
        run_sql(
            self.database,
            "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        yield self.wait_for(lambda: self.connections() == 0, what="the connections to end")
        second = self.publish("room:1")
        service.wake()
        yield self.wait_for(self.settled)
        self.assertEqual(receiver.ids(), [first, second])
        self.assertEqual(self.counts(second), (1, 1))

    @inlineCallbacks
    def test_two_processes(self) -> Any:
        """
        A service in another process and one here share the outbox: each
        delivery is sent exactly once.
        """
        receiver = Receiver()
        port = self.listen(receiver)
        self.channel("room:*", f"http://127.0.0.1:{port}/")
        child = ServiceProcess()
        reactor.spawnProcess(
            child,
            sys.executable,
            [sys.executable, "-c", CHILD_SERVICE, named(self.database, "child"), SECRET],
            env=None,
            path=os.getcwd(),
        )
        self.addCleanup(child.stop)
        yield child.started
        self.service(max_in_flight=4, per_host=4)
        yield self.wait_for(
            lambda: self.claiming() >= {"realtimed webhooks", "child"}, what="both services"
        )
        published = [self.publish("room:1", payload={"n": n}) for n in range(60)]
        yield self.wait_for(self.settled)
        self.assertEqual(Counter(receiver.ids()), Counter(published))
        self.assertEqual(
            run_sql(
                self.database,
                "SELECT count(*) FROM realtime.messages WHERE wh_delivered_count = 1",
            ),
            [(60,)],
        )

    @inlineCallbacks
    def test_backlog_without_polling(self) -> Any:
        """
        A backlog larger than the limits allow at once is worked off by
        claiming again as attempts end, without waiting for a poll.
        """
        receiver = Receiver()
        self.channel("room:*", f"http://127.0.0.1:{self.listen(receiver)}/")
        published = [self.publish("room:1") for _ in range(30)]
        self.service(poll_interval=3600.0, per_host=2, max_in_flight=4)
        yield self.wait_for(self.settled, timeout=10.0)
        self.assertEqual(Counter(receiver.ids()), Counter(published))

    @inlineCallbacks
    def test_outcomes_not_written(self) -> Any:
        """
        While outcomes cannot be written, the service stops claiming once
        its room is taken by them, and records them when it can again: no
        delivery is sent twice.
        """
        receiver = Receiver()
        self.channel("room:*", f"http://127.0.0.1:{self.listen(receiver)}/")
        self.service(max_in_flight=4, per_host=4)
        yield self.wait_for(self.claiming, what="a first claim")

        def broken(self: Any, sql: str, params: Any = None) -> Deferred[None]:
            return fail(psycopg2.OperationalError("the disk is full"))

        # Only outcomes are written with runOperation.
        patched = self.patch(ConnectionPool, "runOperation", broken)
        published = [self.publish("room:1") for _ in range(10)]
        yield self.wait_for(lambda: len(receiver.requests) == 4, what="four attempts")
        # Each poll tries to write them again, and would claim first if
        # there were room.
        writes = self.pool.finished["record"]
        yield self.wait_for(
            lambda: self.pool.finished["record"] >= writes + 3, what="more tries to write"
        )
        self.assertEqual(len(receiver.requests), 4)
        patched.restore()
        yield self.wait_for(self.settled)
        self.assertEqual(sorted(receiver.ids()), sorted(published))
        self.assertTrue(self.logged("the disk is full"))

    @inlineCallbacks
    def test_wake(self) -> Any:
        """
        Without polling, wake() makes the service look at once.
        """
        receiver = Receiver()
        port = self.listen(receiver)
        self.channel("room:*", f"http://127.0.0.1:{port}/")
        clock = FakeClock(reactor.seconds())
        service = self.service(poll_interval=3600.0, clock=clock)
        yield self.wait_for(lambda: self.pool.finished["claim"] == 1, what="the claim at start")
        message_id = self.publish("room:1")
        # Nothing would make the service look before the next poll.
        self.assertEqual(self.pool.sent["claim"], 1)
        self.assertGreaterEqual(
            min(call.getTime() for call in clock.getDelayedCalls()), clock.seconds() + 3600.0
        )
        service.wake()

        def delivered() -> bool:
            clock.advance(0)  # what the service does at the next turn
            return self.settled()

        yield self.wait_for(delivered)
        self.assertEqual(receiver.ids(), [message_id])
        self.assertEqual(self.pool.sent["claim"], 2)

    @inlineCallbacks
    def test_own_connections(self) -> Any:
        """
        The service's connections commit without waiting for the WAL flush
        and have its two statements prepared; it opens no more than one
        each for claiming, recording and pruning.
        """
        receiver = Receiver()
        self.channel("room:*", f"http://127.0.0.1:{self.listen(receiver)}/")
        service = self.service(max_in_flight=4, per_host=4)
        published = [self.publish("room:1") for _ in range(20)]
        yield self.wait_for(self.settled)
        yield service.prune(older_than=0.0)
        self.assertEqual(Counter(receiver.ids()), Counter(published))
        rows = yield self.pool.runQuery(
            "SELECT current_setting('synchronous_commit'),"
            " (SELECT array_agg(name ORDER BY name) FROM pg_prepared_statements)"
        )
        self.assertEqual(rows, [("off", ["webhook_claim", "webhook_record"])])
        self.assertLessEqual(self.connections(), 3)


class WakeTests(SynchronousTestCase):
    def test_gathered(self) -> None:
        """
        Wakes less than C{wake_interval} after the last look are gathered
        into one look at the end of the interval; a wake after it looks at
        once.
        """
        clock = FakeClock()
        looks: list[float] = []

        def claim(sql: str, params: object) -> list[tuple[object, ...]]:
            assert "webhook_claim" in sql
            looks.append(clock.seconds())
            return []

        service = WebhookService(
            reactor, FakePool(claim, clock), SECRET, clock=clock, wake_interval=10.0
        )
        service.running = True
        service.wake()
        clock.advance(0)
        clock.advance(4)
        service.wake()
        service.wake()
        self.assertEqual(looks, [0.0])
        clock.advance(6)
        clock.advance(0)
        self.assertEqual(looks, [0.0, 10.0])
        clock.advance(50)
        service.wake()
        clock.advance(0)
        self.assertEqual(looks, [0.0, 10.0, 60.0])
        self.assertEqual(clock.getDelayedCalls(), [])


class StopTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = FakeClock()
        self.pool = FakePool()
        # No attempt is made here, so no HTTP client is needed.
        self.service = WebhookService(reactor, self.pool, SECRET, clock=self.clock, http=object())
        self.service.startService()
        self.pool.pop("webhook_claim").answer([])

    def test_waits_for_pruning(self) -> None:
        """
        A stop during a pruning is done only once the pruning has ended, so
        the outbox's connections are not closed under it.
        """
        pruning = self.pool.pop("DELETE")
        stopping = self.service.stopService()
        self.assertNoResult(stopping)
        pruning.answer([(0,)])
        self.successResultOf(stopping)
        self.assertEqual(self.pool.pending, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_waits_for_failed_pruning(self) -> None:
        """
        A pruning that fails during a stop still lets the stop end.
        """
        pruning = self.pool.pop("DELETE")
        stopping = self.service.stopService()
        self.assertNoResult(stopping)
        pruning.fail(psycopg2.OperationalError("the server closed the connection"))
        self.successResultOf(stopping)
        self.flushLoggedErrors()

    def test_pruned_before_stop(self) -> None:
        """
        With the pruning over, a stop has nothing to wait for.
        """
        self.pool.pop("DELETE").answer([(3,)])
        self.successResultOf(self.service.stopService())
        self.assertEqual(self.pool.pending, [])


class DatabaseAwayTests(TestCase):
    @inlineCallbacks
    def test_unreachable(self) -> Any:
        """
        While the database cannot be reached, the service says so once
        (not at every poll), and still stops cleanly.
        """
        events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        listening = reactor.listenTCP(0, Site(Resource()), interface="127.0.0.1")
        port = listening.getHost().port
        yield listening.stopListening()
        pool = WatchedPool(outbox_pool(reactor, f"postgresql://postgres@127.0.0.1:{port}/nothing"))
        self.addCleanup(pool.close)
        service = WebhookService(reactor, pool, SECRET, poll_interval=0.05)
        service.startService()
        yield wait_for(lambda: pool.finished["claim"] >= 5, what="five failed claims")
        yield service.stopService()
        lines = [
            formatEvent(e)
            for e in events
            if "log_format" in e and "wait for the database" in formatEvent(e)
        ]
        self.assertEqual(len(lines), 1, lines)


class OutboxTests(WebhookTestCase):
    def test_rls_roles(self) -> None:
        """
        A message inserted by the authenticated role under row-level
        security is queued for every webhook URL and its audience counted;
        the role cannot read the outbox.
        """
        self.channel("room:*", "http://a.example/1", "http://b.example/2", "http://a.example/1")
        rows = run_sql(
            self.database,
            """
            DO $$
            BEGIN
                SET LOCAL ROLE authenticated;
                INSERT INTO realtime.messages
                    (event_name, channel_id, channel_name, sender_type, sender_id,
                     wh_delivered_count)
                SELECT 'chat', (realtime.owning_channel('room:7')).id, 'room:7', 'user', 'u1', 5;
                RESET ROLE;
            END
            $$;
            SELECT wh_audience_count, wh_delivered_count FROM realtime.messages;
            """,
        )
        self.assertEqual(rows, [(2, 0)])
        self.assertEqual(
            [row[1:4] for row in self.deliveries()],
            [
                ("http://a.example/1", "pending", 0),
                ("http://b.example/2", "pending", 0),
            ],
        )
        with self.assertRaises(Exception) as raised:
            run_sql(
                self.database,
                "SET ROLE anon; SELECT * FROM realtime.webhook_deliveries",
            )
        self.assertIn("permission denied", str(raised.exception))

    def test_host_key(self) -> None:
        """
        Each delivery records its receiving host, the key of the per-host
        limit: lower case, without user information or port.
        """
        self.channel(
            "room:*",
            "https://Hooks.Example.com:8443/a",
            "http://user:pw@hooks.example.com/b?c=d",
            "http://[2001:DB8::1]:8080/",
            "http://[2001:db8::2]/",
            "ftp:/nothing",
        )
        self.publish("room:1")
        self.assertEqual(
            sorted(
                row[0]
                for row in run_sql(self.database, "SELECT host FROM realtime.webhook_deliveries")
            ),
            ["", "[2001:db8::1]", "[2001:db8::2]", "hooks.example.com", "hooks.example.com"],
        )

    def test_no_webhooks(self) -> None:
        """
        A message on a channel without webhooks queues nothing.
        """
        self.channel("quiet")
        message_id = self.publish("quiet")
        self.assertEqual(self.deliveries(), [])
        self.assertEqual(self.counts(message_id), (0, 0))

    @inlineCallbacks
    def test_prune(self) -> Any:
        """
        Pruning deletes delivered and failed rows older than the retention,
        and keeps recent ones and every pending one.
        """
        self.channel("room:*", "http://a.example/", "http://b.example/", "http://c.example/")
        for _ in range(3):
            self.publish("room:1")
        run_sql(
            self.database,
            """
            UPDATE realtime.webhook_deliveries SET
                status = CASE url WHEN 'http://a.example/' THEN 'delivered'
                                  WHEN 'http://b.example/' THEN 'failed'
                                  ELSE 'pending' END,
                updated_at = now() - interval '8 days',
                next_attempt_at = now() + interval '1 hour'
            """,
        )
        run_sql(
            self.database,
            "UPDATE realtime.webhook_deliveries SET updated_at = now()"
            " WHERE id = (SELECT min(id) FROM realtime.webhook_deliveries"
            " WHERE status = 'delivered')",
        )
        # A long retention: the pruning at start leaves these rows alone.
        self.service(retention=30 * 86400.0)
        deleted = yield Outbox(self.pool).prune(older_than=7 * 86400.0, batch=2)
        self.assertEqual(deleted, 5)
        self.assertEqual(
            sorted(row[2] for row in self.deliveries()),
            ["delivered", "pending", "pending", "pending"],
        )

    @inlineCallbacks
    def test_pruned_on_schedule(self) -> Any:
        """
        The service prunes by itself at its pruning interval.
        """
        self.channel("room:*", "http://a.example/")
        self.publish("room:1")
        run_sql(
            self.database,
            "UPDATE realtime.webhook_deliveries SET status = 'delivered',"
            " updated_at = now() - interval '8 days'",
        )
        self.service(prune_interval=0.1)
        yield self.wait_for(
            lambda: bool(self.logged("Pruned 1 finished webhook deliveries")),
            what="pruning",
        )
        self.assertEqual(self.deliveries(), [])
