"""
Admin control: ``GET /api/realtime/presence`` and ``POST
/api/realtime/disconnect``, against two real daemons on one database and
real Socket.IO clients.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import socketio
import treq
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase

from realtimed.control import DisconnectTarget, disconnect_request, parse_disconnect_request
from tests.test_api import APIServerMixin, error
from tests.test_realtime import KEYS, PATIENCE, QUIET, Daemon, RealtimeTestCase, sleep, token

ADMIN = {"Authorization": [f"Bearer {KEYS.api_key}"], "Content-Type": ["application/json"]}


class RequestTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        """
        A disconnect request travels as JSON in a notification and reads
        back the same; anything else is not a request.
        """
        for target in (DisconnectTarget(user_id="alice"), DisconnectTarget(socket_id="s1")):
            payload = disconnect_request("r1", target)
            self.assertEqual(parse_disconnect_request(payload), ("r1", target))
        for payload in ("", "[]", '{"disconnect": "r"}', '{"disconnect": 1, "userId": "a"}'):
            self.assertIsNone(parse_disconnect_request(payload))
        both = json.dumps({"disconnect": "r", "userId": "a", "socketId": "s"})
        self.assertIsNone(parse_disconnect_request(both))


class ValidationTests(APIServerMixin):
    """
    The routes' answers to bad requests, and with no socket anywhere.
    """

    @inlineCallbacks
    def test_presence_query(self) -> Any:
        """
        ``channel`` is required and must be a channel name or pattern; an
        empty channel has no members.
        """
        status, body = yield self.request("GET", "/presence")
        self.assertEqual(
            (status, body), (400, error(400, "INVALID_INPUT", "channel: Channel name is required"))
        )
        status, body = yield self.request("GET", "/presence", params={"channel": "a b"})
        self.assertEqual(status, 400)
        self.assertTrue(body["message"].startswith("channel: Invalid channel"), body)
        status, body = yield self.request("GET", "/presence", params={"channel": "chat:%"})
        self.assertEqual((status, body), (200, {"channel": "chat:*", "members": []}))

    @inlineCallbacks
    def test_disconnect_body(self) -> Any:
        """
        The body names a user or a socket, not both, as non-empty strings;
        with no realtimed process on the database, nothing is disconnected.
        """
        for body, message in (
            ({}, "body: Give userId or socketId"),
            ({"userId": "a", "socketId": "b"}, "body: Give userId or socketId, not both"),
            ({"userId": 3}, "userId: Expected string, received number"),
            ({"socketId": None}, "socketId: Expected string, received null"),
            ({"userId": ""}, "userId: Must be 1-255 characters"),
            ({"userId": "a", "room": 1}, "room: Unknown field"),
        ):
            status, answer = yield self.request("POST", "/disconnect", body)
            self.assertEqual((status, answer), (400, error(400, "INVALID_INPUT", message)), body)
        status, answer = yield self.request("POST", "/disconnect", {"userId": "nobody"})
        self.assertEqual((status, answer), (200, {"disconnected": 0}))


class AcrossDaemonsTests(RealtimeTestCase):
    """
    Two daemons on one database, with sockets on each.
    """

    @inlineCallbacks
    def setUp(self) -> Any:  # type: ignore[override]
        yield super().setUp()
        self.other = yield self.start_daemon()

    @inlineCallbacks
    def admin(self, daemon: Daemon, method: str, path: str, body: Any = None) -> Any:
        response = yield treq.request(
            method,
            daemon.address + "/api/realtime" + path,
            headers=ADMIN,
            data=None if body is None else json.dumps(body).encode(),
            persistent=False,
        )
        answer = yield response.json()
        return response.code, answer

    def reconnecting_client(self, daemon: Daemon, sub: str) -> Any:
        """
        A python-socketio client that reconnects by itself whenever it
        would, connected as C{sub}.
        """
        client = socketio.Client(reconnection=True, reconnection_delay=0.1)
        left = threading.Event()
        client.on("disconnect", lambda *_: left.set())
        self.addCleanup(deferToThread, client.disconnect)
        d = deferToThread(
            client.connect,
            daemon.address,
            auth={"token": token(sub)},
            transports=["websocket"],
            wait_timeout=PATIENCE,
        )
        return d.addCallback(lambda _: (client, left))

    @inlineCallbacks
    def test_presence_of_this_process(self) -> Any:
        """
        ``GET /presence`` lists the members present in a channel on the
        process that answers, as the subscribe ack does.
        """
        alice = yield self.client("alice")
        ack = yield self.call(alice.request, "REALTIME_SUBSCRIBE", {"channel": "chat:1"})
        bob = yield self.client("bob")
        yield self.call(bob.request, "REALTIME_SUBSCRIBE", {"channel": "chat:1"})
        status, body = yield self.admin(self.daemon, "GET", "/presence?channel=chat:1")
        self.assertEqual(status, 200)
        self.assertEqual(body["channel"], "chat:1")
        self.assertEqual([m["presenceId"] for m in body["members"]], ["alice", "bob"])
        self.assertEqual(body["members"][0], ack["presence"]["members"][0])

    @inlineCallbacks
    def test_disconnect_user_everywhere(self) -> Any:
        """
        Disconnecting a user, through either daemon, disconnects each of
        its sockets on both with a Socket.IO DISCONNECT: the answer counts
        them all, the clients do not reconnect, and other users stay.
        """
        here, left_here = yield self.reconnecting_client(self.daemon, "alice")
        there, left_there = yield self.reconnecting_client(self.other, "alice")
        bob = yield self.client("bob", daemon=self.other)
        status, body = yield self.admin(self.daemon, "POST", "/disconnect", {"userId": "alice"})
        self.assertEqual((status, body), (200, {"disconnected": 2}))
        self.assertTrue((yield deferToThread(left_here.wait, PATIENCE)))
        self.assertTrue((yield deferToThread(left_there.wait, PATIENCE)))
        yield sleep(QUIET)
        self.assertEqual((here.connected, there.connected), (False, False))
        self.assertEqual(
            [len(d.realtime.namespace.sockets) for d in (self.daemon, self.other)], [0, 1]
        )
        ack = yield self.call(bob.request, "REALTIME_SUBSCRIBE", {"channel": "orders"})
        self.assertTrue(ack["ok"], ack)

    @inlineCallbacks
    def test_disconnect_socket_on_another_daemon(self) -> Any:
        """
        Disconnecting one socket by its id works from the daemon it is not
        connected to, and leaves the user's other sockets alone.
        """
        first = yield self.client("carol")
        second = yield self.client("carol")
        status, body = yield self.admin(self.other, "POST", "/disconnect", {"socketId": first.sid})
        self.assertEqual((status, body), (200, {"disconnected": 1}))
        yield self.wait_for(lambda: not first.sio.connected, "the socket to be disconnected")
        self.assertTrue(second.sio.connected)
        status, body = yield self.admin(self.other, "POST", "/disconnect", {"socketId": "gone"})
        self.assertEqual((status, body), (200, {"disconnected": 0}))
