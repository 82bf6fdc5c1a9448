"""
Admin control across every process of a database: disconnecting a user's
sockets, or one socket, wherever they are connected.

``POST /api/realtime/disconnect`` is answered by one process, which:

1. counts the realtimed processes of the database: each has one listener
   connection, named ``realtimed listener`` in ``pg_stat_activity``;
2. sends ``NOTIFY realtime_control`` with the request (a request id and
   the user or socket); every process's listener LISTENs there, this
   process's own included;
3. waits until as many processes as it counted have recorded, in
   ``realtime.disconnect_results`` (migration 0011), how many of their
   sockets they disconnected, at most `RESULT_WAIT` seconds, and answers
   the sum.

A process whose listener is reconnecting when the notification is sent
misses the request, and a process that does not answer in time is not
counted: ``disconnected`` is then what the others reported.  Results are
kept for an hour.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

from attrs import define, field, frozen
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.logger import Logger

from realtimed.store.listener import APPLICATION_NAME
from realtimed.store.pool import IQueries

log = Logger()

CONTROL_CHANNEL = "realtime_control"

#: How long the answering process waits for the others' results, seconds.
RESULT_WAIT = 2.0
#: How often it looks, seconds.
RESULT_POLL = 0.02


@frozen
class DisconnectTarget:
    """
    Whose sockets to disconnect: every socket of a user (JWT ``sub``), or
    one socket (its Socket.IO id).  Exactly one is set.
    """

    user_id: str | None = None
    socket_id: str | None = None

    def to_json(self) -> dict[str, str]:
        if self.user_id is not None:
            return {"userId": self.user_id}
        assert self.socket_id is not None
        return {"socketId": self.socket_id}


def disconnect_request(request_id: str, target: DisconnectTarget) -> str:
    """
    The payload of the notification asking for a disconnect.
    """
    return json.dumps({"disconnect": request_id, **target.to_json()}, separators=(",", ":"))


def parse_disconnect_request(payload: str) -> tuple[str, DisconnectTarget] | None:
    """
    The request id and target of a disconnect request, or C{None} if
    C{payload} is not one.
    """
    try:
        data = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    request_id = data.get("disconnect")
    user_id, socket_id = data.get("userId"), data.get("socketId")
    if not isinstance(request_id, str):
        return None
    if isinstance(user_id, str) and socket_id is None:
        return request_id, DisconnectTarget(user_id=user_id)
    if isinstance(socket_id, str) and user_id is None:
        return request_id, DisconnectTarget(socket_id=socket_id)
    return None


def _no_members(channel: str) -> list[dict[str, Any]]:
    return []


@define(eq=False)
class AdminControl:
    """
    One process's side of admin control.

    @ivar pool: Database statements.
    @ivar clock: Time, for waiting on results.
    @ivar process: How this process names itself in the results.
    @ivar disconnect_local: Disconnects this process's sockets of a
        target, returning how many; C{None} where there are none (the API
        alone).
    @ivar presence: The members present in a channel on this process.
    """

    pool: IQueries
    clock: Any
    process: str = field(factory=lambda: uuid.uuid4().hex)
    disconnect_local: Callable[[DisconnectTarget], int] | None = None
    presence: Callable[[str], list[dict[str, Any]]] = _no_members

    @inlineCallbacks
    def disconnect(self, target: DisconnectTarget) -> Any:
        """
        Disconnect C{target}'s sockets on every process.

        @return: A Deferred firing with how many were disconnected, over the
            processes that answered within L{RESULT_WAIT} seconds.
        """
        request_id = str(uuid.uuid4())
        rows = yield self.pool.runQuery(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = %s",
            (APPLICATION_NAME,),
        )
        processes = int(rows[0][0])
        yield self.pool.runOperation(
            "SELECT pg_notify(%s, %s)", (CONTROL_CHANNEL, disconnect_request(request_id, target))
        )
        deadline = self.clock.seconds() + RESULT_WAIT
        while True:
            rows = yield self.pool.runQuery(
                "SELECT count(*), coalesce(sum(disconnected), 0)"
                " FROM realtime.disconnect_results WHERE request_id = %s",
                (request_id,),
            )
            answered, disconnected = int(rows[0][0]), int(rows[0][1])
            if answered >= processes:
                break
            if self.clock.seconds() >= deadline:
                log.warn(
                    "Disconnect request {request_id}: {answered} of {processes} processes"
                    " answered within {wait:g} s",
                    request_id=request_id,
                    answered=answered,
                    processes=processes,
                    wait=RESULT_WAIT,
                )
                break
            yield deferLater(self.clock, RESULT_POLL, lambda: None)
        return disconnected

    def notified(self, channel: str, payload: str | None) -> None:
        """
        A notification on the control channel (from the listener): carry
        out a disconnect request and record how many sockets it took.
        (C{None}: the listener reconnected; requests made meanwhile were
        answered without this process.)
        """
        if payload is None:
            return
        request = parse_disconnect_request(payload)
        if request is None:
            log.warn("Ignoring a control notification that is not understood")
            return
        request_id, target = request
        count = self.disconnect_local(target) if self.disconnect_local is not None else 0
        d: Deferred[None] = self.pool.runOperation(
            "WITH old AS (DELETE FROM realtime.disconnect_results"
            " WHERE created_at < now() - interval '1 hour')"
            " INSERT INTO realtime.disconnect_results (request_id, process, disconnected)"
            " VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
            (request_id, self.process, count),
        )
        d.addErrback(
            lambda f: log.failure("Recording disconnect request {id} failed", f, id=request_id)
        )
