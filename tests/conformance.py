"""
A small server on `realtimed.engineio` configured the way the official
Engine.IO and Socket.IO protocol test suites expect (ping interval 300 ms,
ping timeout 200 ms, max payload 1e6, any CORS origin)::

    python tests/conformance.py engineio 3000   # echo at /engine.io/
    python tests/conformance.py socketio 3000   # echo and ack handlers, /custom

It listens on the loopback addresses only.  The suites (``test-suite/`` of
github.com/socketio/engine.io-protocol and socket.io-protocol) expect the
server at ``localhost:3000``; run them with ``npm ci && npm test`` in their
``test-suite`` directory while this app serves port 3000.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.web.resource import Resource
from twisted.web.server import Site

from realtimed.engineio.connection import EngineConnection
from realtimed.engineio.engine import EngineConfig, EngineIOServer
from realtimed.engineio.socketio import Socket, SocketIOServer

PING_INTERVAL = 0.3
PING_TIMEOUT = 0.2
MAX_PAYLOAD = 1_000_000


class Echo:
    """
    Engine.IO handler that sends every message back.
    """

    def __init__(self, connection: EngineConnection) -> None:
        self.connection = connection

    def message(self, data: str | bytes) -> None:
        self.connection.send(data if isinstance(data, bytes) else "4" + data)

    def closed(self, reason: str) -> None:
        pass


def _engine_config() -> EngineConfig:
    return EngineConfig(
        ping_interval=PING_INTERVAL,
        ping_timeout=PING_TIMEOUT,
        max_payload=MAX_PAYLOAD,
        cors_origins=("*",),
    )


def engineio_root(reactor: Any) -> Resource:
    """
    The Engine.IO echo app at ``/engine.io/``.
    """
    server = EngineIOServer(reactor, Echo, _engine_config())
    root = Resource()
    root.putChild(b"engine.io", server.resource())
    return root


def socketio_root(reactor: Any) -> Resource:
    """
    The Socket.IO app at ``/socket.io/``: ``auth`` is emitted on connect,
    ``message`` is echoed as ``message-back``, ``message-with-ack`` is
    acknowledged with its own arguments.
    """
    server = SocketIOServer(reactor, _engine_config(), connect_timeout=1.0)

    def connected(socket: Socket, auth: object | None) -> None:
        # The suites read the CONNECT reply and this event with separate
        # reads, so the event is sent a moment after the reply rather than
        # in the same write.
        reactor.callLater(0.02, socket.emit, "auth", auth if auth is not None else {})

    def message(socket: Socket, args: list[Any], ack: Any) -> None:
        socket.emit("message-back", *args)

    def message_with_ack(socket: Socket, args: list[Any], ack: Any) -> None:
        if ack is not None:
            ack(*args)

    main = server.namespace("/")
    main.on_connect(connected)
    main.on("message", message)
    main.on("message-with-ack", message_with_ack)
    server.namespace("/custom").on_connect(connected)
    root = Resource()
    root.putChild(b"socket.io", server.resource())
    return root


def main(argv: list[str]) -> None:
    kind, port = argv[1], int(argv[2])
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)])
    root = engineio_root(_reactor) if kind == "engineio" else socketio_root(_reactor)
    site = Site(root)

    def cannot_listen(failure: Any) -> None:
        print(failure.getErrorMessage(), file=sys.stderr)
        _reactor.callWhenRunning(_reactor.stop)  # type: ignore[attr-defined]

    TCP4ServerEndpoint(_reactor, port, interface="127.0.0.1").listen(site).addErrback(cannot_listen)
    TCP6ServerEndpoint(_reactor, port, interface="::1").listen(site).addErrback(lambda f: None)
    _reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main(sys.argv)
