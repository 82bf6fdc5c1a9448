"""
Tests for the pure parts of L{realtimed.rest.api}.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.server import Site

from realtimed.auth import Keys
from realtimed.rest.api import AdminAPI, APIError, strip_outer_parentheses
from realtimed.store.pool import PoolBusy
from realtimed.testing import FakePool

KEYS = Keys("s" * 40, "ik_" + "a" * 40, "anon_" + "b" * 40, "whsec_a2trazI=")

# Expressions as pg_get_expr writes them: no enclosing pair of their own.
bare_expressions = st.sampled_from(
    [
        "true",
        "enabled = true",
        "(a = 1) AND (b = 2)",
        "f(x) = g(y)",
        "channel_name ~~ 'a)(b'::text",
        "\"odd(name\" = 'x'",
        "(a) OR (b)",
    ]
)


class StripOuterParenthesesTests(SynchronousTestCase):
    """
    L{strip_outer_parentheses} undoes the parentheses C{pg_policies} adds.
    """

    def test_examples(self) -> None:
        """
        One enclosing pair goes; pairs that do not enclose everything, and
        parentheses in literals, stay.
        """
        cases = {
            "(enabled = true)": "enabled = true",
            "true": "true",
            "((a = 1) AND (b = 2))": "(a = 1) AND (b = 2)",
            "(a = 1) AND (b = 2)": "(a = 1) AND (b = 2)",
            "(x = ')')": "x = ')'",
            "('(' = x)": "'(' = x",
            "((x))": "(x)",
            "(unbalanced": "(unbalanced",
            "()": "",
        }
        for given_, expected in cases.items():
            self.assertEqual(strip_outer_parentheses(given_), expected, given_)

    @given(bare_expressions)
    def test_round_trip(self, expression: str) -> None:
        """
        Wrapping an expression in one pair and stripping gives it back.
        """
        self.assertEqual(strip_outer_parentheses(f"({expression})"), expression)

    @given(bare_expressions)
    def test_bare_unchanged(self, expression: str) -> None:
        """
        An expression without an enclosing pair is left as it is.
        """
        self.assertEqual(strip_outer_parentheses(expression), expression)

    @given(st.text(max_size=30))
    def test_any_text(self, text: str) -> None:
        """
        Any text comes back unchanged or with one enclosing pair removed.
        """
        result = strip_outer_parentheses(text)
        self.assertIn(result, (text, text.strip()[1:-1].strip()))


class APIErrorTests(SynchronousTestCase):
    """
    L{APIError}.
    """

    def test_body(self) -> None:
        """
        The body is the reference's error shape.
        """
        self.assertEqual(
            APIError(404, "NOT_FOUND", "Channel not found").body(),
            {"error": "NOT_FOUND", "message": "Channel not found", "statusCode": 404},
        )


class HangingPool:
    """
    A pool whose queries never end, until cancelled.

    @ivar queried: Fires when a query is made.
    @ivar cancelled: Fires when that query is cancelled.
    """

    def __init__(self) -> None:
        self.queried: Deferred[None] = Deferred()
        self.cancelled: Deferred[None] = Deferred()

    def runQuery(self, query: str, params: Any = None) -> Deferred[Any]:
        self.queried.callback(None)
        return Deferred(lambda _: self.cancelled.callback(None))

    def runInteraction(
        self, interaction: Any, *args: Any, **kwargs: Any
    ) -> Deferred[Any]:
        return self.runQuery("")


class DisconnectTests(TestCase):
    """
    A client that goes away while its request waits for the database.
    """

    @inlineCallbacks
    def test_cancelled_quietly(self) -> Any:
        """
        The database work is cancelled, and nothing is logged as an error.
        """
        pool = HangingPool()
        site = Site(AdminAPI(pool, KEYS, reactor).resource())
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
        self.addCleanup(port.stopListening)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        client = yield endpoint.connect(_Factory())
        client.transport.write(
            b"GET /channels HTTP/1.1\r\nHost: localhost\r\n"
            b"x-api-key: " + KEYS.api_key.encode() + b"\r\n\r\n"
        )
        yield pool.queried
        client.transport.loseConnection()
        yield pool.cancelled
        yield deferLater(reactor, 0, lambda: None)
        self.assertEqual(self.flushLoggedErrors(), [])


class _Factory:
    """
    Makes one silent client protocol.
    """

    def buildProtocol(self, addr: Any) -> Protocol:
        return Protocol()

    def doStart(self) -> None:
        pass

    def doStop(self) -> None:
        pass


class BusyTests(TestCase):
    @inlineCallbacks
    def test_busy_pool(self) -> Any:
        """
        When the database pool refuses a statement because too many wait,
        the client gets 503 SERVICE_UNAVAILABLE with Retry-After.
        """
        import treq

        pool = FakePool(lambda sql, params: PoolBusy("1000 statements wait"), reactor)
        site = Site(AdminAPI(pool, KEYS, reactor).resource())
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
        self.addCleanup(port.stopListening)
        response = yield treq.get(
            f"http://127.0.0.1:{port.getHost().port}/channels",
            headers={"Authorization": f"Bearer {KEYS.api_key}"},
            persistent=False,
        )
        self.assertEqual(response.code, 503)
        self.assertEqual(response.headers.getRawHeaders("retry-after"), ["1"])
        self.assertEqual(
            (yield response.json()),
            {
                "error": "SERVICE_UNAVAILABLE",
                "message": "The database is busy; try again",
                "statusCode": 503,
            },
        )
