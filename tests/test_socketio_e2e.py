"""
End-to-end tests: real Socket.IO clients against a real server on a
loopback port.

The JavaScript ``socket.io-client`` 4 (from ``tests/js/node_modules``,
installed by ``npm ci`` there; the tests fail without it) runs
``tests/js/engineio_scenario.js``, once with its default options (polling,
then the upgrade to WebSocket) and once WebSocket only.  python-socketio's
blocking client runs the same scenario in a subprocess.  Each scenario:
connect with auth, acks both ways, binary data both ways, a server-side
disconnect and a reconnect, and a refused connection.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource

from realtimed.engineio.engine import EngineConfig
from realtimed.engineio.socketio import ConnectRefused, Socket, SocketIOServer
from tests.support import TrackingSite

JS = Path(__file__).parent / "js"
SCENARIO = JS / "engineio_scenario.js"


def _node_missing() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed"
    if not (JS / "node_modules" / "socket.io-client").is_dir():
        return "socket.io-client is not installed (npm ci in tests/js)"
    return None


def build_app(clock: Any) -> SocketIOServer:
    """
    The server side of the scenario.
    """
    server = SocketIOServer(
        clock, EngineConfig(ping_interval=5, ping_timeout=5, cors_origins=("*",))
    )
    main = server.namespace("/")

    def connect(socket: Socket, auth: Any) -> None:
        token = auth.get("token") if isinstance(auth, dict) else None
        if token != "good":
            raise ConnectRefused("Invalid token", {"token": token})
        socket.data["token"] = token
        socket.emit(
            "welcome",
            {
                "auth": auth,
                "host": "host" in socket.headers,
                # the transport the session started on
                "opened": socket.query.get("transport"),
            },
        )

    def echo(socket: Socket, args: list[Any], ack: Any) -> None:
        if ack is not None:
            ack(*args)
        else:
            socket.emit("echo", *args)

    def ask(socket: Socket, args: list[Any], ack: Any) -> None:
        socket.emit(
            "question",
            args[0],
            b"\x01",
            ack=lambda *values: socket.emit("answer", list(values)),
        )

    main.on_connect(connect)
    main.on("echo", echo)
    main.on("ask me", ask)
    main.on("bye", lambda socket, args, ack: socket.disconnect())
    main.on("restart", lambda socket, args, ack: clock.callLater(0, server.close))
    return server


PYTHON_SCENARIO = r"""
import json, sys, threading
import socketio

url, mode = sys.argv[1], sys.argv[2]
transports = ["websocket"] if mode == "websocket" else ["polling", "websocket"]

def report(step, value):
    print(json.dumps({"step": step, "value": value}), flush=True)

def wait(event):
    if not event.wait(10):
        raise SystemExit("timed out")

sio = socketio.Client(reconnection=False)
got = {}
events = {name: threading.Event() for name in ("welcome", "echo", "answer", "disconnect")}

@sio.on("welcome")
def welcome(data):
    got["welcome"] = data
    events["welcome"].set()

@sio.on("echo")
def echo(*args):
    got["echo"] = args
    events["echo"].set()

@sio.on("question")
def question(n, file):
    return n * 2, file + b"\x09"

@sio.on("answer")
def answer(values):
    got["answer"] = values
    events["answer"].set()

@sio.on("disconnect")
def disconnect(*reason):
    events["disconnect"].set()

sio.connect(url, auth={"token": "good"}, transports=transports, wait_timeout=10)
wait(events["welcome"])
report("welcome", got["welcome"])
report("transport", sio.transport())
report("ack", list(sio.call("echo", (1, "two", {"three": [True]}), timeout=10)))
sio.emit("echo", ("no ack", b"\x01\x02\x03"))
wait(events["echo"])
report("binary event", [got["echo"][0], got["echo"][1].hex()])
report("binary ack", sio.call("echo", b"\x00\xff", timeout=10).hex())
sio.emit("ask me", 21)
wait(events["answer"])
report("client ack", [got["answer"][0], got["answer"][1].hex()])
sio.emit("bye")
wait(events["disconnect"])
sio.wait()  # until the Engine.IO session has ended too
report("server disconnect", "io server disconnect")
events["welcome"].clear()
sio.connect(url, auth={"token": "good"}, transports=transports, wait_timeout=10)
wait(events["welcome"])
report("reconnected", sio.call("echo", "again", timeout=10))
sio.disconnect()

# python-engineio takes a close packet (sent on polling) as final and does
# not retry, so the automatic reconnect is checked on WebSocket only
if mode != "polling":
    resilient = socketio.Client(
        reconnection=True, reconnection_delay=0.1, randomization_factor=0
    )
    welcomed = threading.Event()
    dropped = threading.Event()
    resilient.on("welcome", lambda data: welcomed.set())
    reasons = []

    @resilient.on("disconnect")
    def dropped_with(*reason):
        reasons.append(reason[0] if reason else None)
        dropped.set()

    resilient.connect(url, auth={"token": "good"}, transports=transports, wait_timeout=10)
    wait(welcomed)
    welcomed.clear()
    resilient.emit("restart")
    wait(dropped)
    wait(welcomed)
    report("automatic reconnect", [reasons[0], resilient.call("echo", "back", timeout=10)])
    resilient.disconnect()

refused = socketio.Client(reconnection=False)
errors = []

@refused.on("connect_error")
def connect_error(data):
    errors.append(data)

try:
    refused.connect(url, auth={"token": "bad"}, transports=transports, wait_timeout=10)
except socketio.exceptions.ConnectionError:
    report("refused", errors[0] if errors else None)
else:
    report("refused", "connected")
"""


class EndToEndTests(TestCase):
    """
    Real clients, real server, real sockets.
    """

    timeout = 60

    @inlineCallbacks
    def setUp(self) -> Any:
        self.server = build_app(reactor)
        root = Resource()
        root.putChild(b"socket.io", self.server.resource())
        self.site = TrackingSite(root)
        port: IListeningPort = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            self.site
        )
        self.addCleanup(port.stopListening)
        self.url = f"http://127.0.0.1:{port.getHost().port}"  # type: ignore[attr-defined]

    def tearDown(self) -> Deferred[Any]:
        # The sessions end with their closing handshakes; no connection
        # outlives the test.
        self.server.close()
        return self.site.all_closed()

    def check(
        self, output: bytes, code: int, errors: bytes, transport: str, opened: str = "polling"
    ) -> None:
        lines = [json.loads(line) for line in output.decode().splitlines() if line.strip()]
        self.assertEqual(code, 0, (lines, errors.decode(errors="replace")[-3000:]))
        steps = {line["step"]: line["value"] for line in lines}
        expected = {
            "welcome": {"auth": {"token": "good"}, "host": True, "opened": opened},
            "transport": transport,
            "ack": [1, "two", {"three": [True]}],
            "binary event": ["no ack", "010203"],
            "binary ack": "00ff",
            "client ack": [42, "0109"],
            "server disconnect": "io server disconnect",
            "reconnected": "again",
            "automatic reconnect": ["transport close", "back"],
            "refused": {"message": "Invalid token", "data": {"token": "bad"}},
        }
        if transport == "polling":
            del expected["automatic reconnect"]
        elif steps.get("automatic reconnect", [None])[0] == "transport error":
            # python-socketio's word for a connection the server dropped
            expected["automatic reconnect"] = ["transport error", "back"]
        self.assertEqual(steps, expected)

    @inlineCallbacks
    def run_js(self, *args: str) -> Any:
        why = _node_missing()
        if why is not None:
            # the test command installs the client; its absence is a fault
            self.fail(why)
        node = shutil.which("node")
        assert node is not None
        output, errors, code = yield getProcessOutputAndValue(
            node, [str(SCENARIO), self.url, *args], env=os.environ, path=str(JS)
        )
        opened = "websocket" if "websocket" in args else "polling"
        self.check(output, code, errors, "websocket", opened)

    def test_js_polling_then_websocket(self) -> Any:
        """
        socket.io-client with default options connects by polling, upgrades,
        and runs the whole scenario.
        """
        return self.run_js()

    def test_js_websocket_only(self) -> Any:
        """
        socket.io-client restricted to WebSocket runs the whole scenario.
        """
        return self.run_js("websocket")

    @inlineCallbacks
    def run_python(self, mode: str) -> Any:
        output, errors, code = yield getProcessOutputAndValue(
            sys.executable, ["-c", PYTHON_SCENARIO, self.url, mode], env=os.environ
        )
        opened = "websocket" if mode == "websocket" else "polling"
        self.check(output, code, errors, "websocket", opened)

    def test_python_default(self) -> Any:
        """
        python-socketio's client (polling, then upgrade) runs the whole
        scenario.
        """
        return self.run_python("default")

    def test_python_websocket_only(self) -> Any:
        """
        python-socketio's client on WebSocket only runs the whole scenario.
        """
        return self.run_python("websocket")

    def test_polling_only_client(self) -> Any:
        """
        A client that never upgrades is served by long-polling throughout.
        """
        script = PYTHON_SCENARIO.replace(
            'transports = ["websocket"] if mode == "websocket" else ["polling", "websocket"]',
            'transports = ["polling"]',
        )
        d = getProcessOutputAndValue(
            sys.executable, ["-c", script, self.url, "polling"], env=os.environ
        )
        d.addCallback(lambda result: self.check(result[0], result[2], result[1], "polling"))
        return d
