"""
Telling systemd how the daemon is doing (``Type=notify``), by the protocol
of ``sd_notify(3)``: datagrams of ``NAME=value`` lines sent to the unix
socket named by ``$NOTIFY_SOCKET`` (a path, or an abstract socket written
with a leading ``@``).

- ``STATUS=...`` at each step of start-up, then while serving (with the
  number of connections), then when stopping;
- ``READY=1`` once every piece has started: the schema is applied and every
  endpoint listens;
- ``WATCHDOG=1`` every half of ``$WATCHDOG_USEC`` (set by ``WatchdogSec=``),
  from a timer of the reactor, so the pings stop when the reactor does not
  turn and systemd restarts a daemon that hangs;
- ``STOPPING=1`` when a stop begins.

Without ``$NOTIFY_SOCKET`` (not under systemd) nothing is sent.  The
variables are taken out of the environment when read, so that processes
the daemon starts (the embedded PostgreSQL) do not speak in its name.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable, MutableMapping
from typing import Any

from attrs import define, field
from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger()

#: How often the serving status is refreshed, in seconds.
STATUS_INTERVAL = 10.0


def socket_address(name: str) -> str | bytes:
    """
    The address to send to for C{$NOTIFY_SOCKET}: a path, or for C{@name}
    the abstract socket C{\\0name}.
    """
    if name.startswith("@"):
        return b"\0" + name[1:].encode()
    return name


def watchdog_interval(environ: MutableMapping[str, str], pid: int) -> float | None:
    """
    Seconds between watchdog pings (half the watchdog timeout), when
    systemd asks this process for them.
    """
    usec = environ.get("WATCHDOG_USEC")
    owner = environ.get("WATCHDOG_PID")
    if not usec or (owner and owner != str(pid)):
        return None
    try:
        timeout = int(usec)
    except ValueError:
        return None
    if timeout <= 0:
        return None
    return timeout / 2 / 1_000_000


@define(eq=False)
class SystemdNotify(Service):
    """
    Sends C{sd_notify} messages to C{address} (nothing when it is C{None}).

    @ivar address: The notification socket, as L{socket_address} gives it.
    @ivar clock: Time for the watchdog and the serving status.
    @ivar watchdog: Seconds between watchdog pings, or C{None}.
    @ivar serving: Describes what the daemon is serving, for the status
        line once it is ready.
    """

    address: str | bytes | None
    clock: Any
    watchdog: float | None = None
    serving: Callable[[], str] | None = None
    _socket: socket.socket | None = field(default=None, init=False)
    _pings: LoopingCall | None = field(default=None, init=False)
    _status: LoopingCall | None = field(default=None, init=False)
    _complained: bool = field(default=False, init=False)

    @classmethod
    def from_environment(cls, environ: MutableMapping[str, str], clock: Any) -> SystemdNotify:
        """
        The notifier systemd's variables in C{environ} ask for; they are
        removed from it.
        """
        name = environ.pop("NOTIFY_SOCKET", None)
        watchdog = watchdog_interval(environ, os.getpid())
        environ.pop("WATCHDOG_USEC", None)
        environ.pop("WATCHDOG_PID", None)
        return cls(socket_address(name) if name else None, clock, watchdog)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def startService(self) -> None:
        Service.startService(self)
        if self.address is None:
            return
        if self._socket is None:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._socket.setblocking(False)
        if self.watchdog is not None:
            self._pings = LoopingCall(self.send, "WATCHDOG=1")
            self._pings.clock = self.clock
            self._pings.start(self.watchdog, now=True)

    def stopService(self) -> None:
        Service.stopService(self)
        for loop in (self._pings, self._status):
            if loop is not None and loop.running:
                loop.stop()
        self._pings = self._status = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def status(self, text: str) -> None:
        """
        Say what the daemon is doing.
        """
        self.send(f"STATUS={text}")

    def ready(self) -> None:
        """
        The daemon is ready: say so, and keep the status saying what it
        serves.
        """
        self.send("READY=1\nSTATUS=" + self._serving())
        if self.address is not None and self.serving is not None and self._status is None:
            self._status = LoopingCall(lambda: self.status(self._serving()))
            self._status.clock = self.clock
            self._status.start(STATUS_INTERVAL, now=False)

    def stopping(self) -> None:
        """
        A stop has begun.
        """
        if self._status is not None and self._status.running:
            self._status.stop()
        self._status = None
        self.send("STOPPING=1\nSTATUS=Stopping: closing connections and finishing work")

    def _serving(self) -> str:
        if self.serving is None:
            return "Serving"
        try:
            return self.serving()
        except Exception:
            log.failure("Describing what is served failed")
            return "Serving"

    def send(self, message: str) -> None:
        """
        Send one notification, if there is a socket to send to; a failure
        is logged once and costs nothing else.
        """
        if self.address is None or self._socket is None:
            return
        try:
            self._socket.sendto(message.encode("utf-8"), self.address)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                return
            if not self._complained:
                self._complained = True
                log.warn("Cannot notify systemd: {error}", error=os.strerror(e.errno or 0))
