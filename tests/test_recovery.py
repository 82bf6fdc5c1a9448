"""
Nothing lost across reconnections, with real daemons on one database:
stock socket.io-client sockets recover their session on another process
after their connection is cut, and python-socketio clients subscribe
``since`` a message id.
"""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import urlsplit

from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.faults import Proxy
from tests.processes import start_daemon
from tests.support import create_database, run_sql
from tests.test_realtime import PATIENCE, Client, marker_events, token
from tests.test_realtime_js import JSClient, _why_not


def port_of(address: str) -> int:
    port = urlsplit(address).port
    assert port is not None
    return port


def publish(url: str, channel: str, *values: Any) -> list[str]:
    """
    Publish one message ``n`` per value on C{channel}, each in its own
    transaction.
    """
    return [
        str(
            run_sql(
                url, "SELECT realtime.publish(%s, 'n', jsonb_build_object('i', %s))", (channel, v)
            )[0][0]
        )
        for v in values
    ]


class RecoveryTests(TestCase):
    timeout = 180

    def setUp(self) -> None:
        why = _why_not()
        if why is not None:
            self.fail(why)

    @inlineCallbacks
    def test_recovered_on_another_process(self) -> Any:
        """
        Two socket.io-client sockets connected to one process through a
        link that is cut, and that comes back to another process, recover
        their sessions there: same id, same subscriptions, and every
        message stored meanwhile, once, in order, before new ones; the one
        that had received nothing before the cut too.  Each message comes
        with an offset.
        """
        url = create_database(self)
        first = yield start_daemon(self, url, "--recovery-window", "60")
        second = yield start_daemon(self, url, "--recovery-window", "60")
        run_sql(url, "INSERT INTO realtime.channels (pattern) VALUES ('orders'), ('audit')")
        proxy = Proxy(port_of(first.address))
        self.addCleanup(proxy.close)
        address = proxy.address

        clients = {}
        for name, channel, transports in (
            ("busy", "orders", ["websocket"]),
            ("quiet", "audit", ["polling", "websocket"]),
        ):
            client = JSClient(address)
            self.addCleanup(deferToThread, client.close)
            yield deferToThread(
                client.connect, {"token": token(name)}, transports=transports, reconnect=True
            )
            ack = yield deferToThread(client.request, "REALTIME_SUBSCRIBE", {"channel": channel})
            self.assertTrue(ack["ok"], ack)
            clients[name] = client
        busy, quiet = clients["busy"], clients["quiet"]

        publish(url, "orders", 1)
        _, message = yield deferToThread(busy.next_event, "n")
        self.assertEqual(message["payload"], {"i": 1})
        self.assertEqual(len(busy.offsets), 1)

        proxy.target = None
        proxy.cut()
        publish(url, "orders", 2, 3)
        publish(url, "audit", "a")
        publish(url, "orders", 4)
        proxy.target = port_of(second.address)

        for client in (busy, quiet):
            connected = yield deferToThread(client.reconnects.get, True, PATIENCE)
            self.assertEqual((connected["recovered"], connected["sid"]), (True, client.sid))
        got = []
        for _ in range(3):
            _, message = yield deferToThread(busy.next_event, "n")
            got.append(message["payload"]["i"])
        self.assertEqual(got, [2, 3, 4])
        _, message = yield deferToThread(quiet.next_event, "n")
        self.assertEqual(message["payload"], {"i": "a"})

        # Live messages come after, through the other process, once.
        publish(url, "orders", 5)
        _, message = yield deferToThread(busy.next_event, "n")
        self.assertEqual(message["payload"], {"i": 5})
        self.assertEqual(len(busy.offsets), 3)
        self.assertEqual((yield marker_events(url, busy, "orders", "n")), [])
        self.assertEqual((yield marker_events(url, quiet, "audit", "n")), [])


class SubscribeSinceTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def test_since(self) -> Any:
        """
        A subscribe C{since} a message id gets what was stored after it on
        the channel, in order, before live messages, once; the ack says how
        many and that it was all.  An unknown id or offset replays nothing,
        and says so.  Without recovery, messages carry no offset.
        """
        url = create_database(self)
        daemon = yield start_daemon(self, url)
        run_sql(url, "INSERT INTO realtime.channels (pattern) VALUES ('orders'), ('audit')")
        ids = publish(url, "orders", 1, 2, 3)

        client = Client(daemon.address)
        self.addCleanup(deferToThread, client.close)
        yield deferToThread(client.connect, {"token": token("alice")})
        ack = yield deferToThread(
            client.request, "REALTIME_SUBSCRIBE", {"channel": "orders", "since": ids[0]}
        )
        self.assertEqual(ack["replay"], {"count": 2, "complete": True})
        got = []
        for _ in range(2):
            _, message = yield deferToThread(client.next_event, "n")
            got.append(message["payload"]["i"])
        self.assertEqual(got, [2, 3])
        publish(url, "orders", 4)
        _, message = yield deferToThread(client.next_event, "n")
        self.assertEqual(message["payload"], {"i": 4})
        self.assertEqual((yield marker_events(url, client, "orders", "n")), [])

        other = Client(daemon.address)
        self.addCleanup(deferToThread, other.close)
        yield deferToThread(other.connect, {"token": token("bob")})
        ack = yield deferToThread(
            other.request, "REALTIME_SUBSCRIBE", {"channel": "orders", "since": str(uuid.uuid4())}
        )
        self.assertEqual((ack["ok"], ack["replay"]), (True, {"count": 0, "complete": False}))
        ack = yield deferToThread(
            other.request, "REALTIME_SUBSCRIBE", {"channel": "audit", "since": "not an offset"}
        )
        self.assertEqual((ack["ok"], ack["replay"]), (True, {"count": 0, "complete": False}))
        ack = yield deferToThread(
            other.request, "REALTIME_SUBSCRIBE", {"channel": "audit", "since": 7}
        )
        self.assertEqual(ack["ok"], False)
        self.assertEqual(ack["error"]["code"], "INVALID_INPUT")
        # Subscribed to orders since an unknown id: nothing replayed.
        self.assertEqual((yield marker_events(url, other, "orders", "n")), [])
