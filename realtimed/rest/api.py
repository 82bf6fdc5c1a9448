"""
The admin REST API: channels, message history and statistics, publishing
from backends, message retention, presence and disconnecting sockets,
recent webhook failures, and the row-level security policies that govern
subscribing and publishing.

`AdminAPI.resource` is mounted at ``/api/realtime/``; the routes below are
relative to it.  Every route, the OpenAPI document included, takes an admin
credential: the API key (``Authorization: Bearer <key>`` or
``x-api-key: <key>``) or a JWT whose role is ``project_admin``.

Requests and responses are JSON.  Failures are
``{"error": CODE, "message": ..., "statusCode": N}``:

- 400 ``INVALID_INPUT``: the request is malformed (see `realtimed.rest.validation`);
- 401 ``UNAUTHORIZED``: no credential, or one that is not valid;
- 403 ``FORBIDDEN``: a valid credential without admin rights;
- 404 ``NOT_FOUND``: no such channel, no enabled channel owning a published
  name, or no such route;
- 405 ``METHOD_NOT_ALLOWED``: a route that exists, with another method;
- 409 ``ALREADY_EXISTS``: a channel with that pattern exists;
- 413 ``PAYLOAD_TOO_LARGE``: a body over ``--max-body`` (answered by the
  site, `realtimed.web.RealtimeSite`, before the body is read);
- 500 ``INTERNAL_ERROR``: anything unexpected (logged, never described);
- 503 ``SERVICE_UNAVAILABLE``: too many statements wait for the database.
"""

from __future__ import annotations

import functools
import hmac
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ClassVar, TypeVar, cast

from attrs import define, frozen
from klein import Klein
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import IResource
from twisted.web.server import Request
from werkzeug.exceptions import MethodNotAllowed, NotFound

from realtimed.auth import (
    AuthenticationError,
    Keys,
    Principal,
    authenticate,
    bearer_credential,
)
from realtimed.control import AdminControl, DisconnectTarget
from realtimed.rest import validation
from realtimed.rest.openapi import openapi_document
from realtimed.rest.validation import InvalidInput
from realtimed.store.pool import IQueries, PoolBusy
from realtimed.webhooks.policy import redact_url

log = Logger()

T = TypeVar("T")

UNIQUE_VIOLATION = "23505"


@frozen
class APIError(Exception):
    """
    A failure to report to the client as it is.
    """

    status: int
    code: str
    message: str

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message, "statusCode": self.status}


def channel_not_found() -> APIError:
    return APIError(404, "NOT_FOUND", "Channel not found")


def strip_outer_parentheses(expression: str) -> str:
    """
    C{expression} without the one pair of parentheses that PostgreSQL puts
    around a policy's expression in ``pg_policies`` (``(enabled = true)``),
    when one pair encloses all of it; otherwise C{expression} unchanged.
    Parentheses inside quoted literals and identifiers are not counted.
    """
    text = expression.strip()
    if len(text) < 2 or text[0] != "(" or text[-1] != ")":
        return expression
    depth = 0
    quote: str | None = None
    for index, char in enumerate(text):
        if quote is not None:
            if char == quote:
                quote = None
            continue
        if char in ("'", '"'):
            quote = char
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0 and index != len(text) - 1:
                return expression
    if depth != 0 or quote is not None:
        return expression
    return text[1:-1].strip()


_CHANNEL_COLUMNS = """
    c.id::text, c.pattern::text, c.description, c.webhook_urls, c.enabled,
    realtime.rfc3339(c.created_at), realtime.rfc3339(c.updated_at)
"""

_MESSAGE_COLUMNS = """
    m.id::text, m.event_name, m.channel_id::text, m.channel_name, m.payload,
    m.sender_type, m.sender_id, realtime.ws_audience_count(m), m.wh_audience_count,
    m.wh_delivered_count, realtime.rfc3339(m.created_at)
"""


def _channel_json(row: Sequence[Any]) -> dict[str, Any]:
    id_, pattern, description, webhook_urls, enabled, created_at, updated_at = row
    return {
        "id": id_,
        "pattern": pattern,
        "description": description,
        "webhookUrls": list(webhook_urls) if webhook_urls else None,
        "enabled": enabled,
        "createdAt": created_at,
        "updatedAt": updated_at,
    }


def _message_json(row: Sequence[Any]) -> dict[str, Any]:
    (
        id_,
        event_name,
        channel_id,
        channel_name,
        payload,
        sender_type,
        sender_id,
        ws_audience,
        wh_audience,
        wh_delivered,
        created_at,
    ) = row
    return {
        "id": id_,
        "eventName": event_name,
        "channelId": channel_id,
        "channelName": channel_name,
        "payload": payload,
        "senderType": sender_type,
        "senderId": sender_id,
        "wsAudienceCount": ws_audience,
        "whAudienceCount": wh_audience,
        "whDeliveredCount": wh_delivered,
        "createdAt": created_at,
    }


_FAILURE_COLUMNS = """
    d.id, d.message_id::text, m.channel_id::text, m.channel_name, m.event_name, d.url,
    d.status, d.attempts, d.last_status, d.last_error,
    CASE WHEN d.status = 'pending' THEN realtime.rfc3339(d.next_attempt_at) END,
    realtime.rfc3339(d.created_at), realtime.rfc3339(d.updated_at)
"""

#: A delivery that failed for good, or whose last attempt failed and which
#: waits to be tried again.  (A first attempt still in flight has no
#: outcome yet, and is not a failure.)
_FAILED_DELIVERY = (
    "(d.status = 'failed' OR (d.status = 'pending'"
    " AND (d.last_status IS NOT NULL OR d.last_error IS NOT NULL)))"
)


def _failure_json(row: Sequence[Any]) -> dict[str, Any]:
    (
        id_,
        message_id,
        channel_id,
        channel_name,
        event_name,
        url,
        status,
        attempts,
        last_status,
        last_error,
        next_attempt_at,
        created_at,
        updated_at,
    ) = row
    return {
        "id": int(id_),
        "messageId": message_id,
        "channelId": channel_id,
        "channelName": channel_name,
        "eventName": event_name,
        # As in the log: no user information, query or fragment, where
        # receivers' secrets often are.
        "url": redact_url(url),
        "status": "retrying" if status == "pending" else "failed",
        "attempts": attempts,
        "lastStatus": last_status,
        "lastError": last_error,
        "nextAttemptAt": next_attempt_at,
        "createdAt": created_at,
        "updatedAt": updated_at,
    }


def _pgcode(failure: BaseException) -> str | None:
    return getattr(failure, "pgcode", None)


Handler = Callable[..., Awaitable[tuple[int, Any]]]


def _admin_route(handler: Handler) -> Callable[..., Deferred[bytes]]:
    """
    Wrap a route: authenticate the admin, run C{handler}, and write what it
    returns (a status and a JSON value) or the error it raises.
    """

    @functools.wraps(handler)
    def route(
        self: AdminAPI, request: Request, *args: Any, **kwargs: Any
    ) -> Deferred[bytes]:
        async def respond() -> bytes:
            self._require_admin(request)
            status, body = await handler(self, request, *args, **kwargs)
            return _write_json(request, status, body)

        gone = went_away(request)
        d = Deferred.fromCoroutine(respond())
        d.addErrback(self._failed, request, gone)
        return d

    return route


def went_away(request: Request) -> Callable[[], bool]:
    """
    A function that says whether the client of C{request} has gone away
    before its answer was finished.
    """
    gone = False

    def lost(_: Failure) -> None:
        nonlocal gone
        gone = True

    request.notifyFinish().addErrback(lost)
    return lambda: gone


def _write_json(request: Request, status: int, body: Any) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-store")
    return json.dumps(body, ensure_ascii=False, allow_nan=False).encode("utf-8")


def _path(request: Request) -> str:
    return bytes(request.path).decode("utf-8", "replace")


def _query(request: Request) -> dict[str, list[str]]:
    """
    The query parameters, decoded; a value that is not UTF-8 is a problem
    of its parameter.
    """
    decoded: dict[str, list[str]] = {}
    problems = []
    args: dict[bytes, list[bytes]] = request.args or {}
    for raw_name, raw_values in args.items():
        name = raw_name.decode("utf-8", "replace")
        try:
            decoded[name] = [v.decode("utf-8") for v in raw_values]
        except UnicodeDecodeError:
            problems.append(f"{name}: Invalid UTF-8")
    if problems:
        raise InvalidInput(problems)
    return decoded


def _body(request: Request) -> Any:
    content = request.content
    raw = content.read() if content is not None else b""
    return validation.parse_json_body(raw)


@define(slots=False)
class AdminAPI:
    """
    The admin REST API over the realtime schema.

    @ivar _pool: Where queries run.
    @ivar _keys: What admin credentials are checked against.
    @ivar _clock: The time, for token expiry.
    @ivar _control: Presence and disconnects on this process and the
        others; by default, with no sockets of its own.
    """

    app: ClassVar[Klein] = Klein()
    # A path with doubled slashes (``/channels//x``) is not a route: werkzeug
    # would otherwise answer it with an HTML redirect to the merged path.
    app.url_map.merge_slashes = False

    _pool: IQueries
    _keys: Keys
    _clock: IReactorTime
    _control: AdminControl | None = None

    def __attrs_post_init__(self) -> None:
        if self._control is None:
            self._control = AdminControl(self._pool, self._clock)

    def resource(self) -> IResource:
        """
        The resource to mount at ``/api/realtime/``.
        """
        return cast(IResource, self.app.resource())

    # -- plumbing ----------------------------------------------------------

    def _require_admin(self, request: Request) -> Principal:
        return require_admin(request, self._keys, self._clock.seconds())

    def _failed(self, failure: Failure, request: Request, gone: Callable[[], bool]) -> bytes:
        if failure.check(CancelledError) and gone():
            # The client went away and the work for it was cancelled.
            return b""
        error = failure.value
        if isinstance(error, InvalidInput):
            error = APIError(400, "INVALID_INPUT", error.message)
        elif isinstance(error, PoolBusy):
            request.setHeader(b"Retry-After", b"1")
            error = APIError(503, "SERVICE_UNAVAILABLE", "The database is busy; try again")
        if not isinstance(error, APIError):
            log.failure(
                "Admin API request failed: {method} {path}",
                failure,
                method=bytes(request.method).decode("ascii", "replace"),
                path=_path(request),
            )
            error = APIError(500, "INTERNAL_ERROR", "Internal server error")
        return _write_json(request, error.status, error.body())

    @app.handle_errors(NotFound)  # type: ignore[arg-type]
    def _no_route(self, request: Request, failure: Failure) -> bytes:
        return _write_json(
            request, 404, APIError(404, "NOT_FOUND", "Route not found").body()
        )

    @app.handle_errors(MethodNotAllowed)  # type: ignore[arg-type]
    def _wrong_method(self, request: Request, failure: Failure) -> bytes:
        allowed = getattr(failure.value, "valid_methods", None) or []
        if allowed:
            request.setHeader(b"Allow", ", ".join(sorted(allowed)).encode("ascii"))
        error = APIError(405, "METHOD_NOT_ALLOWED", "Method not allowed")
        return _write_json(request, 405, error.body())

    # -- the document ------------------------------------------------------

    @app.route("/openapi.json", methods=["GET"])
    @_admin_route
    async def openapi(self, request: Request) -> tuple[int, Any]:
        return 200, openapi_document()

    # -- channels ----------------------------------------------------------

    @app.route("/channels", methods=["GET"])
    @_admin_route
    async def list_channels(self, request: Request) -> tuple[int, Any]:
        rows = await self._pool.runQuery(
            f"SELECT {_CHANNEL_COLUMNS} FROM realtime.channels c"
            " ORDER BY c.created_at DESC, c.id DESC"
        )
        return 200, [_channel_json(row) for row in rows]

    @app.route("/channels", methods=["POST"])
    @_admin_route
    async def create_channel(self, request: Request) -> tuple[int, Any]:
        creation = validation.channel_creation(_body(request))
        try:
            rows = await self._pool.runQuery(
                "INSERT INTO realtime.channels AS c"
                " (pattern, description, webhook_urls, enabled)"
                " VALUES (%s, %s, %s::text[], %s)"
                f" RETURNING {_CHANNEL_COLUMNS}",
                (
                    creation.pattern,
                    creation.description,
                    list(creation.webhook_urls) if creation.webhook_urls else None,
                    creation.enabled,
                ),
            )
        except Exception as e:
            if _pgcode(e) == UNIQUE_VIOLATION:
                raise _duplicate(creation.pattern) from None
            raise
        log.info(
            "Channel {channel_id} created for pattern {pattern}",
            channel_id=rows[0][0],
            pattern=creation.pattern,
        )
        return 201, _channel_json(rows[0])

    @app.route("/channels/<string:id>", methods=["GET"])
    @_admin_route
    async def get_channel(self, request: Request, id: str) -> tuple[int, Any]:
        channel_id = validation.channel_id(id)
        rows = await self._pool.runQuery(
            f"SELECT {_CHANNEL_COLUMNS} FROM realtime.channels c WHERE c.id = %s",
            (channel_id,),
        )
        if not rows:
            raise channel_not_found()
        return 200, _channel_json(rows[0])

    @app.route("/channels/<string:id>", methods=["PUT"])
    @_admin_route
    async def update_channel(self, request: Request, id: str) -> tuple[int, Any]:
        channel_id = validation.channel_id(id)
        update = validation.channel_update(_body(request))
        changes = update.changes()
        # Column names come from the fixed set ChannelUpdate knows, never
        # from the request; values are parameters.
        assignments = [
            f"{column} = %s::text[]" if column == "webhook_urls" else f"{column} = %s"
            for column in changes
        ]
        values = [
            list(value) if column == "webhook_urls" and value else value
            for column, value in changes.items()
        ]
        try:
            rows = await self._pool.runQuery(
                "UPDATE realtime.channels AS c SET "
                + ", ".join([*assignments, "updated_at = now()"])
                + f" WHERE c.id = %s RETURNING {_CHANNEL_COLUMNS}",
                (*values, channel_id),
            )
        except Exception as e:
            if _pgcode(e) == UNIQUE_VIOLATION:
                raise _duplicate(str(update.pattern)) from None
            raise
        if not rows:
            raise channel_not_found()
        log.info(
            "Channel {channel_id} updated: {fields}",
            channel_id=channel_id,
            fields=sorted(changes),
        )
        return 200, _channel_json(rows[0])

    @app.route("/channels/<string:id>", methods=["DELETE"])
    @_admin_route
    async def delete_channel(self, request: Request, id: str) -> tuple[int, Any]:
        channel_id = validation.channel_id(id)
        rows = await self._pool.runQuery(
            "DELETE FROM realtime.channels WHERE id = %s RETURNING id", (channel_id,)
        )
        if not rows:
            raise channel_not_found()
        log.info("Channel {channel_id} deleted", channel_id=channel_id)
        return 200, {"message": "Channel deleted"}

    # -- messages ----------------------------------------------------------

    @app.route("/messages", methods=["GET"])
    @_admin_route
    async def list_messages(self, request: Request) -> tuple[int, Any]:
        query = validation.message_query(_query(request))
        conditions, params = _message_filters(
            query.channel_id, event_name=query.event_name
        )
        rows = await self._pool.runQuery(
            f"SELECT {_MESSAGE_COLUMNS} FROM realtime.messages m"
            f" WHERE {conditions}"
            " ORDER BY m.created_at DESC, m.id DESC LIMIT %s OFFSET %s",
            (*params, query.limit, query.offset),
        )
        return 200, [_message_json(row) for row in rows]

    @app.route("/messages", methods=["POST"])
    @_admin_route
    async def publish(self, request: Request) -> tuple[int, Any]:
        message = validation.publication(_body(request))
        rows = await self._pool.runInteraction(_publish, message)
        if not rows:
            raise APIError(
                404, "NOT_FOUND", f"No enabled channel owns the name {message.channel}"
            )
        log.info(
            "Message {message_id} published on {channel} as {event}",
            message_id=rows[0][0],
            channel=message.channel,
            event=message.event,
        )
        return 201, _message_json(rows[0])

    @app.route("/messages/stats", methods=["GET"])
    @_admin_route
    async def message_stats(self, request: Request) -> tuple[int, Any]:
        query = validation.stats_query(_query(request))
        conditions, params = _message_filters(query.channel_id, since=query.since)
        # One statement, so the numbers come from one snapshot.
        rows = await self._pool.runQuery(
            "WITH m AS ("
            " SELECT m.event_name, m.wh_audience_count, m.wh_delivered_count"
            f" FROM realtime.messages m WHERE {conditions}"
            "), top AS ("
            " SELECT event_name, count(*) AS n FROM m"
            " GROUP BY event_name ORDER BY n DESC, event_name LIMIT 10"
            ")"
            " SELECT (SELECT count(*) FROM m),"
            " (SELECT coalesce(sum(wh_audience_count), 0) FROM m),"
            " (SELECT coalesce(sum(wh_delivered_count), 0) FROM m),"
            " (SELECT coalesce(json_agg(json_build_array(event_name, n)"
            "  ORDER BY n DESC, event_name), '[]') FROM top),"
            " (SELECT retention_days FROM realtime.config)",
            params,
        )
        total, audience, delivered, top, retention_days = rows[0]
        return 200, {
            "totalMessages": int(total),
            "whDeliveryRate": float(delivered) / float(audience) if audience else 0,
            "topEvents": [{"eventName": name, "count": int(n)} for name, n in top],
            "retentionDays": retention_days,
        }

    # -- webhooks ------------------------------------------------------------

    @app.route("/webhooks/failures", methods=["GET"])
    @_admin_route
    async def webhook_failures(self, request: Request) -> tuple[int, Any]:
        query = validation.failures_query(_query(request))
        conditions = [_FAILED_DELIVERY]
        params: list[Any] = []
        if query.channel_id is not None:
            conditions.append("m.channel_id = %s")
            params.append(query.channel_id)
        rows = await self._pool.runQuery(
            f"SELECT {_FAILURE_COLUMNS}"
            " FROM realtime.webhook_deliveries d"
            " JOIN realtime.messages m ON m.id = d.message_id"
            f" WHERE {' AND '.join(conditions)}"
            " ORDER BY d.updated_at DESC, d.id DESC LIMIT %s",
            (*params, query.limit),
        )
        return 200, [_failure_json(row) for row in rows]

    # -- retention -----------------------------------------------------------

    @app.route("/config", methods=["GET"])
    @_admin_route
    async def get_config(self, request: Request) -> tuple[int, Any]:
        rows = await self._pool.runQuery("SELECT retention_days FROM realtime.config")
        return 200, {"retentionDays": rows[0][0] if rows else None}

    @app.route("/config", methods=["PATCH"])
    @_admin_route
    async def update_config(self, request: Request) -> tuple[int, Any]:
        config = validation.retention_config(_body(request))
        await self._pool.runOperation(
            "UPDATE realtime.config SET retention_days = %s, updated_at = now()",
            (config.retention_days,),
        )
        log.info(
            "Message retention set to {days} days",
            days="unlimited" if config.retention_days is None else config.retention_days,
        )
        return 200, {"message": "Retention config updated successfully"}

    # -- admin control -----------------------------------------------------

    @app.route("/presence", methods=["GET"])
    @_admin_route
    async def presence(self, request: Request) -> tuple[int, Any]:
        channel = validation.presence_query(_query(request))
        assert self._control is not None
        return 200, {"channel": channel, "members": self._control.presence(channel)}

    @app.route("/disconnect", methods=["POST"])
    @_admin_route
    async def disconnect(self, request: Request) -> tuple[int, Any]:
        user_id, socket_id = validation.disconnect_target(_body(request))
        assert self._control is not None
        target = DisconnectTarget(user_id, socket_id)
        count = await self._control.disconnect(target)
        log.info(
            "Disconnected {count} sockets of {target} at an admin's request",
            count=count,
            target=target.to_json(),
        )
        return 200, {"disconnected": count}

    # -- permissions -------------------------------------------------------

    @app.route("/permissions", methods=["GET"])
    @_admin_route
    async def permissions(self, request: Request) -> tuple[int, Any]:
        rows = await self._pool.runQuery(
            "SELECT tablename::text, policyname::text, cmd, roles::text[], qual, with_check"
            " FROM pg_catalog.pg_policies"
            " WHERE schemaname = 'realtime' AND tablename IN ('channels', 'messages')"
            " ORDER BY tablename, policyname"
        )
        result: dict[str, Any] = {
            "subscribe": {"policies": []},
            "publish": {"policies": []},
        }
        for table, name, command, roles, using, with_check in rows:
            action = "subscribe" if table == "channels" else "publish"
            result[action]["policies"].append(
                {
                    "policyName": name,
                    "tableName": f"realtime_{table}",
                    "command": command,
                    "roles": list(roles or []),
                    "using": None if using is None else strip_outer_parentheses(using),
                    "withCheck": (
                        None
                        if with_check is None
                        else strip_outer_parentheses(with_check)
                    ),
                }
            )
        return 200, result


def require_admin(request: Request, keys: Keys, now: float) -> Principal:
    """
    The admin making C{request}.  Every credential presented must be
    valid: a request with a bad ``Authorization`` header is refused even if
    its ``x-api-key`` is right, and the other way round.

    @raise APIError: 401 without a valid credential, 403 for a valid one
        that is not an admin's.
    """
    authorization = _header(request, b"authorization")
    api_key = _header(request, b"x-api-key")
    try:
        if api_key is not None and not hmac.compare_digest(
            api_key.encode("utf-8", "replace"), keys.api_key.encode("utf-8")
        ):
            raise AuthenticationError("Invalid API key")
        if authorization is not None:
            credential = bearer_credential(authorization)
            if credential is None:
                raise AuthenticationError(
                    "Invalid Authorization header: expected Bearer <credential>"
                )
        else:
            credential = api_key
        principal = authenticate(credential, keys, now)
    except AuthenticationError as e:
        request.setHeader(b"WWW-Authenticate", b'Bearer realm="realtime"')
        raise APIError(401, "UNAUTHORIZED", str(e)) from None
    if not principal.is_admin:
        raise APIError(403, "FORBIDDEN", "Admin access required")
    return principal


def write_error(request: Request, error: APIError) -> bytes:
    """
    Answer C{request} with C{error}; returns the body.
    """
    return _write_json(request, error.status, error.body())


def _header(request: Request, name: bytes) -> str | None:
    value = request.getHeader(name)
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return str(value)


def _duplicate(pattern: str) -> APIError:
    return APIError(
        409, "ALREADY_EXISTS", f"A channel with pattern {pattern} already exists"
    )


def _message_filters(
    channel_id: str | None,
    event_name: str | None = None,
    since: Any = None,
) -> tuple[str, tuple[Any, ...]]:
    """
    A C{WHERE} condition on ``realtime.messages m`` and its parameters.
    """
    conditions = ["true"]
    params: list[Any] = []
    if channel_id is not None:
        conditions.append("m.channel_id = %s")
        params.append(channel_id)
    if event_name is not None:
        conditions.append("m.event_name = %s")
        params.append(event_name)
    if since is not None:
        conditions.append("m.created_at >= %s")
        params.append(since)
    return " AND ".join(conditions), tuple(params)


def _publish(cursor: Any, message: validation.Publication) -> Deferred[list[Any]]:
    """
    Publish C{message} as the system and read it back, in one transaction.

    @return: A Deferred firing with the stored message's row, or no rows
        when no enabled channel owns the name.
    """

    async def run() -> list[Any]:
        await cursor.execute(
            "SELECT realtime.publish(%s, %s, %s::jsonb)",
            (
                message.channel,
                message.event,
                json.dumps(message.payload, ensure_ascii=False, allow_nan=False),
            ),
        )
        (message_id,) = cursor.fetchone()
        if message_id is None:
            return []
        await cursor.execute(
            f"SELECT {_MESSAGE_COLUMNS} FROM realtime.messages m WHERE m.id = %s",
            (message_id,),
        )
        return list(cursor.fetchall())

    return Deferred.fromCoroutine(run())
