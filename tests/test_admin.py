"""
The admin page over HTTP: its files and their headers, what it refuses, and
``GET /api/realtime/webhooks/failures`` against a real daemon whose webhooks
fail for real (a receiver answering 500, one answering 404, a closed
loopback port).  The page in a browser is `tests.test_admin_browser`.
"""

from __future__ import annotations

import json
import re
import socket
import time
from typing import Any

import treq
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks, succeed
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Request

from realtimed.admin.files import (
    CONTENT_SECURITY_POLICY,
    FOREVER,
    INDEX,
    REVALIDATE,
    SECURITY_HEADERS,
    content_type,
    etag_matches,
    lookup,
    page_files,
    static_file,
)
from realtimed.admin.page import AdminPage
from realtimed.rest.validation import FailuresQuery, InvalidInput, failures_query
from realtimed.web import RealtimeSite, root_resource
from tests.support import create_database
from tests.test_realtime import KEYS, PATIENCE, Daemon, token
from tests.test_webhooks import TrackingSite

ADMIN = {"Authorization": [f"Bearer {KEYS.api_key}"]}


def admin_daemon(url: str, data_dir: str) -> Daemon:
    """
    A realtimed daemon in this process whose webhooks may go to loopback
    addresses (where the tests' receivers are).
    """
    return Daemon(url, data_dir, {"webhook-allow-private": True})


def closed_port() -> int:
    """
    A loopback port nothing listens on (one the system just handed out and
    took back).
    """
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port: int = probe.getsockname()[1]
    probe.close()
    return port


def raw_request(port: int, target: str) -> tuple[int, bytes]:
    """
    Send C{GET target} exactly as written (no client normalises it) and
    return the status and the body.  Blocks.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=PATIENCE) as connection:
        connection.sendall(
            f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
        )
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


class Answering(Resource):
    """
    A webhook receiver that answers every POST with C{status}.
    """

    isLeaf = True

    def __init__(self, status: int) -> None:
        super().__init__()
        self.status = status
        self.received = 0

    def render_POST(self, request: Request) -> bytes:
        self.received += 1
        request.setResponseCode(self.status)
        return b"no"


class FilesTests(SynchronousTestCase):
    """
    The page's files and their headers, without HTTP.
    """

    def test_content_types(self) -> None:
        """
        Each kind of file has its type, text in UTF-8; other kinds are not
        served.
        """
        self.assertEqual(content_type("index.html"), "text/html; charset=utf-8")
        self.assertEqual(content_type("js/main.js"), "text/javascript; charset=utf-8")
        self.assertEqual(content_type("admin.css"), "text/css; charset=utf-8")
        self.assertEqual(content_type("favicon.svg"), "image/svg+xml")
        self.assertEqual(content_type("vendor/x-1/LICENSE"), "text/plain; charset=utf-8")
        self.assertEqual(content_type("vendor/x-1/x.min.js.map"), "application/json; charset=utf-8")
        self.assertIsNone(content_type("__init__.py"))
        self.assertIsNone(content_type(".htaccess"))

    def test_caching(self) -> None:
        """
        Vendored files, in folders named by their version, may be cached for
        good; the page's own files are revalidated; the ETag follows the
        content.
        """
        own = static_file("js/main.js", b"a")
        vendored = static_file("vendor/uplot-1.6.32/uPlot.iife.min.js", b"a")
        assert own is not None and vendored is not None
        self.assertEqual((own.cache_control, vendored.cache_control), (REVALIDATE, FOREVER))
        self.assertEqual(own.etag, vendored.etag)
        other = static_file("js/main.js", b"b")
        assert other is not None
        self.assertNotEqual(own.etag, other.etag)
        self.assertIsNone(static_file("setup.py", b""))

    def test_lookup(self) -> None:
        """
        A request names a file by its path below the page; the root is the
        index; nothing else is found, however it is spelled.
        """
        table = page_files()
        self.assertIs(lookup(table, [b""]), table[INDEX])
        self.assertIs(lookup(table, [b"js", b"main.js"]), table["js/main.js"])
        for segments in (
            [],
            [b"js"],
            [b"js", b""],
            [b"vendor", b""],
            [b"..", b"files.py"],
            [b"js", b"..", b"index.html"],
            [b"../files.py"],
            [b"..%2ffiles.py"],
            [b"\xff"],
            [b"files.py"],
            [b"__init__.py"],
            [b"js", b"main.js", b""],
        ):
            self.assertIsNone(lookup(table, segments), segments)

    def test_etag_matches(self) -> None:
        """
        ``If-None-Match`` may list several tags, weak ones included, or
        ``*``.
        """
        self.assertTrue(etag_matches('"a"', '"a"'))
        self.assertTrue(etag_matches('"a"', 'W/"a"'))
        self.assertTrue(etag_matches('"a"', '"b", "a"'))
        self.assertTrue(etag_matches('"a"', "*"))
        self.assertFalse(etag_matches('"a"', '"b"'))
        self.assertFalse(etag_matches('"a"', None))

    def test_everything_referred_to_is_shipped(self) -> None:
        """
        Every script, style sheet and icon the page refers to, and every
        module its modules import, is among the files served; no script is
        inline; each vendored library has its licence beside it.
        """
        table = page_files()
        index = table[INDEX].body.decode()
        references = re.findall(r'(?:src|href)="([^"#][^"]*)"', index)
        self.assertGreater(len(references), 4)
        for reference in references:
            self.assertIn(reference, table, reference)
        self.assertNotRegex(index, r"<script(?![^>]*\bsrc=)[^>]*>")
        self.assertNotIn(" style=", index)
        self.assertNotRegex(index, r"\son[a-z]+=")
        modules = [path for path in table if path.startswith("js/")]
        self.assertIn("js/main.js", modules)
        for module in modules:
            source = table[module].body.decode()
            for imported in re.findall(r'from "\./([^"]+)"', source):
                self.assertIn(f"js/{imported}", table, f"{module} imports {imported}")
        libraries = {path.split("/")[1] for path in table if path.startswith("vendor/")}
        self.assertEqual(libraries, {"socket.io-client-4.8.4", "uplot-1.6.32"})
        for library in libraries:
            licence = table[f"vendor/{library}/LICENSE"].body.decode()
            self.assertIn("MIT License", licence)

    def test_policy(self) -> None:
        """
        The Content-Security-Policy allows scripts and styles from the
        page's own origin only, no plugins, frames or form submissions.
        """
        directives = dict(part.strip().split(" ", 1) for part in CONTENT_SECURITY_POLICY.split(";"))
        self.assertEqual(directives["default-src"], "'none'")
        self.assertEqual(directives["script-src"], "'self'")
        self.assertEqual(directives["style-src"], "'self'")
        self.assertEqual(directives["connect-src"], "'self'")
        self.assertEqual(directives["form-action"], "'none'")
        self.assertEqual(directives["frame-ancestors"], "'none'")
        self.assertNotIn("unsafe", CONTENT_SECURITY_POLICY)


class FailuresQueryTests(SynchronousTestCase):
    """
    The query of ``GET /webhooks/failures``, without HTTP.
    """

    def test_defaults(self) -> None:
        """
        Without parameters: every channel, at most 100.
        """
        self.assertEqual(failures_query({}), FailuresQuery(None, 100))
        self.assertEqual(failures_query({"other": ["x"]}), FailuresQuery(None, 100))

    @given(st.integers(min_value=-(10**30), max_value=10**30))
    def test_limit(self, limit: int) -> None:
        """
        Any whole number from 1 to 1000 is a limit; any other is refused
        with the range.
        """
        if 1 <= limit <= 1000:
            self.assertEqual(failures_query({"limit": [str(limit)]}).limit, limit)
        else:
            with self.assertRaises(InvalidInput) as raised:
                failures_query({"limit": [str(limit)]})
            self.assertEqual(raised.exception.problems, ("limit: Must be between 1 and 1000",))

    @given(st.uuids())
    def test_channel(self, channel: Any) -> None:
        """
        ``channelId`` is a UUID in any case, kept in lower case.
        """
        query = failures_query({"channelId": [str(channel).upper()]})
        self.assertEqual(query.channel_id, str(channel))


class PageTests(TestCase):
    """
    The page served at ``/admin/`` of the daemon's resource tree, on a
    loopback port.
    """

    def setUp(self) -> None:
        root = root_resource(health=lambda: succeed(True), admin=AdminPage())
        site = RealtimeSite(root, max_body=1024 * 1024)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        self.port = port.getHost().port
        self.base = f"http://127.0.0.1:{self.port}"
        self.files = page_files()

    @inlineCallbacks
    def get(self, path: str, method: str = "GET", headers: Any = None) -> Any:
        response = yield treq.request(
            method, self.base + path, headers=headers, allow_redirects=False, persistent=False
        )
        body = yield response.content()
        return response, body

    def assertSecure(self, response: Any) -> None:
        for name, value in SECURITY_HEADERS.items():
            self.assertEqual(response.headers.getRawHeaders(name), [value], name)

    @inlineCallbacks
    def test_page(self) -> Any:
        """
        ``/admin/`` is the page, as HTML, revalidated before each use, with
        the strict policy; ``/admin`` redirects there.
        """
        response, body = yield self.get("/admin/")
        self.assertEqual(response.code, 200)
        self.assertEqual(body, self.files[INDEX].body)
        self.assertEqual(
            response.headers.getRawHeaders("content-type"), ["text/html; charset=utf-8"]
        )
        self.assertEqual(response.headers.getRawHeaders("cache-control"), ["no-cache"])
        self.assertSecure(response)
        self.assertIn(b"<title>realtimed admin</title>", body)
        response, _ = yield self.get("/admin")
        self.assertEqual(response.code, 301)
        self.assertEqual(response.headers.getRawHeaders("location"), ["admin/"])
        self.assertSecure(response)

    @inlineCallbacks
    def test_every_file(self) -> Any:
        """
        Every file is served whole with its type, its ETag and its caching;
        HEAD gives the headers without the body.
        """
        for path, served in self.files.items():
            response, body = yield self.get("/admin/" + path)
            self.assertEqual(response.code, 200, path)
            self.assertEqual(body, served.body, path)
            headers = response.headers
            self.assertEqual(headers.getRawHeaders("content-type"), [served.content_type], path)
            self.assertEqual(headers.getRawHeaders("cache-control"), [served.cache_control])
            self.assertEqual(headers.getRawHeaders("etag"), [served.etag])
            self.assertEqual(headers.getRawHeaders("x-content-type-options"), ["nosniff"])
        response, body = yield self.get("/admin/js/main.js", method="HEAD")
        self.assertEqual((response.code, body), (200, b""))
        self.assertEqual(
            response.headers.getRawHeaders("content-length"),
            [str(len(self.files["js/main.js"].body))],
        )
        vendored = "vendor/uplot-1.6.32/uPlot.iife.min.js"
        response, _ = yield self.get("/admin/" + vendored)
        self.assertEqual(
            response.headers.getRawHeaders("cache-control"), ["public, max-age=31536000, immutable"]
        )

    @inlineCallbacks
    def test_not_modified(self) -> Any:
        """
        A request naming the file's ETag in ``If-None-Match`` gets 304
        without a body; another ETag gets the file.
        """
        etag = self.files["admin.css"].etag
        response, body = yield self.get("/admin/admin.css", headers={"If-None-Match": [etag]})
        self.assertEqual((response.code, body), (304, b""))
        response, body = yield self.get("/admin/admin.css", headers={"If-None-Match": ['"x"']})
        self.assertEqual((response.code, body), (200, self.files["admin.css"].body))

    @inlineCallbacks
    def test_unknown(self) -> Any:
        """
        Unknown files and folders are 404, with the policy too; folders are
        never listed.
        """
        for path in (
            "/admin/nothing.js",
            "/admin/js/",
            "/admin/vendor/",
            "/admin/vendor/uplot-1.6.32/",
            "/admin/files.py",
            "/admin/page.py",
            "/admin/VENDORED.rst",
            "/admin/package.json",
            "/admin/index.html/",
        ):
            response, body = yield self.get(path)
            self.assertEqual((response.code, body), (404, b"Not found\n"), path)
            self.assertSecure(response)

    @inlineCallbacks
    def test_traversal(self) -> Any:
        """
        No spelling of ``..`` reaches a file outside the page: not raw, not
        percent-encoded, not with encoded slashes.
        """
        for target in (
            "/admin/../setup.py",
            "/admin/../../README.rst",
            "/admin/js/../../files.py",
            "/admin/%2e%2e/files.py",
            "/admin/%2e%2e%2ffiles.py",
            "/admin/..%2f..%2fsetup.py",
            "/admin/js/..%5c..%5cfiles.py",
            "/admin//etc/passwd",
            "/admin/%2fetc%2fpasswd",
        ):
            status, body = yield deferToThread(raw_request, self.port, target)
            self.assertEqual(status, 404, target)
            self.assertEqual(body, b"Not found\n", target)

    @inlineCallbacks
    def test_methods(self) -> Any:
        """
        Only GET and HEAD: anything else is 405 naming them.
        """
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            response, _ = yield self.get("/admin/", method=method)
            self.assertEqual(response.code, 405, method)
            self.assertEqual(response.headers.getRawHeaders("allow"), ["GET, HEAD"])

    @inlineCallbacks
    def test_other_routes(self) -> Any:
        """
        The rest of the tree is as it was: ``/healthz`` answers without the
        page's policy.
        """
        response, body = yield self.get("/healthz")
        self.assertEqual((response.code, json.loads(body)), (200, {"status": "ok"}))
        self.assertIsNone(response.headers.getRawHeaders("content-security-policy"))


class FailuresTestCase(TestCase):
    """
    A daemon on a database of its own, and the webhook receivers the tests
    point channels at.
    """

    timeout = 120

    @inlineCallbacks
    def setUp(self) -> Any:  # type: ignore[override]
        self.database = create_database(self)
        self.daemon = yield admin_daemon(self.database, self.mktemp()).start()
        self.addCleanup(self.daemon.stop)

    def listen(self, receiver: Resource) -> int:
        site = TrackingSite(receiver)
        listening = reactor.listenTCP(0, site, interface="127.0.0.1")  # type: ignore[attr-defined]

        @inlineCallbacks
        def close() -> Any:
            yield listening.stopListening()
            yield site.abort_all()

        self.addCleanup(close)
        port: int = listening.getHost().port
        return port

    @inlineCallbacks
    def api(self, method: str, path: str, body: Any = None, headers: Any = None) -> Any:
        response = yield treq.request(
            method,
            self.daemon.address + "/api/realtime" + path,
            headers=ADMIN if headers is None else headers,
            json=body,
            persistent=False,
        )
        answer = yield response.json()
        return response.code, answer

    @inlineCallbacks
    def failures(self, query: str = "") -> Any:
        status, answer = yield self.api("GET", "/webhooks/failures" + query)
        self.assertEqual(status, 200, answer)
        return answer

    @inlineCallbacks
    def wait_for_failures(self, check: Any, query: str = "") -> Any:
        """
        The failures listed once C{check} says they are all there.
        """
        deadline = time.monotonic() + 2 * PATIENCE
        while True:
            failures = yield self.failures(query)
            if check(failures):
                return failures
            if time.monotonic() > deadline:
                self.fail(f"timed out; the failures listed are {failures}")
            yield deferToThread(time.sleep, 0.1)


class FailuresRouteTests(FailuresTestCase):
    @inlineCallbacks
    def test_credentials(self) -> Any:
        """
        Only an admin may read the failures: no credential or a bad one is
        401, the anon key or a user's token 403.
        """
        for headers, status, code in (
            ({}, 401, "UNAUTHORIZED"),
            ({"Authorization": ["Bearer nope"]}, 401, "UNAUTHORIZED"),
            ({"x-api-key": ["ik_wrong"]}, 401, "UNAUTHORIZED"),
            ({"Authorization": [f"Bearer {KEYS.anon_key}"]}, 403, "FORBIDDEN"),
            ({"Authorization": [f"Bearer {token('alice')}"]}, 403, "FORBIDDEN"),
        ):
            answer = yield self.api("GET", "/webhooks/failures", headers=headers)
            self.assertEqual((answer[0], answer[1]["error"]), (status, code), headers)
        status, answer = yield self.api(
            "GET", "/webhooks/failures", headers={"x-api-key": [KEYS.api_key]}
        )
        self.assertEqual((status, answer), (200, []))

    @inlineCallbacks
    def test_validation(self) -> Any:
        """
        ``limit`` is an integer from 1 to 1000, given once, and
        ``channelId`` a UUID; every problem is named, as on the other
        routes.
        """
        for query, message in (
            ("?limit=0", "limit: Must be between 1 and 1000"),
            ("?limit=1001", "limit: Must be between 1 and 1000"),
            ("?limit=-5", "limit: Must be between 1 and 1000"),
            ("?limit=ten", "limit: Expected integer"),
            ("?limit=1.5", "limit: Expected integer"),
            ("?limit=", "limit: Expected integer"),
            ("?limit=99999999999999999999999", "limit: Must be between 1 and 1000"),
            ("?limit=1&limit=2", "limit: Must be given once"),
            ("?channelId=x", "channelId: Invalid uuid"),
            ("?channelId=x&limit=0", "channelId: Invalid uuid, limit: Must be between 1 and 1000"),
        ):
            status, answer = yield self.api("GET", "/webhooks/failures" + query)
            self.assertEqual(
                (status, answer),
                (400, {"error": "INVALID_INPUT", "message": message, "statusCode": 400}),
                query,
            )
        for query in ("?limit=1", "?limit=1000", "?limit=+7", "?unknown=1"):
            status, answer = yield self.api("GET", "/webhooks/failures" + query)
            self.assertEqual((status, answer), (200, []), query)
        status, answer = yield self.api("POST", "/webhooks/failures", {})
        self.assertEqual(status, 405)

    @inlineCallbacks
    def test_failures_recorded(self) -> Any:
        """
        Deliveries that a receiver answered 500 (retried), that found no
        one listening (retried) and that a receiver answered 404 (final) are
        listed, newest first, with what went wrong; delivered ones are not.
        The URL is shown without its credentials and query.
        """
        failing = Answering(500)
        refusing = Answering(404)
        accepting = Answering(204)
        failing_port = self.listen(failing)
        urls = {
            "failing": f"http://hook:secret@127.0.0.1:{failing_port}/in?token=abc",
            "closed": f"http://127.0.0.1:{closed_port()}/in",
            "refusing": f"http://127.0.0.1:{self.listen(refusing)}/in",
            "accepting": f"http://127.0.0.1:{self.listen(accepting)}/in",
        }
        status, channel = yield self.api(
            "POST", "/channels", {"pattern": "hooks:*", "webhookUrls": list(urls.values())}
        )
        self.assertEqual(status, 201, channel)
        published = []
        for event in ("first", "second"):
            status, message = yield self.api(
                "POST", "/messages", {"channel": "hooks:1", "event": event, "payload": {}}
            )
            self.assertEqual(status, 201, message)
            published.append(message["id"])

        def complete(failures: list[dict[str, Any]]) -> bool:
            return len(failures) == 6 and accepting.received == 2

        failures = yield self.wait_for_failures(complete)
        by_url: dict[str, list[dict[str, Any]]] = {}
        for failure in failures:
            by_url.setdefault(failure["url"], []).append(failure)
        shown = f"http://127.0.0.1:{failing_port}/in?..."
        self.assertEqual(
            sorted(by_url),
            sorted(
                [
                    shown,
                    urls["closed"],
                    urls["refusing"],
                ]
            ),
        )
        for failure in failures:
            self.assertEqual(failure["channelId"], channel["id"])
            self.assertEqual(failure["channelName"], "hooks:1")
            self.assertIn(failure["messageId"], published)
            self.assertEqual(
                failure["eventName"], "first" if failure["messageId"] == published[0] else "second"
            )
            self.assertGreaterEqual(failure["attempts"], 1)
        for failure in by_url[shown]:
            self.assertEqual(failure["status"], "retrying")
            self.assertEqual((failure["lastStatus"], failure["lastError"]), (500, "HTTP 500"))
            self.assertIsNotNone(failure["nextAttemptAt"])
        for failure in by_url[urls["closed"]]:
            self.assertEqual(failure["status"], "retrying")
            self.assertIsNone(failure["lastStatus"])
            self.assertIn("refused", failure["lastError"].lower())
        for failure in by_url[urls["refusing"]]:
            self.assertEqual(failure["status"], "failed")
            self.assertEqual((failure["lastStatus"], failure["lastError"]), (404, "HTTP 404"))
            self.assertEqual(failure["attempts"], 1)
            self.assertIsNone(failure["nextAttemptAt"])
        self.assertNotIn("secret", json.dumps(failures))
        times = [failure["updatedAt"] for failure in failures]
        self.assertEqual(times, sorted(times, reverse=True))

        latest = yield self.failures("?limit=2")
        self.assertEqual(len(latest), 2)
        self.assertGreaterEqual(latest[0]["updatedAt"], latest[1]["updatedAt"])

    @inlineCallbacks
    def test_channel_filter(self) -> Any:
        """
        ``channelId`` lists the failures of that channel's messages only;
        deleting the channel keeps its messages' failures, with a null
        ``channelId``.
        """
        refusing = Answering(404)
        url = f"http://127.0.0.1:{self.listen(refusing)}/in"
        channels = {}
        for pattern in ("left", "right"):
            status, channel = yield self.api(
                "POST", "/channels", {"pattern": pattern, "webhookUrls": [url]}
            )
            self.assertEqual(status, 201, channel)
            channels[pattern] = channel["id"]
            yield self.api("POST", "/messages", {"channel": pattern, "event": "e"})
        yield self.wait_for_failures(lambda failures: len(failures) == 2)
        left = yield self.failures(f"?channelId={channels['left']}")
        self.assertEqual([f["channelName"] for f in left], ["left"])
        yield self.api("DELETE", f"/channels/{channels['left']}")
        both = yield self.failures()
        self.assertEqual(
            sorted((f["channelName"], f["channelId"]) for f in both),
            [("left", None), ("right", channels["right"])],
        )


class DaemonPageTests(FailuresTestCase):
    @inlineCallbacks
    def test_served_by_the_daemon(self) -> Any:
        """
        The daemon serves the page at ``/admin/`` beside its other routes,
        which answer as before.
        """
        response = yield treq.get(self.daemon.address + "/admin/", persistent=False)
        body = yield response.content()
        self.assertEqual(response.code, 200)
        self.assertEqual(body, page_files()[INDEX].body)
        self.assertEqual(
            response.headers.getRawHeaders("content-security-policy"), [CONTENT_SECURITY_POLICY]
        )
        response = yield treq.get(self.daemon.address + "/healthz", persistent=False)
        self.assertEqual(response.code, 200)
        yield response.content()
        status, channels = yield self.api("GET", "/channels")
        self.assertEqual((status, channels), (200, []))
        response = yield treq.get(
            self.daemon.address + "/socket.io/?EIO=4&transport=polling", persistent=False
        )
        handshake = yield response.content()
        self.assertEqual(response.code, 200)
        self.assertTrue(handshake.startswith(b"0{"), handshake)
        self.assertIsNone(response.headers.getRawHeaders("content-security-policy"))
