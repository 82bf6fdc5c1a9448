"""
The ``twistd realtimed`` plugin: command-line options and the service they
make.  Every option is also read from ``REALTIMED_<NAME>`` and from the TOML
file named by ``--config``; see `realtimed.config`.
"""

from __future__ import annotations

import gc
import io
import os
import sys
from collections.abc import Mapping
from typing import IO, Any

from twisted.application.service import IService, MultiService
from twisted.internet.interfaces import IReactorCore
from twisted.logger import ILogObserver, Logger
from twisted.python import usage

from realtimed.config import SETTINGS, SETTINGS_BY_NAME, Config, ConfigError, load

log = Logger()


class Options(usage.Options):
    """
    Options for ``twistd realtimed``.  After parsing, ``self.config`` holds
    the merged, checked `Config`.
    """

    synopsis = "[options]"
    longdesc = (
        "Runs realtimed: Socket.IO under /socket.io/, the admin REST API under "
        "/api/realtime/, health at /healthz.  Every option can also be set "
        "as REALTIMED_<NAME> in the environment or in the TOML file given "
        "by --config; the command line beats the environment, which beats "
        "the file.  Secrets may be given as --<name>-file."
    )

    optParameters: list[list[Any]] = [
        ["config", "c", None, "TOML configuration file (default: $REALTIMED_CONFIG)"],
    ]
    optFlags: list[list[Any]] = []

    for _setting in SETTINGS:
        if _setting.kind == "bool":
            optFlags.append([_setting.name, _setting.short, _setting.described])
        elif _setting.kind != "list":
            optParameters.append([_setting.name, _setting.short, None, _setting.described])
        if _setting.secret:
            optParameters.append(
                [_setting.name + "-file", None, None, f"Read --{_setting.name} from this file"]
            )
    del _setting

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self._environ = os.environ if environ is None else environ
        self["port"] = None
        self["cors-origin"] = None
        self.config: Config | None = None

    def opt_port(self, endpoint: str) -> None:
        self["port"] = (self["port"] or ()) + (endpoint,)

    opt_port.__doc__ = SETTINGS_BY_NAME["port"].described
    opt_p = opt_port

    def opt_cors_origin(self, origin: str) -> None:
        self["cors-origin"] = (self["cors-origin"] or ()) + (origin,)

    opt_cors_origin.__doc__ = SETTINGS_BY_NAME["cors-origin"].described

    def postOptions(self) -> None:
        given = {key: value for key, value in self.items() if value is not None and key != "config"}
        # Flags are False when absent; only a given flag overrides.
        for setting in SETTINGS:
            if setting.kind == "bool":
                if given.get(setting.name):
                    given[setting.name] = True
                else:
                    given.pop(setting.name, None)
        try:
            self.config = load(given, self._environ, self["config"])
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None
        _check_endpoints(self.config)


def _check_endpoints(config: Config) -> None:
    """
    Parse each endpoint string now, so a typo is a usage error rather than a
    failure once the daemon has started.

    A ``systemd:`` endpoint is left for start-up: parsing it takes the
    sockets systemd handed over (and clears C{LISTEN_FDS}), which only the
    real parse may do.
    """
    from twisted.internet.endpoints import serverFromString

    endpoints = config.port if config.metrics_port is None else (*config.port, config.metrics_port)
    for description in endpoints:
        if description.partition(":")[0].strip().lower() == "systemd":
            continue
        try:
            serverFromString(_NoReactor(), description)
        except (ValueError, TypeError, KeyError, IndexError) as e:
            raise usage.UsageError(f"port: cannot use {description!r}: {e}") from None


class _NoReactor:
    """
    Stands in for the reactor while endpoint strings are only parsed.
    """


def makeService(options: Options, reactor: IReactorCore | None = None) -> IService:
    """
    The realtimed service for the parsed options.
    """
    from realtimed.notify import SystemdNotify
    from realtimed.service import RealtimeService

    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor  # type: ignore[assignment]
    assert options.config is not None
    _tune_collector()
    notify = SystemdNotify.from_environment(os.environ, reactor)
    if options.config.log_format != "json":
        return RealtimeService(config=options.config, reactor=reactor, notify=notify)
    # What start-up says to a person goes through the log, as JSON too
    # (and, not being a terminal, never with generated secrets).
    service = RealtimeService(
        config=options.config, reactor=reactor, notify=notify, out=_LogLines()
    )
    return LogsAsJSON(service, _log_file(options))


class _LogLines(io.StringIO):
    """
    A text stream whose every line is logged.
    """

    def write(self, text: str) -> int:
        for line in text.splitlines():
            if line.strip():
                log.info("{line}", line=line)
        return len(text)

    def isatty(self) -> bool:
        return False


class LogsAsJSON(MultiService):
    """
    Holds the daemon, and has twistd log as JSON lines (`realtimed.logs`)
    where it would have written text.

    twistd takes the log observer of the application it puts the plugin's
    service in, when the application has one, before the service starts:
    this service gives the application its observer as it is put there.
    """

    def __init__(self, service: Any, out: IO[str]) -> None:
        from realtimed.logs import json_log_observer

        super().__init__()
        self.daemon = service
        service.setServiceParent(self)
        self.observer = json_log_observer(out, lambda: _secrets(service))

    def setServiceParent(self, parent: Any) -> None:
        set_component = getattr(parent, "setComponent", None)
        if set_component is not None:
            set_component(ILogObserver, self.observer)
        super().setServiceParent(parent)


def _secrets(service: Any) -> list[str]:
    """
    Every secret the daemon knows: those configured, and those in use once
    resolved (generated ones included).
    """
    config = service.config
    values = [getattr(config, s.attribute) for s in SETTINGS if s.secret]
    keys = service.keys
    if keys is not None:
        values += [keys.jwt_secret, keys.api_key, keys.anon_key, keys.webhook_secret]
    found = set()
    for value in values:
        if value:
            found.add(value)
            if value.startswith("whsec_"):
                found.add(value.removeprefix("whsec_"))
    return sorted(found, key=len, reverse=True)


def _log_file(options: Options) -> IO[str]:
    """
    Where twistd would write its text log: standard output (as it is now,
    before logging redirects it) under ``--nodaemon`` or with
    ``--logfile=-``, else the ``--logfile`` (``twistd.log`` by default).
    """
    parent: Any = getattr(options, "parent", None) or {}
    name = parent.get("logfile") or None
    if name == "-" or (name is None and parent.get("nodaemon", True)):
        return sys.stdout
    from twisted.python.logfile import LogFile

    return LogFile.fromFullPath(name or "twistd.log")  # type: ignore[return-value]


def _tune_collector() -> None:
    """
    Set the cyclic garbage collector up for a daemon holding many
    long-lived connection objects.

    What start-up made (modules, classes, the configuration) lives as long
    as the process, yet every full collection would walk it again: it is
    moved out of the collector's sight.  And the youngest generation is
    collected after 10,000 net allocations rather than 700: a connection
    being set up, or a broadcast, allocates a few thousand short-lived
    objects, which otherwise get promoted by early collections only to be
    walked again in the older generations.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(10_000, older, oldest)
