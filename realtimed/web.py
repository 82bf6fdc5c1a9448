"""
The HTTP side of the daemon: the resource tree every listening endpoint
serves, and the endpoints.

- ``/socket.io/``: Engine.IO / Socket.IO (polling and WebSocket);
- ``/api/realtime/``: the admin REST API;
- ``/healthz``: 200 while the database answers, 503 otherwise;
- ``/metrics``: Prometheus metrics, for the admin credential.

With ``--metrics-port``, another endpoint serves only ``/metrics``, without
a credential (`metrics_resource`), for a scraper on a private network.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from attrs import define, field
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from realtimed.lifecycle import Readiness
from realtimed.metrics import Metrics
from realtimed.rest.api import APIError, went_away, write_error

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

        gone = went_away(request)
        d = self._check()
        d.addErrback(failed)
        d.addCallback(lambda healthy: None if gone() else answer(healthy))
        d.addErrback(lambda f: log.failure("Cannot answer a health check", f))
        return NOT_DONE_YET

    render_HEAD = render_GET


class MetricsPage(Resource):
    """
    ``GET /metrics``: the metrics in Prometheus's text format.  When
    C{authorize} is given, it is called with each request first, and the
    L{APIError} it raises (401, 403) is the answer.
    """

    isLeaf = True

    def __init__(
        self, metrics: Metrics, authorize: Callable[[Request], object] | None = None
    ) -> None:
        super().__init__()
        self._metrics = metrics
        self._authorize = authorize

    def render_GET(self, request: Request) -> bytes:
        if self._authorize is not None:
            try:
                self._authorize(request)
            except APIError as e:
                return write_error(request, e)
        body, content_type = self._metrics.exposition()
        request.setHeader(b"content-type", content_type.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        return body


def metrics_resource(metrics: Metrics) -> Resource:
    """
    The resource tree of the metrics endpoint: ``/metrics`` only, without
    a credential.
    """
    root = Resource()
    root.putChild(b"metrics", MetricsPage(metrics))
    return root


def root_resource(
    health: Callable[[], Deferred[bool]],
    socketio: IResource | None = None,
    api: IResource | None = None,
    metrics: IResource | None = None,
) -> Resource:
    """
    The resource tree served on every endpoint.
    """
    root = Resource()
    root.putChild(b"healthz", Health(health))
    if metrics is not None:
        root.putChild(b"metrics", metrics)
    if socketio is not None:
        root.putChild(b"socket.io", socketio)
    if api is not None:
        api_root = Resource()
        api_root.putChild(b"realtime", api)
        root.putChild(b"api", api_root)
    return root


@define(eq=False)
class ListeningPort(Service):
    """
    Serves C{site} on the Twisted endpoint C{description} while running;
    ready once listening.

    @ivar port: The listening port, while there is one.
    """

    reactor: Any
    description: str
    site: Site
    port: IListeningPort | None = field(default=None, init=False)
    _ready: Readiness = field(factory=Readiness, init=False)

    def startService(self) -> None:
        Service.startService(self)
        self._ready.reset()
        d: Deferred[IListeningPort] = serverFromString(self.reactor, self.description).listen(
            self.site
        )
        d.addCallback(self._listening)
        d.addCallbacks(self._ready.succeed, self._ready.fail)

    def _listening(self, port: IListeningPort) -> IListeningPort:
        if not self.running:
            # Stopped while binding.
            port.stopListening()
        else:
            self.port = port
        return port

    def whenReady(self) -> Deferred[IListeningPort]:
        """
        A Deferred firing with the port once it listens.
        """
        return self._ready.wait()

    def stopService(self) -> Deferred[None] | None:
        Service.stopService(self)
        port, self.port = self.port, None
        if port is None:
            return None
        d: Deferred[None] | None = port.stopListening()
        return d
