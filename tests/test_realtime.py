"""
End-to-end tests of realtime channels: a real realtimed (the daemon's
service, real PostgreSQL, real port) and python-socketio's client.

python-socketio's client blocks, so each client call runs in a thread
(`deferToThread`) while the reactor serves.
"""

from __future__ import annotations

import base64
import io
import json
import queue
import time
import uuid
from collections.abc import Callable
from typing import Any

import jwt
import socketio
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from realtimed.auth import Keys
from realtimed.config import load
from realtimed.realtime.service import Realtime
from realtimed.service import RealtimeService
from tests.support import create_database, run_sql

KEYS = Keys(
    jwt_secret="realtime-test-secret-" + "s" * 32,
    api_key="ik_" + "a" * 40,
    anon_key="anon_" + "b" * 40,
    webhook_secret="whsec_" + base64.b64encode(b"k" * 32).decode(),
)

#: How long a test waits for something that should happen.
PATIENCE = 15.0
#: How long a test waits for something that should not happen.
QUIET = 0.5


def token(sub: str | None = "alice", **claims: Any) -> str:
    """
    A JWT for C{sub}, signed with the test secret.
    """
    body: dict[str, Any] = {"exp": int(time.time()) + 3600, **claims}
    if sub is not None:
        body["sub"] = sub
    return jwt.encode(body, KEYS.jwt_secret, algorithm="HS256")


def alg_none_token(sub: str) -> str:
    header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=")
    body = base64.urlsafe_b64encode(json.dumps({"sub": sub}).encode()).rstrip(b"=")
    return (header + b"." + body + b".").decode()


class Daemon:
    """
    A realtimed daemon (the service C{twistd realtimed} runs) in this
    process, on a loopback port chosen by the system.
    """

    def __init__(self, url: str, data_dir: str, settings: dict[str, Any] | None = None) -> None:
        self.url = url
        self.data_dir = data_dir
        self.settings = settings or {}

    @inlineCallbacks
    def start(self) -> Any:
        config = load(
            {
                "port": ("tcp:0:interface=127.0.0.1",),
                "database-url": self.url,
                "data-dir": self.data_dir,
                "jwt-secret": KEYS.jwt_secret,
                "api-key": KEYS.api_key,
                "anon-key": KEYS.anon_key,
                "webhook-secret": KEYS.webhook_secret,
                **self.settings,
            },
            {},
        )
        self.service = RealtimeService(config, reactor, out=io.StringIO(), stop_on_failure=False)
        self.service.startService()
        yield self.service.ready
        return self

    @property
    def realtime(self) -> Realtime:
        realtime = self.service.realtime
        assert realtime is not None
        return realtime

    @property
    def address(self) -> str:
        port: Any = self.service.ports[0]
        return f"http://127.0.0.1:{port.getHost().port}"

    def stop(self) -> Deferred[None]:
        return self.service.stopService()


def sleep(seconds: float) -> Deferred[None]:
    d: Deferred[None] = Deferred()
    clock: Any = reactor
    clock.callLater(seconds, d.callback, None)
    return d


def marker_events(url: str, client: Any, channel: str, name: str) -> Deferred[Any]:
    """
    Publish a marker message on C{channel} of the database at C{url}; a
    Deferred firing, once C{client} has received the marker, with the events
    named C{name} it received before (see L{RealtimeTestCase.before_marker}).
    """
    marker = "marker-" + uuid.uuid4().hex[:12]
    run_sql(url, "SELECT realtime.publish(%s, %s, '{}')", (channel, marker))
    return deferToThread(client.events_until, marker, name)


class ConnectFailed(Exception):
    """
    The server refused the connection; the message is the connect_error's.
    """


class EventLog:
    """
    The events a client received, for tests to wait on.
    """

    def __init__(self) -> None:
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.seen: list[tuple[str, Any]] = []

    def next_event(self, name: str | None = None, timeout: float = PATIENCE) -> tuple[str, Any]:
        """
        The next event received (named C{name}, if given; others are kept
        in C{seen}).
        """
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {name or 'event'} within {timeout}s; seen {self.seen}")
            try:
                event, data = self.events.get(timeout=remaining)
            except queue.Empty:
                continue
            if name is None or event == name:
                return event, data
            self.seen.append((event, data))

    def events_until(self, marker: str, name: str) -> list[tuple[str, Any]]:
        """
        Wait for the event C{marker}; the events named C{name} received
        before it (and not taken yet).
        """
        start = len(self.seen)
        self.next_event(marker)
        return [(event, data) for event, data in self.seen[start:] if event == name]


class Client(EventLog):
    """
    A python-socketio client that records every event it receives.  Its
    methods block; tests call them through `RealtimeTestCase.call`.
    """

    def __init__(self, address: str) -> None:
        super().__init__()
        self.address = address
        self.sio = socketio.Client(reconnection=False)
        self.refusal: Any = None

        def anything(event: str, *args: Any) -> None:
            self.events.put((event, args[0] if len(args) == 1 else list(args)))

        def connect_error(data: Any) -> None:
            self.refusal = data

        self.sio.on("*", anything)
        self.sio.on("connect_error", connect_error)

    @property
    def sid(self) -> str | None:
        return self.sio.get_sid("/")

    def connect(
        self,
        auth: Any = None,
        headers: dict[str, str] | None = None,
        transports: list[str] | None = None,
    ) -> None:
        try:
            self.sio.connect(
                self.address,
                auth=auth,
                headers=headers or {},
                transports=transports or ["websocket"],
                wait_timeout=PATIENCE,
            )
        except socketio.exceptions.ConnectionError as e:
            message = (
                self.refusal.get("message") if isinstance(self.refusal, dict) else self.refusal
            )
            raise ConnectFailed(message or str(e)) from None

    def request(self, event: str, data: Any) -> Any:
        """
        Emit with an ack callback and return the ack.
        """
        return self.sio.call(event, data, timeout=PATIENCE)

    def send(self, event: str, data: Any) -> None:
        """
        Emit without an ack callback.
        """
        self.sio.emit(event, data)

    def disconnect(self) -> None:
        self.sio.disconnect()

    def close(self) -> None:
        self.sio.disconnect()


class RealtimeTestCase(TestCase):
    """
    Each test gets its own database, with the channels C{orders},
    C{chat:*}, C{user:*}, C{todos} and a disabled C{archive}, and one
    realtimed serving it.
    """

    timeout = 120
    client_class: Callable[[str], Any] = Client

    @inlineCallbacks
    def setUp(self) -> Any:  # type: ignore[override]
        self.url = create_database(self)
        self.daemon = yield self.start_daemon()
        self.sql(
            "INSERT INTO realtime.channels (pattern, description) VALUES "
            "('orders', 'Orders'), ('chat:*', 'Chat rooms'), ('user:*', 'Per user'),"
            " ('todos', 'Todo rows');"
            "INSERT INTO realtime.channels (pattern, enabled) VALUES ('archive', false)"
        )

    @inlineCallbacks
    def start_daemon(self, settings: dict[str, Any] | None = None) -> Any:
        daemon = Daemon(self.url, self.mktemp(), settings)
        yield daemon.start()
        self.addCleanup(daemon.stop)
        return daemon

    def sql(self, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
        return run_sql(self.url, statement, params)

    def call(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
        return deferToThread(f, *args, **kwargs)

    @inlineCallbacks
    def client(self, auth: Any = "alice", daemon: Daemon | None = None, **kwargs: Any) -> Any:
        """
        A connected client; C{auth} is a user's sub (a JWT for it is made),
        or the auth payload itself.
        """
        client = self.new_client(daemon)
        if isinstance(auth, str):
            auth = {"token": token(auth)}
        yield self.call(client.connect, auth, **kwargs)
        return client

    def new_client(self, daemon: Daemon | None = None) -> Any:
        client = self.client_class((daemon or self.daemon).address)
        self.addCleanup(self.call, client.close)
        return client

    @inlineCallbacks
    def refused(self, auth: Any, **kwargs: Any) -> Any:
        """
        The connect_error message a connection attempt gets.
        """
        client = self.new_client()
        try:
            yield self.call(client.connect, auth, **kwargs)
        except ConnectFailed as e:
            return str(e)
        self.fail("connected")

    def before_marker(self, client: Any, channel: str, name: str) -> Deferred[Any]:
        """
        The events named C{name} that reach C{client} before a marker
        message published now on C{channel}, which the client must be
        subscribed to.  Messages reach a socket in the order they were
        committed, so a message committed before the marker that was to
        reach the client has reached it once the marker has: a test shows
        that something does not arrive without waiting for a span of time.
        """
        return marker_events(self.url, client, channel, name)

    @inlineCallbacks
    def wait_for(self, check: Callable[[], bool], what: str) -> Any:
        deadline = time.monotonic() + PATIENCE
        while not check():
            if time.monotonic() > deadline:
                self.fail(f"timed out waiting for {what}")
            yield sleep(0.05)


class ConnectTests(RealtimeTestCase):
    @inlineCallbacks
    def test_credentials(self) -> Any:
        """
        A JWT, the anon key or the API key in the auth payload, or a JWT in
        the handshake's Authorization header, connect.
        """
        for auth in ({"token": token("alice")}, {"token": KEYS.anon_key}, {"apiKey": KEYS.api_key}):
            client = yield self.client(auth)
            self.assertIsNotNone(client.sid)
        client = yield self.client(None, headers={"Authorization": "Bearer " + token("bob")})
        ack = yield self.call(client.request, "REALTIME_SUBSCRIBE", {"channel": "orders"})
        self.assertEqual(ack["presence"]["members"][0]["presenceId"], "bob")

    @inlineCallbacks
    def test_refusals(self) -> Any:
        """
        No credential, a bad signature, an expired token and an unsigned
        (C{alg: none}) token are refused with a connect_error that says why.
        """
        self.assertEqual((yield self.refused(None)), "No authentication provided")
        self.assertEqual((yield self.refused({})), "No authentication provided")
        forged = jwt.encode({"sub": "alice"}, "another-secret-" + "x" * 32, algorithm="HS256")
        self.assertEqual((yield self.refused({"token": forged})), "Invalid token")
        expired = token("alice", exp=int(time.time()) - 10)
        self.assertEqual((yield self.refused({"token": expired})), "Token expired")
        self.assertEqual((yield self.refused({"token": alg_none_token("alice")})), "Invalid token")
        self.assertEqual((yield self.refused({"token": 42})), "Invalid token")
        self.assertEqual(
            (yield self.refused(None, headers={"Authorization": "Bearer " + forged})),
            "Invalid token",
        )


class ConnectionExampleTests(RealtimeTestCase):
    @inlineCallbacks
    def test_flow(self) -> Any:
        """
        The reference's Connection Example: subscribe with an ack, publish,
        receive the message in the documented structure, unsubscribe, and
        receive nothing more on that channel.
        """
        client = yield self.client("alice")
        ack = yield self.call(client.request, "REALTIME_SUBSCRIBE", {"channel": "orders"})
        self.assertEqual(ack["ok"], True)
        self.assertEqual(ack["channel"], "orders")
        [member] = ack["presence"]["members"]
        self.assertEqual((member["presenceId"], member["type"]), ("alice", "user"))
        self.assertRegex(member["joinedAt"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

        payload = {"orderId": "123", "status": "pending"}
        ack = yield self.call(
            client.request,
            "REALTIME_PUBLISH",
            {"channel": "orders", "event": "order.created", "payload": payload},
        )
        self.assertEqual((ack["ok"], ack["channel"]), (True, "orders"))
        _event, message = yield self.call(client.next_event, "order.created")
        self.assertEqual(
            set(message),
            {"channel", "event", "messageId", "senderType", "senderId", "payload", "createdAt"},
        )
        self.assertEqual(message["channel"], "orders")
        self.assertEqual(message["event"], "order.created")
        self.assertEqual(message["messageId"], ack["messageId"])
        self.assertEqual((message["senderType"], message["senderId"]), ("user", "alice"))
        self.assertEqual(message["payload"], payload)
        self.assertRegex(message["createdAt"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        [(stored_payload, sender)] = self.sql(
            "SELECT payload, sender_id FROM realtime.messages WHERE id = %s", (ack["messageId"],)
        )
        self.assertEqual((stored_payload, sender), (payload, "alice"))
        # Its audience is counted: this one socket.
        yield self.wait_for(
            lambda: (
                self.sql(
                    "SELECT realtime.ws_audience_count(m) FROM realtime.messages m WHERE id = %s",
                    (ack["messageId"],),
                )
                == [(1,)]
            ),
            "wsAudienceCount 1",
        )

        # Without an ack callback, as the example publishes.
        yield self.call(
            client.send,
            "REALTIME_PUBLISH",
            {"channel": "orders", "event": "order.updated", "payload": {"orderId": "123"}},
        )
        _event, message = yield self.call(client.next_event, "order.updated")
        self.assertEqual(message["payload"], {"orderId": "123"})

        yield self.call(client.send, "REALTIME_UNSUBSCRIBE", {"channel": "orders"})
        ack = yield self.call(client.request, "REALTIME_UNSUBSCRIBE", {"channel": "orders"})
        self.assertEqual(ack, {"ok": True, "channel": "orders"})
        self.sql("SELECT realtime.publish('orders', 'order.created', '{}')")
        # A later message on another channel arrives after it would have.
        yield self.call(client.request, "REALTIME_SUBSCRIBE", {"channel": "chat:x"})
        self.sql("SELECT realtime.publish('chat:x', 'marker', '{}')")
        yield self.call(client.next_event, "marker")
        self.assertNotIn("order.created", [e for e, _ in client.seen])

    @inlineCallbacks
    def test_lower_case_spellings(self) -> Any:
        """
        C{realtime:subscribe}, C{realtime:publish} and
        C{realtime:unsubscribe} are the same events.
        """
        client = yield self.client("alice")
        ack = yield self.call(client.request, "realtime:subscribe", {"channel": "orders"})
        self.assertTrue(ack["ok"])
        ack = yield self.call(
            client.request,
            "realtime:publish",
            {"channel": "orders", "event": "e", "payload": {"n": 1}},
        )
        self.assertTrue(ack["ok"])
        _event, message = yield self.call(client.next_event, "e")
        self.assertEqual(message["messageId"], ack["messageId"])
        ack = yield self.call(client.request, "realtime:unsubscribe", {"channel": "orders"})
        self.assertEqual(ack, {"ok": True, "channel": "orders"})


class UseCaseTests(RealtimeTestCase):
    @inlineCallbacks
    def test_chat(self) -> Any:
        """
        The chat use case: two users in C{chat:room123} (owned by the
        C{chat:*} channel) both receive a message, the publisher included,
        and a subscriber to the pattern C{chat:*} receives it too; another
        room's subscriber does not.
        """
        alice = yield self.client("alice")
        bob = yield self.client("bob")
        watcher = yield self.client({"apiKey": KEYS.api_key})
        other = yield self.client("carol")
        for client in (alice, bob):
            ack = yield self.call(client.request, "REALTIME_SUBSCRIBE", {"channel": "chat:room123"})
            self.assertTrue(ack["ok"], ack)
        ack = yield self.call(watcher.request, "REALTIME_SUBSCRIBE", {"channel": "chat:*"})
        self.assertTrue(ack["ok"], ack)
        yield self.call(other.request, "REALTIME_SUBSCRIBE", {"channel": "chat:lobby"})
        ack = yield self.call(
            alice.request,
            "REALTIME_PUBLISH",
            {
                "channel": "chat:room123",
                "event": "message",
                "payload": {"text": "Hello!", "sender": "user123"},
            },
        )
        for client in (alice, bob, watcher):
            _event, message = yield self.call(client.next_event, "message")
            self.assertEqual(message["channel"], "chat:room123")
            self.assertEqual(message["payload"], {"text": "Hello!", "sender": "user123"})
            self.assertEqual(message["messageId"], ack["messageId"])
        self.assertEqual((yield self.before_marker(other, "chat:lobby", "message")), [])
        yield self.wait_for(
            lambda: (
                self.sql(
                    "SELECT realtime.ws_audience_count(m) FROM realtime.messages m WHERE id = %s",
                    (ack["messageId"],),
                )
                == [(3,)]
            ),
            "wsAudienceCount 3",
        )

    @inlineCallbacks
    def test_todos(self) -> Any:
        """
        The database use case: a C{todos} table tracked with
        C{realtime.track_table}; an INSERT, UPDATE and DELETE in SQL reach
        the subscriber as those events, from the system, with the row as
        payload.
        """
        self.sql(
            "CREATE TABLE todos (id serial PRIMARY KEY, title text NOT NULL,"
            " done boolean NOT NULL DEFAULT false);"
            "SELECT realtime.track_table('todos')"
        )
        client = yield self.client("alice")
        yield self.call(client.request, "REALTIME_SUBSCRIBE", {"channel": "todos"})
        self.sql("INSERT INTO todos (title) VALUES ('write tests')")
        self.sql("UPDATE todos SET done = true WHERE id = 1")
        self.sql("DELETE FROM todos WHERE id = 1")
        received = []
        for _ in range(3):
            received.append((yield self.call(client.next_event)))
        self.assertEqual([e for e, _ in received], ["INSERT", "UPDATE", "DELETE"])
        self.assertEqual(
            [m["payload"] for _, m in received],
            [
                {"id": 1, "title": "write tests", "done": False},
                {"id": 1, "title": "write tests", "done": True},
                {"id": 1, "title": "write tests", "done": True},
            ],
        )
        for event, message in received:
            self.assertEqual((message["channel"], message["event"]), ("todos", event))
            self.assertEqual((message["senderType"], message["senderId"]), ("system", None))

    @inlineCallbacks
    def test_row_template_and_pattern(self) -> Any:
        """
        A table tracked on C{order:{id}} publishes each row's changes on its
        own name; a subscriber to that name and one to the pattern
        C{order:*} receive them.
        """
        self.sql(
            "INSERT INTO realtime.channels (pattern) VALUES ('order:*');"
            "CREATE TABLE shop_orders (id integer PRIMARY KEY, status text);"
            "SELECT realtime.track_table('shop_orders', 'order:{id}')"
        )
        one = yield self.client("alice")
        every = yield self.client("bob")
        yield self.call(one.request, "REALTIME_SUBSCRIBE", {"channel": "order:7"})
        ack = yield self.call(every.request, "REALTIME_SUBSCRIBE", {"channel": "order:*"})
        self.assertTrue(ack["ok"], ack)
        self.sql("INSERT INTO shop_orders VALUES (8, 'new'), (7, 'new')")
        _event, message = yield self.call(one.next_event, "INSERT")
        self.assertEqual(
            (message["channel"], message["payload"]), ("order:7", {"id": 7, "status": "new"})
        )
        first = yield self.call(every.next_event, "INSERT")
        second = yield self.call(every.next_event, "INSERT")
        self.assertEqual([first[1]["channel"], second[1]["channel"]], ["order:8", "order:7"])
        self.assertEqual((yield self.before_marker(one, "order:7", "INSERT")), [])

    @inlineCallbacks
    def test_large_message(self) -> Any:
        """
        A message too large to travel inside a NOTIFY is still delivered
        whole.
        """
        client = yield self.client("alice")
        yield self.call(client.request, "REALTIME_SUBSCRIBE", {"channel": "orders"})
        payload = {"text": "x" * 50_000, "items": list(range(1000))}
        ack = yield self.call(
            client.request,
            "REALTIME_PUBLISH",
            {"channel": "orders", "event": "big", "payload": payload},
        )
        self.assertTrue(ack["ok"], ack)
        _event, message = yield self.call(client.next_event, "big")
        self.assertEqual((message["messageId"], message["payload"]), (ack["messageId"], payload))

    @inlineCallbacks
    def test_publish_under_pattern(self) -> Any:
        """
        A socket subscribed to the pattern C{chat:*} may publish on any name
        it covers, and receives its own message once.
        """
        client = yield self.client("alice")
        yield self.call(client.request, "REALTIME_SUBSCRIBE", {"channel": "chat:*"})
        yield self.call(client.request, "REALTIME_SUBSCRIBE", {"channel": "chat:9"})
        ack = yield self.call(
            client.request, "REALTIME_PUBLISH", {"channel": "chat:9", "event": "m", "payload": {}}
        )
        self.assertTrue(ack["ok"], ack)
        yield self.call(client.next_event, "m")
        self.assertEqual((yield self.before_marker(client, "chat:9", "m")), [])

    @inlineCallbacks
    def test_subscribe_percent_pattern(self) -> Any:
        """
        Subscribing to C{chat:%} is subscribing to the row C{chat:*}: the
        ack names the pattern as realtimed keeps it, the socket receives the
        names the row owns, and subscribing again with C{chat:*} is the same
        subscription (the message arrives once).
        """
        client = yield self.client("alice")
        ack = yield self.call(client.request, "REALTIME_SUBSCRIBE", {"channel": "chat:%"})
        self.assertEqual((ack["ok"], ack["channel"]), (True, "chat:*"))
        again = yield self.call(client.request, "REALTIME_SUBSCRIBE", {"channel": "chat:*"})
        self.assertTrue(again["ok"], again)
        ack = yield self.call(
            client.request, "REALTIME_PUBLISH", {"channel": "chat:4", "event": "m", "payload": {}}
        )
        self.assertTrue(ack["ok"], ack)
        _event, message = yield self.call(client.next_event, "m")
        self.assertEqual(message["channel"], "chat:4")
        self.assertEqual((yield self.before_marker(client, "chat:4", "m")), [])



class RefusalTests(RealtimeTestCase):
    @inlineCallbacks
    def test_subscribe_refusals(self) -> Any:
        """
        Subscribing to a name no channel owns, to a disabled channel, or as
        anon under the default policies is refused with
        REALTIME_UNAUTHORIZED; with no ack callback the refusal comes as
        C{realtime:error}.
        """
        client = yield self.client("alice")
        for channel in ("nowhere", "archive", "order:*"):
            ack = yield self.call(client.request, "REALTIME_SUBSCRIBE", {"channel": channel})
            self.assertEqual(ack["ok"], False)
            self.assertEqual(ack["channel"], channel)
            self.assertEqual(ack["error"]["code"], "REALTIME_UNAUTHORIZED")
            self.assertIsInstance(ack["error"]["message"], str)
        anon = yield self.client({"token": KEYS.anon_key})
        ack = yield self.call(anon.request, "REALTIME_SUBSCRIBE", {"channel": "orders"})
        self.assertEqual(
            ack,
            {
                "ok": False,
                "channel": "orders",
                "error": {
                    "code": "REALTIME_UNAUTHORIZED",
                    "message": "Not allowed to subscribe to orders",
                },
            },
        )
        anon_jwt = yield self.client({"token": token(None, role="anon")})
        yield self.call(anon_jwt.send, "REALTIME_SUBSCRIBE", {"channel": "orders"})
        _event, data = yield self.call(anon_jwt.next_event, "realtime:error")
        self.assertEqual(
            data,
            {
                "channel": "orders",
                "code": "REALTIME_UNAUTHORIZED",
                "message": "Not allowed to subscribe to orders",
            },
        )

    @inlineCallbacks
    def test_publish_refusals(self) -> Any:
        """
        Publishing before subscribing is REALTIME_NOT_SUBSCRIBED; publishing
        the database's or Socket.IO's reserved event names is INVALID_INPUT;
        neither stores anything.
        """
        client = yield self.client("alice")
        ack = yield self.call(
            client.request, "REALTIME_PUBLISH", {"channel": "orders", "event": "e", "payload": {}}
        )
        self.assertEqual(ack["ok"], False)
        self.assertEqual(ack["error"]["code"], "REALTIME_NOT_SUBSCRIBED")
        yield self.call(client.request, "REALTIME_SUBSCRIBE", {"channel": "orders"})
        for event in ("INSERT", "UPDATE", "DELETE", "connect", "disconnect", "connect_error"):
            ack = yield self.call(
                client.request,
                "REALTIME_PUBLISH",
                {"channel": "orders", "event": event, "payload": {}},
            )
            self.assertEqual((ack["ok"], ack["channel"]), (False, "orders"))
            self.assertEqual(ack["error"]["code"], "INVALID_INPUT", event)
        yield self.call(
            client.send, "REALTIME_PUBLISH", {"channel": "orders", "event": "INSERT", "payload": {}}
        )
        event, data = yield self.call(client.next_event, "realtime:error")
        self.assertEqual((data["channel"], data["code"]), ("orders", "INVALID_INPUT"))
        self.assertEqual(self.sql("SELECT count(*) FROM realtime.messages"), [(0,)])

    @inlineCallbacks
    def test_malformed(self) -> Any:
        """
        Malformed data for each event, in each spelling, is INVALID_INPUT,
        in the ack or as C{realtime:error}.
        """
        client = yield self.client("alice")
        yield self.call(client.request, "REALTIME_SUBSCRIBE", {"channel": "orders"})
        bad: list[tuple[str, Any]] = [
            ("SUBSCRIBE", "orders"),
            ("SUBSCRIBE", {}),
            ("SUBSCRIBE", {"channel": 7}),
            ("SUBSCRIBE", {"channel": "no spaces"}),
            ("UNSUBSCRIBE", None),
            ("UNSUBSCRIBE", {"channel": ["orders"]}),
            ("PUBLISH", {"channel": "orders"}),
            ("PUBLISH", {"channel": "orders", "event": 5}),
            ("PUBLISH", {"channel": "orders", "event": ""}),
            ("PUBLISH", {"event": "e", "payload": {}}),
            ("PUBLISH", [1, 2]),
        ]
        for operation, data in bad:
            for event in ("REALTIME_" + operation, "realtime:" + operation.lower()):
                ack = yield self.call(client.request, event, data)
                self.assertEqual(ack["ok"], False, (event, data))
                self.assertEqual(ack["error"]["code"], "INVALID_INPUT", (event, data))
                self.assertIn("channel", ack)
            yield self.call(client.send, "REALTIME_" + operation, data)
            event, error = yield self.call(client.next_event, "realtime:error")
            self.assertEqual(error["code"], "INVALID_INPUT", (operation, data))
            self.assertEqual(set(error), {"channel", "code", "message"})


class PolicyTests(RealtimeTestCase):
    @inlineCallbacks
    def test_own_user_channel(self) -> Any:
        """
        Custom restrictive policies, written with C{realtime.channel_name()}
        and the JWT claims, are obeyed: users may subscribe only to
        C{user:<their sub>} among the C{user:*} names, and publish on
        C{chat:*} only with a C{can_post} claim.
        """
        self.sql(
            """
            CREATE POLICY own_user_subscribe ON realtime.channels
                AS RESTRICTIVE FOR SELECT TO authenticated
                USING (pattern <> 'user:*'
                       OR realtime.channel_name() = 'user:' || (realtime.jwt_claims() ->> 'sub'));
            CREATE POLICY posters_publish ON realtime.messages
                AS RESTRICTIVE FOR INSERT TO authenticated
                WITH CHECK (realtime.channel_name() = channel_name
                            AND (channel_name NOT LIKE 'chat:%'
                                 OR (realtime.jwt_claims() ->> 'can_post') = 'true'));
            """
        )
        admin = yield self.client({"apiKey": KEYS.api_key})
        ack = yield self.call(admin.request, "REALTIME_SUBSCRIBE", {"channel": "user:*"})
        self.assertTrue(ack["ok"], ack)

        alice = yield self.client("alice")
        ack = yield self.call(alice.request, "REALTIME_SUBSCRIBE", {"channel": "user:alice"})
        self.assertTrue(ack["ok"], ack)
        for channel in ("user:bob", "user:*"):
            ack = yield self.call(alice.request, "REALTIME_SUBSCRIBE", {"channel": channel})
            self.assertEqual(ack["error"]["code"], "REALTIME_UNAUTHORIZED", channel)
        ack = yield self.call(
            alice.request,
            "REALTIME_PUBLISH",
            {"channel": "user:alice", "event": "note", "payload": {}},
        )
        self.assertTrue(ack["ok"], ack)
        yield self.call(alice.next_event, "note")
        _event, message = yield self.call(admin.next_event, "note")
        self.assertEqual(message["channel"], "user:alice")

        ack = yield self.call(alice.request, "REALTIME_SUBSCRIBE", {"channel": "chat:a"})
        self.assertTrue(ack["ok"], ack)
        ack = yield self.call(
            alice.request, "REALTIME_PUBLISH", {"channel": "chat:a", "event": "said", "payload": {}}
        )
        self.assertEqual(
            ack,
            {
                "ok": False,
                "channel": "chat:a",
                "error": {
                    "code": "REALTIME_UNAUTHORIZED",
                    "message": "Not allowed to publish to chat:a",
                },
            },
        )
        poster = yield self.client({"token": token("dave", can_post=True)})
        yield self.call(poster.request, "REALTIME_SUBSCRIBE", {"channel": "chat:a"})
        ack = yield self.call(
            poster.request,
            "REALTIME_PUBLISH",
            {"channel": "chat:a", "event": "said", "payload": {"hi": 1}},
        )
        self.assertTrue(ack["ok"], ack)
        _event, message = yield self.call(alice.next_event, "said")
        self.assertEqual((message["senderId"], message["payload"]), ("dave", {"hi": 1}))
        self.assertEqual(
            self.sql("SELECT channel_name, sender_id FROM realtime.messages ORDER BY created_at"),
            [("user:alice", "alice"), ("chat:a", "dave")],
        )


class TwoProcessTests(RealtimeTestCase):
    @inlineCallbacks
    def test_publish_and_database_event_cross_processes(self) -> Any:
        """
        With two realtimed on one database, a subscriber on one receives a
        publish made on the other and a database event, exactly once each,
        in order; each process counts its own sockets in
        C{wsAudienceCount}.
        """
        second = yield self.start_daemon()
        here = yield self.client("alice")
        there = yield self.client("bob", daemon=second)
        for client in (here, there):
            ack = yield self.call(client.request, "REALTIME_SUBSCRIBE", {"channel": "orders"})
            self.assertTrue(ack["ok"])
        acks = []
        for i in range(5):
            acks.append(
                (
                    yield self.call(
                        there.request,
                        "REALTIME_PUBLISH",
                        {"channel": "orders", "event": "n", "payload": {"i": i}},
                    )
                )
            )
            if i == 2:
                self.sql("SELECT realtime.publish('orders', 'n', '{\"i\": \"sql\"}')")
        expected = [0, 1, 2, "sql", 3, 4]
        for client in (here, there):
            got = []
            for _ in expected:
                _event, message = yield self.call(client.next_event, "n")
                got.append(message["payload"]["i"])
            self.assertEqual(got, expected)
            self.assertEqual((yield self.before_marker(client, "orders", "n")), [])
        message_id = acks[0]["messageId"]
        yield self.wait_for(
            lambda: (
                self.sql(
                    "SELECT realtime.ws_audience_count(m) FROM realtime.messages m WHERE id = %s",
                    (message_id,),
                )
                == [(2,)]
            ),
            "wsAudienceCount 2",
        )


class PresenceTests(RealtimeTestCase):
    @inlineCallbacks
    def test_join_second_socket_leave(self) -> Any:
        """
        A member's join is announced to those present; a second socket of
        the same user adds no member and no join; the user leaves when its
        last socket disconnects; anonymous sockets are members of their own.
        """
        alice = yield self.client("alice")
        ack = yield self.call(alice.request, "REALTIME_SUBSCRIBE", {"channel": "chat:room1"})
        self.assertEqual([m["presenceId"] for m in ack["presence"]["members"]], ["alice"])

        bob = yield self.client("bob")
        ack = yield self.call(bob.request, "REALTIME_SUBSCRIBE", {"channel": "chat:room1"})
        self.assertEqual([m["presenceId"] for m in ack["presence"]["members"]], ["alice", "bob"])
        _event, join = yield self.call(alice.next_event, "presence:join")
        self.assertEqual(join["channel"], "chat:room1")
        self.assertEqual(join["meta"], {"channel": "chat:room1"})
        self.assertEqual((join["member"]["presenceId"], join["member"]["type"]), ("bob", "user"))
        self.assertEqual(join["member"], ack["presence"]["members"][1])

        bob2 = yield self.client("bob")
        ack = yield self.call(bob2.request, "REALTIME_SUBSCRIBE", {"channel": "chat:room1"})
        self.assertEqual([m["presenceId"] for m in ack["presence"]["members"]], ["alice", "bob"])
        self.assertEqual((yield self.before_marker(alice, "chat:room1", "presence:join")), [])

        yield self.call(bob.disconnect)
        realtime = self.daemon.realtime
        yield self.wait_for(
            lambda: len(realtime.subscriptions.audience("chat:room1", None)) == 2,
            "the server to see one of bob's sockets go",
        )
        self.assertEqual((yield self.before_marker(alice, "chat:room1", "presence:leave")), [])
        yield self.call(bob2.disconnect)
        _event, leave = yield self.call(alice.next_event, "presence:leave")
        self.assertEqual(leave["member"]["presenceId"], "bob")
        self.assertEqual(leave["meta"], {"channel": "chat:room1"})

        anon = yield self.client({"apiKey": KEYS.api_key})
        ack = yield self.call(anon.request, "REALTIME_SUBSCRIBE", {"channel": "chat:room1"})
        members = ack["presence"]["members"]
        self.assertEqual(members[1]["type"], "anonymous")
        self.assertEqual(members[1]["presenceId"], anon.sid)
        yield self.call(anon.request, "REALTIME_UNSUBSCRIBE", {"channel": "chat:room1"})
        _event, leave = yield self.call(alice.next_event, "presence:leave")
        self.assertEqual(leave["member"]["type"], "anonymous")

    @inlineCallbacks
    def test_disconnect_cleans_up(self) -> Any:
        """
        A disconnected socket leaves every channel it was in and is no
        longer delivered to.
        """
        alice = yield self.client("alice")
        for channel in ("orders", "chat:*", "chat:a"):
            yield self.call(alice.request, "REALTIME_SUBSCRIBE", {"channel": channel})
        yield self.call(alice.disconnect)
        realtime = self.daemon.realtime
        channels = ("orders", "chat:*", "chat:a")
        yield self.wait_for(
            lambda: not any(realtime.presence.members(channel) for channel in channels),
            "no members",
        )
        self.assertEqual(realtime.subscriptions.audience("orders", None), set())
        self.assertEqual(realtime.subscriptions.audience("chat:a", None), set())


class ChannelChangeTests(RealtimeTestCase):
    @inlineCallbacks
    def test_ended_on_every_process(self) -> Any:
        """
        When a channel row is disabled, the subscriptions it granted end on
        every process: each socket gets realtime:error REALTIME_UNAUTHORIZED
        and no longer receives the channel's messages; subscribing again is
        refused while the row stays disabled.
        """
        second = yield self.start_daemon()
        here = yield self.client("alice")
        there = yield self.client("bob", daemon=second)
        for client in (here, there):
            ack = yield self.call(client.request, "REALTIME_SUBSCRIBE", {"channel": "orders"})
            self.assertTrue(ack["ok"])
        self.sql("UPDATE realtime.channels SET enabled = false WHERE pattern = 'orders'")
        for client in (here, there):
            _event, error = yield self.call(client.next_event, "realtime:error")
            self.assertEqual((error["channel"], error["code"]), ("orders", "REALTIME_UNAUTHORIZED"))
        self.sql("UPDATE realtime.channels SET enabled = true WHERE pattern = 'orders'")
        self.sql("SELECT realtime.publish('orders', 'after', '{}')")
        for client in (here, there):
            yield self.call(client.request, "REALTIME_SUBSCRIBE", {"channel": "chat:marker"})
            self.assertEqual((yield self.before_marker(client, "chat:marker", "after")), [])
        self.sql("UPDATE realtime.channels SET enabled = false WHERE pattern = 'orders'")
        ack = yield self.call(here.request, "REALTIME_SUBSCRIBE", {"channel": "orders"})
        self.assertEqual(ack["error"]["code"], "REALTIME_UNAUTHORIZED")

    @inlineCallbacks
    def test_taken_over_name(self) -> Any:
        """
        A name subscription ends when a newer, more specific row takes the
        name over; a subscription to another name of the old row stays.
        """
        self.sql("INSERT INTO realtime.channels (pattern) VALUES ('shop:*')")
        alice = yield self.client("alice")
        for channel in ("shop:vip1", "shop:other"):
            ack = yield self.call(alice.request, "REALTIME_SUBSCRIBE", {"channel": channel})
            self.assertTrue(ack["ok"])
        self.sql("INSERT INTO realtime.channels (pattern) VALUES ('shop:vip*')")
        _event, error = yield self.call(alice.next_event, "realtime:error")
        self.assertEqual(error["channel"], "shop:vip1")
        self.sql("SELECT realtime.publish('shop:other', 'still', '{}')")
        _event, message = yield self.call(alice.next_event, "still")
        self.assertEqual(message["channel"], "shop:other")


class TokenRefreshTests(RealtimeTestCase):
    @inlineCallbacks
    def test_refresh(self) -> Any:
        """
        A socket refreshes its token with REALTIME_AUTH and gets the new
        expiry; a token of another user is refused.
        """
        alice = yield self.client("alice")
        expires = int(time.time()) + 7200
        ack = yield self.call(
            alice.request, "REALTIME_AUTH", {"token": token("alice", exp=expires)}
        )
        self.assertTrue(ack["ok"])
        self.assertTrue(ack["expiresAt"].endswith("Z"))
        ack = yield self.call(alice.request, "realtime:auth", {"token": token("bob")})
        self.assertEqual(ack["error"]["code"], "REALTIME_UNAUTHORIZED")
