"""
Tests for L{realtimed.notify}: sd_notify datagrams sent to a socket the
test binds and reads, with a fake clock.
"""

from __future__ import annotations

import os
import socket
import uuid

from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from realtimed.notify import SystemdNotify, socket_address, watchdog_interval


class NotifyTests(SynchronousTestCase):
    def receiver(self, abstract: bool = False) -> tuple[socket.socket, str]:
        """
        A datagram socket bound where C{$NOTIFY_SOCKET} will name it.
        """
        receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(receiver.close)
        if abstract:
            name = "@realtimed-test-" + uuid.uuid4().hex
            receiver.bind(b"\0" + name[1:].encode())
        else:
            name = os.path.abspath(self.mktemp())
            receiver.bind(name)
        receiver.settimeout(5)
        return receiver, name

    def notifier(self, environ: dict[str, str]) -> tuple[SystemdNotify, Clock]:
        clock = Clock()
        notify = SystemdNotify.from_environment(environ, clock)
        notify.startService()
        self.addCleanup(notify.stopService)
        return notify, clock

    def test_address(self) -> None:
        """
        A path is used as it is; a name starting with C{@} is an abstract
        socket.
        """
        self.assertEqual(socket_address("/run/systemd/notify"), "/run/systemd/notify")
        self.assertEqual(socket_address("@abc"), b"\0abc")

    def test_watchdog_interval(self) -> None:
        """
        Pings are due every half of C{$WATCHDOG_USEC}, unless
        C{$WATCHDOG_PID} names another process.
        """
        self.assertEqual(watchdog_interval({"WATCHDOG_USEC": "30000000"}, 7), 15.0)
        self.assertEqual(
            watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "7"}, 7), 15.0
        )
        self.assertIsNone(watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "8"}, 7))
        self.assertIsNone(watchdog_interval({}, 7))
        self.assertIsNone(watchdog_interval({"WATCHDOG_USEC": "soon"}, 7))

    def test_lifecycle(self) -> None:
        """
        Status lines, then ready with what is served, then stopping, each
        a datagram; systemd's variables are taken out of the environment.
        """
        receiver, name = self.receiver()
        environ = {"NOTIFY_SOCKET": name, "OTHER": "kept"}
        notify, _clock = self.notifier(environ)
        self.assertEqual(environ, {"OTHER": "kept"})
        notify.status("Starting: the database")
        notify.serving = lambda: "Serving 3 connections"
        notify.ready()
        notify.stopping()
        self.assertEqual(receiver.recv(4096), b"STATUS=Starting: the database")
        self.assertEqual(receiver.recv(4096), b"READY=1\nSTATUS=Serving 3 connections")
        self.assertEqual(
            receiver.recv(4096),
            b"STOPPING=1\nSTATUS=Stopping: closing connections and finishing work",
        )

    def test_serving_status_refreshed(self) -> None:
        """
        Once ready, the status line says what is served every ten seconds.
        """
        receiver, name = self.receiver(abstract=True)
        notify, clock = self.notifier({"NOTIFY_SOCKET": name})
        served = iter(range(100))
        notify.serving = lambda: f"Serving {next(served)} connections"
        notify.ready()
        self.assertEqual(receiver.recv(4096), b"READY=1\nSTATUS=Serving 0 connections")
        clock.advance(10)
        self.assertEqual(receiver.recv(4096), b"STATUS=Serving 1 connections")

    def test_watchdog(self) -> None:
        """
        With C{$WATCHDOG_USEC}, a ping goes at start and then every half of
        it, from the clock; after the stop, none.
        """
        receiver, name = self.receiver()
        notify, clock = self.notifier({"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "2000000"})
        self.assertEqual(receiver.recv(4096), b"WATCHDOG=1")
        clock.advance(1.0)
        self.assertEqual(receiver.recv(4096), b"WATCHDOG=1")
        notify.stopService()
        clock.advance(5.0)
        receiver.setblocking(False)
        self.assertRaises(BlockingIOError, receiver.recv, 4096)

    def test_without_systemd(self) -> None:
        """
        Without C{$NOTIFY_SOCKET}, nothing is sent and nothing fails.
        """
        notify, _clock = self.notifier({})
        self.assertFalse(notify.enabled)
        notify.status("x")
        notify.ready()
        notify.stopping()

    def test_gone_socket(self) -> None:
        """
        A notification socket that is gone costs nothing but one warning.
        """
        events: list[dict[str, object]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        name = os.path.abspath(self.mktemp())
        notify, _clock = self.notifier({"NOTIFY_SOCKET": name})
        notify.status("x")
        notify.status("y")
        warnings = [e for e in events if "Cannot notify" in str(e.get("log_format"))]
        self.assertEqual(len(warnings), 1)
