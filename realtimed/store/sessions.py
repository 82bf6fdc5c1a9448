"""
What connection state recovery keeps in the database, so that a client
whose connection dropped can take its session up again on any process of
the database: its private id, socket id, identity, subscriptions (each with
the position it receives from), and when it went away.

A process writes its sessions behind: what changes in one turn of the
reactor goes in one statement at the start of the next.  It says it lives
with one heartbeat row (`realtime.processes`), so a session of a process
that died without saying goodbye is taken to have gone at the process's
last heartbeat.  Sessions gone longer than the recovery window are deleted.

`replay` reads the messages a client missed: those after the position it
had reached, up to what this process's listener had handed over when its
subscriptions were registered again, on its subscriptions, in transaction
order (migration 0012, ``realtime.replay``).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from typing import Any, Protocol

from attrs import define, field, frozen
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from realtimed.store.messages import StoredMessage
from realtimed.store.pool import IQueries
from realtimed.store.positions import Position, Snapshot

log = Logger()

#: Seconds between a process's heartbeats.
HEARTBEAT_INTERVAL = 10.0

#: A process whose heartbeat is older than this many seconds is dead.
HEARTBEAT_TIMEOUT = 30.0


class Stream(Protocol):
    """
    The stream of stored messages as this process's listener hands it over.
    """

    def handed_position(self) -> Position | None:
        """
        The position of everything handed over so far, once known.
        """

    def reached(self, position: Position) -> Deferred[Position]:
        """
        A Deferred firing with the handed-over position once it includes
        C{position}.
        """


@frozen
class SavedSubscription:
    """
    A subscription of a session: the name or row pattern, the row that
    granted it, and the position it receives messages after.
    """

    channel: str
    channel_id: str
    since: Position

    def to_json(self) -> dict[str, Any]:
        return {"channel": self.channel, "channelId": self.channel_id, **_position_json(self.since)}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> SavedSubscription:
        return cls(value["channel"], value["channelId"], Position.decode(value["from"]))


@frozen
class Session:
    """
    A Socket.IO session that may be recovered.

    @ivar pid: Its private id, which only its client knows.
    @ivar sid: Its socket id, which a recovered socket takes back.
    @ivar role: The role its credential had; a recovering client must
        present a credential of the same role and user.
    @ivar sender_id: The user (JWT ``sub``), if any.
    @ivar connected_at: The position at its first connection: a client
        that received nothing yet recovers from there.
    """

    pid: str
    sid: str
    role: str
    sender_id: str | None
    connected_at: Position
    subscriptions: tuple[SavedSubscription, ...] = ()


def new_pid() -> str:
    """
    A new private session id.
    """
    return secrets.token_urlsafe(18)


def is_pid(text: str) -> bool:
    """
    Whether C{text} could be a private session id L{new_pid} made: a
    client's claim that is not one (a NUL, a lone surrogate, a megabyte)
    is answered as an unknown session, without asking the database.
    """
    return len(text) == 24 and _PID_ALPHABET.issuperset(text)


_PID_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def _position_json(position: Position) -> dict[str, Any]:
    return {
        "from": position.encode(),
        "since": position.since.text(),
        "handed": [str(x) for x in position.handed],
        "upto": None if position.upto is None else position.upto.text(),
        "xact": None if position.xact is None else str(position.xact),
        "seq": position.seq,
    }


@frozen
class Replay:
    """
    The messages a client missed, in order.

    @ivar complete: C{False} when more were missed than were asked for.
    """

    messages: tuple[StoredMessage, ...]
    complete: bool


_UPSERT = """
INSERT INTO realtime.sessions AS s (pid, sid, process, role, sender_id, subscriptions,
                                    connected_at)
SELECT v.pid, v.sid, %(process)s, v.role, v.sender_id, v.subscriptions, v.connected_at
FROM jsonb_to_recordset(%(sessions)s::jsonb) AS v (
    pid text, sid text, role text, sender_id text, subscriptions jsonb, connected_at text)
ON CONFLICT (pid) DO UPDATE
    SET subscriptions = excluded.subscriptions, disconnected_at = NULL
    WHERE s.process = excluded.process
"""

_GONE = """
UPDATE realtime.sessions SET disconnected_at = now()
WHERE pid = ANY (%(pids)s::text[]) AND process = %(process)s
"""

_FORGET = """
DELETE FROM realtime.sessions WHERE pid = ANY (%(pids)s::text[]) AND process = %(process)s
"""

# A session may be claimed while it has not been gone longer than the
# window: gone by its own account, or by its process's last heartbeat.
_LIVE = """
    (s.disconnected_at IS NULL AND EXISTS (
         SELECT FROM realtime.processes p
         WHERE p.id = s.process
           AND p.last_seen > now() - make_interval(secs => %(window)s + %(timeout)s)))
    OR s.disconnected_at > now() - make_interval(secs => %(window)s)
"""

# Claiming moves the row to this process: writes the former process may
# still make (it has not noticed the socket is gone) no longer touch it.
_CLAIM = f"""
UPDATE realtime.sessions s SET process = %(process)s, disconnected_at = NULL
WHERE s.pid = %(pid)s AND ({_LIVE})
RETURNING s.sid, s.role, s.sender_id, s.connected_at, s.subscriptions
"""

# A process beats whenever it writes sessions too, so that the sessions it
# writes or claims count as live from the first.
_BEAT = """
INSERT INTO realtime.processes (id) VALUES (%(process)s)
ON CONFLICT (id) DO UPDATE SET last_seen = now()
"""

_HEARTBEAT = f"""
WITH beat AS ({_BEAT}), expired AS (
    DELETE FROM realtime.sessions s WHERE NOT ({_LIVE})
), dead AS (
    DELETE FROM realtime.processes p
    WHERE p.last_seen < now() - make_interval(secs => %(window)s + %(timeout)s + 3600)
)
SELECT 1
"""

_REPLAY = """
SELECT xact, seq, message, channel_id, webhooks
FROM realtime.replay(%s::pg_snapshot, %s::xid8[], %s::pg_snapshot, %s::xid8, %s,
                     %s::pg_snapshot, %s::xid8[], %s::pg_snapshot, %s::xid8, %s,
                     %s::jsonb, %s, %s)
"""

_POSITION_OF = "SELECT since::text, xact::text, seq FROM realtime.position_of(%s)"


@define(eq=False)
class SessionStore(Service):
    """
    The sessions of this process, written behind, and what recovering one
    needs.

    @ivar window: Seconds a session may be recovered after it went away.
    @ivar process: This process's id among the processes of the database.
    """

    pool: IQueries
    clock: IReactorTime
    window: float
    process: str = field(factory=lambda: secrets.token_hex(8))
    _saves: dict[str, Session] = field(factory=dict, init=False)
    _gone: set[str] = field(factory=set, init=False)
    _forgotten: set[str] = field(factory=set, init=False)
    _flush_call: IDelayedCall | None = field(default=None, init=False)
    _flushing: Deferred[None] | None = field(default=None, init=False)
    _heartbeat: LoopingCall | None = field(default=None, init=False)

    def startService(self) -> None:
        Service.startService(self)
        self._heartbeat = LoopingCall(self._beat)
        self._heartbeat.clock = self.clock
        self._heartbeat.start(HEARTBEAT_INTERVAL, now=True).addErrback(
            lambda f: log.failure("The session heartbeat stopped", f)
        )

    def stopService(self) -> Deferred[None]:
        """
        Write what is left (the sockets closed by the stop went away: they
        may be recovered on another process).
        """
        Service.stopService(self)
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
        return self.flush()

    # Writing behind

    def save(self, session: Session) -> None:
        """
        Keep C{session} as it is now (a new one, or new subscriptions).
        """
        self._saves[session.pid] = session
        self._gone.discard(session.pid)
        self._forgotten.discard(session.pid)
        self._soon()

    def gone(self, pid: str) -> None:
        """
        The socket of session C{pid} went away in a way it may recover from.
        """
        self._gone.add(pid)
        self._soon()

    def forget(self, pid: str) -> None:
        """
        Session C{pid} ends for good (the client or the server disconnected
        its socket on purpose).
        """
        self._saves.pop(pid, None)
        self._gone.discard(pid)
        self._forgotten.add(pid)
        self._soon()

    def flush(self) -> Deferred[None]:
        """
        Write what changed; the Deferred fires once it is written (or
        failed, which is logged).
        """
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        if self._flushing is not None:
            waiting: Deferred[None] = Deferred()
            self._flushing.addBoth(lambda _: self.flush().chainDeferred(waiting))
            return waiting
        saves, gone, forgotten = list(self._saves.values()), list(self._gone), list(self._forgotten)
        self._saves, self._gone, self._forgotten = {}, set(), set()
        if not (saves or gone or forgotten):
            return succeed(None)
        statements: list[tuple[str, dict[str, Any]]] = [(_BEAT, {})]
        if saves:
            statements.append((_UPSERT, {"sessions": json.dumps([_row(s) for s in saves])}))
        if gone:
            statements.append((_GONE, {"pids": gone}))
        if forgotten:
            statements.append((_FORGET, {"pids": forgotten}))
        d: Deferred[None] = self.pool.runInteraction(_run_all, statements, self.process)
        d.addErrback(lambda f: log.failure("Writing recoverable sessions failed", f))

        def done(_: object) -> None:
            self._flushing = None

        d.addBoth(done)
        self._flushing = d
        return d

    def _soon(self) -> None:
        if self._flush_call is None and self.running:
            self._flush_call = self.clock.callLater(0, self.flush)

    def _beat(self) -> Deferred[None]:
        d: Deferred[None] = self.pool.runOperation(
            _HEARTBEAT,
            {"process": self.process, "window": self.window, "timeout": HEARTBEAT_TIMEOUT},
        )
        d.addErrback(lambda f: log.warn("The session heartbeat failed: {e}", e=f.getErrorMessage()))
        return d

    # Recovering

    def claim(self, pid: str) -> Deferred[Session | None]:
        """
        Take session C{pid} up on this process, if it may still be
        recovered.

        @return: A Deferred firing with the session, or C{None}.
        """
        d: Deferred[Any] = self.flush()
        claim = {"pid": pid, "window": self.window, "timeout": HEARTBEAT_TIMEOUT}
        d.addCallback(
            lambda _: self.pool.runInteraction(
                _run_all, [(_BEAT, {}), (_CLAIM, claim)], self.process
            )
        )
        return d.addCallback(lambda rows: _session(pid, rows[0]) if rows else None)

    def position_of(self, message_id: str) -> Deferred[Position | None]:
        """
        The latest position message C{message_id} has in any listener's
        stream, or C{None} when there is no such message (any more).
        """
        d: Deferred[Any] = self.pool.runQuery(_POSITION_OF, (message_id,))

        def found(rows: list[tuple[Any, ...]]) -> Position | None:
            if not rows:
                return None
            since, xact, seq = rows[0]
            return Position(Snapshot.parse(since), (), None, int(xact), int(seq))

        return d.addCallback(found)

    def replay(
        self,
        after: Position,
        upto: Position,
        subscriptions: Sequence[SavedSubscription],
        limit: int,
        newest: bool = False,
    ) -> Deferred[Replay]:
        """
        The messages after C{after} and up to C{upto} on C{subscriptions}:
        the oldest C{limit} (or the newest, if C{newest}), in order.
        """
        d: Deferred[Any] = self.pool.runQuery(
            _REPLAY,
            (
                *_position_args(after),
                *_position_args(upto),
                json.dumps([s.to_json() for s in subscriptions]),
                limit + 1,
                newest,
            ),
        )

        def read(rows: list[tuple[Any, ...]]) -> Replay:
            messages = [
                StoredMessage(message, channel_id, webhooks, seq)
                for _, seq, message, channel_id, webhooks in rows
            ]
            complete = len(messages) <= limit
            if not complete:
                messages = messages[1:] if newest else messages[:limit]
            return Replay(tuple(messages), complete)

        return d.addCallback(read)


def _position_args(position: Position) -> tuple[Any, ...]:
    return (
        position.since.text(),
        [str(x) for x in position.handed],
        None if position.upto is None else position.upto.text(),
        None if position.xact is None else str(position.xact),
        position.seq,
    )


def _row(session: Session) -> dict[str, Any]:
    return {
        "pid": session.pid,
        "sid": session.sid,
        "role": session.role,
        "sender_id": session.sender_id,
        "subscriptions": [s.to_json() for s in session.subscriptions],
        "connected_at": session.connected_at.encode(),
    }


def _session(pid: str, row: tuple[Any, ...]) -> Session | None:
    sid, role, sender_id, connected_at, subscriptions = row
    try:
        return Session(
            pid,
            sid,
            role,
            sender_id,
            Position.decode(connected_at),
            tuple(SavedSubscription.from_json(s) for s in subscriptions),
        )
    except (ValueError, KeyError, TypeError):
        log.failure("A stored session cannot be read", Failure())
        return None


def _run_all(cursor: Any, statements: list[tuple[str, dict[str, Any]]], process: str) -> Any:
    """
    Run C{statements} in order in one transaction, as C{process}.

    @return: A Deferred firing with the rows of the last, if it has any.
    """
    d: Deferred[Any] = succeed(None)
    for sql, params in statements:
        d.addCallback(_execute, cursor, sql, {**params, "process": process})
    return d.addCallback(lambda done: done.fetchall() if done.description else None)


def _execute(_: object, cursor: Any, sql: str, params: dict[str, Any]) -> Any:
    return cursor.execute(sql, params)
