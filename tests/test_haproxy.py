"""
The shipped HAProxy configuration (``etc/haproxy.cfg``) in front of three
real realtimed processes on one database, with JavaScript socket.io-client
sockets spread over them: long-polling that upgrades (kept on its process by
HAProxy's cookie), long-polling alone, and WebSocket alone.

HAProxy is the Debian package ``haproxy``; without it these tests fail,
saying so (``.ci/run`` installs it).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import treq
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.threads import deferToThread

from tests.processes import RealtimedProcess, free_port
from tests.test_realtime import KEYS, PATIENCE, RealtimeTestCase, token
from tests.test_realtime_js import JSClient, JSClientMixin

CONFIG = Path(__file__).parent.parent / "etc" / "haproxy.cfg"
ADMIN = {"Authorization": [f"Bearer {KEYS.api_key}"], "Content-Type": ["application/json"]}

#: The sockets: (user, transports, keeps cookies).
SOCKETS = [
    ("u1", ["polling", "websocket"], True),
    ("u2", ["websocket"], False),
    ("u3", ["polling", "websocket"], True),
    ("u4", ["websocket"], False),
    ("u5", ["polling"], True),
    ("u6", ["websocket"], False),
]


def balancer_config(listen: int, backends: list[int]) -> str:
    """
    The shipped configuration, listening on C{listen} in front of the
    realtimed processes on C{backends}.
    """
    text = CONFIG.read_text()
    text, binds = re.subn(r"(?m)^(\s*)bind :8080$", rf"\1bind 127.0.0.1:{listen}", text)
    servers = iter(backends)
    text, count = re.subn(
        r"(?m)^(\s*server realtimed\d) 127\.0\.0\.1:\d+",
        lambda m: f"{m.group(1)} 127.0.0.1:{next(servers)}",
        text,
    )
    assert (binds, count) == (1, len(backends)), (binds, count)
    return text


class HAProxyTests(JSClientMixin, RealtimeTestCase):
    """
    Three realtimed processes behind HAProxy.  (The daemon
    L{RealtimeTestCase} starts in this reactor serves the same database and
    takes no clients from HAProxy.)
    """

    client_class = JSClient
    timeout = 240

    @inlineCallbacks
    def setUp(self) -> Any:  # type: ignore[override]
        haproxy = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin")
        if haproxy is None:
            self.fail("haproxy is not installed (apt-get install haproxy; .ci/run does)")
        yield super().setUp()
        base = Path(self.mktemp()).absolute()
        self.processes = [
            RealtimedProcess(
                self.url,
                base / f"realtimed{i}",
                "--max-connections-per-ip",
                "0",
                "--recovery-window",
                "60",
            )
            for i in (1, 2, 3)
        ]
        for process in self.processes:
            process.start()
            self.addCleanup(process.stop)
        yield gatherResults([deferToThread(p.wait_healthy) for p in self.processes])
        port = free_port()
        config = base / "haproxy.cfg"
        config.write_text(balancer_config(port, [p.port for p in self.processes]))
        self.balancer_log = base / "haproxy.log"
        with open(self.balancer_log, "wb") as out:
            self.balancer = subprocess.Popen(
                [haproxy, "-db", "-f", str(config)], stdout=out, stderr=subprocess.STDOUT
            )
        self.addCleanup(self._stop_balancer)
        self.address = f"http://127.0.0.1:{port}"
        yield deferToThread(self._wait_balancer)

    def _wait_balancer(self) -> None:
        deadline = time.monotonic() + PATIENCE
        while True:
            try:
                with urllib.request.urlopen(self.address + "/healthz", timeout=10) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if self.balancer.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    "HAProxy did not answer:\n" + self.balancer_log.read_text(errors="replace")
                )
            time.sleep(0.1)

    def _stop_balancer(self) -> None:
        if self.balancer.poll() is None:
            self.balancer.terminate()
            try:
                self.balancer.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.balancer.kill()
                self.balancer.wait()

    @inlineCallbacks
    def connect_all(self) -> Any:
        """
        One JavaScript socket per entry of L{SOCKETS}, through HAProxy, each
        subscribed to ``chat:lb``; the polling ones that may upgrade have.
        """
        clients = []
        for user, transports, cookies in SOCKETS:
            client = JSClient(self.address)
            self.addCleanup(self.call, client.close)
            yield self.call(
                client.connect,
                {"token": token(user)},
                transports=transports,
                with_credentials=cookies,
            )
            self.assertEqual(client.transport, transports[0], user)
            clients.append(client)
        for client, (user, transports, _) in zip(clients, SOCKETS, strict=True):
            if transports == ["polling", "websocket"]:
                self.assertEqual((yield self.call(client.upgraded)), "websocket", user)
        return clients

    @inlineCallbacks
    def connections(self) -> Any:
        """
        How many Engine.IO sessions each realtimed process holds, from its
        metrics.
        """
        counts = []
        for process in self.processes:
            response = yield treq.get(process.address + "/metrics", headers=ADMIN, persistent=False)
            text = yield response.text()
            found = re.findall(r'(?m)^realtimed_connections\{transport="\w+"\} ([\d.]+)', text)
            counts.append(sum(int(float(n)) for n in found))
        return counts

    @inlineCallbacks
    def subscribe_all(self, clients: list[JSClient]) -> Any:
        acks = []
        for client in clients:
            ack = yield self.call(client.request, "REALTIME_SUBSCRIBE", {"channel": "chat:lb"})
            self.assertTrue(ack["ok"], ack)
            acks.append(ack)
        return acks

    def sees_everyone(self, client: JSClient, ack: dict[str, Any], users: set[str]) -> None:
        """
        Block until C{client} knows every one of C{users} as a member: from
        its subscribe ack, then from ``presence:join`` events.
        """
        known = {m["presenceId"] for m in ack["presence"]["members"]}
        while not users <= known:
            _, join = client.next_event("presence:join")
            known.add(join["member"]["presenceId"])

    @inlineCallbacks
    def test_messages_and_presence_across_processes(self) -> Any:
        """
        Sockets spread over the three processes: every socket gets every
        message, whichever process it was published on; each socket learns
        every member (from its ack or a join) and the presence route of
        each process lists them all; a member that leaves is seen leaving
        everywhere.
        """
        clients = yield self.connect_all()
        counts = yield self.connections()
        self.assertEqual(sum(counts), len(SOCKETS), counts)
        self.assertTrue(all(counts), f"every process has sockets: {counts}")
        acks = yield self.subscribe_all(clients)
        users = {user for user, _, _ in SOCKETS}
        yield gatherResults(
            [
                deferToThread(self.sees_everyone, client, ack, users)
                for client, ack in zip(clients, acks, strict=True)
            ]
        )
        for process in self.processes:
            response = yield treq.get(
                process.address + "/api/realtime/presence",
                params={"channel": "chat:lb"},
                headers=ADMIN,
                persistent=False,
            )
            body = yield response.json()
            self.assertEqual({m["presenceId"] for m in body["members"]}, users)
        for sender in (clients[0], clients[1], clients[4]):
            text = f"from {sender.sid}"
            ack = yield self.call(
                sender.request,
                "REALTIME_PUBLISH",
                {"channel": "chat:lb", "event": "said", "payload": {"text": text}},
            )
            self.assertTrue(ack["ok"], ack)
            for client in clients:
                _, message = yield self.call(client.next_event, "said")
                self.assertEqual(
                    (message["payload"]["text"], message["messageId"]), (text, ack["messageId"])
                )
        yield self.call(clients[5].disconnect)
        for client in clients[:5]:
            _, leave = yield self.call(client.next_event, "presence:leave")
            self.assertEqual(leave["member"]["presenceId"], "u6")

    @inlineCallbacks
    def test_admin_disconnect_across_processes(self) -> Any:
        """
        ``POST /api/realtime/disconnect`` through HAProxy reaches the socket
        wherever it is connected; the others stay connected and see it
        leave.
        """
        clients = yield self.connect_all()
        yield self.subscribe_all(clients)
        for target in (0, 3, 4):
            user = SOCKETS[target][0]
            response = yield treq.post(
                self.address + "/api/realtime/disconnect",
                json.dumps({"userId": user}).encode(),
                headers=ADMIN,
                persistent=False,
            )
            self.assertEqual((response.code, (yield response.json())), (200, {"disconnected": 1}))
            self.assertTrue((yield deferToThread(clients[target].disconnected.wait, PATIENCE)))
            self.assertEqual(clients[target].disconnect_reason, "io server disconnect")
        survivors = [c for i, c in enumerate(clients) if i not in (0, 3, 4)]
        for client in survivors:
            self.assertFalse(client.disconnected.is_set())
            ack = yield self.call(
                client.request, "REALTIME_PUBLISH", {"channel": "chat:lb", "event": "still"}
            )
            self.assertTrue(ack["ok"], ack)
        deadline = time.monotonic() + PATIENCE
        while sum((yield self.connections())) != len(survivors):
            self.assertLess(time.monotonic(), deadline, "the sessions to close")
            yield self.call(time.sleep, 0.05)

    @inlineCallbacks
    def test_recovered_on_another_process(self) -> Any:
        """
        A socket whose process is killed reconnects through HAProxy to
        another process and recovers its session there: the same socket id,
        its subscription, and the messages published meanwhile, once, in
        order.
        """
        client = JSClient(self.address)
        self.addCleanup(self.call, client.close)
        yield self.call(
            client.connect, {"token": token("rita")}, transports=["websocket"], reconnect=True
        )
        ack = yield self.call(client.request, "REALTIME_SUBSCRIBE", {"channel": "chat:lb"})
        self.assertTrue(ack["ok"], ack)
        counts = yield self.connections()
        self.assertEqual(sorted(counts), [0, 0, 1])
        victim = self.processes[counts.index(1)]
        victim.kill()
        for n in (1, 2, 3):
            self.sql("SELECT realtime.publish('chat:lb', 'missed', %s::jsonb)", (f'{{"n": {n}}}',))
        connected = yield self.call(client.reconnects.get, True, PATIENCE)
        self.assertEqual((connected["recovered"], connected["sid"]), (True, client.sid))
        got = []
        for _ in range(3):
            _, message = yield self.call(client.next_event, "missed")
            got.append(message["payload"]["n"])
        self.assertEqual(got, [1, 2, 3])
        ack = yield self.call(
            client.request, "REALTIME_PUBLISH", {"channel": "chat:lb", "event": "after"}
        )
        self.assertTrue(ack["ok"], ack)
        _, message = yield self.call(client.next_event, "after")
        self.assertEqual(message["channel"], "chat:lb")
