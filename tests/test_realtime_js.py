"""
End-to-end tests of realtime channels with the JavaScript
C{socket.io-client}, run by node through C{tests/js/realtime_driver.js}.

The same scenarios as L{tests.test_realtime} run with this client.  The
client library is looked up from C{tests/js} (its C{node_modules}), or from
C{$REALTIMED_TEST_NODE_PATH}.  Without node or the library (``.ci/run``
installs it with npm) these tests fail, saying what is missing.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

from tests import test_realtime as scenarios
from tests.test_realtime import PATIENCE, ConnectFailed, EventLog

JS = Path(__file__).parent / "js"
DRIVER = JS / "realtime_driver.js"


def _environment() -> dict[str, str]:
    environment = dict(os.environ)
    extra = os.environ.get("REALTIMED_TEST_NODE_PATH")
    if extra:
        environment["NODE_PATH"] = extra
    return environment


def _why_not() -> str | None:
    """
    Why the JavaScript client cannot run here, or C{None} if it can.
    """
    if shutil.which("node") is None:
        return "node is not installed"
    found = subprocess.run(
        ["node", "-e", "require.resolve('socket.io-client')"],
        cwd=JS,
        env=_environment(),
        capture_output=True,
        check=False,
    )
    if found.returncode != 0:
        return "socket.io-client is not installed (npm install in tests/js)"
    return None


class JSClientMixin:
    """
    Runs the scenarios with the JavaScript client, failing each test at
    once when the client cannot run here.
    """

    client_class: type[EventLog]

    def setUp(self) -> Any:
        why = _why_not()
        if why is not None:
            self.fail(why)  # type: ignore[attr-defined]
        return super().setUp()  # type: ignore[misc]


class JSClient(EventLog):
    """
    A socket.io-client socket in a node process, with the methods of
    L{tests.test_realtime.Client}.
    """

    def __init__(self, address: str) -> None:
        super().__init__()
        self.address = address
        self.sid: str | None = None
        #: the offsets that came with messages, in order
        self.offsets: list[str] = []
        #: the connections made by reconnecting
        self.reconnects: queue.Queue[dict[str, Any]] = queue.Queue()
        #: The transport the socket opened its session with.
        self.transport: str | None = None
        #: Set once the socket is disconnected, C{disconnect_reason} why.
        self.disconnected = threading.Event()
        self.disconnect_reason: str | None = None
        self._ids = itertools.count(1)
        self._answers: dict[int, queue.Queue[dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self.process = subprocess.Popen(
            ["node", str(DRIVER)],
            cwd=JS,
            env=_environment(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            value = json.loads(line)
            if value.get("type") == "event":
                if "offset" in value:
                    self.offsets.append(value["offset"])
                self.events.put((value["event"], value["data"]))
                continue
            if value.get("type") == "connect":
                self.reconnects.put(value)
                continue
            if value.get("type") == "disconnect":
                self.disconnect_reason = value["reason"]
                self.disconnected.set()
                continue
            with self._lock:
                answers = self._answers.pop(value["id"], None)
            if answers is not None:
                answers.put(value)

    def _command(self, op: str, **fields: Any) -> dict[str, Any]:
        command_id = next(self._ids)
        answers: queue.Queue[dict[str, Any]] = queue.Queue()
        with self._lock:
            self._answers[command_id] = answers
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"id": command_id, "op": op, **fields}) + "\n")
        self.process.stdin.flush()
        try:
            return answers.get(timeout=PATIENCE)
        except queue.Empty:
            raise TimeoutError(f"no answer to {op} within {PATIENCE}s") from None

    def connect(
        self,
        auth: Any = None,
        headers: dict[str, str] | None = None,
        transports: list[str] | None = None,
        reconnect: bool = False,
        with_credentials: bool = False,
    ) -> None:
        answer = self._command(
            "connect",
            url=self.address,
            auth=auth,
            headers=headers,
            transports=transports,
            reconnect=reconnect,
            withCredentials=with_credentials,
        )
        if not answer["ok"]:
            raise ConnectFailed(answer["message"])
        self.sid = answer["sid"]
        self.transport = answer["transport"]

    def upgraded(self) -> str:
        """
        Wait until the socket has upgraded to WebSocket; the transport.
        """
        return str(self._command("upgraded")["transport"])

    def request(self, event: str, data: Any) -> Any:
        return self._command("request", event=event, data=data)["ack"]

    def send(self, event: str, data: Any) -> None:
        self._command("send", event=event, data=data)

    def disconnect(self) -> None:
        self._command("disconnect")

    def drop(self) -> None:
        """
        Close the connection under the socket, as a network would.
        """
        self._command("drop")

    def close(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            try:
                self.process.stdin.close()
            except OSError:
                pass
            try:
                self.process.wait(timeout=PATIENCE)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(PATIENCE)


class JSConnectTests(JSClientMixin, scenarios.ConnectTests):
    client_class = JSClient


class JSConnectionExampleTests(JSClientMixin, scenarios.ConnectionExampleTests):
    client_class = JSClient


class JSUseCaseTests(JSClientMixin, scenarios.UseCaseTests):
    client_class = JSClient


class JSRefusalTests(JSClientMixin, scenarios.RefusalTests):
    client_class = JSClient


class JSPolicyTests(JSClientMixin, scenarios.PolicyTests):
    client_class = JSClient


class JSTwoProcessTests(JSClientMixin, scenarios.TwoProcessTests):
    client_class = JSClient


class JSPresenceTests(JSClientMixin, scenarios.PresenceTests):
    client_class = JSClient
