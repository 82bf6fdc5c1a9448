"""
Tests for L{realtimed.webhooks.policy}: retries, Retry-After, address and URL
checks, headers.
"""

from __future__ import annotations

import base64
import ipaddress
import time
from email.utils import formatdate

from hypothesis import given
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook
from twisted.trial.unittest import SynchronousTestCase

from realtimed.webhooks.policy import (
    RetryPolicy,
    Verdict,
    address_refusal,
    header_text,
    parse_retry_after,
    redact_url,
    split_credentials,
    url_refusal,
    verdict_for_status,
    webhook_headers,
)
from realtimed.webhooks.signing import encode_webhook_secret

NOW = 1_800_000_000.0


class VerdictTests(SynchronousTestCase):
    def test_success(self) -> None:
        """
        Every 2xx answer is a delivery.
        """
        for status in (200, 201, 202, 204, 299):
            self.assertIs(verdict_for_status(status), Verdict.DELIVERED)

    def test_retried(self) -> None:
        """
        408, 429 and every 5xx are worth another attempt.
        """
        for status in (408, 429, 500, 502, 503, 504, 599):
            self.assertIs(verdict_for_status(status), Verdict.RETRY)

    def test_final(self) -> None:
        """
        Other answers, redirects included, are final.
        """
        for status in (100, 301, 302, 307, 400, 401, 403, 404, 410, 413, 422, 600):
            self.assertIs(verdict_for_status(status), Verdict.FAILED)


class RetryPolicyTests(SynchronousTestCase):
    policy = RetryPolicy(base_delay=2.0, max_delay=3600.0, horizon=86400.0)

    def test_doubles(self) -> None:
        """
        The delay's ceiling doubles with each attempt, from the base delay
        up to the maximum.
        """
        ceilings = [self.policy.ceiling(n) for n in range(1, 15)]
        self.assertEqual(ceilings[:4], [2.0, 4.0, 8.0, 16.0])
        self.assertEqual(ceilings[-1], 3600.0)
        self.assertEqual(self.policy.ceiling(10_000), 3600.0)

    def test_full_jitter(self) -> None:
        """
        The delay is the random number times the ceiling.
        """
        self.assertEqual(self.policy.next_delay(3, 10.0, 0.0), 0.0)
        self.assertEqual(self.policy.next_delay(3, 10.0, 0.5), 4.0)

    def test_horizon(self) -> None:
        """
        The last attempt is made at the horizon; after it there is none.
        """
        self.assertEqual(self.policy.next_delay(30, 86400.0 - 5, 0.99), 5.0)
        self.assertIsNone(self.policy.next_delay(31, 86400.0, 0.5))
        self.assertIsNone(self.policy.next_delay(31, 90000.0, 0.5))

    def test_retry_after(self) -> None:
        """
        A Retry-After puts the next attempt off to no sooner than asked,
        unless it asks for a wait past the horizon.
        """
        self.assertEqual(self.policy.next_delay(1, 0.0, 0.0, retry_after=120.0), 120.0)
        self.assertIsNone(self.policy.next_delay(1, 86000.0, 0.0, retry_after=600.0))

    def test_retry_after_zero(self) -> None:
        """
        A Retry-After of 0 does not make the retries any quicker than the
        backoff.
        """
        self.assertEqual(self.policy.next_delay(5, 0.0, 0.5, retry_after=0.0), 16.0)

    @given(
        attempts=st.integers(min_value=1, max_value=100),
        age=st.floats(min_value=0, max_value=90_000),
        jitter=st.floats(min_value=0, max_value=1, exclude_max=True),
        retry_after=st.floats(min_value=0, max_value=200_000),
    )
    def test_retry_after_bounds(
        self, attempts: int, age: float, jitter: float, retry_after: float
    ) -> None:
        """
        With a Retry-After, the next attempt is never sooner than asked,
        never later than the horizon, and is given up exactly when the
        wait asked for goes past the horizon.
        """
        delay = self.policy.next_delay(attempts, age, jitter, retry_after)
        if age >= self.policy.horizon or age + retry_after > self.policy.horizon:
            self.assertIsNone(delay)
            return
        assert delay is not None
        self.assertGreaterEqual(delay, retry_after)
        self.assertLessEqual(age + delay, self.policy.horizon + 1e-6)

    @given(
        attempts=st.integers(min_value=0, max_value=10_000),
        age=st.floats(min_value=0, max_value=200_000),
        jitter=st.floats(min_value=0, max_value=1, exclude_max=True),
        base=st.floats(min_value=0.001, max_value=100),
        cap=st.floats(min_value=0.001, max_value=10_000),
        horizon=st.floats(min_value=1, max_value=100_000),
    )
    def test_bounds(
        self,
        attempts: int,
        age: float,
        jitter: float,
        base: float,
        cap: float,
        horizon: float,
    ) -> None:
        """
        A delay is never negative, never above the ceiling, and never past
        the horizon; there is one exactly while the horizon is not reached.
        """
        policy = RetryPolicy(base_delay=base, max_delay=cap, horizon=horizon)
        delay = policy.next_delay(attempts, age, jitter)
        if age >= horizon:
            self.assertIsNone(delay)
            return
        assert delay is not None
        self.assertGreaterEqual(delay, 0.0)
        self.assertLessEqual(delay, min(cap, policy.ceiling(attempts)))
        self.assertLessEqual(age + delay, horizon + 1e-6)


class RetryAfterTests(SynchronousTestCase):
    def test_seconds(self) -> None:
        """
        Delay-seconds are taken as they are.
        """
        self.assertEqual(parse_retry_after("120", NOW), 120.0)
        self.assertEqual(parse_retry_after(" 0 ", NOW), 0.0)

    def test_http_date(self) -> None:
        """
        An HTTP-date is a wait until then; a date in the past is no wait.
        """
        self.assertEqual(parse_retry_after(formatdate(NOW + 90, usegmt=True), NOW), 90.0)
        self.assertEqual(parse_retry_after(formatdate(NOW - 90, usegmt=True), NOW), 0.0)
        self.assertEqual(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1445412480.0 - 30), 30.0
        )

    def test_unusable(self) -> None:
        """
        A missing, negative, fractional or unparseable value is not used.
        """
        for value in (None, "", "-5", "1.5", "soon", "Wed, 99 Foo 2015 07:28:00 GMT"):
            self.assertIsNone(parse_retry_after(value, NOW), value)

    @given(st.integers(min_value=0, max_value=10**9))
    def test_any_seconds(self, seconds: int) -> None:
        """
        Any delay-seconds value reads back as itself.
        """
        self.assertEqual(parse_retry_after(str(seconds), NOW), float(seconds))

    @given(st.integers(min_value=-(10**6), max_value=10**8))
    def test_any_date(self, offset: int) -> None:
        """
        Any HTTP-date reads back as the wait until then (none if past).
        """
        self.assertEqual(
            parse_retry_after(formatdate(NOW + offset, usegmt=True), NOW),
            float(max(offset, 0)),
        )

    @given(st.text())
    def test_never_raises(self, value: str) -> None:
        """
        Whatever a receiver sends, parsing gives a non-negative wait or none.
        """
        result = parse_retry_after(value, NOW)
        self.assertTrue(result is None or result >= 0)


class AddressTests(SynchronousTestCase):
    def test_refused(self) -> None:
        """
        Loopback, private, link-local, multicast, unspecified, reserved and
        other non-public addresses are refused, with the reason.
        """
        cases = {
            "127.0.0.1": "loopback",
            "127.8.9.10": "loopback",
            "::1": "loopback",
            "10.1.2.3": "private",
            "172.16.0.1": "private",
            "192.168.1.1": "private",
            "fc00::1": "private",
            "fd12:3456::1": "private",
            "169.254.169.254": "link-local",
            "fe80::1": "link-local",
            "fe80::1%eth0": "link-local",
            "224.0.0.1": "multicast",
            "239.255.255.250": "multicast",
            "ff02::1": "multicast",
            "0.0.0.0": "unspecified",
            "::": "unspecified",
            "100.64.0.1": "not a public address",
            "198.18.0.1": "private",
            "2001:db8::1": "private",
            "::ffff:127.0.0.1": "loopback",
            "::ffff:10.0.0.1": "private",
            "::ffff:169.254.169.254": "link-local",
            "2002:7f00:1::": "loopback",
            "64:ff9b::a00:1": "private",
        }
        for address, what in cases.items():
            reason = address_refusal(address)
            assert reason is not None, address
            self.assertIn(what, reason, address)

    def test_public(self) -> None:
        """
        Public addresses are allowed, also in IPv4-mapped or NAT64 form.
        """
        for address in (
            "8.8.8.8",
            "1.1.1.1",
            "93.184.216.34",
            "2606:4700:4700::1111",
            "2a00:1450:4001:80b::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ):
            self.assertIsNone(address_refusal(address), address)

    def test_not_an_address(self) -> None:
        """
        Something that is not an IP address is refused.
        """
        self.assertIsNotNone(address_refusal("example.com"))

    @given(
        st.sampled_from(
            [
                "10.0.0.0/8",
                "172.16.0.0/12",
                "192.168.0.0/16",
                "127.0.0.0/8",
                "169.254.0.0/16",
                "224.0.0.0/4",
                "fc00::/7",
                "fe80::/10",
                "ff00::/8",
            ]
        ),
        st.integers(min_value=0),
    )
    def test_networks(self, network: str, offset: int) -> None:
        """
        Every address of a non-public network is refused, also when written
        as an IPv4-mapped IPv6 address.
        """
        net = ipaddress.ip_network(network)
        ip = net[offset % net.num_addresses]
        self.assertIsNotNone(address_refusal(str(ip)))
        if isinstance(ip, ipaddress.IPv4Address):
            self.assertIsNotNone(address_refusal(f"::ffff:{ip}"))

    @given(st.ip_addresses())
    def test_agrees_with_is_global(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
        """
        An address that the standard library calls global and not multicast
        is never refused for being non-public, and one it calls non-global
        is always refused (unless it carries a public IPv4 address).
        """
        reason = address_refusal(str(ip))
        if isinstance(ip, ipaddress.IPv4Address):
            self.assertEqual(reason is None, ip.is_global and not ip.is_multicast)
        elif reason is None:
            self.assertTrue(
                (ip.is_global and not ip.is_multicast)
                or ip.ipv4_mapped is not None
                or ip in ipaddress.ip_network("64:ff9b::/96")
            )


class URLTests(SynchronousTestCase):
    def test_allowed(self) -> None:
        """
        Absolute http and https URLs with a host are called.
        """
        for url in (
            "http://example.com/hook",
            "https://example.com:8443/hook?x=1",
            "HTTPS://EXAMPLE.COM",
            "http://[2001:db8::1]:8080/",
        ):
            self.assertIsNone(url_refusal(url), url)

    def test_refused(self) -> None:
        """
        Other schemes, URLs without a host, bad ports and URLs with spaces
        or control characters are refused, with the reason.
        """
        cases = {
            "ftp://example.com/": "only http and https",
            "file:///etc/passwd": "only http and https",
            "gopher://example.com": "only http and https",
            "example.com/hook": "only http and https",
            "http:///hook": "no host",
            "http://example.com:99999/": "malformed",
            "http://example.com:0/": "port",
            "http://[::1/": "malformed",
            "http://example.com/a b": "control",
            "http://example.com/\r\nX: y": "control",
        }
        for url, what in cases.items():
            reason = url_refusal(url)
            assert reason is not None, url
            self.assertIn(what, reason, url)

    def test_credentials(self) -> None:
        """
        User information in a URL becomes a Basic Authorization value and
        leaves the URL that is requested.
        """
        self.assertEqual(
            split_credentials("https://hook%40user:p%3Ass@example.com:8443/x?y=1"),
            (
                "https://example.com:8443/x?y=1",
                "Basic " + base64.b64encode(b"hook@user:p:ss").decode(),
            ),
        )
        self.assertEqual(
            split_credentials("http://token@[::1]/"),
            ("http://[::1]/", "Basic " + base64.b64encode(b"token:").decode()),
        )
        self.assertEqual(
            split_credentials("http://example.com/a@b"), ("http://example.com/a@b", None)
        )

    def test_redacted(self) -> None:
        """
        Logged URLs keep scheme, host, port and path, and lose user
        information and query.
        """
        self.assertEqual(
            redact_url("https://user:secret@Example.com:8443/hook?token=abc#f"),
            "https://example.com:8443/hook?...",
        )
        self.assertEqual(redact_url("http://[::1]:80/x"), "http://[::1]:80/x")
        self.assertEqual(redact_url("http://example.com:99999/"), "<malformed URL>")


class HeaderTests(SynchronousTestCase):
    def test_headers(self) -> None:
        """
        The headers carry the Standard Webhooks id, timestamp and a
        signature the reference library verifies, the JSON content type, and
        the event and channel.
        """
        key = b"s" * 32
        body = b'{"channel": "room:1", "event": "chat"}'
        now = int(time.time())
        headers = webhook_headers(key, "m-1", now, body, "chat", "room:1")
        self.assertEqual(headers["webhook-id"], "m-1")
        self.assertEqual(headers["webhook-timestamp"], str(now))
        self.assertEqual(headers["content-type"], "application/json")
        self.assertEqual(headers["x-realtime-event"], "chat")
        self.assertEqual(headers["x-realtime-channel"], "room:1")
        self.assertEqual(
            Webhook(encode_webhook_secret(key)).verify(body, headers),
            {"channel": "room:1", "event": "chat"},
        )
        self.assertTrue(base64.b64decode(headers["webhook-signature"][3:]))

    def test_no_header_injection(self) -> None:
        """
        Control characters in an event name do not reach a header as such.
        """
        self.assertEqual(header_text("a\r\nX-Evil: 1\x00"), "a  X-Evil: 1 ")
        headers = webhook_headers(b"s" * 32, "m", 1, b"{}", "a\r\nb", "c")
        self.assertEqual(headers["x-realtime-event"], "a  b")
