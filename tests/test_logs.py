"""
Tests for L{realtimed.logs}: log events as lines of JSON, without secrets.
"""

from __future__ import annotations

import io
import json

from twisted.logger import Logger, LogLevel, LogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from realtimed.logs import REDACTED, event_as_json, json_log_observer


class EventTests(SynchronousTestCase):
    def test_fields(self) -> None:
        """
        A line holds the time (RFC 3339, UTC, milliseconds), the level, the
        namespace, the formatted message, and the event's own fields that
        JSON can hold; a field named like one of the four gets an
        underscore.
        """
        event = {
            "log_time": 1_700_000_000.1234,
            "log_level": LogLevel.warn,
            "log_namespace": "realtimed.test",
            "log_format": "Socket {sid} refused: {reason}",
            "sid": "abc",
            "reason": "Invalid token",
            "count": 3,
            "message": "legacy",
            "level": "mine",
            "opaque": object(),
        }
        record = json.loads(event_as_json(event))
        self.assertEqual(
            record,
            {
                "time": "2023-11-14T22:13:20.123Z",
                "level": "warn",
                "namespace": "realtimed.test",
                "message": "Socket abc refused: Invalid token",
                "sid": "abc",
                "reason": "Invalid token",
                "count": 3,
                "_level": "mine",
            },
        )

    def test_failure(self) -> None:
        """
        A failure's traceback comes as C{failure}.
        """
        try:
            1 / 0  # noqa: B018
        except ZeroDivisionError:
            failure = Failure()
        record = json.loads(
            event_as_json(
                {
                    "log_time": 0.0,
                    "log_level": LogLevel.critical,
                    "log_namespace": "x",
                    "log_format": "It broke",
                    "log_failure": failure,
                }
            )
        )
        self.assertEqual((record["level"], record["message"]), ("critical", "It broke"))
        self.assertIn("ZeroDivisionError", record["failure"])

    def test_observer_redacts_secrets(self) -> None:
        """
        The observer writes one line per event and never a secret, even
        inside other text or escaped by JSON.
        """
        out = io.StringIO()
        secrets = ["s3cret-value-0123456789", 'quote"secret-0123456789']
        publisher = LogPublisher(json_log_observer(out, lambda: secrets))
        log = Logger(namespace="realtimed.test", observer=publisher)
        log.info("Connecting with {dsn}", dsn="postgresql://u:s3cret-value-0123456789@h/db")
        log.info("Token {token}", token='quote"secret-0123456789')
        lines = out.getvalue().splitlines()
        self.assertEqual(len(lines), 2)
        for line in lines:
            for secret in secrets:
                self.assertNotIn(secret, line)
                self.assertNotIn(json.dumps(secret)[1:-1], line)
            self.assertIn(REDACTED, json.loads(line)["message"])
