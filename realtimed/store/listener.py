"""
The LISTEN connection: every message stored in the database, by any
realtimed process or by SQL, reaches this process once, in commit order.

The NOTIFY trigger on ``realtime.messages`` announces each stored message on
the ``realtime_messages`` channel, either whole or, when too large for
NOTIFY, as ``{"id": ...}`` (the row is then read back).  A dedicated
connection LISTENs and hands each message to a callback.

When the connection drops (a PostgreSQL restart, a terminated backend, a
dead link found by the keepalive query), notifications sent meanwhile are
gone, so after reconnecting and LISTENing again the listener catches up from
the table itself.  Exactness rests on the ``xact_id`` column (the inserting
transaction) and transaction snapshots:

- Right after LISTEN is in place, and again with every keepalive, the
  listener takes ``pg_current_snapshot()`` on its connection.  A transaction
  not visible in such a snapshot commits after LISTEN, so its notification
  is sent to this connection.
- The listener remembers the last two snapshots and the ids of the messages
  it delivered since each was taken.
- After a reconnect, the messages that may have been missed are those whose
  transaction is not visible in the older remembered snapshot; they are read
  with ``realtime.message_json`` (the very shape the trigger sends), and
  those already delivered are skipped.  Messages committed after the new
  LISTEN may arrive both ways; the id sets drop the second copy.
- Using the older of two snapshots leaves a margin for notifications of
  transactions that were visible in the newer one but had not yet reached
  this process when the link went down.

Notifications received but not yet handed over (a large message waiting for
its row) survive a reconnect and are handed over first, then the catch-up,
then what the new connection receives.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from typing import Any

import psycopg2
from attrs import define, field, frozen
from twisted.application.service import Service
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.logger import Logger
from twisted.python.failure import Failure

from realtimed.store.pool import (
    TCP_KEEPALIVES,
    DatabaseConnection,
    open_connection,
    redact_dsn,
)

log = Logger()

CHANNEL = "realtime_messages"

CATCH_UP = """
SELECT realtime.message_json(m), m.channel_id, m.xact_id::text, m.created_at, m.id
FROM realtime.messages m
WHERE m.xact_id >= pg_snapshot_xmin(%(snapshot)s::pg_snapshot)
  AND NOT pg_visible_in_snapshot(m.xact_id, %(snapshot)s::pg_snapshot)
  AND (%(xact)s::xid8 IS NULL
       OR (m.xact_id, m.created_at, m.id)
          > (%(xact)s::xid8, %(created)s::timestamptz, %(id)s::uuid))
ORDER BY m.xact_id, m.created_at, m.id
LIMIT %(limit)s
"""

READ_MESSAGE = """
SELECT realtime.message_json(m), m.channel_id
FROM realtime.messages m
WHERE m.id = %s
"""

SNAPSHOT = "SELECT pg_current_snapshot()::text"


@frozen
class _Notified:
    """
    A notification received, not yet handed over.
    """

    payload: str


@frozen
class _CatchUp:
    """
    The place in the inbox where the catch-up after a reconnect happens.
    """


@define
class _Mark:
    """
    A snapshot taken while LISTEN was in place, and the ids of the messages
    delivered since it was requested.
    """

    snapshot: str | None
    delivered: set[str] = field(factory=set)


class ListenerStopped(Exception):
    """
    The listener was stopped.
    """


@define(eq=False)
class MessageListener(Service):
    """
    Hands every message stored in the database to C{on_message}, once, in
    commit order, across reconnects.

    @ivar reactor: For the connection's file descriptor.
    @ivar dsn: The database; never logged as is.
    @ivar on_message: Called with C{{"message": {...}, "channelId": ...}}
        for each message.  Exceptions are logged and do not stop delivery.
    @ivar clock: Time for the reconnect backoff and the keepalive; the
        reactor unless given.
    @ivar initial_delay: Seconds before the first reconnect attempt; each
        further attempt waits C{factor} times longer, up to C{max_delay}.
    @ivar keepalive_interval: Seconds between keepalive queries, which also
        take the snapshot the next catch-up starts from.
    @ivar keepalive_timeout: A keepalive unanswered for this long (counting
        any query ahead of it) drops the connection.
    @ivar catch_up_batch: How many missed messages are read at a time.
    @ivar connected: LISTEN is in place and messages flow.
    """

    reactor: Any
    dsn: str = field(repr=redact_dsn)
    on_message: Callable[[dict[str, Any]], object]
    clock: Any = None
    initial_delay: float = 0.5
    factor: float = 2.0
    max_delay: float = 30.0
    keepalive_interval: float = 10.0
    keepalive_timeout: float = 10.0
    connect_timeout: float = 10.0
    catch_up_batch: int = 500
    connected: bool = field(default=False, init=False)
    _connection: DatabaseConnection | None = field(default=None, init=False)
    _generation: int = field(default=0, init=False)
    _attempt: int = field(default=0, init=False)
    _retry: Any = field(default=None, init=False)
    _keepalive: Any = field(default=None, init=False)
    _inbox: deque[_Notified | _CatchUp] = field(factory=deque, init=False, repr=False)
    _pumping: bool = field(default=False, init=False)
    _catching_up: bool = field(default=False, init=False)
    _marks: list[_Mark] = field(factory=list, init=False, repr=False)
    _pending: _Mark | None = field(default=None, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.clock is None:
            self.clock = self.reactor

    @property
    def backend_pid(self) -> int | None:
        """
        The server process of the LISTEN connection while connected, for
        diagnostics.
        """
        if not self.connected or self._connection is None:
            return None
        return int(self._connection.get_backend_pid())

    # Service

    def startService(self) -> None:
        Service.startService(self)
        self._attempt = 0
        self._connect()

    def stopService(self) -> Deferred[None] | None:
        Service.stopService(self)
        self._generation += 1
        self.connected = False
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        self._stopKeepalive()
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()
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
        d = self._establish(generation)
        d.addErrback(self._dropped, generation)
        d.addErrback(lambda f: log.failure("Reconnecting the LISTEN connection failed", f))

    @inlineCallbacks
    def _establish(self, generation: int) -> Any:
        connection = yield open_connection(
            self.reactor, self.dsn, self.connect_timeout, self.clock, **TCP_KEEPALIVES
        )
        if generation != self._generation:
            connection.close()
            return
        self._connection = connection
        connection.lost = lambda reason: self._dropped(reason, generation)
        connection.addNotifyObserver(lambda notify: self._notified(generation, notify))
        # A catch-up is due when messages were delivered before; it happens
        # after anything still waiting from the previous connection, and
        # before anything this connection receives.
        for item in [i for i in self._inbox if isinstance(i, _CatchUp)]:
            self._inbox.remove(item)
        if self._marks:
            self._inbox.append(_CatchUp())
            self._catching_up = True
        pending = self._pending = _Mark(None)

        def timedOut() -> None:
            self._dropped(Failure(TimeoutError("LISTEN unanswered")), generation)

        timer = self.clock.callLater(self.connect_timeout, timedOut)
        try:
            yield connection.runOperation(f"LISTEN {CHANNEL}")
            rows = yield connection.runQuery(SNAPSHOT)
        finally:
            if timer.active():
                timer.cancel()
        if generation != self._generation:
            return
        pending.snapshot = rows[0][0]
        if not self._catching_up:
            self._install(pending)
            # Back on its feet: the next failure starts the backoff over.
            self._attempt = 0
        self.connected = True
        log.info("Listening for messages on {dsn}", dsn=redact_dsn(self.dsn))
        self._scheduleKeepalive(generation)
        self._pump()

    def _dropped(self, reason: Failure, generation: int) -> None:
        """
        The connection of C{generation} failed: forget it and try again
        later.
        """
        if generation != self._generation:
            return
        self._generation += 1
        self.connected = False
        self._pending = None
        self._stopKeepalive()
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()
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

    # Keepalive and snapshots

    def _scheduleKeepalive(self, generation: int) -> None:
        self._stopKeepalive()
        self._keepalive = self.clock.callLater(
            self.keepalive_interval, self._sendKeepalive, generation
        )

    def _stopKeepalive(self) -> None:
        if self._keepalive is not None and self._keepalive.active():
            self._keepalive.cancel()
        self._keepalive = None

    def _sendKeepalive(self, generation: int) -> None:
        self._keepalive = None
        connection = self._connection
        if generation != self._generation or connection is None:
            return
        rotate = not self._catching_up and self._pending is None
        mark = _Mark(None)
        if rotate:
            self._pending = mark
        d: Deferred[Any] = connection.runQuery(SNAPSHOT)

        def timedOut() -> None:
            self._dropped(Failure(TimeoutError("keepalive query unanswered")), generation)

        timer = self.clock.callLater(self.keepalive_timeout, timedOut)

        def answered(rows: list[tuple[str]]) -> None:
            if timer.active():
                timer.cancel()
            if generation != self._generation:
                return
            if rotate and self._pending is mark:
                mark.snapshot = rows[0][0]
                self._install(mark)
            self._scheduleKeepalive(generation)

        def failed(reason: Failure) -> None:
            if timer.active():
                timer.cancel()
            self._dropped(reason, generation)

        d.addCallbacks(answered, failed)
        d.addErrback(lambda f: log.failure("Keepalive of the LISTEN connection failed", f))

    def _install(self, mark: _Mark) -> None:
        """
        C{mark}'s snapshot becomes the newest a catch-up may start from.
        """
        if self._pending is mark:
            self._pending = None
        self._marks.append(mark)
        del self._marks[:-2]

    # Delivery

    def _notified(self, generation: int, notify: Any) -> None:
        if generation != self._generation or notify.channel != CHANNEL:
            return
        self._inbox.append(_Notified(notify.payload))
        self._pump()

    @property
    def _ready(self) -> bool:
        return bool(self.running) and self.connected and self._connection is not None

    def _pump(self) -> None:
        if self._pumping or not self._ready or not self._inbox:
            return
        self._pumping = True
        d = self._drain()
        d.addErrback(lambda f: log.failure("Handing over messages failed", f))

    @inlineCallbacks
    def _drain(self) -> Any:
        try:
            while self._inbox and self._ready:
                connection = self._connection
                generation = self._generation
                item = self._inbox[0]
                try:
                    if isinstance(item, _CatchUp):
                        yield self._catchUp(connection)
                    else:
                        yield self._handOver(connection, item)
                except Exception:
                    reason = Failure()
                    if generation != self._generation:
                        # The connection went away; the item stays first in
                        # line for the next one.
                        continue
                    if isinstance(item, _CatchUp) or reason.check(
                        psycopg2.OperationalError, psycopg2.InterfaceError
                    ):
                        # Without its catch-up (or its connection) the
                        # listener cannot go on: start over.
                        self._dropped(reason, generation)
                        continue
                    log.failure("Cannot hand over a message notification", reason)
                if self._inbox and self._inbox[0] is item:
                    self._inbox.popleft()
        finally:
            self._pumping = False

    @inlineCallbacks
    def _handOver(self, connection: Any, item: _Notified) -> Any:
        body = json.loads(item.payload)
        if "message" not in body:
            rows = yield connection.runQuery(READ_MESSAGE, (body["id"],))
            if not rows:
                log.warn("Message {id} was announced but is gone", id=body["id"])
                return
            message, channel_id = rows[0]
            body = {"message": message, "channelId": channel_id}
        self._deliver(body)

    @inlineCallbacks
    def _catchUp(self, connection: Any) -> Any:
        parameters = {
            "snapshot": self._marks[0].snapshot,
            "xact": None,
            "created": None,
            "id": None,
            "limit": self.catch_up_batch,
        }
        caught = 0
        while True:
            rows = yield connection.runQuery(CATCH_UP, parameters)
            for message, channel_id, *_ in rows:
                if self._deliver({"message": message, "channelId": channel_id}):
                    caught += 1
            if len(rows) < self.catch_up_batch:
                break
            _, _, parameters["xact"], parameters["created"], parameters["id"] = rows[-1]
        log.info(
            "Caught up on {count} message(s) stored while the LISTEN connection was away",
            count=caught,
        )
        self._catching_up = False
        self._attempt = 0
        if self._pending is not None and self._pending.snapshot is not None:
            self._install(self._pending)

    def _deliver(self, body: dict[str, Any]) -> bool:
        """
        Hand C{body} over unless it was already.
        """
        message_id = str(body["message"]["messageId"])
        marks = self._marks + ([self._pending] if self._pending is not None else [])
        if any(message_id in mark.delivered for mark in marks):
            return False
        for mark in marks:
            mark.delivered.add(message_id)
        try:
            self.on_message(body)
        except Exception:
            log.failure("The message handler failed on message {id}", id=message_id)
        return True


def _describe(reason: Failure) -> str:
    return " ".join(reason.getErrorMessage().split()) or reason.type.__name__
