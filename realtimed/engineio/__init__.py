"""
Engine.IO v4 and Socket.IO v5 on Twisted: a server that standard Socket.IO
clients (``socket.io-client`` 4, python-socketio, ...) talk to, over HTTP
long-polling (with the upgrade to WebSocket) and over WebSocket alone.  It
knows nothing about what the application does with its sockets.

Layers, bottom up:

- `realtimed.engineio.engine_packets` and `realtimed.engineio.socket_packets`:
  pure codecs (no I/O, no Twisted).
- `realtimed.engineio.session`: the pure Engine.IO session state machine
  (heartbeat, upgrade, close), driven with the current time, answering with
  actions.
- `realtimed.engineio.connection`: `EngineConnection`, one session's I/O:
  the session state machine joined to its polling requests and WebSocket,
  the polling outbox, frames held for the end of the reactor turn, the
  slow-reader limit.
- `realtimed.engineio.websocket`: `EngineWebSocketProtocol`, the Autobahn
  protocol that carries a session, and the factory tuned for many idle
  connections.
- `realtimed.engineio.engine`: `EngineIOServer`, the twisted.web resource
  that owns the sessions, routes polling requests, hands WebSocket upgrades
  to Autobahn, and answers CORS and bad requests.
- `realtimed.engineio.socketio`: `SocketIOServer`, namespaces and sockets.

Using it::

    from realtimed.engineio.engine import EngineConfig
    from realtimed.engineio.socketio import ConnectRefused, Socket, SocketIOServer

    server = SocketIOServer(
        reactor,
        EngineConfig(
            ping_interval=25.0,          # seconds
            ping_timeout=20.0,
            max_payload=1_000_000,       # bytes per incoming message / POST body
            cors_origins=("https://app.example",),   # "*" for any origin
            max_buffer=4_000_000,        # bytes queued for a slow reader, then close
        ),
        connect_timeout=45.0,            # to join a first namespace
    )
    root.putChild(b"socket.io", server.resource())

    chat = server.namespace("/")         # created on first use; "/" always exists

    def connect(socket: Socket, auth: object | None) -> object:
        # may return a Deferred; raise (or fail with) ConnectRefused to refuse:
        # the client gets connect_error {"message": ..., "data": ...}
        if not good(auth, socket.headers.get("authorization")):
            raise ConnectRefused("Invalid token")
        socket.data["user"] = ...
        socket.emit("welcome")           # sent right after the CONNECT reply
    chat.on_connect(connect)

    def publish(socket: Socket, args: list, ack: Callable[..., None] | None) -> None:
        if ack is not None:              # None when the client asked for no ack
            ack({"ok": True})            # sends ACK once; later calls are ignored
    chat.on("publish", publish)
    chat.on_any(lambda socket, event, args, ack: ...)    # events without a handler
    chat.on_disconnect(lambda socket, reason: ...)       # once per connected socket

    socket.emit("event", 1, b"bytes", ack=lambda *values: ...)  # ack optional
    chat.emit_many(sockets, "event", payload)   # encode once, frame once
    chat.emit("event", payload)                 # every socket of the namespace
    socket.disconnect()                         # DISCONNECT; last one closes the session
    server.close()                              # at shutdown

`Socket` attributes: ``sid`` (Socket.IO id), ``namespace``, ``headers``
(the handshake request's headers, lower-case names), ``query``,
``engine_sid``, ``engine`` (its Engine.IO session), ``data`` (a dict for
the application), ``connected``.

Handlers run in the reactor thread.  Exceptions from handlers and failed
Deferreds they return are logged and cost nothing else.  Disconnect reasons:
``client namespace disconnect``, ``server namespace disconnect``,
``transport close``, ``transport error``, ``ping timeout``, ``parse error``,
``forced close``.

Broadcast cost: `Namespace.emit_many` encodes the packet and builds the
WebSocket frame bytes once; for each WebSocket recipient it only hands
those bytes to the connection's `EngineConnection.defer_frames`, which
appends them to the frames it holds, and at the start of the next
reactor turn each connection's held frames go to its socket in one
``send`` (Twisted's buffer takes what the kernel does not).  Polling
recipients queue the same encoded packet.  Permessage-deflate is not
offered, so frames can be shared.  Direct emits are written at once (after
any frames held for the same connection, keeping order).

Closing: `SocketIOServer.close` and ping timeouts close a WebSocket without
an Engine.IO close packet (clients reconnect), and answer a polling client
with a close packet, as the reference server does.

Protocol answers to bad input, each costing only the session concerned:
unknown ``EIO``/``transport``, unknown sid, wrong method: HTTP 400 with the
reference server's JSON error; undecodable Engine.IO packets or payloads:
400 (polling) or closing the WebSocket, and the session ends; a POST over
``max_payload``: 413 and the session ends; a WebSocket message over it:
close code 1009; undecodable Socket.IO packets (unknown type, broken JSON,
bad ack id, unexpected attachments, reserved event names): the connection is
closed; a second concurrent poll: 400 and the session ends; a second
WebSocket for a session: that WebSocket is closed.
"""
