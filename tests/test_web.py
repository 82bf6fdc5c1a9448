"""
Tests for L{realtimed.web.RealtimeSite}: what a client may send is bounded
before any resource sees it.  Raw TCP clients against a real port.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Request

from realtimed.web import IDLE_TIMEOUT, RealtimeSite
from tests.support import wait_for


class Echo(Resource):
    """
    Answers a POST with the length of its body; counts the requests it saw.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen = 0

    def render_POST(self, request: Request) -> bytes:
        self.seen += 1
        assert request.content is not None
        return str(len(request.content.read())).encode()

    render_GET = render_POST


class RawClient(Protocol):
    """
    Sends what it is told, collects everything the server sends, and fires
    C{closed} with it when the connection ends.
    """

    def __init__(self) -> None:
        self.received = b""
        self.closed: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.closed.callback(self.received)


def answer_of(raw: bytes) -> tuple[int, Any]:
    """
    The status and JSON body of an HTTP answer.
    """
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body) if body.startswith(b"{") else body


class BoundedSiteTests(TestCase):
    """
    Real connections; the site's timers run on a clock the tests advance.
    """

    def setUp(self) -> None:
        self.echo = Echo()
        self.clock = Clock()
        site = RealtimeSite(self.echo, max_body=1000, reactor=self.clock, request_deadline=0.5)
        self.port = reactor.listenTCP(0, site, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(self.port.stopListening)

    def due_in(self, seconds: float) -> bool:
        """
        Whether a timer of the site is due C{seconds} from now: the request
        deadline (0.5 s) is set once the server has read the start of a
        request, and the idle timeout (L{IDLE_TIMEOUT}) is set again each
        time it reads something.
        """
        due = self.clock.seconds() + seconds
        return any(call.getTime() == due for call in self.clock.getDelayedCalls())

    def deadline_running(self) -> bool:
        return self.due_in(0.5)

    @inlineCallbacks
    def client(self) -> Any:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port.getHost().port)
        client = yield connectProtocol(endpoint, RawClient())
        self.addCleanup(lambda: client.transport and client.transport.abortConnection())
        return client

    @inlineCallbacks
    def test_within_limit(self) -> Any:
        """
        A body up to the limit is served.
        """
        client = yield self.client()
        client.transport.write(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n"
            + b"x" * 1000
        )
        raw = yield client.closed
        self.assertEqual(answer_of(raw), (200, b"1000"))

    @inlineCallbacks
    def test_declared_too_large(self) -> Any:
        """
        A Content-Length over the limit is answered 413 at once, before any
        of the body is sent, and the connection is closed; the resource
        never sees the request.
        """
        client = yield self.client()
        client.transport.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 300000000\r\n\r\n")
        raw = yield client.closed
        self.assertEqual(
            answer_of(raw),
            (
                413,
                {
                    "error": "PAYLOAD_TOO_LARGE",
                    "message": "The request body is over 1000 bytes",
                    "statusCode": 413,
                },
            ),
        )
        self.assertEqual(self.echo.seen, 0)

    @inlineCallbacks
    def test_chunked_too_large(self) -> Any:
        """
        A chunked body is cut off with 413 as soon as it passes the limit,
        and the connection is closed.
        """
        client = yield self.client()
        client.transport.write(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(3):
            client.transport.write(b"190\r\n" + b"y" * 400 + b"\r\n")
        raw = yield client.closed
        self.assertEqual(answer_of(raw)[0], 413)
        self.assertEqual(self.echo.seen, 0)

    @inlineCallbacks
    def test_slow_headers(self) -> Any:
        """
        A request whose headers do not arrive whole in time is answered 408
        and the connection closed, even while bytes keep trickling in.
        """
        client = yield self.client()
        client.transport.write(b"GET / HT")
        yield wait_for(self.deadline_running, "the request to start")
        self.clock.advance(0.4)
        client.transport.write(b"TP/1.1\r\nHost: x\r\n")
        yield wait_for(lambda: self.due_in(IDLE_TIMEOUT), "more of the request to be read")
        self.clock.advance(0.1)
        raw = yield client.closed
        status, body = answer_of(raw)
        self.assertEqual((status, body["error"]), (408, "REQUEST_TIMEOUT"))
        self.assertEqual(self.echo.seen, 0)

    @inlineCallbacks
    def test_slow_body(self) -> Any:
        """
        A body that does not arrive whole in time is answered 408.
        """
        client = yield self.client()
        client.transport.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nxx")
        yield wait_for(self.deadline_running, "the request to start")
        self.clock.advance(0.5)
        raw = yield client.closed
        self.assertEqual(answer_of(raw)[0], 408)
        self.assertEqual(self.echo.seen, 0)

    @inlineCallbacks
    def test_keep_alive(self) -> Any:
        """
        The deadline is per request: a connection kept alive between
        requests is not cut for the time it spends waiting for the next.
        """
        client = yield self.client()
        request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
        client.transport.write(request)
        yield wait_for(lambda: b"200" in client.received, "the first answer")
        self.clock.advance(0.8)
        client.transport.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        raw = yield client.closed
        self.assertEqual(raw.count(b"HTTP/1.1 200"), 2)
        self.assertEqual(self.echo.seen, 2)
