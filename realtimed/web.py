"""
The HTTP side of the daemon: the resource tree every listening endpoint
serves, the site that bounds what a client may send, and the endpoints.

- ``/socket.io/``: Engine.IO / Socket.IO (polling and WebSocket);
- ``/api/realtime/``: the admin REST API;
- ``/healthz``: 200 while the database answers, 503 otherwise;
- ``/metrics``: Prometheus metrics, for the admin credential;
- ``/admin/``: the admin page (`realtimed.admin`).

With ``--metrics-port``, another endpoint serves only ``/metrics``, without
a credential (`metrics_resource`), for a scraper on a private network.

`RealtimeSite` bounds every request before any resource sees it: a body
over ``max_body`` bytes is answered 413 from its ``Content-Length``, before
it is read, or, sent chunked, as soon as it passes the limit (the
connection is then closed); and a request has ``request_deadline`` seconds
(``--request-timeout``, `REQUEST_DEADLINE` by default) from its first byte
to arrive whole, so a client sending headers or a body a byte at a time
holds nothing for long (408, connection closed).  An idle connection is
closed after `IDLE_TIMEOUT` seconds.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from io import BytesIO
from typing import Any, cast

from attrs import define, field
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IDelayedCall, IListeningPort
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from realtimed.lifecycle import Readiness
from realtimed.metrics import Metrics
from realtimed.rest.api import APIError, went_away, write_error
from realtimed.store.pool import ConnectionPool

log = Logger()

#: Seconds a request has, from its first byte, to arrive whole, unless the
#: site is given another deadline.
REQUEST_DEADLINE = 30.0

#: Seconds an HTTP connection may stay idle between requests.
IDLE_TIMEOUT = 60.0

_REASONS = {408: b"Request Timeout", 413: b"Content Too Large"}


class BoundedChannel(HTTPChannel):
    """
    An HTTP connection whose requests must arrive whole within
    L{REQUEST_DEADLINE}, and which can be refused at any point of a
    request with L{refuse}.
    """

    _arriving: IDelayedCall | None = None
    _refused: bool = False

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return
        if not self._handlingRequest:
            self._start_deadline()
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if self._refused:
            return
        self._start_deadline()
        super().lineReceived(line)

    def rawDataReceived(self, data: bytes) -> None:
        if not self._refused:
            super().rawDataReceived(data)

    def allContentReceived(self) -> None:
        self._stop_deadline()
        if not self._refused:
            super().allContentReceived()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stop_deadline()
        super().connectionLost(reason)

    def refuse(self, status: int, code: str, message: str) -> None:
        """
        Answer the request being received with C{status} and the usual JSON
        error, and close the connection; nothing more it sends is read.
        """
        if self._refused:
            return
        self._refused = True
        self._stop_deadline()
        body = json.dumps({"error": code, "message": message, "statusCode": status}).encode()
        head = b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status])
        head += b"content-type: application/json\r\nconnection: close\r\n"
        head += b"content-length: %d\r\n\r\n" % len(body)
        assert self.transport is not None
        self.transport.write(head + body)
        self.transport.loseConnection()

    def _start_deadline(self) -> None:
        if self._arriving is None:
            deadline = cast(Any, self).site.request_deadline
            self._arriving = self.callLater(deadline, lambda: self._too_slow(deadline))

    def _too_slow(self, deadline: float) -> None:
        self._arriving = None
        self.refuse(408, "REQUEST_TIMEOUT", f"The request did not arrive within {deadline:g} s")

    def _stop_deadline(self) -> None:
        arriving, self._arriving = self._arriving, None
        if arriving is not None and arriving.active():
            arriving.cancel()


class BoundedRequest(Request):
    """
    A request whose body may not pass its site's C{max_body}.
    """

    _received = 0

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self._limit():
            self._too_large()
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        self._received += len(data)
        if self._received > self._limit():
            self._too_large()
            return
        if not self._refused():
            super().handleContentChunk(data)

    def _limit(self) -> int:
        limit: int = cast(Any, self.channel).site.max_body
        return limit

    def _refused(self) -> bool:
        return bool(getattr(self.channel, "_refused", False))

    def _too_large(self) -> None:
        # Nothing of the body is kept; the request is never processed.
        self.content = BytesIO()  # type: ignore[assignment]
        cast(BoundedChannel, self.channel).refuse(
            413, "PAYLOAD_TOO_LARGE", f"The request body is over {self._limit()} bytes"
        )


class RealtimeSite(Site):
    """
    The site every endpoint serves: bounded requests (see the module
    docstring) over the resource tree C{root}.
    """

    protocol = BoundedChannel  # type: ignore[assignment]
    requestFactory = BoundedRequest

    def __init__(
        self,
        root: Resource,
        max_body: int,
        reactor: Any = None,
        request_deadline: float = REQUEST_DEADLINE,
    ) -> None:
        super().__init__(root, timeout=IDLE_TIMEOUT, reactor=reactor)
        self.max_body = max_body
        self.request_deadline = request_deadline
        self.displayTracebacks = False


@define(eq=False)
class HealthProbe:
    """
    Whether the database can be queried now, for ``/healthz``.  The probe
    has a connection of its own (C{pool}, of one connection), so a busy
    query pool never holds a health check up; and checks made while one is
    under way share its answer rather than queueing behind it.
    """

    pool: ConnectionPool
    timeout: float = 5.0
    _answer: Readiness | None = field(default=None, init=False)

    def check(self) -> Deferred[bool]:
        """
        A Deferred firing with whether the database answered within
        C{timeout} seconds; never fails.
        """
        if self._answer is None:
            answer = self._answer = Readiness()

            def answered(alive: bool) -> None:
                self._answer = None
                answer.succeed(alive)

            self.pool.ping(self.timeout).addCallback(answered)
        waiting: Deferred[bool] = self._answer.wait()
        return waiting


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
    admin: IResource | None = None,
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
    if admin is not None:
        root.putChild(b"admin", admin)
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
