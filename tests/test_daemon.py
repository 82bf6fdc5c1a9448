"""
realtimed as a real ``twistd`` process: started from the command line with
its secrets in files (as systemd's ``LoadCredential=`` hands them over), on a
socket handed over by systemd (``systemd-socket-activate``), and stopped with
SIGTERM.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from twisted.trial.unittest import TestCase

from tests.support import create_database, run_sql

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
