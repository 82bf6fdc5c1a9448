"""
Presence shared through PostgreSQL by every realtimed process of a
database (migration ``0013_shared_presence.sql``).

This process writes which members it holds (`Presence.take_unwritten`) to
``realtime.presence_members``, one row per channel and member, and beats
its heartbeat every quarter of ``timeout`` in the same statement.  Each row
written or deleted, by any process, is announced on ``realtime_presence``;
the listener hands those notifications here, and this process's copy of
what the others hold follows them (announcing joins and leaves to its own
sockets).  When the listener (re)connects, notifications may have been
missed: the copy is read again from the table, and the notifications that
arrive while it is read are applied after it.

Writes go one at a time: changes made while one is in flight are written
together by the next, so a member that joins and leaves quickly costs at
most two writes, and often none.  A write that fails is retried at the next
heartbeat.  If this process's heartbeat row had been deleted (the others
took it for dead after a long pause), every member it holds is written
again.

Each heartbeat also deletes the processes whose heartbeat is older than
their own timeout, so that the members of a process that died without a
goodbye leave, as seen from the others, within that timeout and one
heartbeat.  A process that stops gracefully deletes its own row at once.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from attrs import define, field
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from realtimed.lifecycle import Readiness
from realtimed.realtime.presence import Held, Member, Presence, PresenceChange, Unwritten
from realtimed.store.pool import IQueries

log = Logger()

#: The NOTIFY channel announcing every member row written or deleted.
PRESENCE_CHANNEL = "realtime_presence"

#: Seconds between attempts to read the others' members again after a
#: failure.
RELOAD_RETRY = 1.0


def unwritten_json(unwritten: Unwritten) -> tuple[str, str]:
    """
    The C{released} and C{held} arguments of ``realtime.presence_sync``.
    """
    released = [{"channel": c, "presenceId": p} for c, p in unwritten.released]
    held = [{"channel": h.channel, **h.member.to_json()} for h in unwritten.held]
    return json.dumps(released), json.dumps(held)


#: The notification saying that a row too large to describe changed: read
#: them all again.
READ_AGAIN = '{"op": "*"}'


def parse_notification(payload: str) -> tuple[bool, str, Held] | None:
    """
    What a notification on L{PRESENCE_CHANNEL} says: whether a row was
    added (or deleted), by which process, and the member; C{None} if it
    is not understood.
    """
    try:
        data = json.loads(payload)
        op = data["op"]
        held = Held(
            str(data["channel"]),
            Member(str(data["presenceId"]), str(data["type"]), str(data["joinedAt"])),
        )
        if op not in ("+", "-"):
            return None
        return op == "+", str(data["process"]), held
    except (ValueError, TypeError, KeyError):
        return None


@define(eq=False)
class SharedPresence(Service):
    """
    This process's side of shared presence.

    @ivar pool: Database statements.
    @ivar clock: Time, for the heartbeat.
    @ivar presence: The presence of this process's realtime channels.
    @ivar announce: Sends a presence change to this process's sockets.
    @ivar process: How this process names itself (as in admin control).
    @ivar timeout: Seconds without a heartbeat after which the others take
        this process for dead.
    """

    pool: IQueries
    clock: Any
    presence: Presence[Any]
    announce: Callable[[PresenceChange[Any]], None]
    process: str
    timeout: float = 20.0
    _writing: bool = field(default=False, init=False)
    _again: bool = field(default=False, init=False)
    _written_once: bool = field(default=False, init=False)
    _beat: Any = field(default=None, init=False)
    _first: Readiness = field(factory=Readiness, init=False)
    _idle: Readiness = field(factory=Readiness, init=False)
    _loading: list[str] | None = field(default=None, init=False)
    _reload_again: bool = field(default=False, init=False)
    _retry: Any = field(default=None, init=False)
    _stopped: bool = field(default=False, init=False)

    @property
    def interval(self) -> float:
        """
        Seconds between heartbeats.
        """
        return self.timeout / 4

    # Service

    def startService(self) -> None:
        Service.startService(self)
        self._stopped = False
        self._write()

    def whenReady(self) -> Deferred[None]:
        """
        Fires once the first heartbeat is written (or failed, which is
        logged: the next ones try again).
        """
        d: Deferred[None] = self._first.wait()
        return d

    def stopService(self) -> Deferred[None]:
        """
        Wait for the write in flight, then delete this process's row: the
        others see its members leave at once.
        """
        Service.stopService(self)
        self._stopped = True
        for call in (self._beat, self._retry):
            if call is not None and call.active():
                call.cancel()
        self._beat = self._retry = None
        d: Deferred[Any] = self._idle.wait() if self._writing else succeed(None)
        d.addCallback(
            lambda _: self.pool.runOperation(
                "DELETE FROM realtime.presence_processes WHERE id = %s", (self.process,)
            )
        )
        d.addErrback(
            lambda f: log.warn(
                "Could not remove this process's presence ({error}); the other processes"
                " will see its members leave within {timeout:g} s",
                error=_describe(f),
                timeout=self.timeout,
            )
        )
        return d

    # Writing

    def changed(self) -> None:
        """
        Members held here joined or left: write them soon.
        """
        if self._stopped or not self.running:
            return
        if self._writing:
            self._again = True
            return
        self._write()

    def _write(self) -> None:
        if self._beat is not None and self._beat.active():
            self._beat.cancel()
        self._beat = None
        self._writing = True
        self._again = False
        self._idle.reset()
        unwritten = self.presence.take_unwritten()
        released, held = unwritten_json(unwritten)
        d = self.pool.runQuery(
            "SELECT realtime.presence_sync(%s, %s, %s::jsonb, %s::jsonb)",
            (self.process, self.timeout, released, held),
        )
        d.addCallbacks(self._written, self._not_written, errbackArgs=(unwritten,))
        d.addErrback(lambda f: log.failure("Sharing presence failed", f))
        d.addBoth(self._next)

    def _written(self, rows: list[tuple[Any, ...]]) -> None:
        created = bool(rows[0][0])
        if created and self._written_once:
            log.warn(
                "This process's presence was taken for dead by another process"
                " (no heartbeat for {timeout:g} s); sharing its members again",
                timeout=self.timeout,
            )
            self.presence.rewrite_all()
            self._again = True
        self._written_once = True
        self._first.succeed(None)

    def _not_written(self, failure: Failure, unwritten: Unwritten) -> None:
        self.presence.restore(unwritten)
        log.warn(
            "Writing this process's presence and heartbeat failed ({error});"
            " trying again in {delay:g} s",
            error=_describe(failure),
            delay=self.interval,
        )
        self._first.succeed(None)

    def _next(self, _: object) -> None:
        self._writing = False
        self._idle.succeed(None)
        if self._stopped:
            return
        if self._again:
            self._write()
            return
        self._beat = self.clock.callLater(self.interval, self._write)

    # What the others hold

    def notified(self, payload: str | None) -> None:
        """
        A notification on L{PRESENCE_CHANNEL} (from the listener), or
        C{None}: the listener (re)connected, and what the others hold is
        read again (as for L{READ_AGAIN}).
        """
        if payload is None or payload == READ_AGAIN:
            self.reload()
            return
        if self._loading is not None:
            self._loading.append(payload)
            return
        self._apply(payload)

    def reload(self) -> None:
        """
        Read what the other processes hold from the table, and announce
        what changed since it was last known.
        """
        if self._stopped:
            return
        if self._loading is not None:
            self._reload_again = True
            return
        self._loading = []
        self._reload_again = False
        d = self.pool.runQuery(
            "SELECT process, channel, presence_id, presence_type, joined_at"
            " FROM realtime.presence_members WHERE process <> %s",
            (self.process,),
        )
        d.addCallbacks(self._reloaded, self._not_reloaded)
        d.addErrback(lambda f: log.failure("Reading the others' presence failed", f))

    def _reloaded(self, rows: list[tuple[Any, ...]]) -> None:
        buffered, self._loading = self._loading or [], None
        held = [(str(r[0]), Held(str(r[1]), Member(str(r[2]), str(r[3]), str(r[4])))) for r in rows]
        for change in self.presence.replace_remote(held):
            self.announce(change)
        for payload in buffered:
            self._apply(payload)
        if self._reload_again:
            self.reload()

    def _not_reloaded(self, failure: Failure) -> None:
        buffered, self._loading = self._loading or [], None
        log.warn(
            "Reading the members other processes hold failed ({error}); trying again in"
            " {delay:g} s",
            error=_describe(failure),
            delay=RELOAD_RETRY,
        )
        for payload in buffered:
            self._apply(payload)
        if not self._stopped:
            self._retry = self.clock.callLater(RELOAD_RETRY, self.reload)

    def _apply(self, payload: str) -> None:
        notification = parse_notification(payload)
        if notification is None:
            log.warn("Ignoring a presence notification that is not understood")
            return
        added, process, held = notification
        if process == self.process:
            return
        if added:
            change = self.presence.remote_join(process, held.channel, held.member)
        else:
            change = self.presence.remote_leave(process, held.channel, held.member.presence_id)
        if change is not None:
            self.announce(change)


def _describe(failure: Failure) -> str:
    """
    A failure in one line, for a warning: the database's errors are
    expected while it is away.
    """
    text = str(failure.value).strip().splitlines()
    return f"{type(failure.value).__name__}: {text[0] if text else ''}"
