"""
Webhook delivery: the service that sends the outbox's deliveries.

Every stored message has one row per webhook URL of its channel in
``realtime.webhook_deliveries``, written by a trigger in the message's own
transaction (migration 0003).  `WebhookService` sends them:

1. Claim.  One statement picks due rows with ``FOR UPDATE SKIP LOCKED``,
   within the free concurrency (overall and per receiving host), counts the
   attempt and pushes ``next_attempt_at`` past the request timeout (a lease),
   and commits.  Another process never picks a leased row; if this process
   dies mid-send, the row becomes due again when the lease ends.
2. Send.  A signed POST (Standard Webhooks), redirects not followed, at most
   a few KiB of the answer read, the whole exchange bounded by a timeout.
   The connection goes only to addresses checked by `address_refusal`,
   resolved when connecting (see `CheckedEndpointFactory`).
3. Record.  Outcomes are written in batches: delivered (and the message's
   ``wh_delivered_count`` incremented), pending again after a backoff, or
   failed.  A row is only updated if it still carries the claimed attempt,
   so a late answer never overwrites a newer one.

Delivery is at least once: a process that dies after the receiver answered
but before the outcome is stored sends again after the lease; receivers
de-duplicate by ``webhook-id``.

The service polls the outbox every second and can be woken with
`WebhookService.wake`: the daemon wakes it for every stored message with
webhooks that its listener hands over, so a new delivery goes out at once
and the poll is what finds retries coming due (and anything a missed wake
left).
Finished rows older than the retention are pruned at start and then hourly.

The concurrency limits are per process.  User information in a webhook URL
(``https://user:password@host/...``) is sent as HTTP Basic authorization.
The address check lives in the default HTTP client (`webhook_http_client`);
a client passed in instead is trusted to do its own.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any, cast

from attrs import define, field, frozen
from twisted.application.service import Service
from twisted.internet.defer import (
    Deferred,
    DeferredList,
    fail,
    succeed,
)
from twisted.internet.defer import (
    TimeoutError as DeferredTimeoutError,
)
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.error import DNSLookupError
from twisted.internet.interfaces import (
    IHostResolution,
    IProtocol,
    IProtocolFactory,
    IPushProducer,
    IResolutionReceiver,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import URI, Agent, HTTPConnectionPool
from twisted.web.error import SchemeNotSupported
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IResponse
from zope.interface import implementer

from realtimed.config import Config
from realtimed.signing import decode_webhook_secret
from realtimed.store.pool import ConnectionPool, redact_dsn
from realtimed.webhook_policy import (
    RetryPolicy,
    Verdict,
    address_refusal,
    parse_retry_after,
    redact_url,
    split_credentials,
    url_refusal,
    verdict_for_status,
    webhook_headers,
)

log = Logger()

#: The most of an answer's body that is read; the rest is not wanted.
BODY_LIMIT = 4096

#: Beyond the request timeout, how long a claimed row stays leased.
LEASE_MARGIN = 50.0

_ERROR_LENGTH = 500

#: Seconds between log lines about retries to one host.
RETRY_LOG_INTERVAL = 10.0


class UnsafeAddress(Exception):
    """
    A webhook's host resolves to an address deliveries may not reach.
    """


# ---------------------------------------------------------------------------
# Connecting only to checked addresses


@implementer(IResolutionReceiver)
class _Addresses:
    """
    Collects the addresses of one name resolution.
    """

    def __init__(self) -> None:
        self.addresses: list[Any] = []
        self.done: Deferred[list[Any]] = Deferred()

    def resolutionBegan(self, resolution: IHostResolution) -> None:
        pass

    def addressResolved(self, address: Any) -> None:
        self.addresses.append(address)

    def resolutionComplete(self) -> None:
        self.done.callback(self.addresses)


@implementer(IStreamClientEndpoint)
@frozen
class CheckedEndpoint:
    """
    Connects to a host by name, but only after every address the name
    resolves to has passed `address_refusal` (unless private addresses are
    allowed), and then to one of those very addresses, so a second DNS
    answer cannot redirect the connection.

    @ivar tls_hostname: For https, the name to verify the certificate
        against; C{None} for plain http.
    @ivar trust_root: For https, the certificate authorities to trust;
        C{None} for the platform's.
    """

    reactor: Any
    host: str
    port: int
    tls_hostname: str | None
    allow_private: bool
    connect_timeout: float
    trust_root: Any = None

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        receiver = _Addresses()
        self.reactor.nameResolver.resolveHostName(receiver, self.host, self.port)
        d: Deferred[Any] = receiver.done
        d.addCallback(self._connect_checked, factory)
        return d

    def _connect_checked(
        self, addresses: list[Any], factory: IProtocolFactory
    ) -> Deferred[IProtocol]:
        if not addresses:
            raise DNSLookupError(f"{self.host} has no address")
        if not self.allow_private:
            for address in addresses:
                reason = address_refusal(address.host)
                if reason is not None:
                    raise UnsafeAddress(f"{self.host} resolves to {address.host}: {reason}")
        return self._try(list(addresses), factory, None)

    def _try(
        self, addresses: list[Any], factory: IProtocolFactory, last: Failure | None
    ) -> Deferred[IProtocol]:
        if not addresses:
            assert last is not None
            return fail(last)
        address = addresses.pop(0)
        endpoint: Any
        if address.type == "TCP6":
            endpoint = TCP6ClientEndpoint(
                self.reactor, address.host, self.port, timeout=self.connect_timeout
            )
        else:
            endpoint = TCP4ClientEndpoint(
                self.reactor, address.host, self.port, timeout=self.connect_timeout
            )
        endpoint = _NoDelay(endpoint)
        if self.tls_hostname is not None:
            from twisted.internet.ssl import optionsForClientTLS

            endpoint = wrapClientTLS(
                optionsForClientTLS(self.tls_hostname, trustRoot=self.trust_root), endpoint
            )
        d = endpoint.connect(factory)
        d.addErrback(lambda f: self._try(addresses, factory, f))
        return d


@implementer(IStreamClientEndpoint)
@frozen
class _NoDelay:
    """
    Turns Nagle's algorithm off on the connections of a TCP endpoint.  A
    request goes out in several writes (head, then body); with Nagle on,
    the body waits for the receiver to acknowledge the head, which a
    delayed ACK holds back for tens of milliseconds.
    """

    endpoint: Any

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        d: Deferred[Any] = self.endpoint.connect(factory)
        d.addCallback(_no_delay)
        return d


def _no_delay(protocol: Any) -> Any:
    transport = getattr(protocol, "transport", None)
    if transport is not None and hasattr(transport, "setTcpNoDelay"):
        transport.setTcpNoDelay(True)
    return protocol


@implementer(IAgentEndpointFactory)
@frozen
class CheckedEndpointFactory:
    """
    An agent's endpoints for http and https URLs, as `CheckedEndpoint`s.
    """

    reactor: Any
    allow_private: bool
    connect_timeout: float = 10.0
    trust_root: Any = None

    def endpointForURI(self, uri: URI) -> Any:
        scheme = uri.scheme.decode("ascii", "replace")
        if scheme not in ("http", "https"):
            raise SchemeNotSupported(f"the {scheme} scheme is not called")
        host = uri.host.decode("ascii", "replace").strip("[]")
        return CheckedEndpoint(
            self.reactor,
            host,
            uri.port,
            host if scheme == "https" else None,
            self.allow_private,
            self.connect_timeout,
            self.trust_root,
        )


def webhook_http_client(
    reactor: Any,
    allow_private: bool = False,
    per_host: int = 8,
    connect_timeout: float = 10.0,
    trust_root: Any = None,
) -> tuple[Any, HTTPConnectionPool]:
    """
    A treq client for webhook deliveries: persistent connections (up to
    C{per_host} kept per receiver), made only to checked addresses;
    https certificates verified against C{trust_root} (an
    C{IOpenSSLTrustRoot}, by default the platform's authorities).

    @return: The client, and its connection pool (close its cached
        connections when done).
    """
    import treq.client

    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = per_host
    # Idle connections are dropped before most servers' keep-alive timeouts
    # would drop them under a request.
    pool.cachedConnectionTimeout = 30
    pool.retryAutomatically = False
    agent = Agent.usingEndpointFactory(
        reactor,
        CheckedEndpointFactory(reactor, allow_private, connect_timeout, trust_root),
        pool=pool,
    )
    return treq.client.HTTPClient(agent), pool


# ---------------------------------------------------------------------------
# Reading a bounded part of an answer


class _Discard(Protocol):
    """
    Reads and drops an answer's body, giving up (and dropping the
    connection) after C{limit} bytes.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.received = 0
        self.done: Deferred[None] = Deferred(lambda d: self._abort())

    def _abort(self) -> None:
        if self.transport is not None:
            cast(IPushProducer, self.transport).stopProducing()

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        if self.received > self.limit and not self.done.called:
            self.done.callback(None)
            self._abort()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if not self.done.called:
            self.done.callback(None)


@frozen
class Answer:
    """
    The part of an HTTP answer that matters: its status and Retry-After.
    """

    status: int
    retry_after: str | None


def _read_answer(response: IResponse) -> Deferred[Answer]:
    values = response.headers.getRawHeaders(b"retry-after")
    retry_after = values[0].decode("latin-1") if values else None
    answer = Answer(response.code, retry_after)
    discard = _Discard(BODY_LIMIT)
    response.deliverBody(discard)  # type: ignore[call-arg, misc]
    return discard.done.addCallback(lambda _: answer)


# ---------------------------------------------------------------------------
# The database


#: The service's connections are its own (a pool of `_CONNECTIONS`: one
#: claiming, one recording, one pruning) and run only the statements below,
#: which are prepared once per connection, planned once (their plan does not
#: depend on the parameters), and steered to the indexes even while the
#: table's statistics lag behind a burst.  Commits do not wait for the WAL
#: flush: were one lost in a database crash, a delivery would be sent again,
#: never lost.
_SESSION = (
    "SET synchronous_commit TO off",
    "SET plan_cache_mode TO force_generic_plan",
    "SET enable_seqscan TO off",
    "SET enable_bitmapscan TO off",
)

#: At most one claim, one write of outcomes and one pruning run at once.
_CONNECTIONS = 3

_PREPARE_CLAIM = """
PREPARE webhook_claim (text[], int[], int, int, float8) AS
WITH RECURSIVE hosts (host) AS (
    -- Every host with pending deliveries, one index probe each.
    (SELECT host FROM realtime.webhook_deliveries
     WHERE status = 'pending' ORDER BY host LIMIT 1)
    UNION ALL
    SELECT (SELECT d.host FROM realtime.webhook_deliveries d
            WHERE d.status = 'pending' AND d.host > hosts.host
            ORDER BY d.host LIMIT 1)
    FROM hosts WHERE hosts.host IS NOT NULL
), room AS (
    -- How many more attempts each host may take now.
    SELECT h.host, least($3 - coalesce(b.n, 0), $4) AS n
    FROM hosts h LEFT JOIN unnest($1, $2) AS b (host, n) ON b.host = h.host
    WHERE h.host IS NOT NULL
), candidates AS (
    -- Each host's oldest due deliveries, as many as it has room for, not
    -- those another process is claiming right now.
    SELECT c.id, c.next_attempt_at
    FROM room r
    CROSS JOIN LATERAL (
        SELECT d.id, d.next_attempt_at
        FROM realtime.webhook_deliveries d
        WHERE d.status = 'pending' AND d.host = r.host AND d.next_attempt_at <= now()
        ORDER BY d.next_attempt_at
        LIMIT greatest(r.n, 0)
        FOR UPDATE SKIP LOCKED
    ) c
), chosen AS (
    -- The oldest of them all, as many as there is room for overall.
    SELECT id FROM candidates ORDER BY next_attempt_at, id LIMIT $4
)
UPDATE realtime.webhook_deliveries d
SET attempts = d.attempts + 1,
    next_attempt_at = now() + make_interval(secs => $5),
    updated_at = now()
FROM realtime.messages m
WHERE d.id = ANY (ARRAY(SELECT id FROM chosen)) AND m.id = d.message_id
RETURNING d.id, d.url, d.host, d.attempts,
          extract(epoch FROM now() - d.created_at)::float8,
          m.id::text, m.event_name, m.channel_name,
          realtime.message_json(m)::text
"""

_PREPARE_RECORD = """
PREPARE webhook_record (bigint[], int[], text[], int[], text[], float8[]) AS
WITH outcomes AS (
    SELECT *
    FROM unnest($1, $2, $3, $4, $5, $6)
        AS o (id, attempts, status, http_status, error, delay)
), recorded AS (
    UPDATE realtime.webhook_deliveries d
    SET status = o.status,
        last_status = o.http_status,
        last_error = o.error,
        next_attempt_at = CASE WHEN o.status = 'pending'
                               THEN now() + make_interval(secs => o.delay)
                               ELSE d.next_attempt_at END,
        updated_at = now()
    FROM outcomes o
    WHERE d.id = o.id AND d.attempts = o.attempts AND d.status = 'pending'
    RETURNING d.message_id, d.status
), delivered AS (
    SELECT message_id, count(*)::int AS n
    FROM recorded WHERE status = 'delivered'
    GROUP BY message_id
)
UPDATE realtime.messages m
SET wh_delivered_count = m.wh_delivered_count + delivered.n
FROM delivered
WHERE m.id = delivered.message_id
"""

# (An array of NULLs is text[] to PostgreSQL, hence the casts.)
_CLAIM = (
    "EXECUTE webhook_claim (%(busy_hosts)s::text[], %(busy_counts)s::int[],"
    " %(per_host)s, %(free)s, %(lease)s)"
)

_RECORD = (
    "EXECUTE webhook_record (%(ids)s::bigint[], %(attempts)s::int[],"
    " %(statuses)s::text[], %(http_statuses)s::int[], %(errors)s::text[],"
    " %(delays)s::float8[])"
)

_PRUNE = """
WITH gone AS (
    DELETE FROM realtime.webhook_deliveries
    WHERE id IN (
        SELECT id FROM realtime.webhook_deliveries
        WHERE status <> 'pending'
          AND updated_at < now() - make_interval(secs => %(age)s)
        LIMIT %(batch)s
    )
    RETURNING 1
)
SELECT count(*) FROM gone
"""


@frozen
class Delivery:
    """
    A claimed delivery: one attempt to POST one message to one URL.

    @ivar attempts: Attempts made, this one included.
    @ivar age: Seconds since the delivery was queued, at the claim.
    @ivar body: The message as delivered on sockets, JSON.
    """

    id: int
    url: str
    host: str
    attempts: int
    age: float
    message_id: str
    event: str
    channel: str
    body: bytes


@frozen
class Outcome:
    """
    What became of one attempt, to be recorded.

    @ivar status: The delivery's new status: delivered, pending, failed.
    @ivar delay: For pending, seconds until the next attempt.
    """

    delivery: Delivery
    status: str
    http_status: int | None = None
    error: str | None = None
    delay: float = 0.0


def _describe(f: Failure) -> str:
    value = f.value
    reasons = getattr(value, "reasons", None)
    if reasons:
        inner = "; ".join(_describe(r) if isinstance(r, Failure) else str(r) for r in reasons)
        text = f"{type(value).__name__}: {inner}"
    else:
        text = f"{type(value).__name__}: {value}".rstrip(": ")
    return text[:_ERROR_LENGTH]


@define(slots=False, eq=False)
class WebhookService(Service):
    """
    Sends the outbox's webhook deliveries (see the module docstring).

    @ivar reactor: The reactor for database and HTTP connections.
    @ivar database_url: The PostgreSQL database holding the outbox.
    @ivar secret: The Standard Webhooks signing secret, C{whsec_<base64>}.
    @ivar http: The HTTP client: treq's C{HTTPClient}, or anything whose
        C{request("POST", url, headers=Headers, data=bytes,
        allow_redirects=False, unbuffered=True)} fires with an
        C{IResponse}; by default
        one from L{webhook_http_client}, closed when the service stops.
    @ivar allow_private: Whether the default HTTP client may connect to
        loopback, private, link-local and other non-public addresses.
    @ivar policy: When to retry.
    @ivar clock: Timers and the signature timestamp; the reactor by default.
    @ivar max_in_flight: Most attempts at once, overall.
    @ivar per_host: Most attempts at once to one receiving host.
    @ivar timeout: Seconds one attempt may take, answer body included.
    @ivar poll_interval: Seconds between looks at the outbox when nothing
        wakes the service.
    @ivar wake_interval: The least time in seconds between two looks at the
        outbox that L{wake} starts.
    @ivar retention: Seconds delivered and failed rows are kept.
    @ivar prune_interval: Seconds between prunings.
    @ivar jitter: Source of random numbers in [0, 1) for the backoff.
    """

    reactor: Any
    database_url: str = field(repr=redact_dsn)
    secret: str = field(repr=False)
    http: Any = None
    allow_private: bool = False
    policy: RetryPolicy = field(factory=RetryPolicy)
    clock: Any = None
    max_in_flight: int = 64
    per_host: int = 8
    timeout: float = 10.0
    poll_interval: float = 1.0
    wake_interval: float = 0.01
    retention: float = 7 * 24 * 3600.0
    prune_interval: float = 3600.0
    jitter: Callable[[], float] = random.random

    _key: bytes = field(init=False, repr=False)
    _pool: HTTPConnectionPool | None = field(default=None, init=False)
    _database: ConnectionPool | None = field(default=None, init=False)
    _in_flight: dict[int, Deferred[None]] = field(factory=dict, init=False)
    _per_host_busy: dict[str, int] = field(factory=dict, init=False)
    _claiming: Deferred[Any] | None = field(default=None, init=False)
    _claim_again: bool = field(default=False, init=False)
    _more_due: bool = field(default=False, init=False)
    _wake_call: Any = field(default=None, init=False)
    _last_wake: float | None = field(default=None, init=False)
    _wake_later: Any = field(default=None, init=False)
    _outcomes: list[Outcome] = field(factory=list, init=False)
    _flushing: Deferred[None] | None = field(default=None, init=False)
    _flush_call: Any = field(default=None, init=False)
    _recording: int = field(default=0, init=False)
    _poll: LoopingCall | None = field(default=None, init=False)
    _trouble: tuple[str, float] | None = field(default=None, init=False)
    _retry_logs: dict[str, tuple[float | None, int]] = field(factory=dict, init=False)
    _prune: LoopingCall | None = field(default=None, init=False)

    @classmethod
    def from_config(
        cls, reactor: Any, config: Config, database_url: str, secret: str
    ) -> WebhookService:
        """
        The service as the daemon's configuration asks for it.

        @param secret: The webhook secret in use (configured or generated).
        """
        return cls(
            reactor,
            database_url,
            secret,
            allow_private=config.webhook_allow_private,
            policy=RetryPolicy(horizon=config.webhook_retry_hours * 3600.0),
        )

    def __attrs_post_init__(self) -> None:
        self._key = decode_webhook_secret(self.secret)
        if self.clock is None:
            self.clock = self.reactor

    # -- lifecycle ---------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        if self.http is None or self._pool is not None:
            self.http, self._pool = webhook_http_client(
                self.reactor, self.allow_private, self.per_host, self.timeout
            )
        # Failed statements are reported by _database_trouble, at most once
        # a minute, rather than by the pool at every poll.
        self._database = ConnectionPool(
            self.reactor,
            self.database_url,
            size=_CONNECTIONS,
            setup=(*_SESSION, _PREPARE_CLAIM, _PREPARE_RECORD),
            warn_connect_failures=False,
        )
        self._poll = LoopingCall(self._tick)
        self._poll.clock = self.clock
        self._poll.start(self.poll_interval, now=True).addErrback(
            lambda f: log.failure("The webhook outbox poll stopped", f)
        )
        self._prune = LoopingCall(self._prune_now)
        self._prune.clock = self.clock
        # Also at start: a process restarted more often than the interval
        # would otherwise never prune.
        self._prune.start(self.prune_interval, now=True).addErrback(
            lambda f: log.failure("Webhook pruning stopped", f)
        )

    def stopService(self) -> Deferred[None]:
        """
        Stop claiming; let the attempts in flight finish (each is bounded
        by the timeout) and record their outcomes; close connections.
        """
        super().stopService()
        for loop in (self._poll, self._prune):
            if loop is not None and loop.running:
                loop.stop()
        for call in (self._wake_call, self._wake_later, self._flush_call):
            if call is not None and call.active():
                call.cancel()
        self._wake_call = self._wake_later = self._flush_call = None
        waiting: list[Deferred[Any]] = []
        if self._claiming is not None:
            waiting.append(self._claiming)
        d: Deferred[Any] = DeferredList(waiting)
        d.addCallback(lambda _: DeferredList(list(self._in_flight.values())))
        d.addCallback(lambda _: self._flush_all())
        d.addErrback(lambda f: log.failure("Stopping webhook deliveries", f))
        d.addCallback(lambda _: self._close())
        d.addErrback(lambda f: log.failure("Closing webhook connections", f))
        return d

    def _flush_all(self) -> Deferred[None]:
        """
        Record every outcome not yet recorded (one more try if the first
        fails).
        """
        d: Deferred[None] = self._flushing if self._flushing is not None else succeed(None)
        d = _chain(d)
        d.addCallback(lambda _: self._flush())
        d.addCallback(lambda _: self._flush() if self._outcomes else None)

        def gave_up(_: object) -> None:
            if self._outcomes:
                log.warn(
                    "{count} webhook outcomes could not be recorded; those deliveries "
                    "will be attempted again",
                    count=len(self._outcomes),
                )

        d.addCallback(gave_up)
        return d

    def _close(self) -> Deferred[None] | None:
        if self._database is not None:
            self._database.close()
        if self._pool is not None:
            pool = self._pool
            return pool.closeCachedConnections()
        return None

    def _database_trouble(self, f: Failure) -> None:
        """
        Log a failed database statement: a new kind of error at once, the
        same one again at most once a minute (the poll retries every
        second while the database is away).
        """
        error = _describe(f)
        now = self.clock.seconds()
        if self._trouble is not None:
            last_error, last_time = self._trouble
            if last_error == error and now - last_time < 60:
                return
        self._trouble = (error, now)
        log.warn("Webhook deliveries wait for the database: {error}", error=error)

    # -- waking and claiming -----------------------------------------------

    def wake(self) -> None:
        """
        Look for due deliveries now (call it when a message is stored).

        Calls less than C{wake_interval} after the last one that looked
        are gathered into one look at the end of that interval: a flood of
        messages, most of them on channels without webhooks, costs a claim
        per interval rather than one per message.
        """
        if not self.running:
            return
        now = self.clock.seconds()
        if self._last_wake is not None and now - self._last_wake < self.wake_interval:
            if self._wake_later is None:
                self._wake_later = self.clock.callLater(
                    self._last_wake + self.wake_interval - now, self._woken_later
                )
            return
        self._last_wake = now
        self._look()

    def _woken_later(self) -> None:
        self._wake_later = None
        self.wake()

    def _look(self) -> None:
        """
        Claim what is due now, or right after the claim under way.
        """
        if not self.running:
            return
        if self._claiming is not None:
            self._claim_again = True
            return
        self._claim()

    def _wake_soon(self) -> None:
        if self._wake_call is not None or not self.running:
            return

        def woken() -> None:
            self._wake_call = None
            self._look()

        self._wake_call = self.clock.callLater(0, woken)

    def _tick(self) -> None:
        # An error here must not end the poll, which is what retries.
        try:
            self._look()
            if self._outcomes and self._flushing is None:
                self._flush()
        except Exception:
            log.failure("Polling the webhook outbox")

    def _claim(self) -> None:
        # Outcomes not yet recorded count against the room: when they
        # cannot be written, claiming stops rather than piling them up.
        free = self.max_in_flight - len(self._in_flight) - len(self._outcomes) - self._recording
        if free <= 0 or self._database is None:
            return
        params = {
            "busy_hosts": list(self._per_host_busy),
            "busy_counts": list(self._per_host_busy.values()),
            "per_host": self.per_host,
            "free": free,
            "lease": self.timeout + LEASE_MARGIN,
        }
        self._claim_again = False
        d = self._database.runQuery(_CLAIM, params)
        d.addCallback(self._start, free, dict(self._per_host_busy))
        failed = False

        def trouble(f: Failure) -> None:
            nonlocal failed
            failed = True
            self._database_trouble(f)

        d.addErrback(trouble)
        self._claiming = d

        def claimed(_: object) -> None:
            self._claiming = None
            if self._trouble is not None and not failed:
                log.info("Webhook deliveries reach the database again")
                self._trouble = None
            if self.running and self._claim_again:
                self._wake_soon()

        d.addCallback(claimed)
        d.addErrback(lambda f: log.failure("After claiming webhook deliveries", f))

    def _start(self, rows: Sequence[tuple[Any, ...]], free: int, busy: dict[str, int]) -> None:
        """
        Start an attempt for each claimed row.

        @param free: The room overall when claiming.
        @param busy: The attempts per host in flight when claiming.
        """
        claimed: dict[str, int] = {}
        for row in rows:
            delivery = Delivery(
                id=row[0],
                url=row[1],
                host=row[2],
                attempts=row[3],
                age=row[4],
                message_id=row[5],
                event=row[6],
                channel=row[7],
                body=row[8].encode("utf-8"),
            )
            self._per_host_busy[delivery.host] = self._per_host_busy.get(delivery.host, 0) + 1
            claimed[delivery.host] = claimed.get(delivery.host, 0) + 1
            self._attempt(delivery)
        # Were there more due than there was room for (overall, or for a
        # host)?  Then each attempt that ends makes room for another;
        # otherwise wakes and the poll bring the next ones.
        self._more_due = (
            len(rows) >= free
            or any(n >= self.per_host for n in busy.values())
            or any(n >= self.per_host - busy.get(host, 0) for host, n in claimed.items())
        )
        if len(rows) >= free:
            self._claim_again = True

    # -- one attempt ---------------------------------------------------------

    def _attempt(self, delivery: Delivery) -> None:
        tracker: Deferred[None] = Deferred()
        self._in_flight[delivery.id] = tracker
        refusal = url_refusal(delivery.url)
        d: Deferred[Outcome]
        if refusal is not None:
            d = succeed(self._refused(delivery, refusal))
        else:
            d = self._send(delivery)
        d.addCallback(self._finished)
        d.addErrback(
            lambda f: log.failure(
                "Webhook delivery {delivery_id} went wrong", f, delivery_id=delivery.id
            )
        )

        def release(_: object) -> None:
            del self._in_flight[delivery.id]
            tracker.callback(None)
            left = self._per_host_busy[delivery.host] - 1
            if left:
                self._per_host_busy[delivery.host] = left
            else:
                del self._per_host_busy[delivery.host]
            if self._more_due:
                # Soon rather than now: attempts ending in the same turn of
                # the reactor share one claim.
                self._wake_soon()

        d.addCallback(release)
        d.addErrback(lambda f: log.failure("Releasing a webhook delivery", f))

    def _send(self, delivery: Delivery) -> Deferred[Outcome]:
        timestamp = int(self.clock.seconds())
        headers = webhook_headers(
            self._key,
            delivery.message_id,
            timestamp,
            delivery.body,
            delivery.event,
            delivery.channel,
        )
        url, authorization = split_credentials(delivery.url)
        if authorization is not None:
            headers["authorization"] = authorization
        raw = Headers({k.encode("ascii"): [v.encode("utf-8")] for k, v in headers.items()})
        try:
            d: Deferred[Any] = self.http.request(
                "POST",
                url,
                headers=raw,
                data=delivery.body,
                allow_redirects=False,
                unbuffered=True,
            )
        except Exception as e:  # the client found the URL unusable
            return succeed(
                self._refused(delivery, f"the URL cannot be requested ({type(e).__name__}: {e})")
            )
        d.addCallback(_read_answer)
        d.addTimeout(self.timeout, self.clock, onTimeoutCancel=_timed_out)
        d.addCallbacks(
            lambda answer: self._answered(delivery, answer),
            lambda f: self._not_answered(delivery, f),
        )
        return d

    def _answered(self, delivery: Delivery, answer: Answer) -> Outcome:
        verdict = verdict_for_status(answer.status)
        if verdict is Verdict.DELIVERED:
            log.debug(
                "Webhook delivery {delivery_id} of message {message_id} to {url}: {status}",
                delivery_id=delivery.id,
                message_id=delivery.message_id,
                url=redact_url(delivery.url),
                status=answer.status,
            )
            return Outcome(delivery, "delivered", http_status=answer.status)
        error = f"HTTP {answer.status}"
        if verdict is Verdict.FAILED:
            log.warn(
                "Webhook delivery {delivery_id} of message {message_id} to {url} failed: "
                "the receiver answered {status}, which is final",
                delivery_id=delivery.id,
                message_id=delivery.message_id,
                url=redact_url(delivery.url),
                status=answer.status,
            )
            return Outcome(delivery, "failed", http_status=answer.status, error=error)
        retry_after = parse_retry_after(answer.retry_after, self.clock.seconds())
        return self._retry(delivery, error, answer.status, retry_after)

    def _not_answered(self, delivery: Delivery, f: Failure) -> Outcome:
        if f.check(UnsafeAddress):
            return self._refused(delivery, str(f.value), private=True)
        if f.check(DeferredTimeoutError):
            error = f"no answer within {self.timeout:g} s"
        else:
            error = _describe(f)
        return self._retry(delivery, error, None, None)

    def _retry(
        self,
        delivery: Delivery,
        error: str,
        http_status: int | None,
        retry_after: float | None,
    ) -> Outcome:
        delay = self.policy.next_delay(delivery.attempts, delivery.age, self.jitter(), retry_after)
        if delay is None:
            log.warn(
                "Webhook delivery {delivery_id} of message {message_id} to {url} failed "
                "after {attempts} attempts ({error}); no more retries",
                delivery_id=delivery.id,
                message_id=delivery.message_id,
                url=redact_url(delivery.url),
                attempts=delivery.attempts,
                error=error,
            )
            return Outcome(delivery, "failed", http_status=http_status, error=error)
        self._log_retry(delivery, error, delay)
        return Outcome(delivery, "pending", http_status=http_status, error=error, delay=delay)

    def _log_retry(self, delivery: Delivery, error: str, delay: float) -> None:
        """
        Say that a delivery will be retried; for one host, at most once per
        L{RETRY_LOG_INTERVAL}, with the number of retries not mentioned (a
        receiver that is down fails every delivery of its backlog).
        """
        now = self.clock.seconds()
        last, quiet = self._retry_logs.get(delivery.host, (None, 0))
        if last is not None and now - last < RETRY_LOG_INTERVAL:
            self._retry_logs[delivery.host] = (last, quiet + 1)
            return
        self._retry_logs[delivery.host] = (now, 0)
        log.info(
            "Webhook delivery {delivery_id} to {url}: {error}; retrying in {delay:.1f} s{more}",
            delivery_id=delivery.id,
            url=redact_url(delivery.url),
            error=error,
            delay=delay,
            attempts=delivery.attempts,
            more=f" ({quiet} more retries to this host since the last such line)" if quiet else "",
        )

    def _refused(self, delivery: Delivery, reason: str, private: bool = False) -> Outcome:
        """
        A delivery that is not made at all: the URL cannot be called, or
        (C{private}) its host is not a public address.
        """
        hint = "; set --webhook-allow-private to deliver to such addresses" if private else ""
        log.warn(
            "Webhook delivery {delivery_id} of message {message_id} to {url} refused: "
            "{reason}{hint}",
            delivery_id=delivery.id,
            message_id=delivery.message_id,
            url=redact_url(delivery.url),
            reason=reason,
            hint=hint,
        )
        return Outcome(delivery, "failed", error=f"refused: {reason}"[:_ERROR_LENGTH])

    # -- recording -------------------------------------------------------------

    def _finished(self, outcome: Outcome) -> None:
        self._outcomes.append(outcome)
        if not self.running:
            return  # stopService records what is left
        if self._flushing is None and self._flush_call is None:
            # Outcomes of the same turn of the reactor share one statement.
            self._flush_call = self.clock.callLater(0, self._flush_soon)

    def _flush_soon(self) -> None:
        self._flush_call = None
        if self._flushing is None:
            self._flush()

    def _flush(self) -> Deferred[None]:
        """
        Write the outcomes gathered so far in one statement; those arriving
        meanwhile go in the next one.
        """
        if self._flushing is not None:
            return _chain(self._flushing)
        if not self._outcomes or self._database is None:
            return succeed(None)
        batch, self._outcomes = self._outcomes, []
        self._recording = len(batch)
        params = {
            "ids": [o.delivery.id for o in batch],
            "attempts": [o.delivery.attempts for o in batch],
            "statuses": [o.status for o in batch],
            "http_statuses": [o.http_status for o in batch],
            "errors": [o.error for o in batch],
            "delays": [o.delay for o in batch],
        }
        d: Deferred[Any] = self._database.runOperation(_RECORD, params)

        def failed(f: Failure) -> bool:
            # Keep them for the next flush (the poll tries again); the
            # leases keep the rows from being claimed again meanwhile.
            self._outcomes[:0] = batch
            self._database_trouble(f)
            return False

        d.addCallbacks(lambda _: True, failed)
        self._flushing = d

        def done(written: bool) -> None:
            self._flushing = None
            self._recording = 0
            if written and self._outcomes and self.running:
                # Not recursion: this runs when the previous write finished.
                self._flush()
            if written and self._more_due:
                self._look()

        d.addCallback(done)
        d.addErrback(lambda f: log.failure("Recording webhook outcomes", f))
        return _chain(d)

    # -- pruning -----------------------------------------------------------------

    def prune(self, older_than: float | None = None, batch: int = 5000) -> Deferred[int]:
        """
        Delete delivered and failed rows last changed more than
        C{older_than} seconds ago (the retention by default), in batches.

        @return: A Deferred firing with how many rows were deleted.
        """
        if self._database is None:
            return fail(RuntimeError("the webhook service is not running"))
        database = self._database
        age = self.retention if older_than is None else older_than
        total = 0

        def step(rows: list[tuple[Any, ...]]) -> Any:
            nonlocal total
            deleted = int(rows[0][0])
            total += deleted
            if deleted < batch:
                return total
            d = database.runQuery(_PRUNE, {"age": age, "batch": batch})
            d.addCallback(step)
            return d

        d: Deferred[Any] = database.runQuery(_PRUNE, {"age": age, "batch": batch})
        d.addCallback(step)
        return d

    def _prune_now(self) -> None:
        d = self.prune()

        def pruned(count: int) -> None:
            if count:
                log.info("Pruned {count} finished webhook deliveries", count=count)

        d.addCallback(pruned)
        d.addErrback(
            lambda f: log.warn("Could not prune webhook deliveries: {error}", error=_describe(f))
        )


def _timed_out(result: object, timeout: float) -> Failure:
    """
    Whatever a cancelled request ended with (often a wrapped
    C{CancelledError}), the reason is the timeout.
    """
    return Failure(DeferredTimeoutError(f"no answer within {timeout:g} s"))


def _chain(d: Deferred[Any]) -> Deferred[None]:
    """
    A new Deferred that fires (with C{None}) when C{d} does, leaving C{d}'s
    own result alone.
    """
    follower: Deferred[None] = Deferred()

    def passthrough(result: object) -> object:
        follower.callback(None)
        return result

    d.addBoth(passthrough)
    return follower
