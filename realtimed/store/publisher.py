"""
The database side of realtime channels: authorizing subscribes, storing
publishes in batches, and recording how many sockets each message reached.

Authorization is PostgreSQL's row-level security, checked by the functions of
migration 0002 inside one statement's transaction running as the caller's
role with ``request.jwt.claims`` and ``realtime.channel_name`` set.  The role,
claims and channel always travel as bound parameters.  A project admin (the
API key, or a JWT with role ``project_admin``) is trusted: its subscribes and
publishes are not checked against policies, only against the channels that
exist and are enabled.

Publishes are queued and stored by `Publisher` in batches: while a batch is
in flight, new publishes wait and go together in the next one.  A single
round trip then stores as many messages as arrived meanwhile.  Several
batches are in flight at once, each in a lane of its own, and every sender
(socket) always publishes through the same lane, whose batches commit one
after another: the messages of one socket are stored (and therefore
delivered) in the order it published them, while those of different
sockets, which have no order between them, are stored side by side.
Within a batch, the items of one caller on one channel are put next to
each other when that reorders no sender's own items, since the database
stores such a run with one statement (migration 0015).  Subscribes are
decided in batches by `Authorizer`, one batch at a time.

A stored batch is handed to this process's `LocalDelivery` (the listener)
with the messages as delivered and whether the batch is settled against the
listener's snapshot (migration 0005), so that this process's sockets can get
them without waiting for the listener's next poll.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Hashable
from enum import Enum
from typing import Any, Protocol

from attrs import Factory, define, field, frozen
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from realtimed.auth import Principal
from realtimed.metrics import Metrics
from realtimed.store.messages import StoredMessage
from realtimed.store.pool import IQueries, is_disconnect

log = Logger()


class LocalDelivery(Protocol):
    """
    Where this process's stored publishes go (the listener).
    """

    def read_up_to(self) -> tuple[str | None, list[str]]:
        """
        The snapshot up to which every stored message was handed over, and
        the transactions after it whose messages were handed over too.
        """

    def stored_here(self, xact: str | None, messages: list[StoredMessage], settled: bool) -> None:
        """
        One transaction of this process stored C{messages} (when settled;
        otherwise C{xact} and the messages may be missing).
        """


class Rejection(Enum):
    """
    Why the store did not do what it was asked.
    """

    #: No enabled channel row owns the name.
    NO_CHANNEL = "no_channel"
    #: A row-level security policy says no.
    DENIED = "denied"
    #: The database could not decide, or could not store the message.
    FAILED = "failed"


class Rejected(Exception):
    """
    A subscribe or publish on C{channel} was not done, for C{rejection}.
    """

    def __init__(self, channel: str, rejection: Rejection) -> None:
        super().__init__(f"{rejection.value}: {channel}")
        self.channel = channel
        self.rejection = rejection


def new_message_id() -> str:
    """
    A new message's id: a UUID of version 7 (RFC 9562), which begins with
    the time in milliseconds.  The ids one process makes grow with time, so
    each new message lands at the end of the messages' primary key instead
    of on any of its pages, which at millions of messages no longer all
    stay in memory.
    """
    random = int.from_bytes(os.urandom(10))
    value = (
        (time.time_ns() // 1_000_000) << 80
        | 0x7 << 76
        | (random >> 68) << 64
        | 0b10 << 62
        | random & ((1 << 62) - 1)
    )
    text = f"{value:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def caller_role(principal: Principal) -> str | None:
    """
    The role a principal's access is checked as, or C{None} for a trusted
    admin.
    """
    return None if principal.is_admin else principal.role


@frozen
class _Pending:
    item: str
    channel: str
    done: Deferred[Any]
    #: items of one group may be stored by one statement
    group: str = ""
    #: whose item it is: one sender's items keep their order
    sender: Hashable = None


@define
class _Batches:
    """
    Items waiting to be sent to a set-returning function that takes them as
    one JSON array and answers with one row per item, in order.  One batch
    is in flight at a time; what arrives meanwhile goes in the next, so the
    batches grow with the load and the items are handled in arrival order.

    A batch whose statement fails (rather than its connection) is tried
    again item by item, in its place in the order: one bad item fails
    alone, never its neighbours.
    """

    pool: IQueries
    query: str
    answer: Callable[[_Pending, tuple[Any, ...]], None]
    what: str
    max_batch: int
    #: more parameters of the query, after the batch
    parameters: Callable[[], tuple[Any, ...]] = tuple
    #: called with the rows once a batch is answered, before its items are answered
    answered: Callable[[list[tuple[Any, ...]]], object] | None = None
    #: puts a batch's items in the order they are sent in
    arrange: Callable[[list[_Pending]], list[_Pending]] | None = None
    _queue: list[_Pending] = Factory(list)
    _in_flight: bool = False
    #: how many items at the head of the queue go one per batch
    _alone: int = 0

    def add(
        self, item: str, channel: str, group: str = "", sender: Hashable = None
    ) -> Deferred[Any]:
        done: Deferred[Any] = Deferred()
        self._queue.append(_Pending(item, channel, done, group, sender))
        if not self._in_flight:
            self._next()
        return done

    def _next(self) -> None:
        if not self._queue:
            self._in_flight = False
            return
        self._in_flight = True
        size = self.max_batch
        if self._alone:
            self._alone -= 1
            size = 1
        batch, self._queue = self._queue[:size], self._queue[size:]
        if self.arrange is not None and len(batch) > 1:
            batch = self.arrange(batch)
        try:
            d = self.pool.runQuery(
                self.query, ("[" + ",".join(p.item for p in batch) + "]", *self.parameters())
            )
        except Exception:
            # A query that cannot even be started fails this batch only;
            # the queue must keep moving, or every later item would wait
            # behind a batch that never ends.
            d = fail()
        d.addCallbacks(self._answered, self._failed, callbackArgs=(batch,), errbackArgs=(batch,))
        d.addErrback(lambda f: log.failure("Answering a batch of {what} failed", f, what=self.what))
        d.addBoth(lambda _: self._next())

    def _answered(self, rows: list[tuple[Any, ...]], batch: list[_Pending]) -> None:
        if self.answered is not None:
            try:
                self.answered(rows)
            except Exception:
                log.failure("Announcing an answered batch of {what} failed", what=self.what)
        for pending, row in zip(batch, rows, strict=True):
            try:
                self.answer(pending, row)
            except Exception:
                log.failure("Answering one of a batch of {what} failed", what=self.what)

    def _failed(self, failure: Failure, batch: list[_Pending]) -> None:
        if len(batch) > 1 and not is_disconnect(failure) and not failure.check(CancelledError):
            log.warn(
                "A batch of {count} {what} failed ({error}); trying them one at a time",
                count=len(batch),
                what=self.what,
                error=failure.getErrorMessage(),
            )
            self._queue[:0] = batch
            self._alone += len(batch)
            return
        log.failure("A batch of {count} {what} failed", failure, count=len(batch), what=self.what)
        for pending in batch:
            pending.done.errback(Rejected(pending.channel, Rejection.FAILED))


@define
class Authorizer:
    """
    Decides subscribes, batching those that arrive while a batch is being
    decided.
    """

    pool: IQueries
    max_batch: int = 500
    _batches: _Batches = field(init=False)

    def __attrs_post_init__(self) -> None:
        self._batches = _Batches(
            self.pool,
            "SELECT channel_id::text, outcome, detail "
            "FROM realtime.authorize_subscribes(%s::jsonb)",
            _decided("subscribe"),
            "subscribe",
            self.max_batch,
        )

    def authorize(self, principal: Principal, channel: str) -> Deferred[str]:
        """
        May C{principal} subscribe to C{channel} (a name, or a channel row's
        pattern)?

        @return: A Deferred firing with the id of the owning channel row, or
            failing with L{Rejected}.
        """
        item = json.dumps({"role": caller_role(principal), "channel": channel})
        return self._batches.add('{"claims":' + principal.claims_json + "," + item[1:], channel)

    def grants(self, subscriptions: list[tuple[str, str]]) -> Deferred[list[Grant]]:
        """
        Whether each subscription, C{(channel, channel_id)}, is still
        granted by its channel row.  (Policies are not asked again: a
        subscription stands for as long as the row that granted it is
        unchanged.)
        """
        d: Deferred[Any] = self.pool.runQuery(
            _GRANTS, ([channel for channel, _ in subscriptions], [i for _, i in subscriptions])
        )
        return d.addCallback(lambda rows: [Grant(*row) for row in rows])


@frozen
class Grant:
    """
    Whether a subscription is still granted by the row it was granted by.

    @ivar granted: For a name, that row still owns it (enabled, and no
        other row took it over); for a pattern, the row is still enabled
        with that pattern.
    @ivar created_at: When the row was created (seconds), while it exists.
    """

    channel: str
    channel_id: str
    granted: bool
    created_at: float | None


_GRANTS = """
SELECT s.channel, s.channel_id::text,
       CASE WHEN strpos(s.channel, '*') > 0
            THEN c.enabled IS TRUE AND c.pattern = s.channel
            ELSE (realtime.owning_channel(s.channel)).id IS NOT DISTINCT FROM s.channel_id
       END,
       extract(epoch FROM c.created_at)::float8
FROM unnest(%s::text[], %s::uuid[]) WITH ORDINALITY AS s (channel, channel_id, n)
LEFT JOIN realtime.channels c ON c.id = s.channel_id
ORDER BY s.n
"""


def _decided(what: str) -> Callable[[_Pending, tuple[Any, ...]], None]:
    """
    How to answer one item of a batch of C{what} (``subscribe`` or
    ``publish``) from its row: the channel id of an allowed subscribe, the
    id of a stored message, or L{Rejected}.
    """

    def decided(pending: _Pending, row: tuple[Any, ...]) -> None:
        result, outcome, detail = row[:3]
        if outcome in ("allowed", "stored"):
            pending.done.callback(str(result))
            return
        try:
            rejection = Rejection(outcome)
        except ValueError:
            log.error(
                "A {what} on {channel} failed in the database: {detail}",
                what=what,
                channel=pending.channel,
                detail=detail,
            )
            rejection = Rejection.FAILED
        pending.done.errback(Rejected(pending.channel, rejection))

    return decided


@define
class Publisher:
    """
    Stores publishes, batching those that arrive while a batch is in flight.

    @ivar local: Gets each stored batch before the publishes in it are
        acknowledged.
    @ivar lanes: How many batches may be in flight at once.
    @ivar max_batch: The most publishes stored by one statement.
    @ivar local_limit: The largest batch handed to C{local} with its
        messages; a larger one is announced as not settled, so that the
        listener reads its messages.
    @ivar metrics: Counts the outcomes, and notes when each publish
        arrived.
    """

    pool: IQueries
    local: LocalDelivery | None = None
    lanes: int = 4
    max_batch: int = 500
    local_limit: int = 32
    metrics: Metrics | None = None
    _lanes: list[_Batches] = field(init=False)

    def __attrs_post_init__(self) -> None:
        self._lanes = [
            _Batches(
                self.pool,
                "SELECT id::text, outcome, detail, message, channel_id, webhooks, xact, settled,"
                " seq FROM realtime.publish_batch_settled("
                "%s::jsonb, %s::pg_snapshot, %s::xid8[], %s)",
                _decided("publish"),
                "publish",
                self.max_batch,
                self._local_parameters,
                self._stored,
                _in_runs,
            )
            for _ in range(self.lanes)
        ]

    def _local_parameters(self) -> tuple[str | None, list[str], int]:
        if self.local is None:
            return None, [], 0
        return (*self.local.read_up_to(), self.local_limit)

    def _stored(self, rows: list[tuple[Any, ...]]) -> None:
        local = self.local
        stored = [row for row in rows if row[1] == "stored"]
        if self.metrics is not None and stored:
            self.metrics.publishes("stored", len(stored))
        if local is None or not stored:
            return
        _, _, _, _, _, _, xact, settled, _ = stored[0]
        if not settled:
            local.stored_here(xact, [], False)
            return
        local.stored_here(
            xact,
            [
                StoredMessage(message, channel_id, webhooks, seq)
                for _, _, _, message, channel_id, webhooks, _, _, seq in stored
            ],
            True,
        )

    def publish(
        self,
        principal: Principal,
        channel: str,
        event: str,
        payload_json: str,
        sender: Hashable = None,
    ) -> Deferred[str]:
        """
        Store a message published by C{principal}, if its policies allow.

        @param payload_json: The payload as JSON text.
        @param sender: Whose publish it is (a socket): the publishes of one
            sender are stored in the order they are made, as are all those
            without one.
        @return: A Deferred firing with the new message's id once it is
            committed, or failing with L{Rejected}.
        """
        message_id = new_message_id()
        role = caller_role(principal)
        fields = json.dumps(
            {
                "id": message_id,
                "role": role,
                "channel": channel,
                "event": event,
                "sender_type": principal.sender_type,
                "sender_id": principal.sender_id,
            },
            separators=(",", ":"),
        )
        # The payload and the claims are JSON text already: spliced in, not
        # decoded and encoded again.
        claims = principal.claims_json
        lane = self._lanes[0 if sender is None else hash(sender) % len(self._lanes)]
        d = lane.add(
            '{"payload":' + payload_json + ',"claims":' + claims + "," + fields[1:],
            channel,
            f"{channel}\0{role}\0{claims}",
            sender,
        )
        if self.metrics is not None:
            self.metrics.publish_arrived(message_id)
            d.addErrback(self._not_stored, message_id)
        return d

    def _not_stored(self, failure: Failure, message_id: str) -> Failure:
        assert self.metrics is not None
        self.metrics.publish_not_stored(message_id)
        rejected = failure.value if isinstance(failure.value, Rejected) else None
        if rejected is not None and rejected.rejection is not Rejection.FAILED:
            self.metrics.publishes(rejected.rejection.value)
        else:
            self.metrics.publishes("failed")
        return failure


def _in_runs(batch: list[_Pending]) -> list[_Pending]:
    """
    A batch of publishes with the items of each caller and channel together,
    when no sender has items in two groups (moving them would reorder its
    publishes); else the batch as it is.
    """
    groups: dict[Hashable, str] = {}
    for pending in batch:
        if groups.setdefault(pending.sender, pending.group) != pending.group:
            return batch
    return sorted(batch, key=lambda pending: pending.group)


_RECORD_AUDIENCES = (
    "INSERT INTO realtime.ws_audience_counts (message_id, sockets) "
    "SELECT v.id, v.n FROM unnest(%s::uuid[], %s::integer[]) AS v (id, n)"
)


@define
class AudienceCounter:
    """
    Counts the sockets each message was delivered to, and records the counts
    in ``realtime.ws_audience_counts`` with one statement per C{interval}
    seconds, whatever the number of messages.  Each realtimed process adds
    its own rows, and ``realtime.ws_audience_count(m)`` sums them over all
    processes (migration 0014).  The counts are inserted, never updated:
    the messages table is left alone, and so are its indexes.
    """

    pool: IQueries
    clock: Any  # IReactorTime
    interval: float = 1.0
    _counts: dict[str, int] = Factory(dict)
    _call: Any = None  # IDelayedCall
    _flushing: Deferred[None] | None = None

    def add(self, message_id: str, sockets: int) -> None:
        """
        C{sockets} more sockets received message C{message_id}.
        """
        if sockets <= 0:
            return
        self._counts[message_id] = self._counts.get(message_id, 0) + sockets
        if self._call is None:
            self._call = self.clock.callLater(self.interval, self._due)

    def _due(self) -> None:
        self._call = None
        self.flush()

    def flush(self) -> Deferred[None]:
        """
        Write the counts gathered so far.

        @return: A Deferred firing when they are written (never failing: a
            failure is logged and its counts are kept for the next flush).
        """
        if self._flushing is not None:
            # One flush at a time; the next picks up what this one misses.
            waiting: Deferred[None] = Deferred()
            self._flushing.addBoth(lambda _: self.flush().chainDeferred(waiting))
            return waiting
        if not self._counts:
            return succeed(None)
        counts, self._counts = self._counts, {}
        ids = list(counts)
        try:
            d = self.pool.runOperation(_RECORD_AUDIENCES, (ids, [counts[i] for i in ids]))
        except Exception:
            # kept for the next flush, like any failed write
            d = fail()
        self._flushing = d

        def failed(failure: Failure) -> None:
            log.failure("Recording audience counts failed", failure)
            for message_id, n in counts.items():
                self._counts[message_id] = self._counts.get(message_id, 0) + n
            if self._call is None:
                self._call = self.clock.callLater(self.interval, self._due)

        def finished(_: object) -> None:
            self._flushing = None

        d.addErrback(failed)
        d.addBoth(finished)
        return d

    def stop(self) -> Deferred[None]:
        """
        Stop the timer and write what is left.
        """
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        return self.flush()
