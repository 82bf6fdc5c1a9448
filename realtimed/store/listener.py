"""
The listener: every message stored in the database, by any realtimed process
or by SQL, reaches this process once, in order.

A dedicated connection polls ``realtime.messages`` with transaction
snapshots.  Each poll returns, in one statement, the messages of the
transactions that committed since the previous poll's snapshot, and the new
snapshot to start the next poll from; nothing is missed and nothing comes
twice, however transactions interleave, and after a dropped connection the
first poll on the next one simply carries on from the last snapshot.
Messages come in transaction id order and, within a transaction, in the
order they were stored (``seq``): a transaction that began after another
committed comes after it.

Polling only costs while there is something to find.  The listener is in one
of three phases (the handshake with the storing transactions is described in
migration ``0004_wakeup.sql``):

- awake: it polls every ``poll_interval``.  Storing transactions send no
  NOTIFY, so they commit without PostgreSQL's NOTIFY lock, which would
  otherwise serialize them.
- dozing: after ``idle_polls`` empty polls it takes the sleep lock, after
  which every storing transaction rings the doorbell (a NOTIFY on
  ``realtime_wakeup``); it keeps polling, less and less often, until no
  transaction that looked before it dozed off is still open.
- asleep: after one last poll it waits for the doorbell, polling only every
  ``keepalive_interval`` (which is also the keepalive of the connection).

Whatever a poll finds wakes the listener up.

The same connection LISTENs on the channels named in ``also_listen`` (the
daemon's: changes of channel rows on ``realtime_channels``, migration 0007,
and admin commands on ``realtime_control``, migration 0011), and hands what
arrives there to ``on_notify``.

Publishes this process stores come back by polling like any message, but
they need not wait for it: the publisher hands each stored batch over
(`stored_here`) together with whether every message committed before it was
read already (``settled``, migration ``0005_local_delivery.sql``).  If so
the batch is handed over at once, in its place in the order, and its
transaction is skipped when a poll returns it; if not, the listener polls at
once instead.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import Any

import attrs
from attrs import define, field
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from realtimed.lifecycle import Readiness
from realtimed.store.messages import StoredMessage
from realtimed.store.pool import (
    TCP_KEEPALIVES,
    DatabaseConnection,
    open_connection,
    redact_dsn,
)
from realtimed.store.positions import Position, Snapshot

log = Logger()

CHANNEL = "realtime_wakeup"

#: Where channel rows' changes are announced (migration 0007).
CHANNELS_CHANNEL = "realtime_channels"

#: How the listener's connection is named in ``pg_stat_activity``, unless
#: the database URL names its connections.
APPLICATION_NAME = "realtimed listener"

# The messages committed since snapshot `since` (all of them up to snapshot
# `upto`, which is the current snapshot unless given), after position
# (xact, seq), and the snapshot they were read up to; one row with NULLs
# when there are none.  Messages of the transactions in `skip` (handed over
# already) come without their body.
POLL = """
WITH s AS (SELECT coalesce(%(upto)s::pg_snapshot, pg_current_snapshot()) AS upto)
SELECT s.upto::text, m.xact_id::text, m.seq,
       CASE WHEN m.xact_id <> ALL (%(skip)s::xid8[]) THEN realtime.message_json(m) END,
       m.channel_id, m.wh_audience_count
FROM s LEFT JOIN LATERAL realtime.messages_between(
    %(since)s::pg_snapshot, s.upto, %(xact)s::xid8, %(seq)s::bigint, %(limit)s) m ON true
ORDER BY m.xact_id, m.seq
"""

# When the server started and, if that is not when it had started at the
# listener's last connection, the newest transaction that stored messages
# before it started (see `MessageListener._restarted`).
STARTED = """
SELECT pg_postmaster_start_time()::text,
       CASE WHEN pg_postmaster_start_time()::text IS DISTINCT FROM %(started)s
             AND %(since)s::pg_snapshot IS NOT NULL THEN
           (SELECT max(m.xact_id)::text FROM realtime.messages m
            WHERE m.created_at < pg_postmaster_start_time())
       END
"""

DOZE = "SELECT realtime.listener_doze()"
GATE_CLEAR = "SELECT realtime.listener_gate_clear()"
WAKE = "SELECT realtime.listener_wake()"


class Phase(Enum):
    AWAKE = "awake"
    DOZING = "dozing"
    ASLEEP = "asleep"


@define
class _Read:
    """
    A poll being read page by page: the snapshot it reads up to and the
    position of the last message handed over.
    """

    upto: str | None = None
    xact: str | None = None
    seq: int | None = None


class _Stale(Exception):
    """
    The connection a query ran on was replaced meanwhile.
    """


@define(eq=False)
class MessageListener(Service):
    """
    Hands every message stored in the database to C{on_message}, once, in
    order, across reconnects.

    @ivar reactor: For the connection's file descriptor.
    @ivar dsn: The database; never logged as is.
    @ivar on_message: Called with each L{StoredMessage}.  Exceptions are
        logged and do not stop delivery.
    @ivar after_messages: Called after the messages read by one query were
        handed over (where the daemon writes out what they produced, rather
        than at the next turn of the reactor).
    @ivar clock: Time for the polls, the reconnect backoff and the query
        timeouts; the reactor unless given.
    @ivar initial_delay: Seconds before the first reconnect attempt; each
        further attempt waits C{factor} times longer, up to C{max_delay}.
    @ivar poll_interval: Seconds between polls while awake.
    @ivar idle_polls: Empty polls in a row after which the listener dozes.
    @ivar max_doze_interval: The longest pause between polls while dozing.
    @ivar keepalive_interval: Seconds between polls while asleep.
    @ivar query_timeout: A query unanswered for this long drops the
        connection.
    @ivar page_size: How many messages one query reads at most.
    @ivar also_listen: More channels to LISTEN on.
    @ivar on_notify: Called with the channel and payload of each
        notification on those channels, and with the channel and C{None}
        each time the listener (re)connects, since what was sent while it
        was away is lost.  Exceptions are logged.
    @ivar phase: Awake, dozing or asleep.
    """

    reactor: Any
    dsn: str = field(repr=redact_dsn)
    on_message: Callable[[StoredMessage], object]
    after_messages: Callable[[], object] | None = None
    clock: Any = None
    initial_delay: float = 0.5
    factor: float = 2.0
    max_delay: float = 30.0
    poll_interval: float = 0.005
    idle_polls: int = 20
    max_doze_interval: float = 0.1
    keepalive_interval: float = 10.0
    query_timeout: float = 10.0
    connect_timeout: float = 10.0
    page_size: int = 500
    also_listen: tuple[str, ...] = ()
    on_notify: Callable[[str, str | None], object] | None = None
    phase: Phase = field(default=Phase.AWAKE, init=False)
    _connection: DatabaseConnection | None = field(default=None, init=False)
    _generation: int = field(default=0, init=False)
    _attempt: int = field(default=0, init=False)
    _retry: Any = field(default=None, init=False)
    _since: str | None = field(default=None, init=False, repr=False)
    _read: _Read | None = field(default=None, init=False, repr=False)
    _idle: int = field(default=0, init=False)
    _again: bool = field(default=False, init=False)
    _pause: Deferred[None] | None = field(default=None, init=False, repr=False)
    _pause_timer: Any = field(default=None, init=False, repr=False)
    _query_timer: Any = field(default=None, init=False, repr=False)
    _skip: set[int] = field(factory=set, init=False, repr=False)
    _started: str | None = field(default=None, init=False, repr=False)
    _position: Position | None = field(default=None, init=False, repr=False)
    _waiting: list[tuple[Position, Deferred[Position]]] = field(
        factory=list, init=False, repr=False
    )
    _connected: Readiness = field(factory=Readiness, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.clock is None:
            self.clock = self.reactor

    @property
    def connected(self) -> bool:
        """
        Whether the connection is up, LISTENing, and has polled.
        """
        return self._connected.succeeded

    def whenConnected(self) -> Deferred[None]:
        """
        A Deferred firing once the listener is connected, has LISTENed and
        has polled (at once if it is), or failing if it is stopped first.
        """
        return self._connected.wait()

    whenReady = whenConnected

    def handed_position(self) -> Position | None:
        """
        The position of everything handed over so far (C{None} before the
        first poll): what a socket subscribed now has not missed.
        """
        if self._position is None and self._since is not None:
            self._position = Position(Snapshot.parse(self._since), tuple(sorted(self._skip)))
        return self._position

    def reached(self, position: Position) -> Deferred[Position]:
        """
        A Deferred firing with the handed-over position once every message
        C{position} covers has been handed over (at once if it has); it
        may be cancelled.  A position given by another process is reached
        once this listener has read past it.
        """
        current = self.handed_position()
        if current is not None and current.includes(position):
            return succeed(current)
        entry: tuple[Position, Deferred[Position]]

        def cancel(d: Deferred[Position]) -> None:
            if entry in self._waiting:
                self._waiting.remove(entry)

        waiting: Deferred[Position] = Deferred(cancel)
        entry = (position, waiting)
        self._waiting.append(entry)
        self.poll_soon()
        return waiting

    def _moved(self, position: Position) -> None:
        """
        Everything up to C{position} has been handed over: fire whoever
        waited for it.
        """
        self._position = position
        if not self._waiting:
            return
        reached = [entry for entry in self._waiting if position.includes(entry[0])]
        for entry in reached:
            self._waiting.remove(entry)
        for _, waiting in reached:
            waiting.callback(position)

    def read_up_to(self) -> tuple[str | None, list[str]]:
        """
        The snapshot up to which every stored message was handed over (if
        the listener has polled yet), and the transactions after it that
        were handed over too (by `stored_here`).
        """
        if not self.connected:
            # What was read before the connection went may not hold after
            # it comes back (see `_restarted`): the poll hands over.
            return None, []
        return self._since, [str(xact) for xact in self._skip]

    def stored_here(self, xact: str | None, messages: list[StoredMessage], settled: bool) -> None:
        """
        This process has just stored C{messages} in transaction C{xact}.
        Hand them over now if C{settled} (every message committed before
        them was read up to a snapshot this listener has handed over),
        else poll now.  A poll that already read up to a snapshot where
        C{xact} is visible hands them over itself.
        """
        if not settled or xact is None or not self.connected or self._since is None:
            self.poll_soon()
            return
        if self._read is not None:
            # A poll is reading page by page: it or the next one hands the
            # batch over, in its place.
            self.poll_soon()
            return
        number = int(xact)
        since = Snapshot.parse(self._since)
        if since.visible(number):
            return
        handed = tuple(sorted(self._skip))
        self._skip.add(number)
        for message in messages:
            self._deliver(
                attrs.evolve(message, position=Position(since, handed, None, number, message.seq))
            )
        self._moved(Position(since, tuple(sorted(self._skip))))
        self._finish_messages()

    def poll_soon(self) -> None:
        """
        Poll now, or right after the poll under way (the doorbell rang, or
        this process stored messages it could not hand over itself).
        """
        pause, self._pause = self._pause, None
        if pause is None:
            self._again = True
            return
        if self._pause_timer is not None and self._pause_timer.active():
            self._pause_timer.cancel()
        self._pause_timer = None
        pause.callback(None)

    # Service

    def startService(self) -> None:
        Service.startService(self)
        self._connected.reset()
        self._attempt = 0
        self._connect()

    def stopService(self) -> Deferred[None] | None:
        Service.stopService(self)
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        self._forget()
        self._connected.fail(CancelledError("the listener stopped"))
        waiting, self._waiting = self._waiting, []
        for _, d in waiting:
            d.errback(CancelledError("the listener stopped"))
        return None

    # Connecting

    def _connect(self) -> None:
        self._retry = None
        if not self.running:
            return
        self._generation += 1
        generation = self._generation
        self._attempt += 1
        log.info(
            "Connecting the LISTEN connection to {dsn} (attempt {attempt})",
            dsn=redact_dsn(self.dsn),
            attempt=self._attempt,
        )
        d = self._serve(generation)
        d.addErrback(self._dropped, generation)
        d.addErrback(lambda f: log.failure("Reconnecting the LISTEN connection failed", f))

    def _forget(self) -> None:
        """
        Leave the current connection behind: whatever is under way on it is
        ignored from now on.
        """
        self._generation += 1
        self._connected.reset()
        self.phase = Phase.AWAKE
        pause, self._pause = self._pause, None
        if self._pause_timer is not None and self._pause_timer.active():
            self._pause_timer.cancel()
        self._pause_timer = None
        if self._query_timer is not None and self._query_timer.active():
            self._query_timer.cancel()
        self._query_timer = None
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()
        if pause is not None:
            pause.callback(None)

    def _dropped(self, reason: Failure, generation: int) -> None:
        """
        The connection of C{generation} failed: forget it and try again
        later.
        """
        if generation != self._generation or reason.check(_Stale):
            return
        self._forget()
        if not self.running:
            return
        delay = min(self.max_delay, self.initial_delay * self.factor ** max(0, self._attempt - 1))
        log.warn(
            "LISTEN connection to {dsn} lost or failed ({error}); reconnecting in {delay:.1f}s",
            dsn=redact_dsn(self.dsn),
            error=_describe(reason),
            delay=delay,
        )
        self._retry = self.clock.callLater(delay, self._connect)

    @inlineCallbacks
    def _serve(self, generation: int) -> Any:
        """
        Connect, LISTEN, and poll until the connection is dropped.
        """
        connection = yield open_connection(
            self.reactor,
            self.dsn,
            self.connect_timeout,
            self.clock,
            fallback_application_name=APPLICATION_NAME,
            **TCP_KEEPALIVES,
        )
        if generation != self._generation:
            connection.close()
            return
        self._connection = connection
        connection.lost = lambda reason: self._dropped(reason, generation)
        connection.addNotifyObserver(lambda notify: self._notified(generation, notify))
        # A new session holds no lock: the listener starts awake.
        self.phase = Phase.AWAKE
        self._idle = 0
        for channel in (CHANNEL, *self.also_listen):
            yield self._query(
                generation, f"LISTEN {channel}", timeout=self.connect_timeout, rows=False
            )
        [(started, newest)] = yield self._query(
            generation, STARTED, {"started": self._started, "since": self._since}
        )
        if self._started is not None and started != self._started:
            self._restarted(None if newest is None else int(newest))
        self._started = started
        reconnected = self._since is not None
        found = yield self._poll(generation)
        if reconnected:
            log.info(
                "Caught up on {count} message(s) stored while the LISTEN connection was away",
                count=found,
            )
        # Back on its feet: the next failure starts the backoff over.
        self._attempt = 0
        log.info("Listening for messages on {dsn}", dsn=redact_dsn(self.dsn))
        # Notifications sent while the connection was away are lost.
        for channel in self.also_listen:
            self._hand_over(channel, None)
        # Whoever waited runs now, and may stop the listener.
        self._connected.succeed(None)
        if generation != self._generation:
            return
        while True:
            yield self._step(generation, found)
            self._again = False
            found = yield self._poll(generation)

    def _restarted(self, newest: int | None) -> None:
        """
        The server restarted since the last connection; C{newest} is the
        newest transaction that stored messages before it did.

        After a crash, PostgreSQL may hand out again the ids of transactions
        that had started but left nothing durable: the snapshot the listener
        read up to may show such an id as finished, and a new transaction
        with it would never be read.  Every transaction that stored messages
        before the restart is at most C{newest}, so reading goes on from the
        snapshot that sees only what is up to it.
        """
        assert self._since is not None
        since = Snapshot.parse(self._since)
        limit = 0 if newest is None else newest + 1
        if limit >= since.xmax:
            return
        log.warn(
            "PostgreSQL restarted: reading again every transaction from {limit}, whose"
            " ids it may hand out anew",
            limit=limit,
        )
        rewound = Snapshot(min(since.xmin, limit), limit, tuple(x for x in since.xip if x < limit))
        self._since, self._read = rewound.text(), None
        self._position = None

    # Polling

    @inlineCallbacks
    def _step(self, generation: int, found: int) -> Any:
        """
        After a poll that found C{found} messages: change phase if due, then
        wait until the next poll is due.
        """
        if found:
            self._idle = 0
            if self.phase is not Phase.AWAKE:
                yield self._query(generation, WAKE)
                self.phase = Phase.AWAKE
        else:
            self._idle += 1
        if self._again:
            return
        if not found and self.phase is Phase.AWAKE and self._idle >= self.idle_polls:
            yield self._query(generation, DOZE)
            self.phase = Phase.DOZING
            self._idle = 0
        if not found and self.phase is Phase.DOZING:
            (clear,) = (yield self._query(generation, GATE_CLEAR))[0]
            if clear:
                # One more poll, at once, sees what the last transactions
                # that did not ring stored; if it finds nothing, asleep.
                self.phase = Phase.ASLEEP
                return
        if self._again:
            return
        if self.phase is Phase.AWAKE:
            delay = self.poll_interval
        elif self.phase is Phase.DOZING:
            delay = min(self.max_doze_interval, self.poll_interval * 2 ** min(self._idle, 16))
        else:
            delay = self.keepalive_interval
        pause = self._pause = Deferred()
        self._pause_timer = self.clock.callLater(delay, self.poll_soon)
        yield pause
        if generation != self._generation:
            raise _Stale()

    @inlineCallbacks
    def _poll(self, generation: int) -> Any:
        """
        Read and hand over every message committed since the last poll.

        @return: A Deferred firing with how many there were.
        """
        found = 0
        while True:
            read = self._read or _Read()
            rows = yield self._query(
                generation,
                POLL,
                {
                    "since": self._since,
                    "upto": read.upto,
                    "xact": read.xact,
                    "seq": read.seq,
                    "limit": self.page_size,
                    "skip": [str(xact) for xact in self._skip],
                },
            )
            read.upto = rows[0][0]
            self._read = read
            count = handed = 0
            skip = self._skip
            since = None if self._since is None else Snapshot.parse(self._since)
            upto = Snapshot.parse(read.upto)
            skipped = tuple(sorted(skip))
            for _, xact, seq, message, channel_id, webhooks in rows:
                if xact is None:
                    break
                read.xact, read.seq = xact, seq
                count += 1
                number = int(xact)
                if skip and number in skip:
                    continue
                handed += 1
                position = None if since is None else Position(since, skipped, upto, number, seq)
                self._deliver(StoredMessage(message, channel_id, webhooks, seq, position))
            found += count
            if count < self.page_size:
                self._since, self._read = read.upto, None
                if skip:
                    # A transaction visible in the new snapshot is never
                    # returned again.
                    skip.difference_update([x for x in skip if upto.visible(x)])
                self._moved(Position(upto, tuple(sorted(skip))))
            elif since is not None and read.xact is not None:
                # Mid-poll: handed over up to the last message of the page.
                self._moved(Position(since, skipped, upto, int(read.xact), read.seq))
            if handed:
                self._finish_messages()
            if self._read is None:
                return found

    def _query(
        self,
        generation: int,
        sql: str,
        parameters: Any = None,
        timeout: float | None = None,
        rows: bool = True,
    ) -> Deferred[Any]:
        """
        Run C{sql} on the connection of C{generation} (for its C{rows}, or
        for nothing); drop the connection if it takes longer than
        C{timeout} (C{query_timeout} by default).  Fails with L{_Stale} when
        the connection is replaced meanwhile.
        """
        connection = self._connection
        if generation != self._generation or connection is None:
            raise _Stale()
        run = connection.runQuery if rows else connection.runOperation
        d: Deferred[Any] = run(sql, parameters)

        def timedOut() -> None:
            self._dropped(Failure(TimeoutError(f"query unanswered: {sql.split()[0]}")), generation)

        timer = self._query_timer = self.clock.callLater(
            self.query_timeout if timeout is None else timeout, timedOut
        )

        def answered(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            if generation != self._generation:
                raise _Stale()
            return result

        return d.addBoth(answered)

    def _finish_messages(self) -> None:
        if self.after_messages is not None:
            try:
                self.after_messages()
            except Exception:
                log.failure("Finishing a batch of messages failed")

    def _notified(self, generation: int, notify: Any) -> None:
        if generation != self._generation:
            return
        if notify.channel == CHANNEL:
            self.poll_soon()
        elif notify.channel in self.also_listen:
            self._hand_over(notify.channel, notify.payload)

    def _hand_over(self, channel: str, payload: str | None) -> None:
        if self.on_notify is None:
            return
        try:
            self.on_notify(channel, payload)
        except Exception:
            log.failure("Handling a notification on {channel} failed", channel=channel)

    def _deliver(self, message: StoredMessage) -> None:
        try:
            self.on_message(message)
        except Exception:
            log.failure("The message handler failed on message {id}", id=message.message_id)


def _describe(reason: Failure) -> str:
    return " ".join(reason.getErrorMessage().split()) or reason.type.__name__
