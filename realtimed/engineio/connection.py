"""
One Engine.IO session's I/O: `EngineConnection` joins the pure
`EngineSession` state machine to the transports it runs on (the active
WebSocket, a candidate WebSocket during an upgrade, the waiting polling
``GET``), and keeps the polling outbox and the heartbeat timer.  The layer
above (Socket.IO, or the conformance echo app) supplies an `EngineHandler`
per session.

WebSocket frames are written pre-framed straight to the TCP transport (see
`realtimed.engineio.engine_packets.websocket_frame`), so a frame built once
can go to many connections.  What is broadcast during a reactor turn is held
(`EngineConnection.defer_frames`) and written in one system call at the
start of the next.

Long payloads: a polling ``POST`` may carry many packets (a megabyte of
one-byte packets is half a million of them).  Past `PACKETS_PER_TURN`
packets the rest wait for the next reactor turn, so one payload never
holds the reactor for long and other clients are served in between, as
they are between the reads of a WebSocket; the ``POST`` is answered once
all its packets are handled, and later ``POST`` requests of the session
queue behind it, in order.

Slow readers: a WebSocket connection registers a streaming producer with its
TCP transport, so it learns when the kernel stops taking data.  What is
written after that point is counted, and when the count passes
``max_buffer`` bytes the connection is dropped.  A polling outbox is capped
the same way.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

from attrs import define, field
from autobahn.twisted.websocket import WebSocketServerProtocol
from twisted.internet import tcp
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET, Request

from realtimed.engineio import session as states
from realtimed.engineio.engine_packets import (
    EncodedPacket,
    EngineProtocolError,
    decode_packet,
    encode_payload,
    split_payload,
    websocket_frame,
)
from realtimed.engineio.session import POLLING, EngineSession
from realtimed.engineio.websocket import EngineWebSocketProtocol
from realtimed.timers import Deadlines

log = Logger()

#: Packets of polling payloads one session has handled in one reactor turn;
#: the rest wait for the next turn.
PACKETS_PER_TURN: Final = 1000


@define(frozen=True)
class EngineConfig:
    """
    Settings shared by every session of a server (times in seconds).

    @ivar cors_origins: The browser origins allowed besides the server's
        own, with credentials; ``"*"`` allows every origin, without
        credentials.  When there are any, a request (WebSocket upgrades
        included) from an origin that is not allowed is refused with 403;
        requests without ``Origin`` (non-browser clients) are served.
    @ivar max_sessions: The most sessions open at once; 0: no limit.
    @ivar max_sessions_per_address: The most sessions open at once from
        one client address; 0: no limit.
    """

    ping_interval: float = 25.0
    ping_timeout: float = 20.0
    max_payload: int = 1_000_000
    max_buffer: int = 4_000_000
    cors_origins: tuple[str, ...] = ()
    max_sessions: int = 0
    max_sessions_per_address: int = 0


class SessionHost(Protocol):
    """
    What a connection needs of the server that holds its session
    (`realtimed.engineio.engine.EngineIOServer`).
    """

    reactor: IReactorTime
    config: EngineConfig
    sessions: dict[str, EngineConnection]
    #: every session's next heartbeat or upgrade deadline
    deadlines: Deadlines[EngineConnection]

    def hold(self, connection: EngineConnection) -> None:
        """
        ``connection`` holds frames to write at the start of the next turn.
        """

    def forget(self, connection: EngineConnection) -> None:
        """
        ``connection``'s session is closed and no longer known.
        """

    def linger(self, connection: EngineConnection) -> None:
        """
        Keep ``connection``, closed, for its client's next poll.
        """

    def bad_request(self, request: Request) -> bytes:
        """
        Refuse ``request`` as a bad request.
        """

    def unknown_session(self, request: Request) -> bytes:
        """
        Refuse ``request`` for a session that is not known.
        """


class EngineHandler(Protocol):
    """
    What the layer above provides for each session.
    """

    def message(self, data: str | bytes) -> None:
        """
        A ``message`` packet arrived.
        """

    def closed(self, reason: str) -> None:
        """
        The session ended, for ``reason``: one of the reasons defined in
        `realtimed.engineio.session`.
        """


@define(eq=False)
class EngineConnection:
    """
    One Engine.IO session and its transports.
    """

    server: SessionHost
    session: EngineSession
    headers: Mapping[str, str]
    query: Mapping[str, str]
    handler: EngineHandler | None = None
    #: WebSocket frames held until the end of the reactor turn (see
    #: `defer_frames`); `None` unless the session is on a WebSocket
    _pending: list[bytes] | None = None
    #: the kernel buffer of the active WebSocket is full
    _paused: bool = False
    _backlog: int = 0
    _writer: _TCPWriter | None = None
    _ws: EngineWebSocketProtocol | None = None
    _candidate: EngineWebSocketProtocol | None = None
    _poll: Request | None = None
    _outbox: list[EncodedPacket] = field(factory=list)
    _outbox_size: int = 0
    #: polling payloads whose packets are not all handled yet, oldest first
    #: made when first needed, and dropped once empty: an empty deque is
    #: some 770 bytes, and most sessions never need one
    _inbox: deque[_Arriving] | None = None
    _draining: IDelayedCall | None = None

    @property
    def sid(self) -> str:
        """
        The Engine.IO session id.
        """
        return self.session.sid

    @property
    def closed(self) -> bool:
        """
        Whether the session is over.
        """
        return self.session.closed

    # --- sending --------------------------------------------------------

    def send(self, packet: EncodedPacket) -> None:
        """
        Send one encoded packet on the active transport.
        """
        if self.session.closed:
            return
        if self._pending is not None:
            self.send_frames(websocket_frame(packet))
        else:
            self._queue((packet,))

    def send_many(self, packets: list[EncodedPacket]) -> None:
        """
        Send packets that belong together (a Socket.IO packet and its
        attachments).
        """
        if self.session.closed:
            return
        if self._pending is not None:
            self.send_frames(b"".join(map(websocket_frame, packets)))
        else:
            self._queue(packets)

    def send_frames(self, frames: bytes) -> None:
        """
        Write WebSocket frames to the active WebSocket now, or after the
        frames already held back for it.
        """
        pending = self._pending
        if pending:
            pending.append(frames)
        elif pending is not None:
            self._write_now(frames)

    def defer_frames(self, frames: bytes) -> bool:
        """
        Hold WebSocket frames until the end of the reactor turn, so that
        everything broadcast to this connection during the turn goes out in
        one system call.  Returns `False`, holding nothing, when the session
        is not on an open WebSocket: the caller sends the packets with
        `send_many` instead.

        A broadcast calls this for each of its recipients, so it does as
        little as it can: only the first frames of a turn tell the server.
        """
        pending = self._pending
        if pending is None:
            return False
        if not pending:
            self.server.hold(self)
        pending.append(frames)
        return True

    def flush(self) -> None:
        """
        Write the frames held back by `defer_frames`.
        """
        pending = self._pending
        if pending:
            data = pending[0] if len(pending) == 1 else b"".join(pending)
            pending.clear()
            self._write_now(data)

    def _write_now(self, data: bytes) -> None:
        if self._paused:
            self._backlog += len(data)
            if self._backlog > self.server.config.max_buffer:
                log.info("Dropping slow WebSocket reader {sid}", sid=self.sid)
                ws = self._ws
                self._pending = None
                self._apply(self.session.overflow())
                if ws is not None:
                    ws.dropConnection(abort=True)
                return
        writer = self._writer
        if writer is not None:
            writer.write(data)

    def _queue(self, packets: tuple[EncodedPacket, ...] | list[EncodedPacket]) -> None:
        self._outbox.extend(packets)
        for packet in packets:
            self._outbox_size += len(packet)
        if self._outbox_size > self.server.config.max_buffer:
            log.info("Dropping slow polling reader {sid}", sid=self.sid)
            self._apply(self.session.overflow())
            return
        if self._poll is not None and not self.session.upgrading:
            self._flush_poll()

    def _flush_poll(self) -> None:
        request = self._poll
        self._poll = None
        if request is None:
            return
        body = encode_payload(self._outbox)
        self._outbox.clear()
        self._outbox_size = 0
        request.setHeader(b"content-type", b"text/plain; charset=UTF-8")
        request.write(body)
        request.finish()

    def _release_poll(self) -> None:
        request = self._poll
        self._poll = None
        if request is not None:
            request.setHeader(b"content-type", b"text/plain; charset=UTF-8")
            request.write(states.NOOP_PACKET.encode("ascii"))
            request.finish()

    # --- closing --------------------------------------------------------

    def close(self) -> None:
        """
        End the session from the server side.  What is queued is still
        sent; a polling client then gets a ``close`` packet, a WebSocket is
        closed.
        """
        self._apply(self.session.close())

    # --- the WebSocket's send buffer -------------------------------------

    def pause_writing(self) -> None:
        """
        The kernel stopped taking data from the active WebSocket: what is
        written from now on is counted against ``max_buffer``.
        """
        self._paused = True

    def resume_writing(self) -> None:
        """
        The kernel takes data again.
        """
        self._paused = False
        self._backlog = 0

    # --- timers ---------------------------------------------------------

    def start(self, accept: Callable[[EngineConnection], EngineHandler]) -> None:
        """
        The open packet is on its way: the heartbeat starts, and ``accept``
        gives the session its handler.
        """
        self._reschedule()
        try:
            self.handler = accept(self)
        except Exception:
            log.failure("Session handler failed to start")
            self.close()

    def _reschedule(self) -> None:
        due = self.session.deadline()
        if due is None:
            self.server.deadlines.cancel(self)
        else:
            self.server.deadlines.set(self, due)

    def expire(self) -> None:
        """
        The session's deadline has passed (called by the server's
        `Deadlines`).
        """
        self._apply(self.session.expire(self.server.reactor.seconds()))

    def _catch_up(self) -> None:
        # a request may get here before an overdue timer has run
        due = self.session.deadline()
        if due is not None and due <= self.server.reactor.seconds():
            self.expire()

    # --- input ----------------------------------------------------------

    def _apply(self, actions: list[states.Action]) -> None:
        for action in actions:
            if isinstance(action, states.Deliver):
                if self.handler is not None:
                    try:
                        self.handler.message(action.data)
                    except Exception:
                        # a bug above this layer costs this session only
                        log.failure("Message handler failed on {sid}", sid=self.sid)
                        self.close()
            elif isinstance(action, states.Send):
                self.send(action.packet)
            elif isinstance(action, states.SendCandidate):
                candidate = self._candidate
                if candidate is not None and candidate.transport is not None:
                    candidate.transport.write(websocket_frame(action.packet))
            elif isinstance(action, states.ReleasePoll):
                self._release_poll()
            elif isinstance(action, states.Upgraded):
                self._upgraded()
            elif isinstance(action, states.DropCandidate):
                candidate, self._candidate = self._candidate, None
                if candidate is not None:
                    candidate.connection = None
                    candidate.sendClose()
            elif isinstance(action, states.Closed):
                self._closed(action)
        if not self.session.closed:
            self._reschedule()

    def _upgraded(self) -> None:
        ws, self._candidate = self._candidate, None
        assert ws is not None
        self._release_poll()
        self.attach(ws)
        pending, self._outbox = self._outbox, []
        self._outbox_size = 0
        if pending:
            self.send_many(pending)

    def attach(self, ws: EngineWebSocketProtocol) -> None:
        """
        Make ``ws`` the session's transport: a session opened on a
        WebSocket, or one that has just been upgraded to it.
        """
        self._ws = ws
        ws.connection = self
        self._pending = []
        self._writer = _TCPWriter.take_over(ws.transport, _WriteWatch(self))

    def adopt_candidate(self, ws: EngineWebSocketProtocol) -> bool:
        """
        ``ws`` asks to take this polling session over.  Returns whether it
        is now the candidate of an upgrade; when it is not (the session is
        not on polling, or has a candidate already), the caller closes it.
        """
        if not self.session.begin_upgrade(self.server.reactor.seconds()):
            return False
        self._candidate = ws
        ws.connection = self
        self._reschedule()
        return True

    def _closed(self, closed: states.Closed) -> None:
        self.server.deadlines.cancel(self)
        self.server.forget(self)
        ws, self._ws = self._ws, None
        self.flush()
        self._pending = None
        self._writer = None
        if ws is not None:
            ws.connection = None
            if ws.state == WebSocketServerProtocol.STATE_OPEN:
                ws.sendClose()
        # what a polling client is told (see `states.Closed`)
        if closed.drop_queued:
            self._outbox.clear()
        if closed.last_packet is not None and (self._poll is not None or closed.linger):
            self._outbox.append(closed.last_packet)
            if self._poll is not None:
                self._flush_poll()
            else:
                self.server.linger(self)
        self._poll = None
        self._outbox_size = 0
        handler, self.handler = self.handler, None
        if handler is not None:
            try:
                handler.closed(closed.reason)
            except Exception:
                log.failure("Session close handler failed")

    def poll(self, request: Request) -> bytes | int:
        """
        A polling ``GET``.
        """
        self._catch_up()
        if self.session.closed:
            if self.server.sessions.get(self.sid) is not self:
                return self.server.unknown_session(request)
            # lingering after the session closed: hand over the rest
            self.server.forget(self)
            self._poll = request
            self._flush_poll()
            return NOT_DONE_YET
        if self.session.transport != POLLING:
            return self.server.bad_request(request)
        if self._poll is not None:
            self._apply(self.session.transport_error())
            return self.server.bad_request(request)
        self._poll = request
        request.notifyFinish().addErrback(self._poll_lost, request)
        if self.session.upgrading:
            self._release_poll()
        elif self._outbox:
            self._flush_poll()
        return NOT_DONE_YET

    def _poll_lost(self, failure: Failure, request: Request) -> None:
        if self._poll is request:
            self._poll = None

    def post(self, request: Request) -> bytes | int:
        """
        A polling ``POST``.
        """
        self._catch_up()
        if self.session.closed or self.session.transport != POLLING:
            return self.server.bad_request(request)
        content = request.content
        size = 0
        if content is not None:
            # twisted.web has already stored the body (in a file when it is
            # large); measure it before reading it into memory
            size = content.seek(0, 2)
            content.seek(0)
        if size > self.server.config.max_payload:
            self._apply(self.session.transport_error())
            request.setResponseCode(413)
            return b""
        body = content.read() if content is not None else b""
        try:
            parts = split_payload(body)
        except EngineProtocolError as e:
            log.info("Bad polling payload from {sid}: {error}", sid=self.sid, error=str(e))
            self._apply(self.session.protocol_error())
            return self.server.bad_request(request)
        if not self._inbox and len(parts) <= PACKETS_PER_TURN:
            now = self.server.reactor.seconds()
            for part in parts:
                self._apply(self.session.receive(decode_packet(part), now))
                if self.session.closed:
                    break
            request.setHeader(b"content-type", b"text/html")
            return b"ok"
        arriving = _Arriving(parts, request)
        request.notifyFinish().addErrback(self._post_lost, arriving)
        if self._inbox is None:
            self._inbox = deque()
        self._inbox.append(arriving)
        if self._draining is None:
            self._drain()
        return NOT_DONE_YET

    def _drain(self) -> None:
        """
        Handle up to L{PACKETS_PER_TURN} waiting packets, answer the
        ``POST`` requests whose packets are all handled, and come back next
        turn for the rest.
        """
        self._draining = None
        self._catch_up()
        inbox = self._inbox
        if inbox is None:
            return
        budget = PACKETS_PER_TURN
        now = self.server.reactor.seconds()
        while inbox:
            arriving = inbox[0]
            parts = arriving.parts
            handled = arriving.handled
            while handled < len(parts) and budget and not self.session.closed:
                packet = decode_packet(parts[handled])
                handled += 1
                budget -= 1
                self._apply(self.session.receive(packet, now))
            arriving.handled = handled
            if handled < len(parts) and not self.session.closed:
                break
            inbox.popleft()
            self._answer(arriving)
        if inbox:
            self._draining = self.server.reactor.callLater(0, self._drain)
        else:
            self._inbox = None

    def _answer(self, arriving: _Arriving) -> None:
        """
        Answer a ``POST`` whose packets are handled: ``ok``, or, when the
        session closed before any of them, the answer to a ``POST`` for a
        closed session.
        """
        if arriving.gone:
            return
        request = arriving.request
        if arriving.handled:
            request.setHeader(b"content-type", b"text/html")
            body = b"ok"
        else:
            body = self.server.bad_request(request)
        request.write(body)
        request.finish()

    def _post_lost(self, failure: Failure, arriving: _Arriving) -> None:
        arriving.gone = True

    def ws_message(self, ws: EngineWebSocketProtocol, data: str | bytes) -> None:
        """
        A message arrived on one of this session's WebSockets.
        """
        try:
            packet = decode_packet(data)
        except EngineProtocolError as e:
            log.info("Bad WebSocket packet from {sid}: {error}", sid=self.sid, error=str(e))
            if ws is self._ws:
                self._apply(self.session.protocol_error())
            else:
                self._apply(self.session.candidate_error())
            return
        now = self.server.reactor.seconds()
        if ws is self._ws:
            self._apply(self.session.receive(packet, now))
        elif ws is self._candidate:
            self._apply(self.session.receive_candidate(packet, now))

    def ws_closing(self, ws: EngineWebSocketProtocol) -> None:
        """
        A close frame is about to go out on one of this session's
        WebSockets: what is held goes first, nothing may follow.
        """
        if ws is self._ws:
            self.flush()
            self._writer = None

    def ws_lost(self, ws: EngineWebSocketProtocol) -> None:
        """
        One of this session's WebSockets closed.
        """
        if ws is self._ws:
            self._ws = None
            self._pending = None
            self._writer = None
            self._apply(self.session.transport_lost())
        elif ws is self._candidate:
            self._candidate = None
            self.session.candidate_lost()
            self._reschedule()


@define(eq=False)
class _Arriving:
    """
    A polling ``POST`` whose packets are being handled.

    @ivar handled: How many of C{parts} are handled.
    @ivar gone: The client went away: there is no one to answer.
    """

    parts: list[EncodedPacket]
    request: Request
    handled: int = 0
    gone: bool = False


@define(eq=False)
class _WriteWatch:
    """
    A streaming producer registered with a WebSocket's TCP transport only
    to learn when its send buffer is full.
    """

    connection: EngineConnection

    def pauseProducing(self) -> None:
        self.connection.pause_writing()

    def resumeProducing(self) -> None:
        self.connection.resume_writing()

    def stopProducing(self) -> None:
        self.connection.pause_writing()


@define(eq=False)
class _TCPWriter:
    """
    Writes to the TCP transport of the WebSocket that carries a session.

    This is the one place in the package that touches Twisted's private
    state, for two things Twisted has no public way to do:

    - write straight to the socket when Twisted's write buffer is empty
      (``dataBuffer`` and ``_tempDataBuffer`` of a `tcp.Connection`): one
      system call and no poller changes, where ``transport.write`` would
      queue the bytes for the next reactor turn;
    - take over as the transport's producer from twisted.web's channel,
      which is still registered (as ``producer``, or ``_producer`` under
      TLS) on the connection it handed over to the WebSocket.
    """

    _transport: Any
    #: the transport, when it is a plain TCP connection
    _raw: tcp.Connection | None

    @classmethod
    def take_over(cls, transport: Any, watch: _WriteWatch) -> _TCPWriter:
        """
        Write to ``transport`` from now on, with ``watch`` as its
        streaming producer.
        """
        raw = None
        if isinstance(transport, tcp.Connection):
            raw = transport
            transport.setTcpNoDelay(True)
        if getattr(transport, "producer", None) or getattr(transport, "_producer", None):
            transport.unregisterProducer()
        transport.registerProducer(watch, True)
        return cls(transport, raw)

    def write(self, data: bytes) -> None:
        """
        Write ``data`` now if the kernel takes it; whatever it does not
        take is queued by Twisted as usual.
        """
        raw = self._raw
        if raw is not None and not raw.dataBuffer and not raw._tempDataBuffer:
            try:
                sent = raw.socket.send(data)
            except OSError:
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        self._transport.write(data)
