"""
The HTTP resource tree every listening endpoint serves:

- ``/socket.io/``: Engine.IO / Socket.IO (polling and WebSocket);
- ``/api/realtime/``: the admin REST API;
- ``/healthz``: 200 while the database answers, 503 otherwise.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request

log = Logger()


class Health(Resource):
    """
    ``GET /healthz``: ``{"status": "ok"}`` with 200 when C{check} says the
    database is reachable, ``{"status": "unavailable"}`` with 503 when not.
    """

    isLeaf = True

    def __init__(self, check: Callable[[], Deferred[bool]]) -> None:
        super().__init__()
        self._check = check

    def render_GET(self, request: Request) -> object:
        def answer(healthy: bool) -> None:
            request.setResponseCode(200 if healthy else 503)
            request.setHeader(b"content-type", b"application/json")
            request.setHeader(b"cache-control", b"no-store")
            request.write(json.dumps({"status": "ok" if healthy else "unavailable"}).encode())
            request.finish()

        def failed(reason: Failure) -> bool:
            log.failure("Health check failed", reason)
            return False

        finished = request.notifyFinish()
        finished.addErrback(lambda _: None)
        d = self._check()
        d.addErrback(failed)
        d.addCallback(lambda healthy: None if request._disconnected else answer(healthy))
        d.addErrback(lambda f: log.failure("Cannot answer a health check", f))
        return NOT_DONE_YET

    render_HEAD = render_GET


def root_resource(
    health: Callable[[], Deferred[bool]],
    socketio: IResource | None = None,
    api: IResource | None = None,
) -> Resource:
    """
    The resource tree served on every endpoint.
    """
    root = Resource()
    root.putChild(b"healthz", Health(health))
    if socketio is not None:
        root.putChild(b"socket.io", socketio)
    if api is not None:
        api_root = Resource()
        api_root.putChild(b"realtime", api)
        root.putChild(b"api", api_root)
    return root
