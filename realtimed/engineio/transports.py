"""
Engine.IO v4 over Twisted: HTTP long-polling through twisted.web and
WebSocket through Autobahn, both served by one resource.

`EngineIOServer` owns the sessions.  Each session is an `EngineConnection`:
the pure `EngineSession` state machine plus the I/O it needs (the active
WebSocket, a candidate WebSocket during an upgrade, the waiting polling
``GET``, the polling outbox and the heartbeat timer).  The layer above
(Socket.IO, or the conformance echo app) supplies an `EngineHandler` per
session through the ``accept`` callable given to the server.

WebSocket frames are written pre-framed straight to the TCP transport (see
`realtimed.engineio.engine_packets.websocket_frame`), so a frame built once
can go to many connections.  Autobahn still parses incoming frames and
handles the opening and closing handshakes; permessage-deflate is not
offered, which is what makes sharing frames possible.

Slow readers: a WebSocket connection registers a streaming producer with its
TCP transport, so it learns when the kernel stops taking data.  What is
written after that point is counted, and when the count passes
``max_buffer`` bytes the connection is dropped.  A polling outbox is capped
the same way.
"""

from __future__ import annotations

import json
import secrets
import sys
from collections import deque
from collections.abc import Callable, Mapping
from types import FunctionType
from typing import Any, Protocol

from attrs import define, field
from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet import tcp
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from realtimed.engineio import session as states
from realtimed.engineio.engine_packets import (
    EncodedPacket,
    EngineProtocolError,
    decode_packet,
    decode_payload,
    encode_payload,
    open_packet,
    websocket_frame,
)
from realtimed.engineio.session import POLLING, WEBSOCKET, EngineSession

log = Logger()

# error codes of the reference server, sent as JSON with HTTP errors
UNKNOWN_TRANSPORT = (0, "Transport unknown")
UNKNOWN_SID = (1, "Session ID unknown")
BAD_HANDSHAKE_METHOD = (2, "Bad handshake method")
BAD_REQUEST = (3, "Bad request")
UNSUPPORTED_VERSION = (5, "Unsupported protocol version")


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
        The session ended (see `realtimed.engineio.session.Closed`).
        """


@define(frozen=True)
class EngineConfig:
    """
    Settings shared by every session of a server (times in seconds).
    """

    ping_interval: float = 25.0
    ping_timeout: float = 20.0
    max_payload: int = 1_000_000
    max_buffer: int = 4_000_000
    cors_origins: tuple[str, ...] = ()


def _headers_of(request: Request) -> dict[str, str]:
    return {
        name.decode("latin-1").lower(): ", ".join(v.decode("latin-1") for v in values)
        for name, values in request.requestHeaders.getAllRawHeaders()
    }


@define(eq=False)
class EngineConnection:
    """
    One Engine.IO session and its transports.
    """

    server: EngineIOServer
    session: EngineSession
    headers: Mapping[str, str]
    query: Mapping[str, str]
    handler: EngineHandler | None = None
    #: WebSocket frames held until the end of the reactor turn (see
    #: `defer_frames`); `None` unless the session is on a WebSocket
    pending: list[bytes] | None = None
    #: the kernel buffer of the active WebSocket is full
    _paused: bool = False
    _backlog: int = 0
    _writer: _TCPWriter | None = None
    _ws: EngineWebSocketProtocol | None = None
    _candidate: EngineWebSocketProtocol | None = None
    _poll: Request | None = None
    _outbox: list[EncodedPacket] = field(factory=list)
    _outbox_size: int = 0
    _timer: IDelayedCall | None = None

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
        if self.pending is not None:
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
        if self.pending is not None:
            self.send_frames(b"".join(map(websocket_frame, packets)))
        else:
            self._queue(packets)

    def send_prepared(self, packets: list[EncodedPacket], frames: bytes) -> None:
        """
        Send packets for which the WebSocket frames were already built.
        """
        if self.pending is not None:
            self.defer_frames(frames)
        elif not self.session.closed:
            self._queue(packets)

    def send_frames(self, frames: bytes) -> None:
        """
        Write WebSocket frames to the active WebSocket now, or after the
        frames already held back for it.
        """
        pending = self.pending
        if pending:
            pending.append(frames)
        elif pending is not None:
            self._write_now(frames)

    def defer_frames(self, frames: bytes) -> None:
        """
        Hold WebSocket frames until the end of the reactor turn, so that
        everything broadcast to this connection during the turn goes out in
        one system call.
        """
        pending = self.pending
        if pending is None:
            return
        if not pending:
            self.server.hold(self)
        pending.append(frames)

    def flush(self) -> None:
        """
        Write the frames held back by `defer_frames`.
        """
        pending = self.pending
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
                self.pending = None
                self._apply(self.session.transport_lost(), "transport error")
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
            self._outbox.clear()
            self._outbox_size = 0
            self._apply(self.session.transport_lost(), "transport error")
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
        timer = self._timer
        if timer is not None and timer.active():
            if due is not None and timer.getTime() == due:
                return
            timer.cancel()
        self._timer = None
        if due is not None:
            clock = self.server.reactor
            self._timer = clock.callLater(max(0.0, due - clock.seconds()), self._expire)

    def _expire(self) -> None:
        self._timer = None
        self._apply(self.session.expire(self.server.reactor.seconds()))

    def _catch_up(self) -> None:
        # a request may get here before an overdue timer has run
        due = self.session.deadline()
        if due is not None and due <= self.server.reactor.seconds():
            self._expire()

    # --- input ----------------------------------------------------------

    def _apply(self, actions: list[states.Action], reason: str | None = None) -> None:
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
                if self.pending is not None:
                    self.send_frames(websocket_frame(action.packet))
                else:
                    self._queue((action.packet,))
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
                self._closed(reason or action.reason)
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
        self.pending = []
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

    def _closed(self, reason: str) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.server.forget(self)
        ws, self._ws = self._ws, None
        self.flush()
        self.pending = None
        self._writer = None
        if ws is not None:
            ws.connection = None
            if ws.state == WebSocketServerProtocol.STATE_OPEN:
                ws.sendClose()
        request, self._poll = self._poll, None
        if request is not None:
            if reason == "transport close":
                self._outbox = [states.NOOP_PACKET]
            elif not self._outbox or self._outbox[-1] != states.CLOSE_PACKET:
                self._outbox.append(states.CLOSE_PACKET)
            self._poll = request
            self._flush_poll()
        elif self.session.transport == POLLING and reason not in (
            "ping timeout",
            "parse error",
        ):
            # The client has yet to fetch what was queued and the close
            # packet; or it closed the session with a POST that overtook
            # its own GET, which still deserves its noop.
            if reason == "transport close":
                self._outbox = [states.NOOP_PACKET]
            if self._outbox:
                self.server.linger(self)
        self._outbox_size = 0
        handler, self.handler = self.handler, None
        if handler is not None:
            try:
                handler.closed(reason)
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
            self._apply(self.session.close(), "transport error")
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

    def post(self, request: Request) -> bytes:
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
            self._apply(self.session.close(), "transport error")
            request.setResponseCode(413)
            return b""
        body = content.read() if content is not None else b""
        try:
            packets = decode_payload(body)
        except EngineProtocolError as e:
            log.info("Bad polling payload from {sid}: {error}", sid=self.sid, error=str(e))
            self._apply(self.session.protocol_error())
            return self.server.bad_request(request)
        now = self.server.reactor.seconds()
        for packet in packets:
            self._apply(self.session.receive(packet, now))
            if self.session.closed:
                break
        request.setHeader(b"content-type", b"text/html")
        return b"ok"

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
                self._apply([states.DropCandidate()])
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
            self.pending = None
            self._writer = None
            self._apply(self.session.transport_lost())
        elif ws is self._candidate:
            self._candidate = None
            self.session.candidate_lost()
            self._reschedule()


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


#: what Autobahn stores on a server protocol only for its opening handshake
_HANDSHAKE_LEFTOVERS = (
    "http_request_data",
    "http_response_data",
    "http_status_line",
    "http_headers",
    "http_request_uri",
    "http_request_path",
    "http_request_params",
    "http_request_host",
    "websocket_origin",
    "websocket_protocols",
    "websocket_extensions",
    "_wskey",
    # the peer's address details, filled in when the connection was made;
    # the protocol keeps ``peer``, the address as text
    "_transport_details",
)


class _QueueOnDemand:
    """
    Autobahn's ``send_queue``, made only when it is used: Autobahn gives
    each connection an empty deque (some 600 bytes) for chopped and
    synchronous sends, which this server never makes.
    """

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        queue: deque[Any] = deque()
        instance.__dict__["send_queue"] = queue
        return queue


#: state Autobahn sets on every connection, with the value it has on an
#: idle open WebSocket; these are class attributes of the protocol too, so an
#: open connection need not hold them itself (see `_compact`)
_IDLE_DEFAULTS: dict[str, object] = {
    **dict.fromkeys(_HANDSHAKE_LEFTOVERS),
    **dict.fromkeys(
        (
            "_perMessageCompress",
            "trackedTimings",
            "wasNotCleanReason",
            "localCloseCode",
            "localCloseReason",
            "remoteCloseCode",
            "remoteCloseReason",
            "openHandshakeTimeoutCall",
            "closeHandshakeTimeoutCall",
            "autoPingTimeoutCall",
            "autoPingPending",
            "autoPingPendingCall",
            "autoPingPendingSent",
            "websocket_protocol_in_use",
            "current_frame",
        )
    ),
    **dict.fromkeys(
        (
            "triggered",
            "wasMaxFramePayloadSizeExceeded",
            "wasMaxMessagePayloadSizeExceeded",
            "closedByMe",
            "failedByMe",
            "droppedByMe",
            "wasClean",
            "wasServerConnectionDropTimeout",
            "wasOpenHandshakeTimeout",
            "wasCloseHandshakeTimeout",
            "wasServingFlashSocketPolicyFile",
            "inside_message",
        ),
        False,
    ),
    "send_state": 0,
    "autoPingPendingSeq": 0,
    "data": b"",
}

#: headers whose values differ from one connection to the next; the others
#: mostly repeat and are shared
_UNIQUE_HEADERS = frozenset(("sec-websocket-key", "authorization", "cookie"))


def _shared_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """
    The handshake headers with lower-case names, the names (and the values
    that repeat between connections) shared with other connections rather
    than held once per connection.
    """
    shared = {}
    for name, value in headers.items():
        name = sys.intern(name.lower())
        if name not in _UNIQUE_HEADERS and isinstance(value, str):
            value = sys.intern(value)
        shared[name] = value
    return shared


class EngineWebSocketProtocol(WebSocketServerProtocol):
    """
    A WebSocket that carries one Engine.IO session, either from the start
    or as the target of an upgrade from polling.
    """

    server: EngineIOServer
    connection: EngineConnection | None = None
    _sid: str | None = None
    _headers: dict[str, str]
    _query: dict[str, str]

    def onConnect(self, request: ConnectionRequest) -> None:
        params = request.params
        if params.get("EIO") != ["4"] or params.get("transport") != ["websocket"]:
            raise ConnectionDeny(400, "Bad request")
        sid = params.get("sid")
        self._sid = sid[0] if sid else None
        self._headers = _shared_headers(request.headers)
        self._query = {sys.intern(k): v[0] for k, v in params.items() if v}

    def onOpen(self) -> None:
        # Autobahn keeps the opening handshake (the raw request and
        # response, the parsed headers, status line and query) on the
        # protocol for as long as the connection lives, and never reads them
        # once the connection is open.  The session has its own copy of the
        # headers and query.
        for name in _HANDSHAKE_LEFTOVERS:
            setattr(self, name, None)
        sid, headers, query = self._sid, self._headers, self._query
        del self._sid, self._headers, self._query
        self._compact()
        self.server.websocket_opened(self, sid, headers, query)

    def _compact(self) -> None:
        """
        Leave out of the instance what only repeats the class's idle
        defaults, and rebuild the instance dictionary at the size of what
        is left: Autobahn sets some sixty attributes per connection, which
        makes a dictionary twice the size of one for thirty.  A later
        assignment puts an attribute back in the instance as usual.
        """
        attributes = self.__dict__
        for name, value in _IDLE_DEFAULTS.items():
            if attributes.get(name, attributes) is value:
                del attributes[name]
        queue = attributes.get("send_queue")
        if queue is not None and not queue:
            del attributes["send_queue"]
        self.__dict__ = dict(attributes)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        connection = self.connection
        if connection is None:
            return
        if isBinary:
            connection.ws_message(self, payload)
        else:
            connection.ws_message(self, payload.decode("utf-8"))

    def sendCloseFrame(
        self, code: int | None = None, reasonUtf8: bytes | None = None, isReply: bool = False
    ) -> None:
        connection = self.connection
        if connection is not None:
            connection.ws_closing(self)
        super().sendCloseFrame(code, reasonUtf8, isReply)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        connection, self.connection = self.connection, None
        if connection is not None:
            connection.ws_lost(self)


for _name, _value in _IDLE_DEFAULTS.items():
    setattr(EngineWebSocketProtocol, _name, _value)
del _name, _value
EngineWebSocketProtocol.send_queue = _QueueOnDemand()  # type: ignore[assignment]


@define(eq=False)
class EngineIOServer:
    """
    Engine.IO sessions served through `resource`.

    ``accept(connection)`` is called for every new session, after the open
    packet has been sent, and returns the session's `EngineHandler`.
    """

    reactor: IReactorTime
    accept: Callable[[EngineConnection], EngineHandler]
    config: EngineConfig = field(factory=EngineConfig)
    sessions: dict[str, EngineConnection] = field(factory=dict)
    #: the Autobahn factory of this server's WebSocket protocols
    websocket_factory: WebSocketServerFactory = field(init=False)
    _websocket_resource: WebSocketResource = field(init=False)
    _lingering: dict[str, IDelayedCall] = field(factory=dict, init=False)
    _held: list[EngineConnection] = field(factory=list, init=False)
    _flush_call: IDelayedCall | None = field(default=None, init=False)
    _stopping: bool = field(default=False, init=False)

    def __attrs_post_init__(self) -> None:
        server = self

        class Protocol(EngineWebSocketProtocol):
            pass

        Protocol.server = server
        factory = WebSocketServerFactory()
        factory.protocol = Protocol
        factory.setProtocolOptions(
            maxFramePayloadSize=self.config.max_payload,
            maxMessagePayloadSize=self.config.max_payload,
            autoPingInterval=0,
            openHandshakeTimeout=10,
            closeHandshakeTimeout=2,
            # answer protocol violations (an oversize message: 1009) with a
            # close frame rather than by just dropping the connection
            failByDrop=False,
        )
        # Autobahn copies each option from the factory onto every new
        # protocol, and formats the whole list with pformat for a debug line
        # whether or not debug logging is on: about a tenth of a millisecond
        # per connection.  The options never change after this point, so
        # they are settled once on the class, leaving nothing to copy.
        for name in WebSocketServerProtocol.CONFIG_ATTRS:
            value = getattr(factory, name)
            if isinstance(value, FunctionType):
                # a plain function (a callback option) must not become a
                # method of the class
                value = staticmethod(value)
            setattr(Protocol, name, value)
        Protocol.CONFIG_ATTRS = []
        factory.reactor = self.reactor
        self.websocket_factory = factory
        self._websocket_resource = WebSocketResource(factory)

    def resource(self) -> Resource:
        """
        The resource to mount at the Engine.IO path (``/engine.io/`` or
        ``/socket.io/``).
        """
        return EngineIOResource(self)

    # --- sessions -------------------------------------------------------

    def _new_sid(self) -> str:
        sid = secrets.token_urlsafe(15)
        while sid in self.sessions:
            sid = secrets.token_urlsafe(15)
        return sid

    def _open(
        self, transport: str, headers: Mapping[str, str], query: Mapping[str, str]
    ) -> tuple[EngineConnection, str]:
        config = self.config
        sid = self._new_sid()
        session = EngineSession.start(
            sid,
            transport,
            config.ping_interval,
            config.ping_timeout,
            self.reactor.seconds(),
        )
        connection = EngineConnection(self, session, headers, query)
        self.sessions[sid] = connection
        upgrades = ["websocket"] if transport == POLLING else []
        handshake = open_packet(
            sid, upgrades, config.ping_interval, config.ping_timeout, config.max_payload
        )
        return connection, handshake

    def hold(self, connection: EngineConnection) -> None:
        """
        ``connection`` has frames held back to write at the start of the
        next reactor turn.
        """
        self._held.append(connection)
        if self._flush_call is None:
            self._flush_call = self.reactor.callLater(0, self.flush)

    def held(self) -> list[EngineConnection]:
        """
        The connections with frames held for the end of this turn; a
        broadcast appends to it directly, then calls `flush_soon`.
        """
        return self._held

    def flush_soon(self) -> None:
        """
        Make sure held frames are written at the start of the next turn.
        """
        if self._flush_call is None and self._held:
            self._flush_call = self.reactor.callLater(0, self.flush)

    def flush(self) -> None:
        """
        Write out the frames held back during this reactor turn (this runs
        by itself at the start of the next turn).
        """
        call, self._flush_call = self._flush_call, None
        if call is not None and call.active():
            call.cancel()
        held, self._held = self._held, []
        for connection in held:
            connection.flush()

    def forget(self, connection: EngineConnection) -> None:
        """
        Nothing more is kept of ``connection``, a closed session: its sid
        is unknown from now on.
        """
        if self.sessions.get(connection.sid) is connection:
            del self.sessions[connection.sid]
        timer = self._lingering.pop(connection.sid, None)
        if timer is not None and timer.active():
            timer.cancel()

    def linger(self, connection: EngineConnection) -> None:
        """
        Keep ``connection``, a closed polling session, for a heartbeat's
        worth of time, so that the client's next ``GET`` still collects
        what is queued for it.
        """
        if self._stopping:
            return
        self.sessions[connection.sid] = connection
        self._lingering[connection.sid] = self.reactor.callLater(
            self.config.ping_interval + self.config.ping_timeout,
            self.forget,
            connection,
        )

    def close(self) -> None:
        """
        Close every session (for shutdown): each client gets a close
        packet where its transport allows, and no state is kept.
        """
        self._stopping = True
        try:
            for connection in list(self.sessions.values()):
                connection.close()
                self.forget(connection)
        finally:
            self._stopping = False

    def websocket_opened(
        self,
        ws: EngineWebSocketProtocol,
        sid: str | None,
        headers: Mapping[str, str],
        query: Mapping[str, str],
    ) -> None:
        """
        ``ws`` finished its opening handshake, with these ``headers`` and
        ``query``: it starts a session, or, with the ``sid`` of a polling
        session, offers to take that session over.
        """
        if sid is None:
            connection, handshake = self._open(WEBSOCKET, headers, query)
            connection.attach(ws)
            connection.send(handshake)
            connection.start(self.accept)
            return
        existing = self.sessions.get(sid)
        if existing is None or not existing.adopt_candidate(ws):
            ws.sendClose()

    # --- HTTP -----------------------------------------------------------

    def bad_request(self, request: Request) -> bytes:
        """
        Refuse ``request`` as a bad request; returns the body.
        """
        return self._error(request, BAD_REQUEST)

    def unknown_session(self, request: Request) -> bytes:
        """
        Refuse ``request`` for a session that is not (or no longer) known;
        returns the body.
        """
        return self._error(request, UNKNOWN_SID)

    def _error(self, request: Request, error: tuple[int, str]) -> bytes:
        code, message = error
        request.setResponseCode(400)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"code": code, "message": message}).encode("ascii")

    def _cors(self, request: Request) -> None:
        origins = self.config.cors_origins
        raw = request.getHeader(b"origin")
        if raw is None or not origins:
            return
        origin = raw.decode("latin-1")
        if "*" in origins or origin in origins:
            request.setHeader(b"access-control-allow-origin", raw)
            request.setHeader(b"access-control-allow-credentials", b"true")
            request.setHeader(b"vary", b"Origin")

    def render(self, request: Request) -> bytes | int:
        """
        Serve one request at the Engine.IO path.
        """
        self._cors(request)
        method = request.method
        if method == b"OPTIONS":
            request.setResponseCode(204)
            request.setHeader(b"access-control-allow-methods", b"GET, POST, OPTIONS")
            wanted = request.getHeader(b"access-control-request-headers")
            if wanted:
                request.setHeader(b"access-control-allow-headers", wanted)
            return b""
        args: dict[bytes, list[bytes]] = request.args or {}
        query = {k.decode("latin-1"): v[0].decode("latin-1") for k, v in args.items() if v}
        if query.get("EIO") != "4":
            return self._error(request, UNSUPPORTED_VERSION)
        transport = query.get("transport")
        if transport not in (POLLING, WEBSOCKET):
            return self._error(request, UNKNOWN_TRANSPORT)
        sid = query.get("sid")
        if transport == WEBSOCKET:
            upgrade = (request.getHeader(b"upgrade") or b"").lower()
            if method != b"GET" or upgrade != b"websocket":
                return self._error(request, BAD_REQUEST)
            if sid is not None and sid not in self.sessions:
                return self._error(request, UNKNOWN_SID)
            result: bytes | int = self._websocket_resource.render(request)
            return result
        if sid is None:
            if method != b"GET":
                return self._error(request, BAD_HANDSHAKE_METHOD)
            opened, handshake = self._open(POLLING, _headers_of(request), query)
            request.setHeader(b"content-type", b"text/plain; charset=UTF-8")
            request.write(handshake.encode("utf-8"))
            request.finish()
            opened.start(self.accept)
            return NOT_DONE_YET
        connection = self.sessions.get(sid)
        if connection is None:
            return self._error(request, UNKNOWN_SID)
        if method == b"GET":
            return connection.poll(request)
        if method == b"POST":
            return connection.post(request)
        return self._error(request, BAD_REQUEST)


class EngineIOResource(Resource):
    """
    The twisted.web face of an `EngineIOServer`: polling requests and
    WebSocket upgrades at one path.
    """

    isLeaf = True

    def __init__(self, server: EngineIOServer) -> None:
        super().__init__()
        self._server = server

    def render(self, request: Request) -> Any:
        return self._server.render(request)
