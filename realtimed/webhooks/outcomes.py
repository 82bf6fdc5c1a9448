"""
What becomes of each webhook attempt: delivered, pending again after a
backoff, or failed for good; and the log lines that tell an operator so,
without a line per retry when a receiver is down with a long backlog.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from attrs import define, field
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from realtimed.webhooks.answers import Answer
from realtimed.webhooks.endpoint import UnsafeAddress
from realtimed.webhooks.outbox import Delivery, Outcome
from realtimed.webhooks.policy import (
    RetryPolicy,
    Verdict,
    parse_retry_after,
    redact_url,
    verdict_for_status,
)

log = Logger()

#: The longest error text recorded for an attempt.
ERROR_LENGTH = 500

#: Seconds between log lines about retries to one host.
RETRY_LOG_INTERVAL = 10.0


def describe(f: Failure) -> str:
    """
    A one-line account of C{f} for the outbox's ``last_error`` and the log.
    """
    value = f.value
    reasons = getattr(value, "reasons", None)
    if reasons:
        inner = "; ".join(describe(r) if isinstance(r, Failure) else str(r) for r in reasons)
        text = f"{type(value).__name__}: {inner}"
    else:
        text = f"{type(value).__name__}: {value}".rstrip(": ")
    return text[:ERROR_LENGTH]


@define
class Outcomes:
    """
    Turns what happened to an attempt into the L{Outcome} to record.

    @ivar policy: When to retry.
    @ivar clock: For C{Retry-After} dates and the pace of log lines.
    @ivar timeout: Seconds an attempt may take (for the error text).
    @ivar jitter: Source of random numbers in [0, 1) for the backoff.
    """

    policy: RetryPolicy
    clock: IReactorTime
    timeout: float
    jitter: Callable[[], float] = random.random
    _retry_logs: dict[str, tuple[float | None, int]] = field(factory=dict, init=False)

    def answered(self, delivery: Delivery, answer: Answer) -> Outcome:
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

    def not_answered(self, delivery: Delivery, f: Failure) -> Outcome:
        if f.check(UnsafeAddress):
            return self.refused(delivery, str(f.value), private=True)
        if f.check(DeferredTimeoutError):
            error = f"no answer within {self.timeout:g} s"
        else:
            error = describe(f)
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

    def refused(self, delivery: Delivery, reason: str, private: bool = False) -> Outcome:
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
        return Outcome(delivery, "failed", error=f"refused: {reason}"[:ERROR_LENGTH])
