"""
Tests for L{realtimed.rest.api}: the admin REST API served on a real port over a
real PostgreSQL database.
"""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from collections.abc import Mapping
from typing import Any, cast

import jwt
import psycopg2
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IListeningPort
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool
from twisted.web.resource import Resource

from realtimed.auth import Keys
from realtimed.rest.api import AdminAPI
from realtimed.store.listener import MessageListener
from realtimed.store.migrations import migrate
from realtimed.store.pool import ConnectionPool
from realtimed.web import RealtimeSite
from tests.support import create_database, run_sql, wait_for

KEYS = Keys(
    jwt_secret="s" * 40,
    api_key="ik_" + "a" * 40,
    anon_key="anon_" + "b" * 40,
    webhook_secret="whsec_" + base64.b64encode(b"k" * 32).decode(),
)
ADMIN = {"Authorization": f"Bearer {KEYS.api_key}"}
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

# The reference's examples, field by field.
REFERENCE_CHANNEL = {
    "id": "550e8400-e29b-41d4-a716-446655440000",
    "pattern": "order:*",
    "description": "Order updates channel",
    "webhookUrls": ["https://example.com/webhook"],
    "enabled": True,
    "createdAt": "2024-01-15T10:30:00Z",
    "updatedAt": "2024-01-15T10:30:00Z",
}
REFERENCE_MESSAGE = {
    "id": "660e8400-e29b-41d4-a716-446655440000",
    "eventName": "order.created",
    "channelId": "550e8400-e29b-41d4-a716-446655440000",
    "channelName": "order:123",
    "payload": {"orderId": "123", "status": "pending"},
    "senderType": "user",
    "senderId": "770e8400-e29b-41d4-a716-446655440000",
    "wsAudienceCount": 5,
    "whAudienceCount": 1,
    "whDeliveredCount": 1,
    "createdAt": "2024-01-15T10:30:00Z",
}
REFERENCE_STATS = {
    "totalMessages": 1250,
    "whDeliveryRate": 0.98,
    "topEvents": [
        {"eventName": "order.created", "count": 450},
        {"eventName": "order.updated", "count": 380},
        {"eventName": "order.completed", "count": 220},
    ],
}
REFERENCE_PERMISSIONS = {
    "subscribe": {
        "policies": [
            {
                "policyName": "allow_authenticated_subscribe",
                "tableName": "realtime_channels",
                "command": "SELECT",
                "roles": ["authenticated"],
                "using": "enabled = true",
                "withCheck": None,
            }
        ]
    },
    "publish": {
        "policies": [
            {
                "policyName": "allow_authenticated_publish",
                "tableName": "realtime_messages",
                "command": "INSERT",
                "roles": ["authenticated"],
                "using": None,
                "withCheck": "true",
            }
        ]
    },
}


def token(claims: Mapping[str, Any]) -> str:
    return jwt.encode(dict(claims), KEYS.jwt_secret, algorithm="HS256")


def error(status: int, code: str, message: str) -> dict[str, Any]:
    return {"error": code, "message": message, "statusCode": status}


class APIServerMixin(TestCase):
    """
    A fresh migrated database, and the API mounted at ``/api/realtime/`` of
    a site listening on a loopback port.
    """

    database: str
    base: str
    client_pool: HTTPConnectionPool

    @inlineCallbacks
    def setUp(self) -> Any:  # type: ignore[override]
        test: TestCase = self
        self.database = create_database(test)
        yield migrate(reactor, self.database)
        pool = ConnectionPool(reactor, self.database, size=2)
        yield pool.start()
        test.addCleanup(pool.close)
        self.api = AdminAPI(pool, KEYS, reactor)
        root = Resource()
        api = Resource()
        root.putChild(b"api", api)
        api.putChild(b"realtime", self.api.resource())
        site = RealtimeSite(root, max_body=1024 * 1024)
        port = cast(IListeningPort, reactor).listenTCP(  # type: ignore[attr-defined]
            0, site, interface="127.0.0.1"
        )
        test.addCleanup(port.stopListening)
        self.base = f"http://127.0.0.1:{port.getHost().port}/api/realtime"
        self.client_pool = HTTPConnectionPool(reactor, persistent=False)
        test.addCleanup(self.client_pool.closeCachedConnections)

    @inlineCallbacks
    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> Any:
        """
        Make a request; fires with C{(status, decoded JSON body)}.
        """
        if headers is None:
            headers = ADMIN
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
        response = yield treq.request(
            method,
            self.base + path,
            headers={k: [v] for k, v in headers.items()},  # type: ignore[arg-type]
            data=data,
            params=params,
            pool=self.client_pool,
        )
        content = yield response.content()
        test: TestCase = self
        test.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"application/json"])
        return response.code, json.loads(content)

    def channel(self, **fields: Any) -> Deferred[dict[str, Any]]:
        """
        Create a channel; fires with it.
        """
        body = {"pattern": "order:*", **fields}

        def created(result: tuple[int, Any]) -> dict[str, Any]:
            status, channel = result
            assert status == 201, result
            return channel  # type: ignore[no-any-return]

        d: Deferred[Any] = self.request("POST", "/channels", body)
        return d.addCallback(created)

    def store_message(
        self,
        channel_id: str | None,
        channel_name: str = "order:123",
        event: str = "order.created",
        created_at: str = "2024-01-15T10:30:00Z",
        payload: Any = None,
        sender_type: str = "user",
        sender_id: str | None = "770e8400-e29b-41d4-a716-446655440000",
        counts: tuple[int, int, int] = (0, 0, 0),
    ) -> str:
        """
        Store a message as the daemon would; returns its id.
        """
        rows = run_sql(
            self.database,
            "INSERT INTO realtime.messages (event_name, channel_id, channel_name,"
            " payload, sender_type, sender_id, created_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id::text",
            (
                event,
                channel_id,
                channel_name,
                json.dumps({} if payload is None else payload),
                sender_type,
                sender_id,
                created_at,
            ),
        )
        message_id = str(rows[0][0])
        # The audiences are counted, and deliveries made, after the insert.
        run_sql(
            self.database,
            "UPDATE realtime.messages SET ws_audience_count = %s,"
            " wh_audience_count = %s, wh_delivered_count = %s WHERE id = %s",
            (*counts, message_id),
        )
        return message_id


class ChannelTests(APIServerMixin):
    """
    ``/channels`` and ``/channels/{id}``.
    """

    @inlineCallbacks
    def test_create(self) -> Any:
        """
        ``POST /channels`` answers 201 with the new channel, in the
        reference's shape: every field, with times in RFC 3339 UTC.
        """
        status, channel = yield self.request(
            "POST",
            "/channels",
            {
                "pattern": "notifications:*",
                "description": "User notifications channel",
                "webhookUrls": ["https://example.com/webhook"],
                "enabled": True,
            },
        )
        self.assertEqual(status, 201)
        self.assertEqual(list(channel), list(REFERENCE_CHANNEL))
        self.assertRegex(channel["id"], UUID)
        self.assertEqual(channel["pattern"], "notifications:*")
        self.assertEqual(channel["description"], "User notifications channel")
        self.assertEqual(channel["webhookUrls"], ["https://example.com/webhook"])
        self.assertIs(channel["enabled"], True)
        self.assertRegex(channel["createdAt"], RFC3339)
        self.assertEqual(channel["updatedAt"], channel["createdAt"])

    @inlineCallbacks
    def test_create_defaults(self) -> Any:
        """
        Only the pattern is required: the description and webhook URLs are
        then C{null} and the channel is enabled.  An empty list of webhook
        URLs is no webhook URLs, C{null}.
        """
        _, channel = yield self.request("POST", "/channels", {"pattern": "chat:*"})
        self.assertEqual(
            {k: channel[k] for k in ("description", "webhookUrls", "enabled")},
            {"description": None, "webhookUrls": None, "enabled": True},
        )
        _, other = yield self.request(
            "POST",
            "/channels",
            {"pattern": "orders", "webhookUrls": [], "enabled": False},
        )
        self.assertEqual((other["webhookUrls"], other["enabled"]), (None, False))

    @inlineCallbacks
    def test_create_duplicate(self) -> Any:
        """
        A second channel with a pattern already in use is refused with 409
        ``ALREADY_EXISTS``.
        """
        yield self.channel()
        status, body = yield self.request("POST", "/channels", {"pattern": "order:*"})
        self.assertEqual(
            (status, body),
            (
                409,
                error(
                    409,
                    "ALREADY_EXISTS",
                    "A channel with pattern order:* already exists",
                ),
            ),
        )

    @inlineCallbacks
    def test_percent_wildcard(self) -> Any:
        """
        ``%`` is the same wildcard as ``*``: a pattern written with it is
        stored and shown with ``*``, and ``order:%`` and ``order:*`` are one
        pattern, whichever comes first and whether created or updated.
        """
        status, created = yield self.request("POST", "/channels", {"pattern": "order:%"})
        self.assertEqual((status, created["pattern"]), (201, "order:*"))
        duplicate = error(409, "ALREADY_EXISTS", "A channel with pattern order:* already exists")
        for pattern in ("order:*", "order:%"):
            status, body = yield self.request("POST", "/channels", {"pattern": pattern})
            self.assertEqual((status, body), (409, duplicate))
        other = yield self.channel(pattern="chat:*")
        status, body = yield self.request("PUT", f"/channels/{other['id']}", {"pattern": "order:%"})
        self.assertEqual((status, body), (409, duplicate))
        status, body = yield self.request("PUT", f"/channels/{other['id']}", {"pattern": "%:room"})
        self.assertEqual((status, body["pattern"]), (200, "*:room"))

    @inlineCallbacks
    def test_list(self) -> Any:
        """
        ``GET /channels`` lists every channel, newest first, each in the
        reference's shape.
        """
        status, body = yield self.request("GET", "/channels")
        self.assertEqual((status, body), (200, []))
        first = yield self.channel(
            description="Order updates channel",
            webhookUrls=["https://example.com/webhook"],
        )
        second = yield self.channel(pattern="chat:*", description="Chat room messages")
        run_sql(
            self.database,
            "UPDATE realtime.channels SET created_at = now() - interval '1 hour' WHERE id = %s",
            (first["id"],),
        )
        status, body = yield self.request("GET", "/channels")
        self.assertEqual(status, 200)
        self.assertEqual([c["id"] for c in body], [second["id"], first["id"]])
        for channel in body:
            self.assertEqual(list(channel), list(REFERENCE_CHANNEL))
        self.assertEqual(body[0]["webhookUrls"], None)
        self.assertEqual(body[1]["webhookUrls"], ["https://example.com/webhook"])
        self.assertEqual(body[1]["description"], "Order updates channel")

    @inlineCallbacks
    def test_get(self) -> Any:
        """
        ``GET /channels/{id}`` answers with the channel as it was created.
        """
        created = yield self.channel(description="Order updates channel")
        status, body = yield self.request("GET", f"/channels/{created['id']}")
        self.assertEqual((status, body), (200, created))

    @inlineCallbacks
    def test_get_upper_case_id(self) -> Any:
        """
        An id is a UUID in any letter case.
        """
        created = yield self.channel()
        status, body = yield self.request("GET", f"/channels/{created['id'].upper()}")
        self.assertEqual((status, body["id"]), (200, created["id"]))

    @inlineCallbacks
    def test_missing_channel(self) -> Any:
        """
        GET, PUT and DELETE of a channel that does not exist answer 404
        ``NOT_FOUND`` "Channel not found", exactly as the reference shows.
        """
        missing = f"/channels/{uuid.uuid4()}"
        expected = (404, error(404, "NOT_FOUND", "Channel not found"))
        self.assertEqual((yield self.request("GET", missing)), expected)
        self.assertEqual((yield self.request("PUT", missing, {"enabled": False})), expected)
        self.assertEqual((yield self.request("DELETE", missing)), expected)

    @inlineCallbacks
    def test_invalid_id(self) -> Any:
        """
        An id that is not a UUID is a 400 ``id: Invalid uuid`` on every
        method, checked before the body.
        """
        expected = (400, error(400, "INVALID_INPUT", "id: Invalid uuid"))
        for method, body in (("GET", None), ("PUT", {"x": 1}), ("DELETE", None)):
            self.assertEqual((yield self.request(method, "/channels/not-a-uuid", body)), expected)

    @inlineCallbacks
    def test_update(self) -> Any:
        """
        ``PUT /channels/{id}`` changes only the fields given and bumps
        ``updatedAt``, as in the reference's example.
        """
        created = yield self.channel(
            pattern="notifications:*",
            description="User notifications channel",
            webhookUrls=["https://example.com/webhook"],
        )
        run_sql(
            self.database,
            "UPDATE realtime.channels SET created_at = '2024-01-17T09:00:00Z',"
            " updated_at = '2024-01-17T09:00:00Z' WHERE id = %s",
            (created["id"],),
        )
        status, body = yield self.request(
            "PUT",
            f"/channels/{created['id']}",
            {"description": "Updated notifications channel", "enabled": False},
        )
        self.assertEqual(status, 200)
        self.assertEqual(
            {k: v for k, v in body.items() if k != "updatedAt"},
            {
                "id": created["id"],
                "pattern": "notifications:*",
                "description": "Updated notifications channel",
                "webhookUrls": ["https://example.com/webhook"],
                "enabled": False,
                "createdAt": "2024-01-17T09:00:00.000Z",
            },
        )
        self.assertRegex(body["updatedAt"], RFC3339)
        self.assertGreater(body["updatedAt"], "2024-01-17T09:00:00.000Z")
        _, fetched = yield self.request("GET", f"/channels/{created['id']}")
        self.assertEqual(fetched, body)

    @inlineCallbacks
    def test_update_clears(self) -> Any:
        """
        ``webhookUrls: null`` (or ``[]``) removes every webhook URL, and
        ``description: null`` removes the description; the pattern can
        change too.
        """
        created = yield self.channel(
            description="d",
            webhookUrls=["https://example.com/a", "http://example.com/b"],
        )
        path = f"/channels/{created['id']}"
        status, body = yield self.request("PUT", path, {"webhookUrls": None})
        self.assertEqual((status, body["webhookUrls"], body["description"]), (200, None, "d"))
        yield self.request("PUT", path, {"webhookUrls": ["https://example.com/c"]})
        _, body = yield self.request("PUT", path, {"webhookUrls": [], "description": None})
        self.assertEqual((body["webhookUrls"], body["description"]), (None, None))
        _, body = yield self.request("PUT", path, {"pattern": "orders:*"})
        self.assertEqual(body["pattern"], "orders:*")

    @inlineCallbacks
    def test_update_duplicate(self) -> Any:
        """
        Changing a pattern to one another channel has is a 409.
        """
        yield self.channel()
        other = yield self.channel(pattern="chat:*")
        status, body = yield self.request("PUT", f"/channels/{other['id']}", {"pattern": "order:*"})
        self.assertEqual(
            (status, body),
            (
                409,
                error(
                    409,
                    "ALREADY_EXISTS",
                    "A channel with pattern order:* already exists",
                ),
            ),
        )

    @inlineCallbacks
    def test_delete(self) -> Any:
        """
        ``DELETE /channels/{id}`` answers ``{"message": "Channel deleted"}``;
        the channel is gone and its messages stay, with ``channelId`` null.
        """
        created = yield self.channel()
        self.store_message(created["id"])
        status, body = yield self.request("DELETE", f"/channels/{created['id']}")
        self.assertEqual((status, body), (200, {"message": "Channel deleted"}))
        status, _ = yield self.request("GET", f"/channels/{created['id']}")
        self.assertEqual(status, 404)
        _, messages = yield self.request("GET", "/messages")
        self.assertEqual(
            [(m["channelId"], m["channelName"]) for m in messages],
            [(None, "order:123")],
        )


class ChannelValidationTests(APIServerMixin):
    """
    Malformed channel bodies: each problem is a 400 ``INVALID_INPUT``
    naming its field, all of them in one message.
    """

    @inlineCallbacks
    def assertInvalid(
        self,
        method: str,
        path: str,
        message: str,
        body: Any = None,
        raw: bytes | None = None,
    ) -> Any:
        status, answer = yield self.request(method, path, body, raw=raw)
        self.assertEqual((status, answer), (400, error(400, "INVALID_INPUT", message)))

    def test_pattern_required(self) -> Any:
        """
        The reference's example: a channel without pattern.
        """
        return self.assertInvalid(
            "POST",
            "/channels",
            "pattern: Channel pattern is required",
            {"description": "x"},
        )

    def test_invalid_webhook_url(self) -> Any:
        """
        The reference's example: a webhook URL that is not a URL.
        """
        return self.assertInvalid(
            "POST",
            "/channels",
            "webhookUrls.0: Invalid url",
            {"pattern": "orders", "webhookUrls": ["not a url"]},
        )

    def test_webhook_url_not_http(self) -> Any:
        """
        Webhook URLs are http or https.
        """
        return self.assertInvalid(
            "POST",
            "/channels",
            "webhookUrls.1: Must be an http or https URL",
            {
                "pattern": "orders",
                "webhookUrls": ["https://a.example", "ftp://a.example/x"],
            },
        )

    def test_invalid_pattern(self) -> Any:
        """
        A pattern outside the channel alphabet is refused.
        """
        return self.assertInvalid(
            "POST",
            "/channels",
            "pattern: Invalid channel pattern (1-255 characters from A-Z a-z 0-9 _ - : . @ * %)",
            {"pattern": "order #1"},
        )

    def test_every_problem(self) -> Any:
        """
        Wrong types and unknown fields are each named, in one message joined
        by ``, `` (known fields first, in the documented order).
        """
        return self.assertInvalid(
            "POST",
            "/channels",
            "pattern: Expected string, received number, description: Expected string,"
            " received boolean, webhookUrls: Expected array, received string,"
            " enabled: Expected boolean, received string, name: Unknown field",
            {
                "name": "x",
                "pattern": 5,
                "description": True,
                "webhookUrls": "https://example.com",
                "enabled": "yes",
            },
        )

    def test_not_json(self) -> Any:
        """
        A body that is not JSON is a 400, not a 500.
        """
        return self.assertInvalid("POST", "/channels", "body: Invalid JSON", raw=b"{pattern:")

    def test_not_utf8(self) -> Any:
        """
        A body that is not UTF-8 is a 400.
        """
        return self.assertInvalid("POST", "/channels", "body: Invalid UTF-8", raw=b'"\xff"')

    def test_empty_body(self) -> Any:
        """
        No body at all is a 400.
        """
        return self.assertInvalid("POST", "/channels", "body: Required", raw=b"")

    def test_not_an_object(self) -> Any:
        """
        A body that is JSON but not an object is a 400.
        """
        return self.assertInvalid(
            "POST",
            "/channels",
            "body: Expected object, received array",
            [{"pattern": "a"}],
        )

    @inlineCallbacks
    def test_huge_body(self) -> Any:
        """
        A body over 1 MiB is a 413 without being read.
        """
        raw = json.dumps({"pattern": "orders", "description": "x" * (1024 * 1024)})
        result = yield self.request("POST", "/channels", raw=raw.encode())
        self.assertEqual(
            result,
            (
                413,
                {
                    "error": "PAYLOAD_TOO_LARGE",
                    "message": "The request body is over 1048576 bytes",
                    "statusCode": 413,
                },
            ),
        )

    def test_nul_character(self) -> Any:
        """
        Text PostgreSQL cannot store (a NUL character) is a 400.
        """
        return self.assertInvalid(
            "POST",
            "/channels",
            "description: Must not contain NUL characters",
            {"pattern": "orders", "description": "a\u0000b"},
        )

    @inlineCallbacks
    def test_empty_update(self) -> Any:
        """
        A PUT that changes nothing is a 400.
        """
        created = yield self.channel()
        yield self.assertInvalid(
            "PUT",
            f"/channels/{created['id']}",
            "body: At least one field is required",
            {},
        )

    @inlineCallbacks
    def test_invalid_update(self) -> Any:
        """
        A PUT is validated like a POST: here a null pattern, a null
        ``enabled`` and an unknown field.
        """
        created = yield self.channel()
        yield self.assertInvalid(
            "PUT",
            f"/channels/{created['id']}",
            "pattern: Expected string, received null, enabled: Expected boolean,"
            " received null, id: Unknown field",
            {"pattern": None, "enabled": None, "id": created["id"]},
        )


class MessageTests(APIServerMixin):
    """
    ``GET /messages`` and ``POST /messages``.
    """

    @inlineCallbacks
    def test_shape(self) -> Any:
        """
        A stored message is listed in the reference's shape, field by field.
        """
        channel = yield self.channel()
        message_id = self.store_message(
            channel["id"],
            payload={"orderId": "123", "status": "pending"},
            counts=(5, 1, 1),
        )
        status, body = yield self.request(
            "GET", "/messages", params={"channelId": channel["id"], "limit": "50"}
        )
        self.assertEqual(status, 200)
        expected = {
            **REFERENCE_MESSAGE,
            "id": message_id,
            "channelId": channel["id"],
            "createdAt": "2024-01-15T10:30:00.000Z",
        }
        self.assertEqual(body, [expected])
        self.assertEqual(list(body[0]), list(REFERENCE_MESSAGE))

    @inlineCallbacks
    def test_newest_first_and_pages(self) -> Any:
        """
        Messages are newest first; ``limit`` and ``offset`` page through
        them; the default limit is 100.
        """
        channel = yield self.channel()
        ids = [
            self.store_message(channel["id"], created_at=f"2024-01-15T10:{minute:02}:00Z")
            for minute in range(5)
        ]
        newest_first = ids[::-1]
        _, body = yield self.request("GET", "/messages")
        self.assertEqual([m["id"] for m in body], newest_first)
        _, body = yield self.request("GET", "/messages", params={"limit": "2"})
        self.assertEqual([m["id"] for m in body], newest_first[:2])
        _, body = yield self.request("GET", "/messages", params={"limit": "2", "offset": "2"})
        self.assertEqual([m["id"] for m in body], newest_first[2:4])
        _, body = yield self.request("GET", "/messages", params={"offset": "4"})
        self.assertEqual([m["id"] for m in body], newest_first[4:])
        _, body = yield self.request("GET", "/messages", params={"offset": "5"})
        self.assertEqual(body, [])
        run_sql(
            self.database,
            "INSERT INTO realtime.messages (event_name, channel_name, sender_type)"
            " SELECT 'e', 'order:1', 'system' FROM generate_series(1, 120)",
        )
        _, body = yield self.request("GET", "/messages")
        self.assertEqual(len(body), 100)
        _, body = yield self.request("GET", "/messages", params={"limit": "1000"})
        self.assertEqual(len(body), 125)

    @inlineCallbacks
    def test_filters(self) -> Any:
        """
        ``channelId`` and ``eventName`` filter, alone or together.
        """
        orders = yield self.channel()
        chat = yield self.channel(pattern="chat:*")
        a = self.store_message(orders["id"], event="order.created")
        b = self.store_message(orders["id"], event="order.updated")
        c = self.store_message(chat["id"], channel_name="chat:1", event="order.created")

        @inlineCallbacks
        def ids(**params: str) -> Any:
            status, body = yield self.request("GET", "/messages", params=params)
            self.assertEqual(status, 200)
            return sorted(m["id"] for m in body)

        self.assertEqual((yield ids(channelId=orders["id"])), sorted([a, b]))
        self.assertEqual((yield ids(eventName="order.created")), sorted([a, c]))
        self.assertEqual((yield ids(channelId=orders["id"], eventName="order.created")), [a])
        self.assertEqual((yield ids(channelId=str(uuid.uuid4()))), [])
        self.assertEqual((yield ids(eventName="nothing")), [])

    @inlineCallbacks
    def test_invalid_query(self) -> Any:
        """
        Out-of-range or malformed parameters are 400s naming each one.
        """
        cases = [
            ({"limit": "0"}, "limit: Must be between 1 and 1000"),
            ({"limit": "1001"}, "limit: Must be between 1 and 1000"),
            ({"limit": "ten"}, "limit: Expected integer"),
            ({"offset": "-1"}, "offset: Must be between 0 and 2147483647"),
            ({"channelId": "123"}, "channelId: Invalid uuid"),
            (
                {"channelId": "x", "limit": "0", "offset": "y"},
                (
                    "channelId: Invalid uuid, limit: Must be between 1 and 1000,"
                    " offset: Expected integer"
                ),
            ),
        ]
        for params, message in cases:
            result = yield self.request("GET", "/messages", params=params)
            self.assertEqual(result, (400, error(400, "INVALID_INPUT", message)), params)

    @inlineCallbacks
    def test_publish(self) -> Any:
        """
        ``POST /messages`` stores a system message on the channel that owns
        the name and answers 201 with it, in the shape of the history.
        """
        channel = yield self.channel()
        status, message = yield self.request(
            "POST",
            "/messages",
            {
                "channel": "order:123",
                "event": "order.created",
                "payload": {"orderId": "123"},
            },
        )
        self.assertEqual(status, 201)
        self.assertEqual(list(message), list(REFERENCE_MESSAGE))
        self.assertRegex(message["id"], UUID)
        self.assertRegex(message["createdAt"], RFC3339)
        self.assertEqual(
            {k: v for k, v in message.items() if k not in ("id", "createdAt")},
            {
                "eventName": "order.created",
                "channelId": channel["id"],
                "channelName": "order:123",
                "payload": {"orderId": "123"},
                "senderType": "system",
                "senderId": None,
                "wsAudienceCount": 0,
                "whAudienceCount": 0,
                "whDeliveredCount": 0,
            },
        )
        _, history = yield self.request("GET", "/messages")
        self.assertEqual(history, [message])

    @inlineCallbacks
    def test_publish_delivered(self) -> Any:
        """
        A published message reaches every realtimed process's listener like
        any other, and its webhook audience is its channel's webhook URLs.
        """
        notified: list[Any] = []
        listener = MessageListener(reactor, self.database, notified.append)
        listener.startService()
        self.addCleanup(listener.stopService)
        yield self.channel(webhookUrls=["https://example.com/a", "https://example.com/b"])
        yield wait_for(lambda: listener.connected, what="the listener to connect")
        status, message = yield self.request(
            "POST", "/messages", {"channel": "order:9", "event": "e", "payload": [1]}
        )
        self.assertEqual((status, message["whAudienceCount"]), (201, 2))
        yield wait_for(lambda: notified, what="the message to reach the listener")
        self.assertEqual(len(notified), 1)
        self.assertEqual(notified[0].webhooks, 2)
        self.assertEqual(
            notified[0].body,
            {
                "channel": "order:9",
                "event": "e",
                "messageId": message["id"],
                "senderType": "system",
                "senderId": None,
                "payload": [1],
                "createdAt": message["createdAt"],
            },
        )

    @inlineCallbacks
    def test_publish_any_payload(self) -> Any:
        """
        The payload may be any JSON value, and is C{{}} when absent.  Backends
        may publish ``INSERT``, ``UPDATE`` and ``DELETE``.
        """
        yield self.channel(pattern="orders")
        _, message = yield self.request(
            "POST", "/messages", {"channel": "orders", "event": "INSERT"}
        )
        self.assertEqual(message["payload"], {})
        for payload in ([1, "two", None], "text", 3.5, None, {"deep": {"er": [True]}}):
            status, message = yield self.request(
                "POST",
                "/messages",
                {"channel": "orders", "event": "UPDATE", "payload": payload},
            )
            self.assertEqual((status, message["payload"]), (201, payload))

    @inlineCallbacks
    def test_publish_without_channel(self) -> Any:
        """
        Publishing to a name no enabled channel owns is a 404 and stores
        nothing.
        """
        disabled = yield self.channel(enabled=False)
        self.assertFalse(disabled["enabled"])
        status, body = yield self.request(
            "POST", "/messages", {"channel": "order:1", "event": "e", "payload": {}}
        )
        self.assertEqual(
            (status, body),
            (404, error(404, "NOT_FOUND", "No enabled channel owns the name order:1")),
        )
        self.assertEqual(run_sql(self.database, "SELECT count(*) FROM realtime.messages"), [(0,)])

    @inlineCallbacks
    def test_publish_invalid(self) -> Any:
        """
        Malformed publications are 400s naming each problem: missing
        fields, a name outside the channel alphabet, Socket.IO's reserved
        event names, unknown fields, payload text PostgreSQL cannot store.
        """
        cases = [
            ({}, "channel: Channel name is required, event: Event name is required"),
            (
                {"channel": "order 1", "event": "connect", "extra": 1},
                (
                    "channel: Invalid channel name (1-255 characters from A-Z a-z 0-9 _ - : . @),"
                    " event: connect is a reserved event name, extra: Unknown field"
                ),
            ),
            (
                {"channel": "order:*", "event": "e"},
                "channel: A pattern cannot be published to; publish to a channel name",
            ),
            ({"channel": "orders", "event": ""}, "event: Must be 1-255 characters"),
            (
                {"channel": "orders", "event": 7},
                "event: Expected string, received number",
            ),
            (
                {"channel": "orders", "event": "e", "payload": {"a": ["\u0000"]}},
                "payload.a.0: Must not contain NUL characters",
            ),
        ]
        for body, message in cases:
            result = yield self.request("POST", "/messages", body)
            self.assertEqual(result, (400, error(400, "INVALID_INPUT", message)), body)
        for reserved in (
            "connect_error",
            "disconnect",
            "disconnecting",
            "newListener",
            "removeListener",
        ):
            status, _ = yield self.request(
                "POST", "/messages", {"channel": "orders", "event": reserved}
            )
            self.assertEqual(status, 400)


class StatsTests(APIServerMixin):
    """
    ``GET /messages/stats``.
    """

    @inlineCallbacks
    def test_empty(self) -> Any:
        """
        With no messages: zero messages, a delivery rate of 0, no events.
        """
        status, body = yield self.request("GET", "/messages/stats")
        self.assertEqual(
            (status, body),
            (
                200,
                {
                    "totalMessages": 0,
                    "whDeliveryRate": 0,
                    "topEvents": [],
                    "retentionDays": None,
                },
            ),
        )

    @inlineCallbacks
    def test_counts(self) -> Any:
        """
        Totals, the delivery rate (deliveries made over deliveries due) and
        the most frequent events, most frequent first, ties by name.
        """
        channel = yield self.channel()
        for event, n in (
            ("order.created", 3),
            ("order.updated", 2),
            ("order.completed", 2),
        ):
            for _ in range(n):
                self.store_message(channel["id"], event=event, counts=(1, 2, 1))
        self.store_message(channel["id"], event="order.completed", counts=(0, 0, 0))
        status, body = yield self.request("GET", "/messages/stats")
        self.assertEqual(status, 200)
        self.assertEqual(
            body,
            {
                "totalMessages": 8,
                "whDeliveryRate": 7 / 14,
                "topEvents": [
                    {"eventName": "order.completed", "count": 3},
                    {"eventName": "order.created", "count": 3},
                    {"eventName": "order.updated", "count": 2},
                ],
                "retentionDays": None,
            },
        )

    @inlineCallbacks
    def test_no_webhooks(self) -> Any:
        """
        Messages that no webhook was due for give a delivery rate of 0.
        """
        channel = yield self.channel()
        self.store_message(channel["id"], counts=(3, 0, 0))
        _, body = yield self.request("GET", "/messages/stats")
        self.assertEqual((body["totalMessages"], body["whDeliveryRate"]), (1, 0))

    @inlineCallbacks
    def test_top_ten(self) -> Any:
        """
        ``topEvents`` holds the 10 most frequent events.
        """
        channel = yield self.channel()
        for index in range(12):
            for _ in range(index + 1):
                self.store_message(channel["id"], event=f"e{index:02}")
        _, body = yield self.request("GET", "/messages/stats")
        self.assertEqual(
            body["topEvents"],
            [{"eventName": f"e{i:02}", "count": i + 1} for i in range(11, 1, -1)],
        )

    @inlineCallbacks
    def test_filters(self) -> Any:
        """
        ``since`` counts messages created at or after it; ``channelId``
        counts one channel's; both together narrow both ways.
        """
        orders = yield self.channel()
        chat = yield self.channel(pattern="chat:*")
        self.store_message(orders["id"], created_at="2023-12-31T23:59:59Z", counts=(0, 1, 0))
        self.store_message(orders["id"], created_at="2024-01-01T00:00:00Z", counts=(0, 2, 2))
        self.store_message(chat["id"], "chat:1", "message", "2024-02-01T00:00:00Z")

        @inlineCallbacks
        def stats(**params: str) -> Any:
            status, body = yield self.request("GET", "/messages/stats", params=params)
            self.assertEqual(status, 200)
            return body

        everything = yield stats()
        self.assertEqual((everything["totalMessages"], everything["whDeliveryRate"]), (3, 2 / 3))
        since = yield stats(since="2024-01-01T00:00:00Z")
        self.assertEqual(
            since,
            {
                "totalMessages": 2,
                "whDeliveryRate": 1.0,
                "topEvents": [
                    {"eventName": "message", "count": 1},
                    {"eventName": "order.created", "count": 1},
                ],
                "retentionDays": None,
            },
        )
        offset = yield stats(since="2024-01-01T01:00:00+01:00")
        self.assertEqual(offset, since)
        channel = yield stats(channelId=orders["id"])
        self.assertEqual(
            channel,
            {
                "totalMessages": 2,
                "whDeliveryRate": 2 / 3,
                "topEvents": [{"eventName": "order.created", "count": 2}],
                "retentionDays": None,
            },
        )
        both = yield stats(channelId=chat["id"], since="2024-03-01T00:00:00Z")
        self.assertEqual(
            both,
            {"totalMessages": 0, "whDeliveryRate": 0, "topEvents": [], "retentionDays": None},
        )

    @inlineCallbacks
    def test_invalid(self) -> Any:
        """
        A ``since`` that is not a date-time or a ``channelId`` that is not a
        UUID is a 400.
        """
        result = yield self.request(
            "GET", "/messages/stats", params={"since": "yesterday", "channelId": "1"}
        )
        self.assertEqual(
            result,
            (
                400,
                error(
                    400,
                    "INVALID_INPUT",
                    "channelId: Invalid uuid, since: Invalid datetime",
                ),
            ),
        )


class RetentionConfigTests(APIServerMixin):
    """
    ``GET`` and ``PATCH /config``: message retention, as upstream has it.
    """

    @inlineCallbacks
    def test_default(self) -> Any:
        """
        Messages are kept forever until a retention is set.
        """
        status, body = yield self.request("GET", "/config")
        self.assertEqual((status, body), (200, {"retentionDays": None}))

    @inlineCallbacks
    def test_update(self) -> Any:
        """
        ``PATCH`` sets the retention in the database (where every process
        reads it), ``GET`` and the statistics show it, and C{null} turns it
        off again.
        """
        status, body = yield self.request("PATCH", "/config", {"retentionDays": 7})
        self.assertEqual(
            (status, body), (200, {"message": "Retention config updated successfully"})
        )
        stored = run_sql(self.database, "SELECT retention_days FROM realtime.config")
        self.assertEqual(stored, [(7,)])
        _, body = yield self.request("GET", "/config")
        self.assertEqual(body, {"retentionDays": 7})
        _, stats = yield self.request("GET", "/messages/stats")
        self.assertEqual(stats["retentionDays"], 7)
        status, _ = yield self.request("PATCH", "/config", {"retentionDays": None})
        self.assertEqual(status, 200)
        _, body = yield self.request("GET", "/config")
        self.assertEqual(body, {"retentionDays": None})

    @inlineCallbacks
    def test_invalid(self) -> Any:
        """
        Anything but a positive integer or C{null} is a 400 naming the
        problem as ``retentionDays: <reason>``; the setting is unchanged.
        """
        yield self.request("PATCH", "/config", {"retentionDays": 30})
        for body, message in (
            ({"retentionDays": 0}, "retentionDays: Number must be greater than 0"),
            ({"retentionDays": -3}, "retentionDays: Number must be greater than 0"),
            ({"retentionDays": "7"}, "retentionDays: Expected number, received string"),
            ({"retentionDays": True}, "retentionDays: Expected number, received boolean"),
            ({"retentionDays": 1.5}, "retentionDays: Expected integer, received float"),
            (
                {"retentionDays": 10**9},
                "retentionDays: Number must be less than or equal to 36500",
            ),
            ({}, "retentionDays: Required"),
            ({"retentionDays": 3, "days": 3}, "days: Unknown field"),
            ([], "body: Expected object, received array"),
        ):
            status, answer = yield self.request("PATCH", "/config", body)
            self.assertEqual((status, answer), (400, error(400, "INVALID_INPUT", message)))
        _, answer = yield self.request("GET", "/config")
        self.assertEqual(answer, {"retentionDays": 30})


class PermissionTests(APIServerMixin):
    """
    ``GET /permissions``.
    """

    @inlineCallbacks
    def test_default(self) -> Any:
        """
        The installed policies, exactly as the reference shows them.
        """
        status, body = yield self.request("GET", "/permissions")
        self.assertEqual(status, 200)
        self.assertEqual(body, REFERENCE_PERMISSIONS)

    @inlineCallbacks
    def test_added_policy(self) -> Any:
        """
        A policy an administrator adds is listed with the others, with its
        roles and expressions.
        """
        run_sql(
            self.database,
            "CREATE POLICY anon_public_publish ON realtime.messages FOR INSERT"
            " TO anon, authenticated"
            " WITH CHECK ((channel_name LIKE 'public:%') AND (event_name <> 'x'))",
        )
        run_sql(
            self.database,
            "CREATE POLICY anon_subscribe ON realtime.channels FOR SELECT TO anon"
            " USING (realtime.channel_name() = 'lobby')",
        )
        _, body = yield self.request("GET", "/permissions")
        self.assertEqual(
            [p["policyName"] for p in body["subscribe"]["policies"]],
            ["allow_authenticated_subscribe", "anon_subscribe"],
        )
        self.assertEqual(
            body["subscribe"]["policies"][1],
            {
                "policyName": "anon_subscribe",
                "tableName": "realtime_channels",
                "command": "SELECT",
                "roles": ["anon"],
                "using": "realtime.channel_name() = 'lobby'::text",
                "withCheck": None,
            },
        )
        self.assertEqual(
            body["publish"]["policies"][1],
            {
                "policyName": "anon_public_publish",
                "tableName": "realtime_messages",
                "command": "INSERT",
                "roles": ["anon", "authenticated"],
                "using": None,
                "withCheck": "(channel_name ~~ 'public:%'::text) AND (event_name <> 'x'::text)",
            },
        )


class AuthenticationTests(APIServerMixin):
    """
    Every route takes an admin credential.
    """

    ROUTES = (
        ("GET", "/channels"),
        ("POST", "/channels"),
        ("GET", "/channels/550e8400-e29b-41d4-a716-446655440000"),
        ("PUT", "/channels/550e8400-e29b-41d4-a716-446655440000"),
        ("DELETE", "/channels/550e8400-e29b-41d4-a716-446655440000"),
        ("GET", "/messages"),
        ("POST", "/messages"),
        ("GET", "/messages/stats"),
        ("GET", "/permissions"),
        ("GET", "/openapi.json"),
    )

    @inlineCallbacks
    def assertRefused(
        self, headers: Mapping[str, str], status: int, code: str, message: str
    ) -> Any:
        for method, path in self.ROUTES:
            result = yield self.request(method, path, {"pattern": "x"}, headers=headers)
            self.assertEqual(result, (status, error(status, code, message)), (method, path))

    def test_missing(self) -> Any:
        """
        No credential: 401 "No authentication provided" on every route.
        """
        return self.assertRefused({}, 401, "UNAUTHORIZED", "No authentication provided")

    def test_other_scheme(self) -> Any:
        """
        An Authorization header of another scheme is refused, even with a
        right ``x-api-key`` beside it.
        """
        return self.assertRefused(
            {"Authorization": f"Basic {KEYS.api_key}", "x-api-key": KEYS.api_key},
            401,
            "UNAUTHORIZED",
            "Invalid Authorization header: expected Bearer <credential>",
        )

    def test_bad_bearer_beside_api_key(self) -> Any:
        """
        A bad bearer token is refused even with a right ``x-api-key``.
        """
        return self.assertRefused(
            {"Authorization": "Bearer nonsense", "x-api-key": KEYS.api_key},
            401,
            "UNAUTHORIZED",
            "Invalid token",
        )

    def test_bad_api_key_beside_bearer(self) -> Any:
        """
        A wrong ``x-api-key`` is refused even with a right bearer token.
        """
        return self.assertRefused(
            {"Authorization": f"Bearer {KEYS.api_key}", "x-api-key": "ik_wrong"},
            401,
            "UNAUTHORIZED",
            "Invalid API key",
        )

    def test_invalid_token(self) -> Any:
        """
        A bearer credential that is neither key nor a valid token: 401.
        """
        return self.assertRefused(
            {"Authorization": "Bearer nonsense"}, 401, "UNAUTHORIZED", "Invalid token"
        )

    def test_expired_token(self) -> Any:
        """
        An expired admin token: 401 "Token expired".
        """
        expired = token({"role": "project_admin", "exp": int(time.time()) - 10})
        return self.assertRefused(
            {"Authorization": f"Bearer {expired}"}, 401, "UNAUTHORIZED", "Token expired"
        )

    def test_wrong_api_key(self) -> Any:
        """
        An ``x-api-key`` that is not the API key: 401.
        """
        return self.assertRefused({"x-api-key": "ik_wrong"}, 401, "UNAUTHORIZED", "Invalid API key")

    def test_anon_key(self) -> Any:
        """
        The anon key is valid but not an admin's: 403 on every route.
        """
        return self.assertRefused(
            {"Authorization": f"Bearer {KEYS.anon_key}"},
            403,
            "FORBIDDEN",
            "Admin access required",
        )

    def test_user_token(self) -> Any:
        """
        An authenticated user's token: 403 on every route.
        """
        user = token({"sub": "u1", "role": "authenticated"})
        return self.assertRefused(
            {"Authorization": f"Bearer {user}"},
            403,
            "FORBIDDEN",
            "Admin access required",
        )

    @inlineCallbacks
    def test_admin_credentials(self) -> Any:
        """
        The API key as a bearer token or in ``x-api-key``, and a JWT with
        role ``project_admin``, are each accepted.
        """
        admin_token = token({"role": "project_admin", "exp": int(time.time()) + 60})
        for headers in (
            {"Authorization": f"Bearer {KEYS.api_key}"},
            {"x-api-key": KEYS.api_key},
            {"Authorization": f"Bearer {admin_token}"},
            {"Authorization": f"Bearer {admin_token}", "x-api-key": KEYS.api_key},
        ):
            status, _ = yield self.request("GET", "/channels", headers=headers)
            self.assertEqual(status, 200, headers)

    @inlineCallbacks
    def test_www_authenticate(self) -> Any:
        """
        A 401 names the scheme to use.
        """
        response = yield treq.get(self.base + "/channels", pool=self.client_pool)
        yield response.content()
        self.assertEqual(
            response.headers.getRawHeaders(b"www-authenticate"),
            [b'Bearer realm="realtime"'],
        )


class FailureTests(APIServerMixin):
    """
    Unknown routes, wrong methods and database failures are JSON errors.
    """

    @inlineCallbacks
    def test_unknown_route(self) -> Any:
        """
        A path the API does not have: 404 ``NOT_FOUND``.
        """
        result = yield self.request("GET", "/nothing")
        self.assertEqual(result, (404, error(404, "NOT_FOUND", "Route not found")))

    @inlineCallbacks
    def test_doubled_slashes(self) -> Any:
        """
        A path with doubled slashes is not a route (404 ``NOT_FOUND``), not
        a redirect to the path with the slashes merged.
        """
        for path in ("/channels//x", "/channels//", "/messages//stats"):
            result = yield self.request("GET", path)
            self.assertEqual(result, (404, error(404, "NOT_FOUND", "Route not found")), path)

    @inlineCallbacks
    def test_wrong_method(self) -> Any:
        """
        A method a route does not take: 405, naming those it takes.
        """
        response = yield treq.request(
            "PATCH", self.base + "/channels", headers=ADMIN, pool=self.client_pool
        )
        body = yield response.json()
        self.assertEqual(
            (response.code, body),
            (405, error(405, "METHOD_NOT_ALLOWED", "Method not allowed")),
        )
        self.assertEqual(response.headers.getRawHeaders(b"allow"), [b"GET, HEAD, POST"])

    @inlineCallbacks
    def test_database_error(self) -> Any:
        """
        A database failure is a 500 ``INTERNAL_ERROR`` that says nothing of
        its cause, and is logged.
        """
        run_sql(self.database, "ALTER TABLE realtime.channels RENAME TO gone")
        result = yield self.request("GET", "/channels")
        self.assertEqual(result, (500, error(500, "INTERNAL_ERROR", "Internal server error")))
        self.assertEqual(len(self.flushLoggedErrors(psycopg2.Error)), 1)
