"""
The Socket.IO v5 server the application codes against.

`SocketIOServer` owns an `EngineIOServer` and turns each Engine.IO session
into a `SocketIOConnection`, which decodes Socket.IO packets and keeps one
`Socket` per namespace the client joined.  Handlers run synchronously in the
reactor thread; a handler may return a Deferred, whose failures are logged.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

from attrs import define, field
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource

from realtimed.engineio.connection import EngineConnection
from realtimed.engineio.engine import EngineConfig, EngineIOServer
from realtimed.engineio.engine_packets import MESSAGE, EncodedPacket, websocket_frame
from realtimed.engineio.socket_packets import (
    ACK,
    BINARY_ACK,
    BINARY_EVENT,
    CONNECT,
    CONNECT_ERROR,
    DISCONNECT,
    EVENT,
    SocketPacket,
    SocketPacketDecoder,
    SocketProtocolError,
    encode,
)

log = Logger()

_MESSAGE = str(MESSAGE)

ConnectHandler = Callable[["Socket", Any], object]
EventHandler = Callable[["Socket", list[Any], "Callable[..., None] | None"], object]
#: A handler that also gets the JSON text of the event's data.
TextEventHandler = Callable[
    ["Socket", list[Any], "Callable[..., None] | None", "str | None"], object
]
AnyHandler = Callable[["Socket", str, list[Any], "Callable[..., None] | None"], object]
DisconnectHandler = Callable[["Socket", str], object]
AckCallback = Callable[..., object]


class ConnectRefused(Exception):
    """
    Raised (or failed with) by a connect handler to refuse the connection;
    the client gets ``connect_error`` with ``message`` (and ``data``).
    """

    def __init__(self, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data


def _engine_packets(packet: SocketPacket) -> list[EncodedPacket]:
    parts = encode(packet)
    return [_MESSAGE + str(parts[0]), *parts[1:]]


def _report(failure: Failure, what: str) -> None:
    log.failure("{what} failed", failure, what=what)


@define(eq=False)
class Namespace:
    """
    A Socket.IO namespace and the handlers registered on it.
    """

    name: str
    sockets: dict[str, Socket] = field(factory=dict)
    _connect: ConnectHandler | None = None
    _disconnect: DisconnectHandler | None = None
    #: every handler, called as a `TextEventHandler` (see `on`)
    _handlers: dict[str, TextEventHandler] = field(factory=dict)
    _any: AnyHandler | None = None

    def on_connect(self, handler: ConnectHandler) -> None:
        """
        ``handler(socket, auth)`` runs for every connection attempt, with
        the CONNECT packet's payload (or `None`).  It may return a Deferred.
        Raising or failing with `ConnectRefused` refuses the connection.
        Emits made before it returns are sent after the CONNECT reply.
        """
        self._connect = handler

    def on(
        self, event: str, handler: EventHandler | TextEventHandler, *, with_text: bool = False
    ) -> None:
        """
        ``handler(socket, args, ack)`` runs for every ``event``; ``ack`` is
        `None` unless the client asked for an acknowledgement, and calling
        ``ack(*values)`` sends it (once).  With ``with_text`` it runs as
        ``handler(socket, args, ack, text)``, ``text`` being the JSON text
        the event's data (``[event, *args]``) was decoded from, or `None`
        for an event that came with binary attachments.
        """
        if with_text:
            self._handlers[event] = cast(TextEventHandler, handler)
            return
        plain = cast(EventHandler, handler)

        def without_text(
            socket: Socket, args: list[Any], ack: Callable[..., None] | None, text: str | None
        ) -> object:
            return plain(socket, args, ack)

        self._handlers[event] = without_text

    def on_any(self, handler: AnyHandler) -> None:
        """
        ``handler(socket, event, args, ack)`` runs for events that have no
        handler of their own.
        """
        self._any = handler

    def on_disconnect(self, handler: DisconnectHandler) -> None:
        """
        ``handler(socket, reason)`` runs once for every socket the connect
        handler accepted, when it goes away (even if it went away before the
        acceptance): ``"client namespace disconnect"``, ``"server namespace
        disconnect"``, ``"transport close"``, ``"transport error"``,
        ``"ping timeout"``, ``"parse error"`` or ``"forced close"``.
        """
        self._disconnect = handler

    def admit(self, socket: Socket, auth: Any) -> Deferred[object]:
        """
        Run the connect handler for ``socket``, which sent ``auth``: the
        result fires when the handler accepts the socket, and fails when
        it refuses (with `ConnectRefused`) or breaks.
        """
        if self._connect is None:
            return succeed(None)
        return maybeDeferred(self._connect, socket, auth)

    def dispatch(
        self,
        socket: Socket,
        event: str,
        args: list[Any],
        ack: Callable[..., None] | None,
        text: str | None = None,
    ) -> None:
        """
        Run the handler of ``event``, or the catch-all, for ``socket``;
        what it raises or fails with is logged.  ``text`` is the JSON text
        of the event's data, when known.
        """
        handler = self._handlers.get(event)
        try:
            if handler is not None:
                result = handler(socket, args, ack, text)
            elif self._any is not None:
                result = self._any(socket, event, args, ack)
            else:
                return
        except Exception:
            log.failure("Handler for {event!r} failed", event=event)
            return
        if isinstance(result, Deferred):
            result.addErrback(_report, f"Handler for {event!r}")

    def disconnected(self, socket: Socket, reason: str) -> None:
        """
        Run the disconnect handler for ``socket``, gone for ``reason``;
        what it raises or fails with is logged.
        """
        handler = self._disconnect
        if handler is None:
            return
        try:
            result = handler(socket, reason)
        except Exception:
            log.failure("Disconnect handler failed")
            return
        if isinstance(result, Deferred):
            result.addErrback(_report, "Disconnect handler")

    def emit_many(self, sockets: Iterable[Socket], event: str, *args: Any) -> None:
        """
        Send one event to many sockets of this namespace.  The packet is
        encoded and framed once.  For each WebSocket recipient the frame
        bytes are appended to what the connection will write at the end of
        the reactor turn (one system call per connection and turn, however
        many broadcasts); each polling recipient queues the same encoded
        packet.  Sockets that are not connected are skipped.
        """
        packets = _engine_packets(SocketPacket(EVENT, self.name, [event, *args]))
        if len(packets) == 1:
            frames = websocket_frame(packets[0])
        else:
            frames = b"".join(map(websocket_frame, packets))
        for socket in sockets:
            if socket.connected:
                connection = socket.engine
                if not connection.defer_frames(frames):
                    connection.send_many(packets)
            else:
                socket.send_encoded(packets)

    def emit(self, event: str, *args: Any) -> None:
        """
        Send one event to every socket connected to this namespace.
        """
        self.emit_many(list(self.sockets.values()), event, *args)


@define(eq=False)
class Socket:
    """
    A client's presence in one namespace.
    """

    sid: str
    namespace: Namespace
    #: the Engine.IO session the socket lives on
    engine: EngineConnection
    _connection: SocketIOConnection
    #: free for the application
    data: dict[str, Any] = field(factory=dict)
    #: accepted by the connect handler, and not gone since
    connected: bool = False
    _acks: dict[int, AckCallback] = field(factory=dict)
    _next_ack: int = 0
    #: what was emitted while the connect handler ran, to follow the
    #: CONNECT reply; `None` once sent, or once the socket is gone
    _early: list[list[EncodedPacket]] | None = field(factory=list)
    #: why the socket went away while its connect handler was still running
    _gone: str | None = None
    #: the private id of its session, for connection state recovery
    pid: str | None = None

    def keep_session(self, pid: str, sid: str | None = None) -> None:
        """
        Before the socket is accepted: its session may be recovered with
        the private id C{pid}, which the CONNECT reply gives the client; a
        recovered socket takes back its former id C{sid}.
        """
        if self.connected:
            raise RuntimeError("the socket is connected already")
        self.pid = pid
        if sid is not None:
            self.sid = sid

    @property
    def headers(self) -> Mapping[str, str]:
        """
        The headers of the request that opened the Engine.IO session, with
        lower-case names.
        """
        return self.engine.headers

    @property
    def query(self) -> Mapping[str, str]:
        """
        The query parameters of the request that opened the session.
        """
        return self.engine.query

    @property
    def engine_sid(self) -> str:
        """
        The id of the underlying Engine.IO session.
        """
        return self.engine.sid

    def emit(self, event: str, *args: Any, ack: AckCallback | None = None) -> None:
        """
        Send an event; when ``ack`` is given, the client is asked to
        acknowledge and ``ack(*values)`` runs with its answer.
        """
        ack_id = None
        if ack is not None:
            ack_id = self._next_ack
            self._next_ack += 1
            self._acks[ack_id] = ack
        self._send(SocketPacket(EVENT, self.namespace.name, [event, *args], ack_id))

    def disconnect(self) -> None:
        """
        Leave the namespace from the server side.  When it was the last
        namespace of its connection, the Engine.IO session is closed too.
        """
        if self._connection.sockets.get(self.namespace.name) is not self:
            return
        self._send(SocketPacket(DISCONNECT, self.namespace.name))
        self._connection.leave(self, "server namespace disconnect")
        if not self._connection.sockets:
            self.engine.close()

    def send_encoded(self, packets: list[EncodedPacket]) -> None:
        """
        Send a packet already encoded as Engine.IO packets: at once when
        connected, after the CONNECT reply while the connect handler runs,
        not at all once gone.
        """
        if self.connected:
            self.engine.send_many(packets)
        elif self._early is not None:
            self._early.append(packets)

    def _send(self, packet: SocketPacket) -> None:
        self.send_encoded(_engine_packets(packet))

    def accepted(self) -> None:
        """
        The connect handler accepted the socket: it joins its namespace,
        and the client gets the CONNECT reply, then what was emitted
        meanwhile.  When the socket went away while the handler ran, the
        disconnect handler runs instead, so that the application can
        release what it set up.
        """
        if self._gone is not None:
            self.namespace.disconnected(self, self._gone)
            return
        self.namespace.sockets[self.sid] = self
        early, self._early = self._early, None
        self.connected = True
        reply: dict[str, str] = {"sid": self.sid}
        if self.pid is not None:
            reply["pid"] = self.pid
        self.engine.send_many(_engine_packets(SocketPacket(CONNECT, self.namespace.name, reply)))
        for packets in early or ():
            self.engine.send_many(packets)

    def left(self, reason: str) -> None:
        """
        The socket left its namespace, for ``reason``.  The disconnect
        handler runs if the socket was connected; if its connect handler
        is still running, once that accepts it.
        """
        if self.namespace.sockets.get(self.sid) is self:
            del self.namespace.sockets[self.sid]
        was_connected = self.connected
        if not was_connected and self._early is not None:
            self._gone = reason
        self.connected = False
        self._early = None
        self._acks.clear()
        if was_connected:
            self.namespace.disconnected(self, reason)

    def deliver_event(
        self, event: str, args: list[Any], ack_id: int | None, text: str | None = None
    ) -> None:
        """
        The client sent ``event``; ``ack_id`` is set when it asks for an
        acknowledgement, ``text`` is the JSON text of ``[event, *args]``
        when known.
        """
        ack = None if ack_id is None else self._ack_for(ack_id)
        self.namespace.dispatch(self, event, args, ack, text)

    def _ack_for(self, ack_id: int) -> Callable[..., None]:
        sent = False

        def ack(*values: Any) -> None:
            nonlocal sent
            if sent:
                return
            sent = True
            self._send(SocketPacket(ACK, self.namespace.name, list(values), ack_id))

        return ack

    def deliver_ack(self, ack_id: int, values: list[Any]) -> None:
        """
        The client acknowledged the event sent with ``ack_id``: its
        callback runs with ``values``.
        """
        callback = self._acks.pop(ack_id, None)
        if callback is None:
            return
        try:
            result = callback(*values)
        except Exception:
            log.failure("Acknowledgement callback failed")
            return
        if isinstance(result, Deferred):
            result.addErrback(_report, "Acknowledgement callback")


@define(eq=False)
class SocketIOConnection:
    """
    The Socket.IO side of one Engine.IO session.
    """

    server: SocketIOServer
    engine: EngineConnection
    sockets: dict[str, Socket] = field(factory=dict)
    _decoder: SocketPacketDecoder = field(init=False)
    _connect_timer: IDelayedCall | None = None

    def __attrs_post_init__(self) -> None:
        self._decoder = SocketPacketDecoder(max_attachment_bytes=self.server.config.max_payload)

    def start(self) -> None:
        """
        Begin waiting for a first CONNECT that is accepted: until then, as
        with Socket.IO's own ``connectTimeout``, the session has
        C{connect_timeout} seconds, however many CONNECTs are refused.
        """
        self._connect_timer = self.server.reactor.callLater(
            self.server.connect_timeout, self._connect_timed_out
        )

    def _connect_timed_out(self) -> None:
        self._connect_timer = None
        if not any(socket.connected for socket in self.sockets.values()):
            log.info(
                "Closing Engine.IO session {sid}: no accepted CONNECT in time",
                sid=self.engine.sid,
            )
            self.engine.close()

    def message(self, data: str | bytes) -> None:
        try:
            packet = self._decoder.feed(data)
        except SocketProtocolError as e:
            log.info(
                "Bad Socket.IO packet on {sid}: {error}",
                sid=self.engine.sid,
                error=str(e),
            )
            self.engine.close()
            return
        if packet is None:
            return
        kind = packet.type
        if kind == EVENT or kind == BINARY_EVENT:
            self._event(packet)
        elif kind == ACK or kind == BINARY_ACK:
            socket = self.sockets.get(packet.namespace)
            if socket is not None and packet.id is not None:
                socket.deliver_ack(packet.id, packet.data)
        elif kind == CONNECT:
            self._connect(packet.namespace, packet.data)
        elif kind == DISCONNECT:
            socket = self.sockets.get(packet.namespace)
            if socket is not None:
                self.leave(socket, "client namespace disconnect")
        else:
            self.engine.close()

    def closed(self, reason: str) -> None:
        if self._connect_timer is not None and self._connect_timer.active():
            self._connect_timer.cancel()
        self._connect_timer = None
        for socket in list(self.sockets.values()):
            self.leave(socket, reason)

    def _send(self, packet: SocketPacket) -> None:
        self.engine.send_many(_engine_packets(packet))

    def _connect(self, name: str, auth: Any) -> None:
        namespace = self.server.find_namespace(name)
        if namespace is None:
            self._send(SocketPacket(CONNECT_ERROR, name, {"message": "Invalid namespace"}))
            return
        if name in self.sockets:
            return
        socket = Socket(secrets.token_urlsafe(15), namespace, self.engine, self)
        self.sockets[name] = socket
        d = namespace.admit(socket, auth)
        d.addCallbacks(self._accepted, self._refused, callbackArgs=(socket,), errbackArgs=(socket,))
        d.addErrback(_report, "Accepting a connection")

    def _accepted(self, result: object, socket: Socket) -> None:
        socket.accepted()
        if socket.connected and self._connect_timer is not None:
            if self._connect_timer.active():
                self._connect_timer.cancel()
            self._connect_timer = None

    def _refused(self, failure: Failure, socket: Socket) -> None:
        name = socket.namespace.name
        if self.sockets.get(name) is socket:
            del self.sockets[name]
        if failure.check(ConnectRefused):
            error = failure.value
            body: dict[str, Any] = {"message": error.message}
            if error.data is not None:
                body["data"] = error.data
        else:
            log.failure("Connect handler failed", failure)
            body = {"message": "Internal server error"}
        self._send(SocketPacket(CONNECT_ERROR, name, body))

    def leave(self, socket: Socket, reason: str) -> None:
        """
        ``socket`` leaves its namespace, for ``reason``.
        """
        name = socket.namespace.name
        if self.sockets.get(name) is socket:
            del self.sockets[name]
        socket.left(reason)

    def _event(self, packet: SocketPacket) -> None:
        socket = self.sockets.get(packet.namespace)
        if socket is None or not socket.connected:
            return
        event, *args = packet.data
        socket.deliver_event(event, args, packet.id, packet.text)


@define(eq=False)
class SocketIOServer:
    """
    A Socket.IO v5 server over Engine.IO v4, with the Engine.IO settings
    of ``config``.  A connection that joins no namespace within
    ``connect_timeout`` seconds is closed.
    """

    reactor: IReactorTime
    config: EngineConfig = field(factory=EngineConfig)
    connect_timeout: float = field(default=45.0, kw_only=True)
    engine: EngineIOServer = field(init=False)
    _namespaces: dict[str, Namespace] = field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        self.engine = EngineIOServer(self.reactor, self._accept, self.config)
        # the main namespace always exists, as with the reference server
        self.namespace("/")

    def _accept(self, engine: EngineConnection) -> SocketIOConnection:
        connection = SocketIOConnection(self, engine)
        connection.start()
        return connection

    def find_namespace(self, name: str) -> Namespace | None:
        """
        The namespace called ``name``, if it exists.
        """
        return self._namespaces.get(name)

    def namespace(self, name: str = "/") -> Namespace:
        """
        The namespace called ``name``, created on first use.  Clients may
        only connect to namespaces that exist; ``/`` always does.
        """
        namespace = self._namespaces.get(name)
        if namespace is None:
            namespace = self._namespaces[name] = Namespace(name)
        return namespace

    def resource(self) -> Resource:
        """
        The resource to mount at ``/socket.io/``; it serves long-polling
        and WebSocket upgrades.
        """
        return self.engine.resource()

    def close(self) -> None:
        """
        Close every connection, for shutdown; disconnect handlers run with
        ``"forced close"``.
        """
        self.engine.close()
