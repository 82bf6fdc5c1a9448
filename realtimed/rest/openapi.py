"""
The OpenAPI 3.1 description of the admin REST API, served at
``/api/realtime/openapi.json``.

Schemas describe exactly what the API accepts and returns; the tests run
schemathesis against the live API with this document to keep the two in
agreement.

Pure code.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from typing import Any, Final

from realtimed.engineio.socket_packets import RESERVED_EVENTS
from realtimed.realtime import channels
from realtimed.rest import validation

JSON = "application/json"

_NULLABLE_STRING: Final = {"type": ["string", "null"]}
_UUID: Final = {"type": "string", "format": "uuid"}
_TIME: Final = {"type": "string", "format": "date-time"}
_COUNT: Final = {"type": "integer", "minimum": 0}

CHANNEL_PATTERN_REGEX: Final = f"^{channels.PATTERN_REGEX}$"
_ID_FIELD: Final = {
    "type": "string",
    "minLength": 1,
    "maxLength": validation.MAX_ID_LENGTH,
    "pattern": "^[^\\x00]*$",
}
CHANNEL_NAME_REGEX: Final = f"^{channels.NAME_REGEX}$"
# What the schema promises is accepted; the API accepts more (any absolute
# http or https URL with a host), and refuses anything else.
WEBHOOK_URL_REGEX: Final = (
    r"^https?://[A-Za-z0-9]([A-Za-z0-9.-]{0,60}[A-Za-z0-9])?(:[1-9][0-9]{0,3})?"
    r"(/[!-\[\]-~]{0,200})?$"
)


# The API reference's examples.
CHANNEL_EXAMPLE: Final = {
    "id": "550e8400-e29b-41d4-a716-446655440000",
    "pattern": "order:*",
    "description": "Order updates channel",
    "webhookUrls": ["https://example.com/webhook"],
    "enabled": True,
    "createdAt": "2024-01-15T10:30:00.000Z",
    "updatedAt": "2024-01-15T10:30:00.000Z",
}
CHANNEL_CREATION_EXAMPLE: Final = {
    "pattern": "notifications:*",
    "description": "User notifications channel",
    "webhookUrls": ["https://example.com/webhook"],
    "enabled": True,
}
CHANNEL_UPDATE_EXAMPLE: Final = {
    "description": "Updated notifications channel",
    "enabled": False,
}
MESSAGE_EXAMPLE: Final = {
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
    "createdAt": "2024-01-15T10:30:00.000Z",
}
PUBLICATION_EXAMPLE: Final = {
    "channel": "order:123",
    "event": "order.created",
    "payload": {"orderId": "123", "status": "pending"},
}
STATS_EXAMPLE: Final = {
    "totalMessages": 1250,
    "whDeliveryRate": 0.98,
    "topEvents": [
        {"eventName": "order.created", "count": 450},
        {"eventName": "order.updated", "count": 380},
        {"eventName": "order.completed", "count": 220},
    ],
}
PERMISSIONS_EXAMPLE: Final = {
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
RETENTION_EXAMPLE: Final = {"retentionDays": 30}
RETENTION_UPDATED: Final = {"message": "Retention config updated successfully"}
PRESENCE_EXAMPLE: Final = {
    "channel": "chat:room1",
    "members": [
        {"presenceId": "user-123", "type": "user", "joinedAt": "2024-01-15T10:30:00.000Z"}
    ],
}
WEBHOOK_FAILURE_EXAMPLE: Final = {
    "id": 42,
    "messageId": MESSAGE_EXAMPLE["id"],
    "channelId": CHANNEL_EXAMPLE["id"],
    "channelName": "order:123",
    "eventName": "order.created",
    "url": "https://example.com/webhook",
    "status": "retrying",
    "attempts": 3,
    "lastStatus": 503,
    "lastError": "HTTP 503",
    "nextAttemptAt": "2024-01-15T10:31:04.000Z",
    "createdAt": "2024-01-15T10:30:00.000Z",
    "updatedAt": "2024-01-15T10:30:34.000Z",
}
_NO_EXAMPLE: Final = object()


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str, example: Any = _NO_EXAMPLE) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": schema}
    if example is not _NO_EXAMPLE:
        media["example"] = example
    return {"description": description, "content": {JSON: media}}


def _request(schema: str, example: Any) -> dict[str, Any]:
    return {
        "required": True,
        "content": {JSON: {"schema": _ref(schema), "example": example}},
    }


def _error(status: str, description: str, message: str) -> dict[str, Any]:
    code = description.split(":")[0]
    example = {"error": code, "message": message, "statusCode": int(status)}
    return _json(_ref("Error"), description, example)


_ERRORS: Final = {
    "400": (
        "INVALID_INPUT: the request is malformed; each problem as <path>: <reason>",
        "pattern: Channel pattern is required",
    ),
    "401": (
        "UNAUTHORIZED: no credential, or not a valid one",
        "No authentication provided",
    ),
    "403": (
        "FORBIDDEN: the credential is valid but not an admin's",
        "Admin access required",
    ),
    "404": ("NOT_FOUND", "Channel not found"),
    "409": (
        "ALREADY_EXISTS: a channel with this pattern exists",
        "A channel with pattern order:* already exists",
    ),
    "500": ("INTERNAL_ERROR", "Internal server error"),
}


def _responses(success: tuple[str, dict[str, Any]], *errors: str) -> dict[str, Any]:
    status, response = success
    responses: dict[str, Any] = {status: response}
    for code in ("401", "403", *errors, "500"):
        responses[code] = _error(code, *_ERRORS[code])
    return dict(sorted(responses.items()))


_CHANNEL_ID_PARAMETER: Final = {
    "name": "id",
    "in": "path",
    "required": True,
    "description": "The channel's id.",
    "schema": _UUID,
    "example": CHANNEL_EXAMPLE["id"],
}


def _channel_fields() -> dict[str, Any]:
    return {
        "pattern": {
            "type": "string",
            "pattern": CHANNEL_PATTERN_REGEX,
            "minLength": 1,
            "maxLength": 255,
            "description": (
                "Channel names this channel owns; `*` matches any run of characters, "
                "and `%` means the same (stored as `*`)."
            ),
        },
        "description": {
            "type": ["string", "null"],
            "maxLength": validation.MAX_DESCRIPTION_LENGTH,
        },
        "webhookUrls": {
            "type": ["array", "null"],
            "items": {
                "type": "string",
                "maxLength": validation.MAX_URL_LENGTH,
                "pattern": WEBHOOK_URL_REGEX,
            },
            "description": "http or https URLs each message is POSTed to; `null` or `[]` for none.",
        },
        "enabled": {"type": "boolean"},
    }


def _schemas() -> dict[str, Any]:
    return {
        "Error": {
            "type": "object",
            "required": ["error", "message", "statusCode"],
            "additionalProperties": False,
            "properties": {
                "error": {
                    "type": "string",
                    "enum": [
                        "INVALID_INPUT",
                        "UNAUTHORIZED",
                        "FORBIDDEN",
                        "NOT_FOUND",
                        "METHOD_NOT_ALLOWED",
                        "ALREADY_EXISTS",
                        "INTERNAL_ERROR",
                    ],
                },
                "message": {"type": "string"},
                "statusCode": {"type": "integer", "minimum": 400, "maximum": 599},
            },
        },
        "Channel": {
            "type": "object",
            "required": [
                "id",
                "pattern",
                "description",
                "webhookUrls",
                "enabled",
                "createdAt",
                "updatedAt",
            ],
            "additionalProperties": False,
            "properties": {
                "id": _UUID,
                "pattern": {"type": "string"},
                "description": _NULLABLE_STRING,
                "webhookUrls": {
                    "type": ["array", "null"],
                    "items": {"type": "string"},
                    "minItems": 1,
                },
                "enabled": {"type": "boolean"},
                "createdAt": _TIME,
                "updatedAt": _TIME,
            },
        },
        "ChannelCreation": {
            "type": "object",
            "required": ["pattern"],
            "additionalProperties": False,
            "properties": _channel_fields(),
        },
        "ChannelUpdate": {
            "type": "object",
            "minProperties": 1,
            "additionalProperties": False,
            "properties": _channel_fields(),
            "description": "Only the fields given change; `webhookUrls: null` removes them all.",
        },
        "Deleted": {
            "type": "object",
            "required": ["message"],
            "additionalProperties": False,
            "properties": {"message": {"type": "string", "const": "Channel deleted"}},
        },
        "Message": {
            "type": "object",
            "required": [
                "id",
                "eventName",
                "channelId",
                "channelName",
                "payload",
                "senderType",
                "senderId",
                "wsAudienceCount",
                "whAudienceCount",
                "whDeliveredCount",
                "createdAt",
            ],
            "additionalProperties": False,
            "properties": {
                "id": _UUID,
                "eventName": {"type": "string"},
                "channelId": {
                    "type": ["string", "null"],
                    "format": "uuid",
                    "description": "`null` once the channel is deleted.",
                },
                "channelName": {"type": "string"},
                "payload": {},
                "senderType": {"type": "string", "enum": ["user", "system"]},
                "senderId": _NULLABLE_STRING,
                "wsAudienceCount": _COUNT,
                "whAudienceCount": _COUNT,
                "whDeliveredCount": _COUNT,
                "createdAt": _TIME,
            },
        },
        "Publication": {
            "type": "object",
            "required": ["channel", "event"],
            "additionalProperties": False,
            "properties": {
                "channel": {
                    "type": "string",
                    "pattern": CHANNEL_NAME_REGEX,
                    "minLength": 1,
                    "maxLength": 255,
                    "description": "A channel name owned by an enabled channel.",
                },
                "event": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": validation.MAX_EVENT_LENGTH,
                    "not": {"enum": sorted(RESERVED_EVENTS)},
                    "description": "Any event name but those Socket.IO reserves.",
                },
                "payload": {"description": "Any JSON value; `{}` when absent."},
            },
        },
        "MessageStats": {
            "type": "object",
            "required": ["totalMessages", "whDeliveryRate", "topEvents"],
            "additionalProperties": False,
            "properties": {
                "totalMessages": _COUNT,
                "whDeliveryRate": {
                    "type": "number",
                    "minimum": 0,
                    "description": (
                        "Webhook deliveries made over deliveries due; 0 when none were due."
                    ),
                },
                "retentionDays": {
                    "type": ["integer", "null"],
                    "minimum": 1,
                    "description": "Days messages are kept; null keeps them forever.",
                },
                "topEvents": {
                    "type": "array",
                    "maxItems": 10,
                    "items": {
                        "type": "object",
                        "required": ["eventName", "count"],
                        "additionalProperties": False,
                        "properties": {
                            "eventName": {"type": "string"},
                            "count": {"type": "integer", "minimum": 1},
                        },
                    },
                },
            },
        },
        "RetentionConfig": {
            "type": "object",
            "required": ["retentionDays"],
            "additionalProperties": False,
            "properties": {
                "retentionDays": {
                    "type": ["integer", "null"],
                    "minimum": 1,
                    "maximum": validation.MAX_RETENTION_DAYS,
                    "description": (
                        "Messages older than this many days are deleted (those with"
                        " webhook deliveries still pending once these end); null keeps"
                        " them forever."
                    ),
                },
            },
        },
        "Updated": {
            "type": "object",
            "required": ["message"],
            "additionalProperties": False,
            "properties": {"message": {"type": "string"}},
        },
        "Presence": {
            "type": "object",
            "required": ["channel", "members"],
            "additionalProperties": False,
            "properties": {
                "channel": {"type": "string"},
                "members": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["presenceId", "type", "joinedAt"],
                        "additionalProperties": False,
                        "properties": {
                            "presenceId": {"type": "string"},
                            "type": {"type": "string", "enum": ["user", "anonymous"]},
                            "joinedAt": _TIME,
                        },
                    },
                },
            },
        },
        "DisconnectRequest": {
            "oneOf": [
                {
                    "type": "object",
                    "required": ["userId"],
                    "additionalProperties": False,
                    "properties": {"userId": _ID_FIELD},
                },
                {
                    "type": "object",
                    "required": ["socketId"],
                    "additionalProperties": False,
                    "properties": {"socketId": _ID_FIELD},
                },
            ],
        },
        "Disconnected": {
            "type": "object",
            "required": ["disconnected"],
            "additionalProperties": False,
            "properties": {
                "disconnected": {
                    **_COUNT,
                    "description": "Sockets disconnected, over every process that answered.",
                }
            },
        },
        "WebhookFailure": {
            "type": "object",
            "required": [
                "id",
                "messageId",
                "channelId",
                "channelName",
                "eventName",
                "url",
                "status",
                "attempts",
                "lastStatus",
                "lastError",
                "nextAttemptAt",
                "createdAt",
                "updatedAt",
            ],
            "additionalProperties": False,
            "properties": {
                "id": {"type": "integer", "description": "The delivery's id."},
                "messageId": _UUID,
                "channelId": {
                    "type": ["string", "null"],
                    "format": "uuid",
                    "description": "`null` once the channel is deleted.",
                },
                "channelName": {"type": "string"},
                "eventName": {"type": "string"},
                "url": {
                    "type": "string",
                    "description": ("The webhook URL without user information, query or fragment."),
                },
                "status": {
                    "type": "string",
                    "enum": ["retrying", "failed"],
                    "description": (
                        "`retrying`: the last attempt failed and another is due at"
                        " `nextAttemptAt`; `failed`: no more attempts will be made."
                    ),
                },
                "attempts": _COUNT,
                "lastStatus": {
                    "type": ["integer", "null"],
                    "description": "The HTTP status of the last answer; null when none came.",
                },
                "lastError": _NULLABLE_STRING,
                "nextAttemptAt": {"type": ["string", "null"], "format": "date-time"},
                "createdAt": _TIME,
                "updatedAt": _TIME,
            },
        },
        "Policy": {
            "type": "object",
            "required": [
                "policyName",
                "tableName",
                "command",
                "roles",
                "using",
                "withCheck",
            ],
            "additionalProperties": False,
            "properties": {
                "policyName": {"type": "string"},
                "tableName": {
                    "type": "string",
                    "enum": ["realtime_channels", "realtime_messages"],
                },
                "command": {
                    "type": "string",
                    "enum": ["ALL", "SELECT", "INSERT", "UPDATE", "DELETE"],
                },
                "roles": {"type": "array", "items": {"type": "string"}},
                "using": _NULLABLE_STRING,
                "withCheck": _NULLABLE_STRING,
            },
        },
        "Permissions": {
            "type": "object",
            "required": ["subscribe", "publish"],
            "additionalProperties": False,
            "properties": {
                action: {
                    "type": "object",
                    "required": ["policies"],
                    "additionalProperties": False,
                    "properties": {"policies": {"type": "array", "items": _ref("Policy")}},
                }
                for action in ("subscribe", "publish")
            },
        },
    }


def _paths() -> dict[str, Any]:
    channel_id_filter = {
        "name": "channelId",
        "in": "query",
        "required": False,
        "description": "Only messages of this channel.",
        "schema": _UUID,
    }
    return {
        "/channels": {
            "get": {
                "operationId": "listChannels",
                "summary": "All channels, newest first",
                "responses": _responses(
                    (
                        "200",
                        _json(
                            {"type": "array", "items": _ref("Channel")},
                            "The channels",
                            [CHANNEL_EXAMPLE],
                        ),
                    )
                ),
            },
            "post": {
                "operationId": "createChannel",
                "summary": "Create a channel",
                "requestBody": _request("ChannelCreation", CHANNEL_CREATION_EXAMPLE),
                "responses": _responses(
                    ("201", _json(_ref("Channel"), "The new channel", CHANNEL_EXAMPLE)),
                    "400",
                    "409",
                ),
            },
        },
        "/channels/{id}": {
            "parameters": [_CHANNEL_ID_PARAMETER],
            "get": {
                "operationId": "getChannel",
                "summary": "One channel",
                "responses": _responses(
                    ("200", _json(_ref("Channel"), "The channel", CHANNEL_EXAMPLE)),
                    "400",
                    "404",
                ),
            },
            "put": {
                "operationId": "updateChannel",
                "summary": "Change some fields of a channel",
                "requestBody": _request("ChannelUpdate", CHANNEL_UPDATE_EXAMPLE),
                "responses": _responses(
                    ("200", _json(_ref("Channel"), "The channel as changed")),
                    "400",
                    "404",
                    "409",
                ),
            },
            "delete": {
                "operationId": "deleteChannel",
                "summary": "Delete a channel (its messages stay, with channelId null)",
                "responses": _responses(
                    (
                        "200",
                        _json(_ref("Deleted"), "Deleted", {"message": "Channel deleted"}),
                    ),
                    "400",
                    "404",
                ),
            },
        },
        "/messages": {
            "get": {
                "operationId": "listMessages",
                "summary": "Message history, newest first",
                "parameters": [
                    channel_id_filter,
                    {
                        "name": "eventName",
                        "in": "query",
                        "required": False,
                        "schema": {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": validation.MAX_EVENT_LENGTH,
                        },
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {
                            "type": "integer",
                            "minimum": validation.MIN_LIMIT,
                            "maximum": validation.MAX_LIMIT,
                            "default": validation.DEFAULT_LIMIT,
                        },
                    },
                    {
                        "name": "offset",
                        "in": "query",
                        "required": False,
                        "schema": {
                            "type": "integer",
                            "minimum": 0,
                            "maximum": validation.MAX_OFFSET,
                            "default": 0,
                        },
                    },
                ],
                "responses": _responses(
                    (
                        "200",
                        _json(
                            {"type": "array", "items": _ref("Message")},
                            "The messages",
                            [MESSAGE_EXAMPLE],
                        ),
                    ),
                    "400",
                ),
            },
            "post": {
                "operationId": "publishMessage",
                "summary": "Publish a message as the system",
                "description": (
                    "Stored, then delivered to subscribed sockets and to the channel's"
                    " webhooks. 404 when no enabled channel owns the name."
                ),
                "requestBody": _request("Publication", PUBLICATION_EXAMPLE),
                "responses": _responses(
                    (
                        "201",
                        _json(_ref("Message"), "The stored message", MESSAGE_EXAMPLE),
                    ),
                    "400",
                    "404",
                ),
            },
        },
        "/messages/stats": {
            "get": {
                "operationId": "messageStats",
                "summary": "Message counts, webhook delivery rate and the 10 most frequent events",
                "parameters": [
                    channel_id_filter,
                    {
                        "name": "since",
                        "in": "query",
                        "required": False,
                        "description": "Only messages created at or after this time.",
                        "schema": _TIME,
                    },
                ],
                "responses": _responses(
                    (
                        "200",
                        _json(_ref("MessageStats"), "The statistics", STATS_EXAMPLE),
                    ),
                    "400",
                ),
            },
        },
        "/config": {
            "get": {
                "operationId": "getConfig",
                "summary": "Message retention, shared by every process of the database",
                "responses": _responses(
                    ("200", _json(_ref("RetentionConfig"), "The retention", RETENTION_EXAMPLE))
                ),
            },
            "patch": {
                "operationId": "updateConfig",
                "summary": "Set the message retention",
                "requestBody": _request("RetentionConfig", RETENTION_EXAMPLE),
                "responses": _responses(
                    ("200", _json(_ref("Updated"), "Updated", RETENTION_UPDATED)),
                    "400",
                ),
            },
        },
        "/presence": {
            "get": {
                "operationId": "presence",
                "summary": "The members present in a channel (on the process answering)",
                "parameters": [
                    {
                        "name": "channel",
                        "in": "query",
                        "required": True,
                        "description": "A channel name, or a channel's pattern.",
                        "schema": {
                            "type": "string",
                            "pattern": CHANNEL_PATTERN_REGEX,
                            "minLength": 1,
                            "maxLength": 255,
                        },
                    }
                ],
                "responses": _responses(
                    ("200", _json(_ref("Presence"), "The members", PRESENCE_EXAMPLE)),
                    "400",
                ),
            },
        },
        "/disconnect": {
            "post": {
                "operationId": "disconnect",
                "summary": "Disconnect a user's sockets, or one socket, on every process",
                "description": (
                    "Each socket gets a Socket.IO DISCONNECT, after which clients do not"
                    " reconnect by themselves."
                ),
                "requestBody": _request("DisconnectRequest", {"userId": "user-123"}),
                "responses": _responses(
                    ("200", _json(_ref("Disconnected"), "Done", {"disconnected": 2})),
                    "400",
                ),
            },
        },
        "/webhooks/failures": {
            "get": {
                "operationId": "webhookFailures",
                "summary": "Recent failed webhook deliveries, newest first",
                "description": (
                    "Deliveries that failed for good, and those whose last attempt"
                    " failed and which wait to be retried. Finished deliveries are"
                    " pruned after a while, so this shows recent ones only."
                ),
                "parameters": [
                    {**channel_id_filter, "description": "Only deliveries of this channel."},
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {
                            "type": "integer",
                            "minimum": validation.MIN_LIMIT,
                            "maximum": validation.MAX_LIMIT,
                            "default": validation.DEFAULT_LIMIT,
                        },
                    },
                ],
                "responses": _responses(
                    (
                        "200",
                        _json(
                            {"type": "array", "items": _ref("WebhookFailure")},
                            "The failures",
                            [WEBHOOK_FAILURE_EXAMPLE],
                        ),
                    ),
                    "400",
                ),
            },
        },
        "/permissions": {
            "get": {
                "operationId": "permissions",
                "summary": "Row-level security policies deciding subscribe and publish",
                "responses": _responses(
                    (
                        "200",
                        _json(_ref("Permissions"), "The policies", PERMISSIONS_EXAMPLE),
                    )
                ),
            },
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "responses": _responses(("200", _json({"type": "object"}, "The OpenAPI document"))),
            },
        },
    }


@lru_cache(maxsize=1)
def _document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "realtimed admin API",
            "version": "1",
            "description": (
                "Channels, message history and statistics, publishing from backends,"
                " and the row-level security policies of realtime messaging."
                " Every route takes an admin credential: the API key"
                " (as a bearer token or in x-api-key) or a JWT with role project_admin."
            ),
        },
        "servers": [{"url": "/api/realtime"}],
        "security": [{"bearer": []}, {"apiKey": []}],
        "paths": _paths(),
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The API key, or a JWT (HS256) with role project_admin.",
                },
                "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
            },
            "schemas": _schemas(),
        },
    }


def openapi_document() -> dict[str, Any]:
    """
    The OpenAPI document, as a fresh JSON-able value.
    """
    return copy.deepcopy(_document())
