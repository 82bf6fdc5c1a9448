"""
The daemon's Prometheus metrics, kept in a registry of its own (several
daemons may run in one process, as the tests do).

What is counted, and where (each at one point, per batch or per message,
never per recipient):

- ``realtimed_connections{transport}``: Engine.IO sessions open now, by
  their active transport (``polling``, ``websocket``); read when scraped.
- ``realtimed_subscriptions``: socket subscriptions now; read when scraped.
- ``realtimed_publishes_total{outcome}``: socket publishes by outcome:
  ``stored``; refused as ``invalid`` (malformed), ``not_subscribed``,
  ``no_channel`` (no enabled channel owns the name) or ``denied`` (a policy
  said no); ``failed`` (the database could not store it).  Counted once per
  batch by the publisher, and where the socket's request is refused.
- ``realtimed_deliveries_total``: messages written to sockets, one per
  socket; added once per message, by the size of its audience.
- ``realtimed_publish_to_write_seconds``: for each message published by a
  socket of this process, from the moment its publish arrived to the moment
  the stored message was handed to the connections of its subscribers here
  (they write it at the end of that turn of the reactor).  Messages without
  a subscriber on this process are not observed.
- ``realtimed_database_pool_wait_seconds{pool}``: for each statement, how
  long it waited for a connection of its pool (``queries``, ``webhooks``),
  opening one included; and ``realtimed_database_pool_waiting{pool}``, the
  statements waiting now.
- ``realtimed_listener_lag_seconds``: for each message, from its
  ``createdAt`` (the start of the transaction that stored it, by the
  database's clock) to its hand-over to this process's sockets by the
  listener (by this host's clock).
- ``realtimed_webhook_attempts_total{outcome}``: webhook attempts by
  outcome: ``delivered``, ``retry`` (to be tried again), ``failed`` (a
  final answer, or retries exhausted) and ``refused`` (the URL or its
  address is not allowed).
- ``realtimed_process_*``: the process's CPU, memory and file descriptors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

#: Seconds, for the latencies: from a millisecond to ten seconds.
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

#: Publishes whose arrival time is kept, waiting for their delivery; a
#: publish whose batch failed is never delivered, and is forgotten once
#: this many more have arrived.
MAX_PENDING = 100_000

PUBLISH_OUTCOMES = ("stored", "invalid", "not_subscribed", "no_channel", "denied", "failed")
WEBHOOK_OUTCOMES = ("delivered", "retry", "failed", "refused")
TRANSPORTS = ("polling", "websocket")
POOLS = ("queries", "webhooks")


class _Live(Collector):
    """
    Gauges read when scraped, from the functions set on L{Metrics}.
    """

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[GaugeMetricFamily]:
        metrics = self._metrics
        connections = GaugeMetricFamily(
            "realtimed_connections",
            "Engine.IO sessions open now, by active transport",
            labels=["transport"],
        )
        counts = dict.fromkeys(TRANSPORTS, 0)
        for transport in metrics.transports():
            counts[transport] = counts.get(transport, 0) + 1
        for transport, count in counts.items():
            connections.add_metric([transport], count)
        yield connections
        yield GaugeMetricFamily(
            "realtimed_subscriptions",
            "Socket subscriptions now (a socket subscribed to two channels counts twice)",
            value=metrics.subscriptions(),
        )
        waiting = GaugeMetricFamily(
            "realtimed_database_pool_waiting",
            "Statements waiting now for a connection of their pool",
            labels=["pool"],
        )
        for pool in POOLS:
            read = metrics.pool_waiting.get(pool)
            waiting.add_metric([pool], read() if read is not None else 0)
        yield waiting


class Metrics:
    """
    One daemon's metrics (see the module docstring).

    @ivar registry: Where they are kept.
    @ivar transports: Returns the active transport of each open session;
        set by the daemon.
    @ivar subscriptions: Returns the number of subscriptions; set by the
        daemon.
    @ivar pool_waiting: For each pool name, returns how many statements
        wait for a connection; set by the daemon.
    """

    def __init__(self, clock: Any) -> None:
        """
        @param clock: An C{IReactorTime}: the time of arrivals and writes.
        """
        self._clock = clock
        self.registry = registry = CollectorRegistry()
        self.transports: Callable[[], Iterable[str]] = tuple
        self.subscriptions: Callable[[], int] = lambda: 0
        self.pool_waiting: dict[str, Callable[[], int]] = {}
        self._arrived: dict[str, float] = {}
        self._publishes = Counter(
            "realtimed_publishes",
            "Socket publishes by outcome",
            ["outcome"],
            registry=registry,
        )
        self._publish_outcomes = {o: self._publishes.labels(o) for o in PUBLISH_OUTCOMES}
        self._deliveries = Counter(
            "realtimed_deliveries",
            "Messages written to sockets (one per socket)",
            registry=registry,
        )
        self._publish_to_write = Histogram(
            "realtimed_publish_to_write_seconds",
            "From a socket's publish arriving to its message being handed to the"
            " connections of its subscribers on this process",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        pool_wait = Histogram(
            "realtimed_database_pool_wait_seconds",
            "How long a statement waited for a connection of its pool",
            ["pool"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._pool_wait = {pool: pool_wait.labels(pool) for pool in POOLS}
        self._listener_lag = Histogram(
            "realtimed_listener_lag_seconds",
            "From a message's createdAt (database clock) to its hand-over by this"
            " process's listener",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        webhook_attempts = Counter(
            "realtimed_webhook_attempts",
            "Webhook attempts by outcome",
            ["outcome"],
            registry=registry,
        )
        self._webhook_outcomes = {o: webhook_attempts.labels(o) for o in WEBHOOK_OUTCOMES}
        registry.register(_Live(self))
        ProcessCollector(namespace="realtimed", registry=registry)

    # Publishing

    def publish_arrived(self, message_id: str) -> None:
        """
        A socket's publish, to be stored as C{message_id}, arrived now.
        """
        arrived = self._arrived
        if len(arrived) >= MAX_PENDING:
            # The oldest were never delivered (their batch failed).
            for stale in list(arrived)[: MAX_PENDING // 10]:
                del arrived[stale]
        arrived[message_id] = self._clock.seconds()

    def publishes(self, outcome: str, count: int = 1) -> None:
        """
        C{count} socket publishes ended with C{outcome} (one of
        L{PUBLISH_OUTCOMES}).
        """
        self._publish_outcomes[outcome].inc(count)

    def publish_not_stored(self, message_id: str) -> None:
        """
        The publish that was to be stored as C{message_id} was not.
        """
        self._arrived.pop(message_id, None)

    # Delivering

    def delivered(self, message_id: str, created_at: str, sockets: int) -> None:
        """
        The listener handed over message C{message_id}, stored at
        C{created_at} (RFC 3339), and it was written to C{sockets} sockets.
        """
        now = self._clock.seconds()
        try:
            stored = datetime.fromisoformat(created_at).timestamp()
        except ValueError:
            pass
        else:
            self._listener_lag.observe(max(0.0, now - stored))
        arrived = self._arrived.pop(message_id, None)
        if sockets:
            self._deliveries.inc(sockets)
            if arrived is not None:
                self._publish_to_write.observe(max(0.0, now - arrived))

    # The database

    def pool_wait(self, pool: str) -> Callable[[float], None]:
        """
        What pool C{pool} calls with the seconds each statement waited for
        a connection.
        """
        return self._pool_wait[pool].observe

    # Webhooks

    def webhook_attempt(self, outcome: str) -> None:
        """
        A webhook attempt ended with C{outcome} (one of
        L{WEBHOOK_OUTCOMES}).
        """
        self._webhook_outcomes[outcome].inc()

    # Exposition

    def exposition(self) -> tuple[bytes, str]:
        """
        The metrics in Prometheus's text format, and its content type.
        """
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
