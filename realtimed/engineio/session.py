"""
The Engine.IO v4 session state machine, without I/O.

A session starts on one transport (``polling`` or ``websocket``).  While on
polling it may be upgraded: a second, *candidate* WebSocket connection sends
``2probe``, gets ``3probe``, then sends ``5``, and from then on the session
lives on that WebSocket.  The server pings every ``ping_interval`` seconds
and closes the session when no pong arrives within ``ping_timeout``.

`EngineSession` is driven by calls that carry the current time and answers
with a list of actions for the transport adapter to carry out.  The adapter
asks `EngineSession.deadline` when to call `EngineSession.expire` next.

How a session ends is decided here too: why it closed (one of the reasons
below, which the layer above is told), and, for a polling client, what its
waiting or next ``GET`` is answered with (see `Closed`).
"""

from __future__ import annotations

from typing import Final

from attrs import define, field, frozen

from realtimed.engineio.engine_packets import (
    CLOSE,
    MESSAGE,
    NOOP,
    OPEN,
    PING,
    PONG,
    UPGRADE,
    EncodedPacket,
    EnginePacket,
)

POLLING: Final = "polling"
WEBSOCKET: Final = "websocket"

#: How long a candidate WebSocket has to finish the upgrade.
UPGRADE_TIMEOUT: Final = 10.0

PING_PACKET: Final = str(PING)
CLOSE_PACKET: Final = str(CLOSE)
NOOP_PACKET: Final = str(NOOP)
PROBE_REPLY: Final = f"{PONG}probe"

# why a session closed
#: the client closed it, with a close packet or by going away
TRANSPORT_CLOSE: Final = "transport close"
#: the client broke a rule of its transport (two concurrent polls, a body
#: over the size limit), or stopped reading while data piled up for it
TRANSPORT_ERROR: Final = "transport error"
#: the client did not answer a ping in time
PING_TIMEOUT: Final = "ping timeout"
#: the client sent something that is not Engine.IO
PARSE_ERROR: Final = "parse error"
#: the server closed it
FORCED_CLOSE: Final = "forced close"


@frozen
class Deliver:
    """
    A ``message`` packet arrived for the application.
    """

    data: str | bytes


@frozen
class Send:
    """
    Send this packet on the session's active transport.
    """

    packet: EncodedPacket


@frozen
class SendCandidate:
    """
    Send this packet on the candidate WebSocket only.
    """

    packet: EncodedPacket


@frozen
class ReleasePoll:
    """
    Answer a waiting polling ``GET`` with a ``noop`` packet: the client is
    moving to a WebSocket.
    """


@frozen
class Upgraded:
    """
    The candidate WebSocket is now the active transport; whatever was
    queued for polling goes out on it.
    """


@frozen
class DropCandidate:
    """
    Close the candidate WebSocket; the session stays on polling.
    """


@frozen
class Closed:
    """
    The session is over, for ``reason`` (`TRANSPORT_CLOSE`,
    `TRANSPORT_ERROR`, `PING_TIMEOUT`, `PARSE_ERROR` or `FORCED_CLOSE`).

    The rest tells a polling client's adapter how the client learns of it.
    A ``GET`` that is waiting is answered with what is queued (unless
    ``drop_queued``) followed by ``last_packet``.  With no ``GET`` waiting,
    the session lingers when ``linger`` is set, so that the client's next
    ``GET`` gets the same; otherwise it is forgotten, and that ``GET`` is
    refused as one for an unknown session.  A WebSocket is closed, with no
    packet (``last_packet`` is `None`).
    """

    reason: str
    #: `CLOSE_PACKET`, or `NOOP_PACKET` for a client that closed the session
    #: itself; `None` on a WebSocket
    last_packet: EncodedPacket | None = None
    #: what is queued for polling is not sent
    drop_queued: bool = False
    #: with no ``GET`` waiting, keep the session for the next one
    linger: bool = False


Action = Deliver | Send | SendCandidate | ReleasePoll | Upgraded | DropCandidate | Closed


@define
class EngineSession:
    """
    The state of one Engine.IO session.
    """

    sid: str
    transport: str
    ping_interval: float
    ping_timeout: float
    _ping_due: float | None = field(default=None, alias="ping_due")
    _pong_due: float | None = field(default=None, init=False)
    _upgrade_due: float | None = field(default=None, init=False)
    _candidate: str | None = field(default=None, init=False)
    closed: bool = field(default=False, init=False)

    @classmethod
    def start(
        cls,
        sid: str,
        transport: str,
        ping_interval: float,
        ping_timeout: float,
        now: float,
    ) -> EngineSession:
        """
        A new session whose open packet goes out at ``now``.
        """
        return cls(sid, transport, ping_interval, ping_timeout, ping_due=now + ping_interval)

    @property
    def upgrading(self) -> bool:
        """
        Whether a candidate WebSocket is attached.
        """
        return self._candidate is not None

    def deadline(self) -> float | None:
        """
        When `expire` must be called next, or `None`.
        """
        if self.closed:
            return None
        due = [t for t in (self._ping_due, self._pong_due, self._upgrade_due) if t is not None]
        return min(due) if due else None

    def expire(self, now: float) -> list[Action]:
        """
        Time passed: send a ping, give up on a silent client, or drop a
        candidate WebSocket that took too long.
        """
        if self.closed:
            return []
        actions: list[Action] = []
        if self._pong_due is not None and now >= self._pong_due:
            return self._close(PING_TIMEOUT)
        if self._upgrade_due is not None and now >= self._upgrade_due:
            self._candidate = None
            self._upgrade_due = None
            actions.append(DropCandidate())
        if self._ping_due is not None and now >= self._ping_due:
            self._ping_due = None
            self._pong_due = now + self.ping_timeout
            actions.append(Send(PING_PACKET))
        return actions

    def receive(self, packet: EnginePacket, now: float) -> list[Action]:
        """
        A packet arrived on the active transport.
        """
        if self.closed:
            return []
        kind = packet.type
        if kind == MESSAGE:
            return [Deliver(packet.data)]
        if kind == PONG:
            if self._pong_due is not None:
                self._pong_due = None
                self._ping_due = now + self.ping_interval
            return []
        if kind == CLOSE:
            return self.transport_lost()
        if kind in (OPEN, NOOP, PING):
            return []
        # an upgrade packet outside of an upgrade
        return self._close(PARSE_ERROR)

    def begin_upgrade(self, now: float) -> bool:
        """
        A WebSocket connection asks to take over the session.  Returns
        whether it may become the candidate; it may not when the session is
        already on WebSocket, closed, or another candidate is attached.
        """
        if self.closed or self.transport != POLLING or self._candidate is not None:
            return False
        self._candidate = WEBSOCKET
        self._upgrade_due = now + UPGRADE_TIMEOUT
        return True

    def receive_candidate(self, packet: EnginePacket, now: float) -> list[Action]:
        """
        A packet arrived on the candidate WebSocket.
        """
        if self.closed or self._candidate is None:
            return [DropCandidate()]
        if packet.type == PING and packet.data == "probe":
            return [SendCandidate(PROBE_REPLY), ReleasePoll()]
        if packet.type == UPGRADE:
            self.transport = WEBSOCKET
            self._candidate = None
            self._upgrade_due = None
            return [Upgraded()]
        if packet.type == NOOP:
            return []
        return self.candidate_error()

    def candidate_error(self) -> list[Action]:
        """
        The candidate WebSocket sent something the upgrade does not expect,
        or could not be decoded: it is dropped, and the session stays on
        polling, free to take another candidate.
        """
        self.candidate_lost()
        return [DropCandidate()]

    def candidate_lost(self) -> None:
        """
        The candidate WebSocket went away before the upgrade.
        """
        self._candidate = None
        self._upgrade_due = None

    def transport_lost(self) -> list[Action]:
        """
        The client closed the session: it sent a close packet, or its
        transport went away (a WebSocket closed, a polling request failed).
        A polling client's ``GET`` gets a noop, and nothing that was queued:
        that ``GET`` may still be waiting, or yet to come when a ``POST``
        with the close packet overtook it, so the session lingers for it.
        """
        if self.closed:
            return []
        return self._close(TRANSPORT_CLOSE, NOOP_PACKET, drop_queued=True, linger=True)

    def protocol_error(self) -> list[Action]:
        """
        The active transport delivered something undecodable.  A waiting
        ``GET`` gets what is queued and a close packet; a broken client is
        not waited for.
        """
        if self.closed:
            return []
        return self._close(PARSE_ERROR)

    def transport_error(self) -> list[Action]:
        """
        The client broke a rule of its transport: a second ``GET`` while
        one is waiting, a ``POST`` over the size limit.  The session ends as
        when the server closes it.
        """
        if self.closed:
            return []
        return self._close(TRANSPORT_ERROR, linger=True)

    def overflow(self) -> list[Action]:
        """
        What is queued for the client passed the buffer limit: it does not
        read.  What is queued is dropped, and a waiting ``GET`` gets only a
        close packet; nothing is kept for a later one.
        """
        if self.closed:
            return []
        return self._close(TRANSPORT_ERROR, drop_queued=True)

    def close(self) -> list[Action]:
        """
        The server ends the session.  A polling client gets what is queued
        and a close packet, now or with its next ``GET``; a WebSocket is
        simply closed, as the reference server does (clients then treat it
        as a lost connection and reconnect).
        """
        if self.closed:
            return []
        return self._close(FORCED_CLOSE, linger=True)

    def _close(
        self,
        reason: str,
        last_packet: EncodedPacket = CLOSE_PACKET,
        drop_queued: bool = False,
        linger: bool = False,
    ) -> list[Action]:
        self.closed = True
        self._ping_due = self._pong_due = self._upgrade_due = None
        actions: list[Action] = []
        if self._candidate is not None:
            self._candidate = None
            actions.append(DropCandidate())
        if self.transport == POLLING:
            actions.append(Closed(reason, last_packet, drop_queued, linger))
        else:
            actions.append(Closed(reason))
        return actions
