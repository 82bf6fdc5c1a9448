#!/usr/bin/env python3
"""
Webhook deliveries per second to local receivers.

    bench/webhooks.py [--messages N] [--receivers K] [--postgres URL]
                      [--max-in-flight M] [--per-host P] [--verify]

Creates a throw-away database on the PostgreSQL server at ``--postgres``
(default postgresql://postgres@127.0.0.1:5432/postgres), applies realtimed's
migrations, starts K receivers (twisted.web on 127.0.0.1, answering 204) and
one channel whose webhook URLs are those receivers, publishes N messages in
one transaction with ``realtime.publish``, then starts the delivery service
and measures from its start until the outbox holds no pending delivery.
Receivers and service share one process and one reactor, so the figure is
for one core doing both sides.  The database is dropped at the end.

With ``--verify``, each receiver checks every signature with the
``standardwebhooks`` package (slower).
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import task
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from realtimed.signing import encode_webhook_secret
from realtimed.store.migrations import migrate
from realtimed.webhooks import WebhookService

SECRET = encode_webhook_secret(b"benchmark-webhook-key-0123456789")


class Receiver(Resource):
    isLeaf = True

    def __init__(self, verify: bool) -> None:
        super().__init__()
        self.count = 0
        self.ids: set[str] = set()
        self.webhook: Any = None
        if verify:
            from standardwebhooks.webhooks import Webhook

            self.webhook = Webhook(SECRET)

    def render_POST(self, request: Request) -> bytes:
        assert request.content is not None
        body = request.content.read()
        if self.webhook is not None:
            headers = {
                k.decode(): v[0].decode()
                for k, v in request.requestHeaders.getAllRawHeaders()
            }
            self.webhook.verify(body, headers)
        self.count += 1
        webhook_id = request.getHeader("webhook-id")
        if webhook_id is not None:
            self.ids.add(webhook_id)
        request.setResponseCode(204)
        return b""


class QuietSite(Site):
    def log(self, request: Request) -> None:
        pass


def admin(url: str, statement: str) -> None:
    connection = psycopg2.connect(url)
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(statement)
    finally:
        connection.close()


def query(url: str, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
    connection = psycopg2.connect(url)
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(statement, params)
            return list(cursor.fetchall()) if cursor.description else []
    finally:
        connection.close()


async def run(reactor: Any, options: argparse.Namespace, database: str) -> None:
    await migrate(reactor, database)
    receivers = [Receiver(options.verify) for _ in range(options.receivers)]
    ports = [
        reactor.listenTCP(0, QuietSite(r), interface="127.0.0.1") for r in receivers
    ]
    urls = [f"http://127.0.0.1:{p.getHost().port}/hook" for p in ports]
    query(
        database,
        "INSERT INTO realtime.channels (pattern, webhook_urls) VALUES ('bench', %s)",
        (urls,),
    )
    started = time.perf_counter()
    query(
        database,
        "SELECT count(realtime.publish('bench', 'evt', jsonb_build_object('n', g,"
        " 'text', repeat('x', 100)))) FROM generate_series(1, %s) AS g",
        (options.messages,),
    )
    published = time.perf_counter() - started
    expected = options.messages * options.receivers
    service = WebhookService(
        reactor,
        database,
        SECRET,
        allow_private=True,
        max_in_flight=options.max_in_flight,
        per_host=options.per_host,
    )
    started = time.perf_counter()
    service.startService()
    while sum(r.count for r in receivers) < expected:
        await task.deferLater(reactor, 0.05, lambda: None)
    while query(
        database,
        "SELECT count(*) FROM realtime.webhook_deliveries WHERE status = 'pending'",
    )[0][0]:
        await task.deferLater(reactor, 0.05, lambda: None)
    elapsed = time.perf_counter() - started
    await service.stopService()
    for port in ports:
        await port.stopListening()
    unique = sum(len(r.ids) for r in receivers)
    delivered = query(
        database, "SELECT sum(wh_delivered_count) FROM realtime.messages"
    )[0][0]
    print(
        f"published {options.messages} messages x {options.receivers} webhook URLs"
        f" in {published:.2f} s"
    )
    print(
        f"delivered {expected} webhooks in {elapsed:.2f} s:"
        f" {expected / elapsed:.0f} deliveries/s"
        f" (max_in_flight={options.max_in_flight}, per_host={options.per_host},"
        f" verify={options.verify}; received {sum(r.count for r in receivers)},"
        f" distinct per receiver {unique}, wh_delivered_count total {delivered})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--receivers", type=int, default=2)
    parser.add_argument("--max-in-flight", type=int, default=64)
    parser.add_argument("--per-host", type=int, default=8)
    parser.add_argument("--verify", action="store_true")
    parser.add_argument(
        "--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres"
    )
    options = parser.parse_args()
    name = "realtimed_bench_" + uuid.uuid4().hex[:12]
    admin(options.postgres, f'CREATE DATABASE "{name}"')
    database = urlunsplit(urlsplit(options.postgres)._replace(path="/" + name))
    try:

        def go(reactor: Any) -> Deferred[None]:
            return ensureDeferred(run(reactor, options, database))

        task.react(go)
    finally:
        admin(options.postgres, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
