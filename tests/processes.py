"""
realtimed as real ``twistd`` processes, for the tests that need several
processes, or need to kill one.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.test_realtime import KEYS

TWISTD = Path(sys.executable).with_name("twistd")

#: How long a process has to start.
START_PATIENCE = 60.0


def free_port() -> int:
    """
    A loopback port free right now.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RealtimedProcess:
    """
    One ``twistd -n realtimed`` on a loopback port, with the test keys, its
    output in C{directory}/out.log.
    """

    def __init__(self, url: str, directory: Path, *options: str) -> None:
        self.url = url
        self.directory = directory
        self.port = free_port()
        self.log = directory / "out.log"
        self.options = options
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [
                    str(TWISTD),
                    "--nodaemon",
                    "--pidfile=",
                    "realtimed",
                    "--port",
                    f"tcp:{self.port}:interface=127.0.0.1",
                    "--database-url",
                    self.url,
                    "--data-dir",
                    str(self.directory / "data"),
                    "--jwt-secret",
                    KEYS.jwt_secret,
                    "--api-key",
                    KEYS.api_key,
                    "--anon-key",
                    KEYS.anon_key,
                    "--webhook-secret",
                    KEYS.webhook_secret,
                    *self.options,
                ],
                cwd=self.directory,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def wait_healthy(self) -> None:
        """
        Block until C{/healthz} answers 200; fail with the output if the
        process ends or does not answer in time.
        """
        assert self.process is not None
        deadline = time.monotonic() + START_PATIENCE
        while True:
            try:
                with urllib.request.urlopen(self.address + "/healthz", timeout=10) as r:
                    if r.status == 200 and json.loads(r.read()) == {"status": "ok"}:
                        return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"realtimed on port {self.port} did not start:\n" + self.output()
                )
            time.sleep(0.1)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kill(self) -> None:
        """
        End the process at once (SIGKILL): no goodbye of any kind.
        """
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)

    def stop(self) -> None:
        """
        Stop gracefully (SIGTERM), killing it if it takes too long.
        """
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()


def start_daemon(test: TestCase, url: str, *options: str) -> Deferred[RealtimedProcess]:
    """
    Start realtimed on C{url} with C{options}, stopped when C{test} ends.

    @return: A Deferred firing with the process once it answers C{/healthz}.
    """
    process = RealtimedProcess(url, Path(test.mktemp()).resolve(), *options)
    process.start()
    test.addCleanup(process.stop)
    return deferToThread(process.wait_healthy).addCallback(lambda _: process)
