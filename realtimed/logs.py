"""
Logs as JSON, one object per line (``--log-format json``), for log
collectors that read structured lines:

    {"time": "2026-01-15T10:30:00.123Z", "level": "info",
     "namespace": "realtimed.service", "message": "realtimed listening on ...",
     "url": "http://127.0.0.1:8080/"}

``time`` is RFC 3339 in UTC with milliseconds; ``level`` is ``debug``,
``info``, ``warn``, ``error`` or ``critical``; ``message`` is the event's
text as the text format writes it; then come the event's own fields, those
that JSON can hold (a field named like one of the four is written with a
leading underscore).  A failure adds ``failure`` with its traceback.

No secret is ever written: the values of the secret settings and the keys
in use are replaced by ``[redacted]`` wherever they would appear.

twistd decides where logs go: the plugin sets `json_log_observer`'s
observer as the application's log observer, writing where the text would
have gone (standard output under ``--nodaemon``, else ``--logfile``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import IO, Any

from twisted.logger import ILogObserver, LogEvent, formatEvent
from zope.interface import provider

#: Fields of events from Twisted's older logging API, said again by the
#: message or not meant for readers.
_LEGACY = frozenset({"message", "format", "isError", "time", "why", "failure", "system"})
_OWN = ("time", "level", "namespace", "message")
REDACTED = "[redacted]"


def _rfc3339(seconds: float) -> str:
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _jsonable(value: object) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return False
    return True


def event_as_json(event: LogEvent) -> str:
    """
    One log event as a line of JSON (without the newline).
    """
    level = event.get("log_level")
    record: dict[str, Any] = {
        "time": _rfc3339(float(event.get("log_time") or 0.0)),
        "level": getattr(level, "name", "info"),
        "namespace": str(event.get("log_namespace", "")),
        "message": formatEvent(event),
    }
    for key, value in event.items():
        if key.startswith("log_") or key in _LEGACY or not isinstance(key, str):
            continue
        if _jsonable(value):
            record["_" + key if key in _OWN else key] = value
    failure = event.get("log_failure")
    if failure is not None:
        try:
            record["failure"] = failure.getTraceback()
        except Exception:
            record["failure"] = repr(failure)
    return json.dumps(record, ensure_ascii=False, default=str)


def json_log_observer(out: IO[str], secrets: Callable[[], Iterable[str]]) -> ILogObserver:
    """
    An observer writing each event to C{out} as a line of JSON.

    @param secrets: Gives the secrets in use (asked for each line, since
        generated secrets are only known once the daemon has started);
        none of them is ever written.
    """

    @provider(ILogObserver)
    def observe(event: LogEvent) -> None:
        line = event_as_json(event)
        for secret in secrets():
            if not secret:
                continue
            for form in (secret, json.dumps(secret, ensure_ascii=False)[1:-1]):
                if form in line:
                    line = line.replace(form, REDACTED)
        out.write(line + "\n")
        out.flush()

    return observe
