"""
Tests that the OpenAPI document served at ``/api/realtime/openapi.json``
tells the truth about the admin API: its routes are the API's routes, the
reference's examples fit its schemas, and schemathesis, generating requests
from it against the live API, finds no server error and no response that
breaks it.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase

from realtimed.rest.api import AdminAPI
from realtimed.rest.openapi import openapi_document
from tests.test_api import (
    KEYS,
    REFERENCE_CHANNEL,
    REFERENCE_MESSAGE,
    REFERENCE_PERMISSIONS,
    REFERENCE_STATS,
    APIServerMixin,
)

#: Requests per operation and phase; small, so the run stays well under a
#: minute on a busy machine.  REALTIMED_SCHEMATHESIS_EXAMPLES raises it.
MAX_EXAMPLES = int(os.environ.get("REALTIMED_SCHEMATHESIS_EXAMPLES", "12"))
#: A fixed seed keeps runs repeatable; REALTIMED_SCHEMATHESIS_SEED varies it.
SEED = os.environ.get("REALTIMED_SCHEMATHESIS_SEED", "20240115")


def _klein_routes() -> set[tuple[str, str]]:
    """
    Every (path, method) the Klein app routes, in OpenAPI's path syntax.
    """
    routes = set()
    for rule in AdminAPI.app.url_map.iter_rules():
        path = re.sub(r"<(?:[a-z]+:)?([A-Za-z_]+)>", r"{\1}", rule.rule)
        for method in rule.methods or ():
            if method not in ("HEAD", "OPTIONS"):
                routes.add((path, method.lower()))
    return routes


class DocumentTests(SynchronousTestCase):
    """
    The document against the code and the reference.
    """

    def test_version(self) -> None:
        """
        The document is OpenAPI 3.1, served under ``/api/realtime``.
        """
        document = openapi_document()
        self.assertEqual(document["openapi"], "3.1.0")
        self.assertEqual(document["servers"], [{"url": "/api/realtime"}])

    def test_routes(self) -> None:
        """
        The document describes exactly the routes the API has.
        """
        documented = {
            (path, method)
            for path, item in openapi_document()["paths"].items()
            for method in item
            if method != "parameters"
        }
        self.assertEqual(documented, _klein_routes())

    def test_every_operation_secured(self) -> None:
        """
        No operation opts out of the document-wide admin security, and each
        documents the 401 and 403 answers.
        """
        document = openapi_document()
        self.assertEqual(document["security"], [{"bearer": []}, {"apiKey": []}])
        for item in document["paths"].values():
            for method, operation in item.items():
                if method == "parameters":
                    continue
                self.assertNotIn("security", operation)
                self.assertIn("401", operation["responses"])
                self.assertIn("403", operation["responses"])

    def test_reference_examples(self) -> None:
        """
        The reference's example responses and request bodies fit the
        document's schemas (with RFC 3339 times as the reference writes
        them), and malformed ones do not.
        """
        import jsonschema_rs

        document = openapi_document()

        def valid(name: str, instance: Any) -> bool:
            schema = {"$ref": f"#/components/schemas/{name}", **document}
            validator = jsonschema_rs.Draft202012Validator(schema, validate_formats=True)
            return bool(validator.is_valid(instance))

        examples = [
            ("Channel", REFERENCE_CHANNEL),
            ("Channel", {**REFERENCE_CHANNEL, "webhookUrls": None}),
            ("Message", REFERENCE_MESSAGE),
            ("MessageStats", REFERENCE_STATS),
            ("MessageStats", {**REFERENCE_STATS, "retentionDays": None}),
            ("RetentionConfig", {"retentionDays": 30}),
            ("RetentionConfig", {"retentionDays": None}),
            ("Permissions", REFERENCE_PERMISSIONS),
            ("Deleted", {"message": "Channel deleted"}),
            (
                "Error",
                {
                    "error": "NOT_FOUND",
                    "message": "Channel not found",
                    "statusCode": 404,
                },
            ),
            (
                "ChannelCreation",
                {
                    "pattern": "notifications:*",
                    "description": "User notifications channel",
                    "webhookUrls": ["https://example.com/webhook"],
                    "enabled": True,
                },
            ),
            (
                "ChannelUpdate",
                {"description": "Updated notifications channel", "enabled": False},
            ),
            ("ChannelUpdate", {"webhookUrls": None}),
            (
                "Publication",
                {"channel": "order:123", "event": "order.created", "payload": {"a": 1}},
            ),
        ]
        for name, example in examples:
            self.assertTrue(valid(name, example), (name, example))
        malformed = [
            ("Channel", {**REFERENCE_CHANNEL, "extra": 1}),
            ("ChannelCreation", {"description": "no pattern"}),
            ("ChannelCreation", {"pattern": "a b"}),
            ("ChannelCreation", {"pattern": "a", "webhookUrls": ["ftp://example.com"]}),
            ("ChannelUpdate", {}),
            ("RetentionConfig", {}),
            ("RetentionConfig", {"retentionDays": 0}),
            ("Publication", {"channel": "order:123", "event": "connect"}),
            ("Publication", {"channel": "order:*", "event": "e"}),
        ]
        for name, example in malformed:
            self.assertFalse(valid(name, example), (name, example))

    def test_document_examples(self) -> None:
        """
        Every example the document gives (request bodies, responses,
        errors, parameters) fits the schema beside it.
        """
        import jsonschema_rs

        document = openapi_document()
        checked = 0

        def check(where: str, holder: dict[str, Any]) -> None:
            nonlocal checked
            if "example" not in holder:
                return
            schema = {**holder["schema"], "components": document["components"]}
            validator = jsonschema_rs.Draft202012Validator(schema, validate_formats=True)
            self.assertTrue(validator.is_valid(holder["example"]), where)
            checked += 1

        for path, item in document["paths"].items():
            for method, operation in item.items():
                if method == "parameters":
                    for parameter in operation:
                        check(f"{path} {parameter['name']}", parameter)
                    continue
                for media in operation.get("requestBody", {}).get("content", {}).values():
                    check(f"{method} {path} body", media)
                for status, response in operation["responses"].items():
                    for media in response.get("content", {}).values():
                        check(f"{method} {path} {status}", media)
        self.assertGreater(checked, 50)


class ServedDocumentTests(APIServerMixin):
    """
    The document as served, and schemathesis against the live API.
    """

    timeout = 300

    @inlineCallbacks
    def test_served(self) -> Any:
        """
        ``GET /openapi.json`` serves the document.
        """
        status, body = yield self.request("GET", "/openapi.json")
        self.assertEqual((status, body), (200, openapi_document()))

    @inlineCallbacks
    def test_schemathesis(self) -> Any:
        """
        Requests schemathesis generates from the document, valid and not,
        with the API key, never cause a 500, and every response conforms to
        the document (status codes, content types, headers, bodies);
        schemathesis also checks that requests without the key are refused
        and that invalid data is rejected.  Its "valid data must be
        accepted" check is left out: valid ids of channels that do not
        exist are rightly 404s.
        """
        # A channel owning every name, so generated publications reach the
        # database, and stored messages, so that history has rows to check.
        channel = yield self.channel(pattern="*", webhookUrls=["https://example.com/"])
        self.store_message(channel["id"], payload={"orderId": "123"}, counts=(5, 1, 1))
        self.store_message(None, event="INSERT", sender_type="system", sender_id=None)
        workdir = os.path.abspath("schemathesis")
        os.makedirs(workdir, exist_ok=True)
        args = [
            "-m",
            "schemathesis.cli",
            "run",
            f"{self.base}/openapi.json",
            "--header",
            f"x-api-key: {KEYS.api_key}",
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
            "--max-examples",
            str(MAX_EXAMPLES),
            "--seed",
            SEED,
            "--workers",
            "1",
            "--request-timeout",
            "30",
            "--generation-database",
            "none",
            "--no-color",
            "--report-dir",
            os.path.join(workdir, "report"),
        ]
        env = {
            key: value
            for key, value in os.environ.items()
            if key in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")
        }
        env["PYTHONIOENCODING"] = "utf-8"
        out, err, code = yield getProcessOutputAndValue(
            sys.executable, args, env=env, path=workdir, reactor=reactor
        )
        output = (out + err).decode("utf-8", "replace")
        self.assertEqual(code, 0, output[-6000:])
        self.assertIn("No issues found", output)
        # Every request the run made was answered without a server error,
        # so nothing was logged as a failure either.
        self.assertEqual(self.flushLoggedErrors(), [])
