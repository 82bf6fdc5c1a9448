"""
The WebSocket side of Engine.IO, on Autobahn: `EngineWebSocketProtocol`
carries one session, either from the start or as the target of an upgrade
from polling, and `websocket_factory` builds the protocol class and factory
of one server.

Autobahn parses incoming frames and handles the opening and closing
handshakes; outgoing frames bypass it (see
`realtimed.engineio.connection`).  Permessage-deflate is not offered, which
is what makes sharing frames between connections possible.

The rest of this module keeps the per-connection cost of Autobahn low, for
servers that hold many idle WebSockets: the options are settled once on the
protocol class instead of being copied (and pretty-printed) per connection;
the opening handshake is dropped once the WebSocket is open; state that only
repeats the class's idle defaults is left out of the instance; the send
queue is made only when used; the futures of the opening and closing
handshakes are not kept; traffic is not counted; text messages are
checked as UTF-8 whole rather than through a validator per connection; the
unmasker of a frame is dropped at its end; and header names and repeating
values are shared between connections.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Mapping
from types import FunctionType
from typing import Any, Protocol

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import Deferred

#: Bytes waiting to be sent on a connection past which its pings are not
#: answered.  A client that sends pings and never reads the pongs would
#: otherwise have the server keep every pong, without end; RFC 6455 lets a
#: server skip pongs to pings it has not had the chance to answer.
PONG_BACKLOG = 64 * 1024


def unsent(transport: Any) -> int:
    """
    How many bytes written to C{transport} (or to the connection under it,
    for TLS) the kernel has not taken yet.  Twisted keeps them in private
    state of its file descriptors (as `realtimed.engineio.connection`'s
    writer also reads); anything else counts as nothing waiting.
    """
    while transport is not None and not isinstance(transport, FileDescriptor):
        transport = getattr(transport, "transport", None)
    if transport is None:
        return 0
    waiting: int = len(transport.dataBuffer) - transport.offset + transport._tempDataLen
    return waiting


class WebSocketHost(Protocol):
    """
    What a WebSocket needs of the Engine.IO server it belongs to.
    """

    def websocket_opened(
        self,
        ws: EngineWebSocketProtocol,
        sid: str | None,
        headers: Mapping[str, str],
        query: Mapping[str, str],
    ) -> None:
        """
        ``ws`` finished its opening handshake.
        """


class WebSocketSession(Protocol):
    """
    What a WebSocket tells the Engine.IO session it carries.
    """

    def ws_message(self, ws: EngineWebSocketProtocol, data: str | bytes) -> None: ...

    def ws_closing(self, ws: EngineWebSocketProtocol) -> None: ...

    def ws_lost(self, ws: EngineWebSocketProtocol) -> None: ...


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


class _NotKept:
    """
    Autobahn's ``is_open`` and ``is_closed`` futures, which only a client
    of Autobahn waits on: each read gives a new Deferred that the protocol
    does not keep, so that Autobahn resolving one costs nothing lasting.
    Kept, they would be two Deferreds (some 270 bytes) per connection, and
    ``is_closed``, fired with the protocol itself, would make every closed
    connection a reference cycle, which Python frees only at a full
    collection of the garbage collector: under churn, closed connections
    with their transports and buffers would pile up waiting for one.
    """

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        return Deferred()


class _Uncounted:
    """
    Stands in for Autobahn's traffic counters (a ``TrafficStats`` of some
    190 bytes per connection), which nothing here reads: every counter
    reads 0, and what is added to it is dropped.
    """

    __slots__ = ()

    def __getattr__(self, name: str) -> int:
        return 0

    def __setattr__(self, name: str, value: object) -> None:
        pass


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
            # the unmasker of the frame being read (see `onFrameEnd`)
            "current_frame_masker",
            # unused: the server checks the UTF-8 of a whole text message
            # itself (see `onMessage`)
            "utf8validator",
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

    server: WebSocketHost
    connection: WebSocketSession | None = None
    _sid: str | None = None
    _headers: dict[str, str]
    _query: dict[str, str]

    def __init__(self) -> None:
        super().__init__()
        # see `_NotKept`
        del self.is_open, self.is_closed

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
        # counted up to here, during the opening handshake; from here on
        # the class's `_Uncounted` stands in
        attributes.pop("trafficStats", None)
        # Autobahn's validator is made for every connection, though text
        # messages are checked in `onMessage` instead
        attributes.pop("utf8validator", None)
        self.__dict__ = dict(attributes)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        connection = self.connection
        if connection is None:
            return
        if isBinary:
            connection.ws_message(self, payload)
            return
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError as e:
            # what Autobahn's own check would answer: close code 1007
            self._fail_connection(
                self.CLOSE_STATUS_CODE_INVALID_PAYLOAD,
                f"invalid UTF-8 in a text message at byte {e.start}",
            )
            return
        connection.ws_message(self, text)

    def onFrameEnd(self) -> bool | None:
        result = super().onFrameEnd()
        # Autobahn keeps the unmasker of the last frame read (some 240
        # bytes, with its native state) until the next frame comes, which
        # on an idle connection is for as long as it is idle.
        self.__dict__.pop("current_frame_masker", None)
        return result

    def onPing(self, payload: bytes) -> None:
        if unsent(self.transport) > PONG_BACKLOG:
            return
        super().onPing(payload)

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
EngineWebSocketProtocol.trafficStats = _Uncounted()  # type: ignore[assignment]
EngineWebSocketProtocol.is_open = _NotKept()  # type: ignore[assignment]
EngineWebSocketProtocol.is_closed = _NotKept()  # type: ignore[assignment]


def websocket_factory(
    server: WebSocketHost, reactor: Any, max_payload: int
) -> WebSocketServerFactory:
    """
    The Autobahn factory of ``server``'s WebSockets, with a protocol class of
    its own that holds the server's options; a message over ``max_payload``
    bytes closes its WebSocket with code 1009.
    """

    class ServerProtocol(EngineWebSocketProtocol):
        pass

    ServerProtocol.server = server
    factory = WebSocketServerFactory()
    factory.protocol = ServerProtocol
    factory.setProtocolOptions(
        maxFramePayloadSize=max_payload,
        maxMessagePayloadSize=max_payload,
        autoPingInterval=0,
        openHandshakeTimeout=10,
        closeHandshakeTimeout=2,
        # answer protocol violations (an oversize message: 1009) with a
        # close frame rather than by just dropping the connection
        failByDrop=False,
        # text messages are checked whole, by decoding them (`onMessage`),
        # rather than frame by frame with a validator per connection
        utf8validateIncoming=False,
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
        setattr(ServerProtocol, name, value)
    ServerProtocol.CONFIG_ATTRS = []
    factory.reactor = reactor
    return factory
