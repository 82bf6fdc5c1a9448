"""
Webhook delivery: the service that sends the outbox's deliveries
(`realtimed.webhooks.outbox`).

1. Claim.  Due rows are leased from the outbox, within the free concurrency
   (overall and per receiving host).
2. Send.  A signed POST (Standard Webhooks), redirects not followed, at most
   a few KiB of the answer read (`realtimed.webhooks.answers`), the whole
   exchange bounded by a timeout.  The connection goes only to addresses
   checked when connecting (`realtimed.webhooks.endpoint`).
3. Record.  Outcomes (`realtimed.webhooks.outcomes`) are written in
   batches: delivered (and the message's ``wh_delivered_count``
   incremented), pending again after a backoff, or failed.

Delivery is at least once: a process that dies after the receiver answered
but before the outcome is stored sends again after the lease; receivers
de-duplicate by ``webhook-id``.

The service polls the outbox every second and can be woken with
`WebhookService.wake`: the daemon wakes it for every stored message with
webhooks that its listener hands over, so a new delivery goes out at once
and the poll is what finds retries coming due (and anything a missed wake
left).  Finished rows older than the retention are pruned at start and then
hourly.

The concurrency limits are per process.  User information in a webhook URL
(``https://user:password@host/...``) is sent as HTTP Basic authorization.
The address check lives in the default HTTP client (`webhook_http_client`);
a client passed in instead is trusted to do its own.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from attrs import define, field
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import HTTPConnectionPool
from twisted.web.http_headers import Headers

from realtimed.metrics import Metrics
from realtimed.store.pool import IQueries
from realtimed.webhooks.answers import read_answer
from realtimed.webhooks.endpoint import webhook_http_client
from realtimed.webhooks.outbox import Delivery, Outbox, Outcome
from realtimed.webhooks.outcomes import Outcomes, describe
from realtimed.webhooks.policy import RetryPolicy, split_credentials, url_refusal, webhook_headers
from realtimed.webhooks.signing import decode_webhook_secret

log = Logger()

#: Beyond the request timeout, how long a claimed row stays leased.
LEASE_MARGIN = 50.0


@define
class DatabaseTrouble:
    """
    Says when the outbox's statements fail: a new kind of error at once,
    the same one again at most once a minute (the poll retries every second
    while the database is away), and once when they work again.
    """

    clock: IReactorTime
    _last: tuple[str, float] | None = field(default=None, init=False)

    def failed(self, f: Failure) -> None:
        """
        A statement failed with C{f}.
        """
        error = describe(f)
        now = self.clock.seconds()
        if self._last is not None:
            last_error, last_time = self._last
            if last_error == error and now - last_time < 60:
                return
        self._last = (error, now)
        log.warn("Webhook deliveries wait for the database: {error}", error=error)

    def worked(self) -> None:
        """
        A statement worked.
        """
        if self._last is not None:
            log.info("Webhook deliveries reach the database again")
            self._last = None


@define(slots=False, eq=False)
class WebhookService(Service):
    """
    Sends the outbox's webhook deliveries (see the module docstring).

    @ivar reactor: The reactor for HTTP connections.
    @ivar pool: The outbox's database connections, set up with
        L{realtimed.webhooks.outbox.SESSION_SETUP}; its owner closes it.
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
    @ivar metrics: Counts the attempts by outcome, if given.
    @ivar stop_grace: When stopping, how long attempts in flight may still
        take; those still unanswered then are cancelled and handed back to
        the database as pending, due at once (another process, or this one
        restarted, makes them).
    """

    reactor: Any
    pool: IQueries
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
    metrics: Metrics | None = None
    stop_grace: float = 5.0

    _key: bytes = field(init=False, repr=False)
    outcomes: Outcomes = field(init=False)
    trouble: DatabaseTrouble = field(init=False)
    _outbox: Outbox = field(init=False)
    _connections: HTTPConnectionPool | None = field(default=None, init=False)
    _in_flight: dict[int, Deferred[None]] = field(factory=dict, init=False)
    _requests: dict[int, Deferred[Any]] = field(factory=dict, init=False)
    _handed_back: set[int] = field(factory=set, init=False)
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
    _prune: LoopingCall | None = field(default=None, init=False)
    _pruning: Deferred[Any] | None = field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        self._key = decode_webhook_secret(self.secret)
        if self.clock is None:
            self.clock = self.reactor
        self.outcomes = Outcomes(self.policy, self.clock, self.timeout, self.jitter)
        self.trouble = DatabaseTrouble(self.clock)
        self._outbox = Outbox(self.pool)

    # -- lifecycle ---------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        if self.http is None or self._connections is not None:
            self.http, self._connections = webhook_http_client(
                self.reactor, self.allow_private, self.per_host, self.timeout
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
        Stop claiming; let the attempts in flight finish for up to
        C{stop_grace} seconds, then hand those left back as pending; record
        every outcome; close connections.
        """
        super().stopService()
        for loop in (self._poll, self._prune):
            if loop is not None and loop.running:
                loop.stop()
        for call in (self._wake_call, self._wake_later, self._flush_call):
            if call is not None and call.active():
                call.cancel()
        self._wake_call = self._wake_later = self._flush_call = None
        waiting = [d for d in (self._claiming, self._pruning) if d is not None]
        d: Deferred[Any] = DeferredList(waiting)
        d.addCallback(lambda _: self._finish_in_flight())
        d.addCallback(lambda _: self._flush_all())
        d.addErrback(lambda f: log.failure("Stopping webhook deliveries", f))
        d.addCallback(lambda _: self._close())
        d.addErrback(lambda f: log.failure("Closing webhook connections", f))
        return d

    def _finish_in_flight(self) -> Deferred[Any]:
        """
        A Deferred firing once no attempt is in flight: each ends by
        itself within C{stop_grace} seconds, or is cancelled then and
        handed back.
        """
        if not self._in_flight:
            return succeed(None)
        d: Deferred[Any] = DeferredList(list(self._in_flight.values()))

        def hand_back() -> None:
            left = list(self._requests.items())
            if left:
                log.info(
                    "Handing {count} webhook deliveries in flight back to the database",
                    count=len(left),
                )
            for delivery_id, request in left:
                self._handed_back.add(delivery_id)
                request.cancel()

        timer = self.clock.callLater(self.stop_grace, hand_back)

        def ended(result: object) -> object:
            if timer.active():
                timer.cancel()
            return result

        return d.addBoth(ended)

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
        if self._connections is not None:
            return self._connections.closeCachedConnections()
        return None

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
        if free <= 0:
            return
        self._claim_again = False
        d = self._outbox.claim(
            self._per_host_busy, self.per_host, free, self.timeout + LEASE_MARGIN
        )
        d.addCallback(self._start, free, dict(self._per_host_busy))
        failed = False

        def trouble(f: Failure) -> None:
            nonlocal failed
            failed = True
            self.trouble.failed(f)

        d.addErrback(trouble)
        self._claiming = d

        def claimed(_: object) -> None:
            self._claiming = None
            if not failed:
                self.trouble.worked()
            if self.running and self._claim_again:
                self._wake_soon()

        d.addCallback(claimed)
        d.addErrback(lambda f: log.failure("After claiming webhook deliveries", f))

    def _start(self, deliveries: Sequence[Delivery], free: int, busy: dict[str, int]) -> None:
        """
        Start an attempt for each claimed delivery.

        @param free: The room overall when claiming.
        @param busy: The attempts per host in flight when claiming.
        """
        claimed: dict[str, int] = {}
        for delivery in deliveries:
            self._per_host_busy[delivery.host] = self._per_host_busy.get(delivery.host, 0) + 1
            claimed[delivery.host] = claimed.get(delivery.host, 0) + 1
            self._attempt(delivery)
        # Were there more due than there was room for (overall, or for a
        # host)?  Then each attempt that ends makes room for another;
        # otherwise wakes and the poll bring the next ones.
        self._more_due = (
            len(deliveries) >= free
            or any(n >= self.per_host for n in busy.values())
            or any(n >= self.per_host - busy.get(host, 0) for host, n in claimed.items())
        )
        if len(deliveries) >= free:
            self._claim_again = True

    # -- one attempt ---------------------------------------------------------

    def _attempt(self, delivery: Delivery) -> None:
        tracker: Deferred[None] = Deferred()
        self._in_flight[delivery.id] = tracker
        refusal = url_refusal(delivery.url)
        d: Deferred[Outcome]
        if refusal is not None:
            d = succeed(self.outcomes.refused(delivery, refusal))
        else:
            d = self._send(delivery)
        d.addCallback(self._unless_handed_back, delivery)
        d.addCallback(self._finished)
        d.addErrback(
            lambda f: log.failure(
                "Webhook delivery {delivery_id} went wrong", f, delivery_id=delivery.id
            )
        )

        def release(_: object) -> None:
            del self._in_flight[delivery.id]
            self._requests.pop(delivery.id, None)
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

    def _unless_handed_back(self, outcome: Outcome, delivery: Delivery) -> Outcome:
        """
        C{outcome}, unless the attempt was cancelled by a stop: then the
        delivery is pending again, due at once.
        """
        if delivery.id not in self._handed_back:
            return outcome
        self._handed_back.discard(delivery.id)
        return Outcome(delivery, "pending", error="handed back: realtimed stopped", delay=0.0)

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
                self.outcomes.refused(
                    delivery, f"the URL cannot be requested ({type(e).__name__}: {e})"
                )
            )
        self._requests[delivery.id] = d
        d.addCallback(read_answer)
        d.addTimeout(self.timeout, self.clock, onTimeoutCancel=_timed_out)
        d.addCallbacks(
            lambda answer: self.outcomes.answered(delivery, answer),
            lambda f: self.outcomes.not_answered(delivery, f),
        )
        return d

    # -- recording -------------------------------------------------------------

    def _finished(self, outcome: Outcome) -> None:
        if self.metrics is not None:
            self.metrics.webhook_attempt(_attempt_outcome(outcome))
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
        if not self._outcomes:
            return succeed(None)
        batch, self._outcomes = self._outcomes, []
        self._recording = len(batch)
        d: Deferred[Any] = self._outbox.record(batch)

        def failed(f: Failure) -> bool:
            # Keep them for the next flush (the poll tries again); the
            # leases keep the rows from being claimed again meanwhile.
            self._outcomes[:0] = batch
            self.trouble.failed(f)
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

    def prune(self, older_than: float | None = None) -> Deferred[int]:
        """
        Delete delivered and failed rows last changed more than
        C{older_than} seconds ago (the retention by default).

        @return: A Deferred firing with how many rows were deleted.
        """
        return self._outbox.prune(self.retention if older_than is None else older_than)

    def _prune_now(self) -> None:
        d = self._pruning = self.prune()

        def pruned(count: int) -> None:
            if count:
                log.info("Pruned {count} finished webhook deliveries", count=count)

        d.addCallback(pruned)
        d.addErrback(
            lambda f: log.warn("Could not prune webhook deliveries: {error}", error=describe(f))
        )

        def finished(_: object) -> None:
            self._pruning = None

        d.addCallback(finished)


def _attempt_outcome(outcome: Outcome) -> str:
    """
    How an attempt ended, as the metrics count it.
    """
    if outcome.status == "pending":
        return "retry"
    if outcome.status == "failed" and (outcome.error or "").startswith("refused"):
        return "refused"
    return outcome.status


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
