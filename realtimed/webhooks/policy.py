"""
The decisions behind webhook delivery, as pure code: which URLs and
addresses may be called, what an answer means, when to try again, and the
headers of a request.  Nothing here does I/O or reads the clock; the delivery
service in `realtimed.webhooks` passes in what it has seen.
"""

from __future__ import annotations

import base64
import enum
import ipaddress
import math
import re
from email.utils import parsedate_to_datetime
from urllib.parse import unquote, urlsplit, urlunsplit

from attrs import frozen

from realtimed.webhooks.signing import sign

USER_AGENT = "realtimed-webhooks/1"

#: Answers worth another attempt besides 5xx: the receiver timed out waiting
#: for the request, or asks us to slow down.
RETRIED_STATUSES = frozenset({408, 429})


class Verdict(enum.Enum):
    """
    What an attempt's outcome means for the delivery.
    """

    DELIVERED = "delivered"
    RETRY = "retry"
    FAILED = "failed"


def verdict_for_status(status: int) -> Verdict:
    """
    The meaning of an HTTP answer: 2xx is a delivery; 408, 429 and 5xx may
    succeed later; anything else (redirects included, which are not
    followed) is final.
    """
    if 200 <= status <= 299:
        return Verdict.DELIVERED
    if status in RETRIED_STATUSES or 500 <= status <= 599:
        return Verdict.RETRY
    return Verdict.FAILED


@frozen
class RetryPolicy:
    """
    Exponential backoff with full jitter, bounded by a horizon.

    The n-th retry waits a random time between 0 and
    C{min(max_delay, base_delay * 2 ** (n - 1))} seconds.  No attempt is
    scheduled later than C{horizon} seconds after the delivery was queued;
    the last one is made at the horizon, and a failure after it is final.

    @ivar base_delay: Ceiling of the first retry's delay, in seconds.
    @ivar max_delay: Largest ceiling of any retry's delay, in seconds.
    @ivar horizon: How long after queueing attempts are still made, seconds.
    """

    base_delay: float = 2.0
    max_delay: float = 3600.0
    horizon: float = 24 * 3600.0

    def ceiling(self, attempts: int) -> float:
        """
        The largest delay after C{attempts} failed attempts (at least one).
        """
        exponent = max(attempts, 1) - 1
        # 2 ** 1100 overflows a float; by then the cap has long been reached.
        if exponent >= 64:
            return self.max_delay
        return min(self.max_delay, self.base_delay * 2.0**exponent)

    def next_delay(
        self,
        attempts: int,
        age: float,
        jitter: float,
        retry_after: float | None = None,
    ) -> float | None:
        """
        How long to wait before the next attempt, or C{None} when there is
        none.

        @param attempts: Attempts made so far, the failed one included.
        @param age: Seconds since the delivery was queued.
        @param jitter: A random number in [0, 1).
        @param retry_after: The receiver's C{Retry-After}, in seconds from
            now, if it gave a usable one: the next attempt is no sooner
            (and a wait beyond the horizon means no further attempt).
        """
        remaining = self.horizon - age
        if remaining <= 0:
            return None
        delay = min(max(jitter, 0.0), 1.0) * self.ceiling(attempts)
        if retry_after is not None:
            if retry_after > remaining:
                return None
            # Not sooner than asked; and a receiver that keeps asking for
            # no wait at all still gets the backoff, not a busy loop.
            delay = max(delay, retry_after)
        return min(delay, remaining)


_DELTA_SECONDS = re.compile(r"^\s*(\d{1,10})\s*$")


def parse_retry_after(value: str | None, now: float) -> float | None:
    """
    The wait a C{Retry-After} header asks for, in seconds from C{now}.

    @param value: The header value: delay-seconds or an HTTP-date.
    @param now: The current POSIX time, for an HTTP-date.
    @return: Seconds (0 for a date in the past), or C{None} when there is no
        header or it is not understood.
    """
    if value is None:
        return None
    match = _DELTA_SECONDS.match(value)
    if match is not None:
        return float(int(match.group(1)))
    try:
        when = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None or when.tzinfo is None:
        # RFC 9110 dates are always GMT; a date without a zone is not one.
        return None
    try:
        seconds = when.timestamp() - now
    except (OverflowError, OSError, ValueError):
        return None
    if math.isnan(seconds):
        return None
    return max(0.0, seconds)


def address_refusal(address: str) -> str | None:
    """
    Why webhooks may not be sent to an IP address, or C{None} for a public
    address.

    Loopback, private, link-local, multicast, unspecified, reserved and any
    other non-global address is refused; an IPv6 address carrying an IPv4
    address (IPv4-mapped, 6to4, Teredo, NAT64) is judged by that too.

    @param address: An IPv4 or IPv6 address as text (an IPv6 zone is
        allowed).
    """
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return f"{address!r} is not an IP address"
    if isinstance(ip, ipaddress.IPv6Address):
        for embedded in _embedded_ipv4(ip):
            inner = _refusal(embedded)
            if inner is not None:
                return f"{inner} (inside {ip})"
        if ip.ipv4_mapped is not None or ip in _NAT64:
            # An IPv4 address in IPv6 form, or translated to IPv4 by a NAT64
            # gateway: the IPv4 address is what is reached, and it is public.
            return None
    return _refusal(ip)


_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    found: list[ipaddress.IPv4Address] = []
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)
    if ip in _NAT64:
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return found


def _refusal(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    checks = (
        (ip.is_unspecified, "an unspecified address"),
        (ip.is_loopback, "a loopback address"),
        (ip.is_link_local, "a link-local address"),
        (ip.is_multicast, "a multicast address"),
        (ip.is_private, "a private address"),
        (ip.is_reserved, "a reserved address"),
        (not ip.is_global, "not a public address"),
    )
    for applies, what in checks:
        if applies:
            return f"{ip} is {what}"
    return None


def url_refusal(url: str) -> str | None:
    """
    Why a webhook URL cannot be called at all, or C{None}: only absolute
    http and https URLs with a host and a valid port are.  Where the host
    points is checked when connecting (see L{address_refusal}).
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        return f"the URL is malformed ({e})"
    if parts.scheme.lower() not in ("http", "https"):
        return "only http and https URLs are called"
    if not parts.hostname:
        return "the URL has no host"
    if port == 0:
        return "the URL's port is 0"
    if any(ord(c) < 0x21 or c == "\x7f" for c in url):
        return "the URL holds spaces or control characters"
    return None


def redact_url(url: str) -> str:
    """
    A URL fit for logs: scheme, host, port and path, without user
    information, query or fragment (where receivers often put secrets).
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<malformed URL>"
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None else f"{host}:{port}"
    suffix = "?..." if parts.query else ""
    return f"{parts.scheme}://{netloc}{parts.path}{suffix}"


def split_credentials(url: str) -> tuple[str, str | None]:
    """
    A URL's user information as an HTTP Basic C{Authorization} value, and
    the URL without it (which is what is requested: credentials never go
    into the request line or the C{Host} header).

    @return: The URL to request, and the header value or C{None}.
    """
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    token = base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode("ascii")
    return urlunsplit(parts._replace(netloc=hostport)), f"Basic {token}"


def header_text(value: str) -> str:
    """
    A value safe to put in a header: control characters (CR and LF
    included) become spaces.
    """
    return "".join(" " if ord(c) < 0x20 or c == "\x7f" else c for c in value)


def webhook_headers(
    key: bytes,
    message_id: str,
    timestamp: int,
    body: bytes,
    event: str,
    channel: str,
) -> dict[str, str]:
    """
    The headers of one webhook request: Standard Webhooks' C{webhook-id},
    C{webhook-timestamp} and C{webhook-signature}, the content type, and
    the message's event and channel.
    """
    return {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(key, message_id, timestamp, body),
        "x-realtime-event": header_text(event),
        "x-realtime-channel": header_text(channel),
    }
