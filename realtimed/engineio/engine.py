"""
Engine.IO v4 over Twisted: HTTP long-polling through twisted.web and
WebSocket through Autobahn, both served by one resource.

`EngineIOServer` owns the sessions (each an
`realtimed.engineio.connection.EngineConnection`) and routes each request:
a polling ``GET`` or ``POST`` to its session, a handshake to a new session,
a WebSocket upgrade to Autobahn (`realtimed.engineio.websocket`).  It
answers cross-origin requests for the configured origins and refuses those
of other origins (see `EngineConfig.cors_origins`), refuses new sessions
past the configured limits, and answers bad requests with the reference
server's JSON errors.  It also holds the list of
connections with WebSocket frames held for the end of the reactor turn, and
writes them out at the start of the next.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Mapping
from typing import Any

from attrs import define, field
from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from realtimed.engineio.connection import EngineConfig, EngineConnection, EngineHandler
from realtimed.engineio.engine_packets import open_packet
from realtimed.engineio.session import POLLING, WEBSOCKET, EngineSession
from realtimed.engineio.websocket import EngineWebSocketProtocol, websocket_factory
from realtimed.timers import Deadlines

# error codes of the reference server, sent as JSON with HTTP errors
UNKNOWN_TRANSPORT = (0, "Transport unknown")
UNKNOWN_SID = (1, "Session ID unknown")
BAD_HANDSHAKE_METHOD = (2, "Bad handshake method")
BAD_REQUEST = (3, "Bad request")
FORBIDDEN = (4, "Forbidden")
UNSUPPORTED_VERSION = (5, "Unsupported protocol version")


def origin_allowed(origins: tuple[str, ...], origin: str | None, host: str | None) -> bool:
    """
    May a request with this ``Origin`` (or none) to this ``Host`` be served,
    given the allowed C{origins}?  Requests of the server's own origin (the
    ``Origin``'s host is the ``Host`` asked for) always may.
    """
    if not origins or origin is None or "*" in origins or origin in origins:
        return True
    _, _, authority = origin.partition("://")
    return host is not None and authority.lower() == host.lower()


def address_of(address: object) -> str:
    """
    The client address sessions are counted by: the IP address, or
    ``"local"`` for a unix socket.
    """
    host = getattr(address, "host", None)
    return host if isinstance(host, str) else "local"


def _headers_of(request: Request) -> dict[str, str]:
    return {
        name.decode("latin-1").lower(): ", ".join(v.decode("latin-1") for v in values)
        for name, values in request.requestHeaders.getAllRawHeaders()
    }


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
    #: every session's next heartbeat or upgrade deadline
    deadlines: Deadlines[EngineConnection] = field(init=False)
    #: the Autobahn factory of this server's WebSocket protocols
    websocket_factory: WebSocketServerFactory = field(init=False)
    _websocket_resource: WebSocketResource = field(init=False)
    _lingering: dict[str, IDelayedCall] = field(factory=dict, init=False)
    _held: list[EngineConnection] = field(factory=list, init=False)
    _flush_call: IDelayedCall | None = field(default=None, init=False)
    _stopping: bool = field(default=False, init=False)
    #: the client address of each open session, and how many each has
    _addresses: dict[EngineConnection, str] = field(factory=dict, init=False)
    _per_address: dict[str, int] = field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        self.deadlines = Deadlines(self.reactor, EngineConnection.expire)
        self.websocket_factory = websocket_factory(self, self.reactor, self.config.max_payload)
        self._websocket_resource = WebSocketResource(self.websocket_factory)

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

    def room_for(self, address: str) -> str | None:
        """
        Why a new session from C{address} may not open now, or C{None} if
        it may.
        """
        config = self.config
        if config.max_sessions and len(self._addresses) >= config.max_sessions:
            return "The server has as many connections as it takes; try again later"
        most = config.max_sessions_per_address
        if most and self._per_address.get(address, 0) >= most:
            return f"At most {most} connections from one address"
        return None

    def _open(
        self,
        transport: str,
        headers: Mapping[str, str],
        query: Mapping[str, str],
        address: str,
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
        self._addresses[connection] = address
        self._per_address[address] = self._per_address.get(address, 0) + 1
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
        address = self._addresses.pop(connection, None)
        if address is not None:
            left = self._per_address[address] - 1
            if left:
                self._per_address[address] = left
            else:
                del self._per_address[address]
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
            address = address_of(ws.transport.getPeer() if ws.transport else None)
            if self.room_for(address) is not None:
                # Others took the room while this one was upgrading.
                ws.sendClose(1000, "Too many connections; try again later")
                return
            connection, handshake = self._open(WEBSOCKET, headers, query, address)
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

    def _cors(self, request: Request) -> bool:
        """
        Answer C{request}'s origin: whether it may be served, with the
        headers that let a browser read the answer.
        """
        origins = self.config.cors_origins
        raw = request.getHeader(b"origin")
        if raw is None or not origins:
            return True
        origin = raw.decode("latin-1")
        host = request.getHeader(b"host")
        if not origin_allowed(origins, origin, None if host is None else host.decode("latin-1")):
            return False
        if origin in origins:
            request.setHeader(b"access-control-allow-origin", raw)
            request.setHeader(b"access-control-allow-credentials", b"true")
            request.setHeader(b"vary", b"Origin")
        elif "*" in origins:
            request.setHeader(b"access-control-allow-origin", b"*")
        return True

    def _unavailable(self, request: Request, reason: str) -> bytes:
        request.setResponseCode(503)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"retry-after", b"5")
        body = {"error": "SERVICE_UNAVAILABLE", "message": reason, "statusCode": 503}
        return json.dumps(body).encode("utf-8")

    def render(self, request: Request) -> bytes | int:
        """
        Serve one request at the Engine.IO path.
        """
        if not self._cors(request):
            request.setResponseCode(403)
            request.setHeader(b"content-type", b"application/json")
            code, message = FORBIDDEN
            return json.dumps({"code": code, "message": message}).encode("ascii")
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
        if sid is None and method == b"GET":
            refusal = self.room_for(address_of(request.getClientAddress()))
            if refusal is not None:
                return self._unavailable(request, refusal)
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
            opened, handshake = self._open(
                POLLING, _headers_of(request), query, address_of(request.getClientAddress())
            )
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
