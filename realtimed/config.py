"""
The daemon's configuration: one table of settings, read from the command
line, the environment (``REALTIMED_<NAME>``) and a TOML file, in that order
of precedence, then checked and frozen into a `Config`.

Nothing here imports Twisted; `realtimed.tap` turns the table into
``twisted.python.usage`` options and calls `load`.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from attrs import field, frozen


class ConfigError(ValueError):
    """
    A setting has a value realtimed cannot use.  The message names the
    setting and says why.
    """


@frozen
class Setting:
    """
    One configurable setting.

    @ivar name: The option name as written on the command line, without
        dashes (``database-url``).
    @ivar kind: ``str``, ``list`` (repeatable), ``bool`` (a flag),
        ``int`` or ``float``.
    @ivar secret: Secrets are never logged, and also accepted from a file
        (``--<name>-file``), which is how systemd's ``LoadCredential=``
        hands them over.
    @ivar limit: A bound on what clients may send or hold, listed with its
        default under "Limits" in ``docs/behaviour.rst``.
    """

    name: str
    help: str
    kind: str = "str"
    default: Any = None
    short: str | None = None
    secret: bool = False
    limit: bool = False

    @property
    def attribute(self) -> str:
        return self.name.replace("-", "_")

    @property
    def described(self) -> str:
        """
        The help text, with the default when there is one to show.
        """
        default = self.default
        if default is None or default is False or default == ():
            return self.help
        if isinstance(default, tuple):
            shown = " ".join(default)
        elif isinstance(default, float):
            shown = f"{default:g}"
        else:
            shown = str(default)
        return f"{self.help} (default: {shown})"


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "port",
        "Twisted endpoint string to listen on (tcp:8080:interface=127.0.0.1, "
        "unix:/run/realtimed.sock, ssl:..., systemd:domain=INET:index=0); "
        "repeatable",
        kind="list",
        default=("tcp:8080",),
        short="p",
    ),
    Setting(
        "database-url",
        "PostgreSQL URL (postgresql://user@host:port/db); unset: start an "
        "embedded PostgreSQL under --data-dir",
    ),
    Setting(
        "data-dir",
        "Directory for the embedded database and generated secrets",
        default="./realtimed-data",
    ),
    Setting(
        "jwt-secret",
        "HS256 secret for user and admin tokens (generated on first start)",
        secret=True,
    ),
    Setting(
        "api-key",
        "Admin API key (generated on first start)",
        secret=True,
    ),
    Setting(
        "anon-key",
        "Anonymous key (generated on first start)",
        secret=True,
    ),
    Setting(
        "webhook-secret",
        "Standard Webhooks signing secret, whsec_<base64> (generated on first start)",
        secret=True,
    ),
    Setting(
        "webhook-allow-private",
        "Deliver webhooks to loopback, private and link-local addresses",
        kind="bool",
        default=False,
    ),
    Setting(
        "webhook-retry-hours",
        "How long a failing webhook delivery is retried, in hours",
        kind="float",
        default=24.0,
    ),
    Setting(
        "cors-origin",
        "Browser origin allowed to use Socket.IO (both transports), with "
        "credentials; repeatable; other origins are refused with 403; '*' "
        "allows any origin, without credentials",
        kind="list",
        default=(),
    ),
    Setting(
        "max-body",
        "Largest HTTP request body (REST, Socket.IO polling) and WebSocket message, in bytes",
        kind="int",
        default=1024 * 1024,
        limit=True,
    ),
    Setting(
        "connect-timeout",
        "Seconds a new Engine.IO session has to be accepted into Socket.IO "
        "(a refused CONNECT does not count) before it is closed",
        kind="float",
        default=45.0,
        limit=True,
    ),
    Setting(
        "request-timeout",
        "Seconds an HTTP request has, from its first byte, to arrive whole, "
        "headers and body (then 408 and the connection is closed)",
        kind="float",
        default=30.0,
        limit=True,
    ),
    Setting(
        "max-connections",
        "Most Engine.IO sessions at once; 0: no limit",
        kind="int",
        default=100_000,
        limit=True,
    ),
    Setting(
        "max-connections-per-ip",
        "Most Engine.IO sessions at once from one client address; 0: no limit",
        kind="int",
        default=1000,
        limit=True,
    ),
    Setting(
        "max-subscriptions",
        "Most subscriptions one socket may hold; 0: no limit",
        kind="int",
        default=100,
        limit=True,
    ),
    Setting(
        "max-publish-rate",
        "Publishes per second one socket may make (bursts of twice as many); 0: no limit",
        kind="float",
        default=100.0,
        limit=True,
    ),
    Setting(
        "recovery-window",
        "Seconds a dropped Socket.IO client may reconnect and recover its "
        "session (missed messages, subscriptions); 0: off.  When on, every "
        "delivered message carries its offset as a last argument",
        kind="float",
        default=0.0,
    ),
    Setting(
        "metrics-port",
        "Twisted endpoint string serving only /metrics, without a credential "
        "(tcp:9464:interface=127.0.0.1); unset: /metrics only on --port, for "
        "the admin credential",
    ),
    Setting(
        "log-format",
        "How log lines are written: text, or json (one JSON object per line)",
        default="text",
    ),
    Setting(
        "retention-interval",
        "Seconds between passes that delete messages older than the retention "
        "(set with PATCH /api/realtime/config)",
        kind="float",
        default=60.0,
    ),
    Setting(
        "presence-timeout",
        "Seconds without a heartbeat after which the other processes take this "
        "one for dead and its presence members leave",
        kind="float",
        default=20.0,
    ),
)

SETTINGS_BY_NAME: Mapping[str, Setting] = {s.name: s for s in SETTINGS}
SECRET_NAMES: tuple[str, ...] = tuple(s.name for s in SETTINGS if s.secret)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@frozen
class Config:
    """
    The checked configuration the daemon runs with.  Secrets left unset are
    generated and kept in the data directory at start (see
    `realtimed.secrets`).
    """

    port: tuple[str, ...]
    database_url: str | None
    data_dir: str
    jwt_secret: str | None = field(repr=False)
    api_key: str | None = field(repr=False)
    anon_key: str | None = field(repr=False)
    webhook_secret: str | None = field(repr=False)
    webhook_allow_private: bool
    webhook_retry_hours: float
    cors_origin: tuple[str, ...]
    max_body: int
    connect_timeout: float
    request_timeout: float
    max_connections: int
    max_connections_per_ip: int
    max_subscriptions: int
    max_publish_rate: float
    recovery_window: float
    metrics_port: str | None
    log_format: str
    retention_interval: float
    presence_timeout: float


def _from_text(setting: Setting, text: str) -> Any:
    """
    Convert a value given as text (environment, command line) to the
    setting's kind.
    """
    if setting.kind == "list":
        return tuple(text.split())
    if setting.kind == "bool":
        lowered = text.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ConfigError(f"{setting.name}: expected true or false, not {text!r}")
    if setting.kind == "float":
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"{setting.name}: expected a number, not {text!r}") from None
    if setting.kind == "int":
        try:
            return int(text.strip())
        except ValueError:
            raise ConfigError(f"{setting.name}: expected a whole number, not {text!r}") from None
    return text


def _from_toml(setting: Setting, value: object) -> Any:
    """
    Convert a value from the TOML file to the setting's kind.
    """
    if setting.kind == "list":
        if isinstance(value, str):
            return (value,)
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ConfigError(f"{setting.name}: expected a string or a list of strings")
    if setting.kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{setting.name}: expected true or false")
        return value
    if setting.kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{setting.name}: expected a number")
        return float(value)
    if setting.kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{setting.name}: expected a whole number")
        return value
    if not isinstance(value, str):
        raise ConfigError(f"{setting.name}: expected a string")
    return value


def read_config_file(path: str) -> dict[str, object]:
    """
    Read a TOML configuration file.  Keys are setting names, with dashes or
    underscores; secrets may also be given as ``<name>-file``.
    """
    try:
        with open(path, "rb") as f:
            document = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"config: cannot read {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config: {path} is not valid TOML: {e}") from None
    values: dict[str, object] = {}
    for key, value in document.items():
        name = key.replace("_", "-")
        base = name.removesuffix("-file")
        if name not in SETTINGS_BY_NAME and not (name.endswith("-file") and base in SECRET_NAMES):
            raise ConfigError(f"config: unknown setting {key!r} in {path}")
        values[name] = value
    return values


def _read_secret_file(name: str, path: object) -> str:
    if not isinstance(path, str):
        raise ConfigError(f"{name}-file: expected a path")
    try:
        with open(path, encoding="utf-8") as f:
            value = f.read().rstrip("\r\n")
    except OSError as e:
        raise ConfigError(f"{name}-file: cannot read {path}: {e.strerror}") from None
    if not value:
        raise ConfigError(f"{name}-file: {path} is empty")
    return value


def _pick(
    setting: Setting,
    command_line: Mapping[str, object],
    environ: Mapping[str, str],
    file_values: Mapping[str, object],
) -> Any:
    """
    The value of one setting: command line, then environment, then file,
    then default.  For a secret, each source may give the value or a file
    holding it, not both.
    """
    name = setting.name

    def from_text(value: object) -> Any:
        return _from_text(setting, value) if isinstance(value, str) else value

    sources: list[tuple[str, Callable[[str], object | None], Callable[[object], Any]]] = [
        ("command line", lambda n: command_line.get(n), from_text),
        (
            "environment",
            lambda n: environ.get("REALTIMED_" + n.replace("-", "_").upper()),
            from_text,
        ),
        ("config file", lambda n: file_values.get(n), lambda v: _from_toml(setting, v)),
    ]
    for where, get, convert in sources:
        value = get(name)
        from_file = get(name + "-file") if setting.secret else None
        if value is not None and from_file is not None:
            raise ConfigError(f"{name}: give {name} or {name}-file in the {where}, not both")
        if from_file is not None:
            return _read_secret_file(name, from_file)
        if value is not None:
            return convert(value)
    return setting.default


def _check(config: Config) -> None:
    if not config.port:
        raise ConfigError("port: at least one endpoint is required")
    if config.database_url is not None:
        parts = urlsplit(config.database_url)
        if parts.scheme not in ("postgres", "postgresql"):
            raise ConfigError("database-url: expected a postgresql:// URL")
    if not config.data_dir:
        raise ConfigError("data-dir: must not be empty")
    if config.jwt_secret is not None and len(config.jwt_secret.encode()) < 32:
        raise ConfigError("jwt-secret: must be at least 32 bytes long for HS256")
    for name in ("api-key", "anon-key"):
        value = getattr(config, name.replace("-", "_"))
        if value is not None and len(value) < 16:
            raise ConfigError(f"{name}: must be at least 16 characters long")
    if config.webhook_secret is not None:
        from realtimed.webhooks.signing import decode_webhook_secret

        try:
            decode_webhook_secret(config.webhook_secret)
        except ValueError as e:
            raise ConfigError(f"webhook-secret: {e}") from None
    if not 0 < config.webhook_retry_hours <= 24 * 30:
        raise ConfigError("webhook-retry-hours: must be more than 0 and at most 720")
    if not 1024 <= config.max_body <= 1024**3:
        raise ConfigError("max-body: must be between 1024 and 1073741824 bytes")
    if not 0 < config.connect_timeout <= 3600:
        raise ConfigError("connect-timeout: must be more than 0 and at most 3600 seconds")
    if not 0 < config.request_timeout <= 3600:
        raise ConfigError("request-timeout: must be more than 0 and at most 3600 seconds")
    for name in ("max-connections", "max-connections-per-ip", "max-subscriptions"):
        if getattr(config, name.replace("-", "_")) < 0:
            raise ConfigError(f"{name}: must be 0 (no limit) or more")
    if not (config.max_publish_rate >= 0 and math.isfinite(config.max_publish_rate)):
        raise ConfigError("max-publish-rate: must be 0 (no limit) or more")
    if not 0 <= config.recovery_window <= 24 * 3600:
        raise ConfigError("recovery-window: must be 0 (off) to 86400 seconds")
    if config.log_format not in ("text", "json"):
        raise ConfigError(f"log-format: expected text or json, not {config.log_format!r}")
    if not 0 < config.retention_interval <= 24 * 3600:
        raise ConfigError("retention-interval: must be more than 0 and at most 86400")
    if not 0 < config.presence_timeout <= 3600:
        raise ConfigError("presence-timeout: must be more than 0 and at most 3600")


def load(
    command_line: Mapping[str, object],
    environ: Mapping[str, str] = os.environ,
    config_path: str | None = None,
) -> Config:
    """
    Merge the sources into a checked `Config`.

    @param command_line: Values given on the command line, keyed by setting
        name (and ``<secret>-file``); absent or C{None} means not given.
    @param environ: The process environment.
    @param config_path: The TOML file (``--config``); when not given,
        ``REALTIMED_CONFIG`` names it, if set.

    @raise ConfigError: For the first unusable value.
    """
    if config_path is None:
        config_path = environ.get("REALTIMED_CONFIG") or None
    file_values = read_config_file(config_path) if config_path else {}
    values = {
        setting.attribute: _pick(setting, command_line, environ, file_values)
        for setting in SETTINGS
    }
    config = Config(**values)
    _check(config)
    return config
