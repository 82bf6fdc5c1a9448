"""
The python-socketio peer: an asyncio + aiohttp Socket.IO server doing the same
job as realtimed's channels, minus storage and row-level security.

    REALTIME_SUBSCRIBE {channel}                 -> join the room, ack {ok, channel}
    REALTIME_PUBLISH   {channel, event, payload} -> emit ``event`` to the room with
        {channel, event, messageId, senderType, senderId, payload, createdAt},
        ack {ok, channel, messageId}

Clients authenticate with CONNECT auth ``{"token": <HS256 JWT>}``, checked
against ``BENCH_JWT_SECRET`` as realtimed checks it.

Usage: python pysio_server.py PORT   (listens on 127.0.0.1 only)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import socketio
from aiohttp import web

SECRET = os.environ.get("BENCH_JWT_SECRET", "").encode()
CHANNEL = re.compile(r"^[A-Za-z0-9_\-:.@]{1,255}$")

sio = socketio.AsyncServer(async_mode="aiohttp", cors_allowed_origins=[])
app = web.Application()
sio.attach(app)

# sid -> the subject of the token it connected with.
subjects: dict[str, str | None] = {}


def _b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def verify_token(token: object) -> dict[str, Any] | None:
    if not isinstance(token, str) or token.count(".") != 2:
        return None
    header, body, signature = token.split(".")
    expected = hmac.new(SECRET, f"{header}.{body}".encode(), hashlib.sha256).digest()
    try:
        if not hmac.compare_digest(_b64decode(signature), expected):
            return None
        if json.loads(_b64decode(header)).get("alg") != "HS256":
            return None
        claims = json.loads(_b64decode(body))
    except ValueError:
        return None
    exp = claims.get("exp")
    if isinstance(exp, (int, float)) and exp < time.time():
        return None
    return claims


def failure(channel: object, code: str, message: str) -> dict[str, Any]:
    return {
        "ok": False,
        "channel": channel,
        "error": {"code": code, "message": message},
    }


@sio.event
async def connect(sid: str, environ: dict[str, Any], auth: object) -> None:
    claims = verify_token(auth.get("token") if isinstance(auth, dict) else None)
    if claims is None:
        raise socketio.exceptions.ConnectionRefusedError("Invalid token")
    sub = claims.get("sub")
    subjects[sid] = None if sub is None else str(sub)


@sio.event
async def disconnect(sid: str, *args: object) -> None:
    subjects.pop(sid, None)


@sio.on("REALTIME_SUBSCRIBE")
async def subscribe(sid: str, data: object) -> dict[str, Any]:
    channel = data.get("channel") if isinstance(data, dict) else None
    if not isinstance(channel, str) or not CHANNEL.match(channel):
        return failure(channel, "INVALID_INPUT", "channel: Invalid channel name")
    await sio.enter_room(sid, channel)
    return {"ok": True, "channel": channel}


@sio.on("REALTIME_PUBLISH")
async def publish(sid: str, data: object) -> dict[str, Any]:
    if not isinstance(data, dict):
        return failure(None, "INVALID_INPUT", "Invalid publish")
    channel = data.get("channel")
    event = data.get("event")
    if not isinstance(channel, str) or not isinstance(event, str) or not event:
        return failure(channel, "INVALID_INPUT", "Invalid publish")
    if channel not in sio.rooms(sid):
        return failure(channel, "REALTIME_NOT_SUBSCRIBED", "Not subscribed")
    message_id = str(uuid.uuid4())
    created = datetime.now(UTC)
    message = {
        "channel": channel,
        "event": event,
        "messageId": message_id,
        "senderType": "user",
        "senderId": subjects.get(sid),
        "payload": data.get("payload", {}),
        "createdAt": created.strftime("%Y-%m-%dT%H:%M:%S.")
        + f"{created.microsecond // 1000:03d}Z",
    }
    await sio.emit(event, message, room=channel)
    return {"ok": True, "channel": channel, "messageId": message_id}


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    web.run_app(app, host="127.0.0.1", port=port, print=print, access_log=None)


if __name__ == "__main__":
    main()
