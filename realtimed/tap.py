"""
The ``twistd realtimed`` plugin: command-line options and the service they
make.  Every option is also read from ``REALTIMED_<NAME>`` and from the TOML
file named by ``--config``; see `realtimed.config`.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Mapping
from typing import Any

from twisted.application.service import IService
from twisted.internet.interfaces import IReactorCore
from twisted.python import usage

from realtimed.config import SETTINGS, SETTINGS_BY_NAME, Config, ConfigError, load


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
            optFlags.append([_setting.name, _setting.short, _setting.help])
        elif _setting.kind != "list":
            optParameters.append([_setting.name, _setting.short, None, _setting.help])
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

    opt_port.__doc__ = SETTINGS_BY_NAME["port"].help + " (default: tcp:8080)"
    opt_p = opt_port

    def opt_cors_origin(self, origin: str) -> None:
        self["cors-origin"] = (self["cors-origin"] or ()) + (origin,)

    opt_cors_origin.__doc__ = SETTINGS_BY_NAME["cors-origin"].help

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
    return RealtimeService(config=options.config, reactor=reactor, notify=notify)


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
