"""
realtimed as a real ``twistd`` process: started from the command line with
its secrets in files (as systemd's ``LoadCredential=`` hands them over), on a
socket handed over by systemd (``systemd-socket-activate``), telling systemd
how it is doing (``Type=notify``), and stopped with SIGTERM.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

from twisted.trial.unittest import SkipTest, TestCase

from tests.support import create_database, run_sql
from tests.test_realtime import KEYS

TWISTD = Path(sys.executable).with_name("twistd")
PATIENCE = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SocketActivationTests(TestCase):
    timeout = 120

    def test_systemd_socket_and_credential_files(self) -> None:
        """
        Under socket activation, realtimed serves the socket it was handed
        (endpoint systemd:domain=INET:index=0), reads its secrets from files,
        applies its schema, answers /healthz, and exits cleanly on SIGTERM.
        """
        activate = shutil.which("systemd-socket-activate")
        self.assertIsNotNone(activate, "systemd-socket-activate (package systemd) is needed")
        assert activate is not None
        url = create_database(self)
        directory = Path(self.mktemp()).absolute()
        directory.mkdir(parents=True)
        credentials = {
            "jwt-secret": "j" * 40,
            "api-key": "ik_" + "a" * 40,
            "anon-key": "anon_" + "b" * 40,
        }
        # systemd-socket-activate passes on only the variables named with -E,
        # as systemd passes on only those a unit sets.
        settings = {"REALTIMED_DATABASE_URL": url}
        for name, value in credentials.items():
            path = directory / name
            path.write_text(value + "\n")
            path.chmod(0o600)
            settings["REALTIMED_" + name.replace("-", "_").upper() + "_FILE"] = str(path)
        passed = [f"--setenv={name}={value}" for name, value in settings.items()]
        port = free_port()
        log = directory / "out.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [
                    activate,
                    "--listen",
                    f"127.0.0.1:{port}",
                    # systemd names every socket it hands over; Twisted
                    # expects the names.
                    "--fdname=http",
                    *passed,
                    str(TWISTD),
                    "--nodaemon",
                    "--pidfile=",
                    "realtimed",
                    "--port",
                    "systemd:domain=INET:index=0",
                    "--data-dir",
                    str(directory / "data"),
                ],
                cwd=directory,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.addCleanup(lambda: process.poll() is None and process.kill())
        # The socket is systemd-socket-activate's: connecting starts realtimed.
        deadline = time.monotonic() + PATIENCE
        answer = None
        while answer is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=30) as r:
                    answer = (r.status, json.loads(r.read()))
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    self.fail("realtimed did not answer:\n" + log.read_text(errors="replace"))
                time.sleep(0.2)
        self.assertEqual(answer, (200, {"status": "ok"}))

        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/realtime/channels",
            headers={"Authorization": "Bearer " + credentials["api-key"]},
        )
        with urllib.request.urlopen(request, timeout=30) as r:
            self.assertEqual((r.status, json.loads(r.read())), (200, []))
        self.assertEqual(
            run_sql(url, "SELECT count(*) FROM realtime.schema_migrations")[0][0] > 0, True
        )

        process.send_signal(signal.SIGTERM)
        # twistd shuts down, then ends by the signal it was stopped with,
        # which systemd counts as a clean stop.
        self.assertIn(process.wait(timeout=PATIENCE), (0, -signal.SIGTERM))
        output = log.read_text(errors="replace")
        self.assertIn("Received SIGTERM, shutting down.", output)
        self.assertIn("Server Shut Down.", output)
        for secret in credentials.values():
            self.assertNotIn(secret, output)
        self.assertNotIn("jwt_secret", (directory / "data" / "secrets.json").read_text())


class NotifyTests(TestCase):
    timeout = 120

    def run_notified(self, notify_socket: str, receiver: socket.socket) -> None:
        """
        Run realtimed with C{$NOTIFY_SOCKET} and a 1 s watchdog, read what
        it tells systemd through start-up, serving and a SIGTERM.
        """
        url = create_database(self)
        directory = Path(tempfile.mkdtemp(prefix="realtimed-notify-"))
        port = free_port()
        log = directory / "out.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [
                    str(TWISTD),
                    "--nodaemon",
                    "--pidfile=",
                    "realtimed",
                    "--port",
                    f"tcp:{port}:interface=127.0.0.1",
                    "--database-url",
                    url,
                    "--data-dir",
                    str(directory / "data"),
                    "--jwt-secret",
                    KEYS.jwt_secret,
                    "--api-key",
                    KEYS.api_key,
                    "--anon-key",
                    KEYS.anon_key,
                    "--webhook-secret",
                    KEYS.webhook_secret,
                ],
                cwd=directory,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "NOTIFY_SOCKET": notify_socket, "WATCHDOG_USEC": "1000000"},
            )
        self.addCleanup(lambda: process.poll() is None and process.kill())
        receiver.settimeout(PATIENCE)

        def read() -> str:
            try:
                return receiver.recv(65536).decode()
            except TimeoutError:
                self.fail("nothing from realtimed:\n" + log.read_text(errors="replace"))

        messages: list[str] = []
        while "READY=1" not in (messages[-1] if messages else ""):
            messages.append(read())
        # Ready means listening, with the schema applied.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=30) as r:
            self.assertEqual((r.status, json.loads(r.read())), (200, {"status": "ok"}))
        self.assertGreater(run_sql(url, "SELECT count(*) FROM realtime.schema_migrations")[0][0], 0)
        statuses = [m for m in messages if m.startswith("STATUS=")]
        self.assertIn("STATUS=Starting: applying the schema migrations", statuses)
        self.assertIn(f"STATUS=Starting: listening on tcp:{port}:interface=127.0.0.1", statuses)
        self.assertEqual(messages[-1], "READY=1\nSTATUS=Serving 0 connections, 0 subscriptions")
        self.assertIn("WATCHDOG=1", messages)
        # The watchdog keeps pinging every half second while serving.
        started = time.monotonic()
        pings = 0
        while pings < 3:
            if read() == "WATCHDOG=1":
                pings += 1
        self.assertLess(time.monotonic() - started, PATIENCE)
        process.send_signal(signal.SIGTERM)
        while (message := read()).startswith("WATCHDOG"):
            pass
        self.assertTrue(message.startswith("STOPPING=1\n"), message)
        self.assertIn(process.wait(timeout=PATIENCE), (0, -signal.SIGTERM))

    def test_notify_socket_path(self) -> None:
        """
        Under C{Type=notify}, realtimed sends status lines at each start-up
        step, C{READY=1} once it listens with the schema applied, watchdog
        pings every half of C{WatchdogSec=}, and C{STOPPING=1} on SIGTERM,
        to the socket C{$NOTIFY_SOCKET} names.
        """
        directory = tempfile.mkdtemp(prefix="rt-")
        self.addCleanup(shutil.rmtree, directory, ignore_errors=True)
        path = os.path.join(directory, "notify")
        receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(receiver.close)
        receiver.bind(path)
        self.run_notified(path, receiver)

    def test_notify_abstract_socket(self) -> None:
        """
        C{$NOTIFY_SOCKET} may name an abstract socket (C{@name}), as
        systemd does for some services.
        """
        name = "realtimed-test-" + uuid.uuid4().hex
        receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(receiver.close)
        receiver.bind(b"\0" + name.encode())
        self.run_notified("@" + name, receiver)

    def test_unit_files(self) -> None:
        """
        C{systemd-analyze verify} finds nothing wrong with the unit files
        beyond the absence of realtimed's installed executable.
        """
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            raise SkipTest("systemd-analyze is not installed")
        units = Path(__file__).parent.parent / "systemd"
        result = subprocess.run(
            [analyze, "verify", str(units / "realtimed.service"), str(units / "realtimed.socket")],
            capture_output=True,
            text=True,
            timeout=PATIENCE,
        )
        complaints = [
            line
            for line in (result.stdout + result.stderr).splitlines()
            if line.strip() and "/opt/realtimed/bin/twistd" not in line
        ]
        self.assertEqual(complaints, [])


class JSONLogTests(TestCase):
    timeout = 120

    def test_json_lines_without_secrets(self) -> None:
        """
        With C{--log-format json}, every line realtimed writes is one JSON
        object with time, level, namespace and message: among them its
        start, a socket refused for a bad token, and a webhook delivery
        refused for a private address; no secret appears in any line.
        """
        import socketio

        url = create_database(self)
        directory = Path(tempfile.mkdtemp(prefix="realtimed-json-"))
        self.addCleanup(shutil.rmtree, directory, ignore_errors=True)
        port = free_port()
        log = directory / "out.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [
                    str(TWISTD),
                    "--nodaemon",
                    "--pidfile=",
                    "realtimed",
                    "--log-format",
                    "json",
                    "--port",
                    f"tcp:{port}:interface=127.0.0.1",
                    "--database-url",
                    url,
                    "--data-dir",
                    str(directory / "data"),
                    "--jwt-secret",
                    KEYS.jwt_secret,
                    "--api-key",
                    KEYS.api_key,
                    "--anon-key",
                    KEYS.anon_key,
                    "--webhook-secret",
                    KEYS.webhook_secret,
                ],
                cwd=directory,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self.addCleanup(lambda: process.poll() is None and process.kill())

        def records() -> list[dict[str, object]]:
            found = []
            for line in log.read_text(errors="replace").splitlines():
                try:
                    found.append(json.loads(line))
                except ValueError:
                    self.fail(f"not a JSON line: {line!r}")
            return found

        def wait_for_line(text: str) -> dict[str, object]:
            deadline = time.monotonic() + PATIENCE
            while True:
                for record in records():
                    if text in str(record["message"]):
                        return record
                if time.monotonic() > deadline or process.poll() is not None:
                    self.fail(f"no line with {text!r}:\n" + log.read_text(errors="replace"))
                time.sleep(0.1)

        started = wait_for_line("realtimed listening on")
        client = socketio.Client(reconnection=False)
        with self.assertRaises(socketio.exceptions.ConnectionError):
            client.connect(
                f"http://127.0.0.1:{port}",
                auth={"token": "not-a-token"},
                transports=["websocket"],
                wait_timeout=PATIENCE,
            )
        client.disconnect()
        refused = wait_for_line("Refused socket")
        run_sql(
            url,
            "INSERT INTO realtime.channels (pattern, webhook_urls)"
            " VALUES ('orders', ARRAY['http://127.0.0.1:9/hook'])",
        )
        run_sql(url, "SELECT realtime.publish('orders', 'created', '{}')")
        webhook = wait_for_line("refused")
        while "Webhook delivery" not in str(webhook["message"]):
            webhook = wait_for_line("Webhook delivery")
        process.send_signal(signal.SIGTERM)
        self.assertIn(process.wait(timeout=PATIENCE), (0, -signal.SIGTERM))

        self.assertEqual(started["level"], "info")
        self.assertEqual(started["namespace"], "realtimed.service")
        self.assertEqual(refused["reason"], "Invalid token")
        self.assertEqual(webhook["level"], "warn")
        self.assertIn("private", str(webhook["message"]))
        for record in records():
            self.assertTrue({"time", "level", "namespace", "message"} <= set(record), record)
            self.assertRegex(str(record["time"]), r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        text = log.read_text(errors="replace")
        for secret in (KEYS.jwt_secret, KEYS.api_key, KEYS.anon_key, KEYS.webhook_secret):
            self.assertNotIn(secret, text)
        self.assertNotIn(KEYS.webhook_secret.removeprefix("whsec_"), text)
