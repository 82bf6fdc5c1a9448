"""
Tests for L{realtimed.webhooks} in memory: the checked endpoint (no name
is really resolved, nothing connects), the service's configuration, and
what it makes of each attempt's result.
"""

from __future__ import annotations

from email.utils import formatdate
from typing import Any, cast

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.error import DNSLookupError
from twisted.internet.interfaces import IProtocolFactory
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import URI
from twisted.web.error import SchemeNotSupported

from realtimed.testing import FakeClock, FakePool
from realtimed.webhooks.answers import Answer
from realtimed.webhooks.endpoint import CheckedEndpoint, CheckedEndpointFactory, UnsafeAddress
from realtimed.webhooks.outbox import Delivery
from realtimed.webhooks.outcomes import Outcomes
from realtimed.webhooks.policy import RetryPolicy
from realtimed.webhooks.service import DatabaseTrouble, WebhookService
from realtimed.webhooks.signing import encode_webhook_secret

SECRET = encode_webhook_secret(b"k" * 32)


class FakeResolver:
    """
    Resolves every name to the addresses it was given.
    """

    def __init__(self, addresses: list[Any]) -> None:
        self.addresses = addresses
        self.asked: list[tuple[str, int]] = []

    def resolveHostName(self, receiver: Any, host: str, port: int = 0, *a: Any) -> None:
        self.asked.append((host, port))
        receiver.resolutionBegan(None)
        for address in self.addresses:
            receiver.addressResolved(address)
        receiver.resolutionComplete()


def reactor_resolving(*addresses: Any) -> MemoryReactorClock:
    reactor = MemoryReactorClock()
    reactor.nameResolver = FakeResolver(list(addresses))  # type: ignore[assignment]
    return reactor


class CheckedEndpointTests(SynchronousTestCase):
    def connect(self, reactor: Any, allow_private: bool = False) -> Any:
        endpoint = CheckedEndpoint(reactor, "hooks.example", 443, None, allow_private, 10.0)
        return endpoint.connect(cast(IProtocolFactory, Factory.forProtocol(Protocol)))

    def test_connects_to_checked_address(self) -> None:
        """
        A name resolving to public addresses is connected to by the resolved
        address itself, with the connect timeout.
        """
        reactor = reactor_resolving(IPv4Address("TCP", "93.184.216.34", 443))
        self.connect(reactor)
        self.assertEqual(reactor.nameResolver.asked, [("hooks.example", 443)])  # type: ignore[attr-defined]
        host, port, _, timeout, _ = reactor.tcpClients[0]
        self.assertEqual((host, port, timeout), ("93.184.216.34", 443, 10.0))

    def test_ipv6(self) -> None:
        """
        An IPv6 address is connected to over IPv6.
        """
        reactor = reactor_resolving(IPv6Address("TCP", "2606:4700::1111", 443))
        self.connect(reactor)
        self.assertEqual(reactor.tcpClients[0][0], "2606:4700::1111")

    def test_any_private_address_refuses(self) -> None:
        """
        If any address of the name is not public, nothing is connected and
        the reason names the address.
        """
        reactor = reactor_resolving(
            IPv4Address("TCP", "93.184.216.34", 443),
            IPv4Address("TCP", "169.254.169.254", 443),
        )
        failure = self.failureResultOf(self.connect(reactor), UnsafeAddress)
        self.assertIn("169.254.169.254 is a link-local address", str(failure.value))
        self.assertEqual(reactor.tcpClients, [])

    def test_ipv4_mapped_refused(self) -> None:
        """
        An IPv4-mapped IPv6 loopback address is refused too.
        """
        reactor = reactor_resolving(IPv6Address("TCP", "::ffff:127.0.0.1", 443))
        failure = self.failureResultOf(self.connect(reactor), UnsafeAddress)
        self.assertIn("loopback", str(failure.value))

    def test_allow_private(self) -> None:
        """
        With private addresses allowed, a loopback address is connected to.
        """
        reactor = reactor_resolving(IPv4Address("TCP", "127.0.0.1", 443))
        self.connect(reactor, allow_private=True)
        self.assertEqual(reactor.tcpClients[0][0], "127.0.0.1")

    def test_no_address(self) -> None:
        """
        A name without addresses fails as a DNS lookup error (retried later).
        """
        reactor = reactor_resolving()
        self.failureResultOf(self.connect(reactor), DNSLookupError)

    def test_next_address(self) -> None:
        """
        When connecting to the first address fails, the next one is tried.
        """
        reactor = reactor_resolving(
            IPv4Address("TCP", "93.184.216.34", 443),
            IPv4Address("TCP", "93.184.216.35", 443),
        )
        self.connect(reactor)
        from twisted.internet.error import ConnectionRefusedError

        factory: Any = reactor.tcpClients[0][2]
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        self.assertEqual(reactor.tcpClients[1][0], "93.184.216.35")

    def test_factory(self) -> None:
        """
        The agent's endpoints are checked endpoints; https ones verify the
        URL's host name; other schemes are not supported.
        """
        factory = CheckedEndpointFactory(MemoryReactorClock(), False)
        endpoint = factory.endpointForURI(URI.fromBytes(b"https://Hooks.example:8443/x"))
        self.assertEqual(
            (endpoint.host, endpoint.port, endpoint.tls_hostname),
            ("Hooks.example", 8443, "Hooks.example"),
        )
        plain = factory.endpointForURI(URI.fromBytes(b"http://[::1]/x"))
        self.assertEqual((plain.host, plain.port, plain.tls_hostname), ("::1", 80, None))
        with self.assertRaises(SchemeNotSupported):
            factory.endpointForURI(URI.fromBytes(b"ftp://hooks.example/x"))


class ServiceTests(SynchronousTestCase):
    def test_repr_hides_secrets(self) -> None:
        """
        The service's repr does not show the signing secret.
        """
        service = WebhookService(MemoryReactorClock(), FakePool(), SECRET)
        self.assertNotIn(SECRET, repr(service))

    def test_bad_secret(self) -> None:
        """
        A secret that is not a Standard Webhooks secret is refused at once.
        """
        with self.assertRaises(ValueError):
            WebhookService(MemoryReactorClock(), FakePool(), "not-a-secret")


def delivery(attempts: int = 1, age: float = 0.0) -> Delivery:
    return Delivery(
        id=7,
        url="https://user:pw@hooks.example/in?token=t",
        host="hooks.example",
        attempts=attempts,
        age=age,
        message_id="m-1",
        event="chat",
        channel="room:1",
        body=b"{}",
    )


class OutcomeTests(SynchronousTestCase):
    """
    What becomes of an attempt's result, with a fixed clock and
    jitter: no database, no network.
    """

    def setUp(self) -> None:
        self.clock = FakeClock(1_800_000_000)
        self.outcomes = Outcomes(
            RetryPolicy(base_delay=2.0, max_delay=60.0, horizon=3600.0),
            self.clock,
            timeout=10.0,
            jitter=lambda: 0.5,
        )
        self.events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, self.events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def test_delivered(self) -> None:
        """
        A 2xx answer is a delivery.
        """
        outcome = self.outcomes.answered(delivery(), Answer(204, None))
        self.assertEqual((outcome.status, outcome.http_status), ("delivered", 204))

    def test_backoff(self) -> None:
        """
        A 503 is retried after the jittered backoff of its attempt.
        """
        outcome = self.outcomes.answered(delivery(attempts=3), Answer(503, None))
        self.assertEqual(
            (outcome.status, outcome.delay, outcome.error), ("pending", 4.0, "HTTP 503")
        )

    def test_retry_after_date(self) -> None:
        """
        A 429's Retry-After as an HTTP-date is a wait until then.
        """
        when = formatdate(self.clock.seconds() + 120, usegmt=True)
        outcome = self.outcomes.answered(delivery(), Answer(429, when))
        self.assertEqual((outcome.status, outcome.delay), ("pending", 120.0))

    def test_final(self) -> None:
        """
        A 404 is final, and the log line names the status but not the URL's
        credentials or query.
        """
        outcome = self.outcomes.answered(delivery(), Answer(404, None))
        self.assertEqual(outcome.status, "failed")
        line = formatEvent(self.events[-1])
        self.assertIn("404", line)
        self.assertIn("https://hooks.example/in?...", line)
        self.assertNotIn("pw", line)
        self.assertNotIn("token", line)

    def test_horizon(self) -> None:
        """
        A failure past the horizon is final.
        """
        outcome = self.outcomes.answered(delivery(attempts=40, age=3600.0), Answer(500, None))
        self.assertEqual(outcome.status, "failed")

    def test_timeout(self) -> None:
        """
        No answer within the timeout is retried, and says so.
        """
        outcome = self.outcomes.not_answered(
            delivery(), Failure(DeferredTimeoutError("no answer within 10 s"))
        )
        self.assertEqual((outcome.status, outcome.error), ("pending", "no answer within 10 s"))

    def test_unsafe_address(self) -> None:
        """
        A refused address is final, with the reason and the hint in the log.
        """
        outcome = self.outcomes.not_answered(
            delivery(), Failure(UnsafeAddress("hooks.example resolves to 10.0.0.1: private"))
        )
        self.assertEqual(outcome.status, "failed")
        self.assertIn("10.0.0.1", outcome.error or "")
        self.assertIn("--webhook-allow-private", formatEvent(self.events[-1]))

    def test_retries_logged_per_host(self) -> None:
        """
        Retries to one host are logged once per interval, the next line
        counting those not logged; another host has its own interval.
        """
        for _ in range(5):
            self.outcomes.answered(delivery(), Answer(503, None))
        self.clock.advance(11)
        self.outcomes.answered(delivery(), Answer(503, None))
        other = Delivery(
            id=8,
            url="https://other.example/",
            host="other.example",
            attempts=1,
            age=0.0,
            message_id="m-2",
            event="e",
            channel="c",
            body=b"{}",
        )
        self.outcomes.answered(other, Answer(503, None))
        lines = [formatEvent(e) for e in self.events if "retrying in" in formatEvent(e)]
        self.assertEqual(len(lines), 3, lines)
        self.assertIn("(4 more retries to this host", lines[1])
        self.assertIn("other.example", lines[2])

    def test_database_trouble_throttled(self) -> None:
        """
        The same database error is logged once a minute at most; a
        different one at once.
        """
        trouble = DatabaseTrouble(self.clock)
        refused = Failure(OSError("connection refused"))
        for _ in range(5):
            trouble.failed(refused)
            self.clock.advance(1)
        trouble.failed(Failure(OSError("too many connections")))
        self.clock.advance(60)
        trouble.failed(Failure(OSError("too many connections")))
        lines = [formatEvent(e) for e in self.events if "wait for the database" in formatEvent(e)]
        self.assertEqual(len(lines), 3, lines)
