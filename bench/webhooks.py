#!/usr/bin/env python3
"""
Webhook deliveries per second to local receivers.

    bench/webhooks.py [--messages N] [--receivers K] [--postgres URL]
                      [--max-in-flight M] [--per-host P] [--verify]
                      [--latency L] [--same-process]

Creates a throw-away database on the PostgreSQL server at ``--postgres``
(default postgresql://postgres@127.0.0.1:5432/postgres), applies realtimed's
migrations, starts K receivers (twisted.web on 127.0.0.1, answering 204, in a
child process unless ``--same-process``) and one channel whose webhook URLs
are those receivers, publishes N messages in one transaction with
``realtime.publish``, then starts one delivery service (woken for each stored
message by a LISTEN connection, as in the daemon) and measures from its
start until the outbox holds no pending delivery.  It prints that figure,
and checks that every receiver got every message exactly once and that the
messages' ``wh_delivered_count`` add up.  Then it publishes L more messages
one at a time, 20 ms apart, and prints the latency from each publish to its
arrival at the receivers.  The database is dropped at the end.

With ``--verify``, the receivers check every signature with the
``standardwebhooks`` package.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.request
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

from realtimed.store.listener import MessageListener
from realtimed.store.migrations import migrate
from realtimed.webhooks.outbox import outbox_pool
from realtimed.webhooks.service import WebhookService
from realtimed.webhooks.signing import encode_webhook_secret

SECRET = encode_webhook_secret(b"benchmark-webhook-key-0123456789")


class Receiver(Resource):
    """
    Counts webhook requests (and distinct webhook-ids); GET answers the
    counts as JSON.
    """

    isLeaf = True

    def __init__(self, verify: bool) -> None:
        super().__init__()
        self.count = 0
        self.ids: set[str] = set()
        self.arrivals: dict[str, float] = {}
        self.webhook: Any = None
        if verify:
            from standardwebhooks.webhooks import Webhook

            self.webhook = Webhook(SECRET)

    def render_POST(self, request: Request) -> bytes:
        assert request.content is not None
        body = request.content.read()
        if self.webhook is not None:
            headers = {
                k.decode(): v[0].decode() for k, v in request.requestHeaders.getAllRawHeaders()
            }
            self.webhook.verify(body, headers)
        self.count += 1
        webhook_id = request.getHeader("webhook-id")
        if webhook_id is not None:
            self.ids.add(webhook_id)
            self.arrivals.setdefault(webhook_id, time.time())
        request.setResponseCode(204)
        return b""

    def render_GET(self, request: Request) -> bytes:
        return json.dumps(
            {"count": self.count, "distinct": len(self.ids), "arrivals": self.arrivals}
        ).encode()


class QuietSite(Site):
    def log(self, request: Any) -> None:
        pass


def serve(count: int, verify: bool) -> None:
    """
    Run C{count} receivers; print their ports on one line; stop at end of
    input.
    """
    from twisted.internet import reactor as _reactor
    from twisted.internet import stdio
    from twisted.protocols.basic import LineReceiver

    reactor: Any = _reactor

    ports = [
        reactor.listenTCP(0, QuietSite(Receiver(verify)), interface="127.0.0.1")
        for _ in range(count)
    ]
    print(" ".join(str(p.getHost().port) for p in ports), flush=True)

    class StopAtEOF(LineReceiver):
        def connectionLost(self, reason: Any = None) -> None:
            reactor.stop()

    stdio.StandardIO(StopAtEOF())
    reactor.run()


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


def counts(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


async def settled(reactor: Any, cursor: Any) -> None:
    """
    Wait until no webhook delivery is pending.
    """
    while True:
        cursor.execute("SELECT count(*) FROM realtime.webhook_deliveries WHERE status = 'pending'")
        if not cursor.fetchone()[0]:
            return
        await task.deferLater(reactor, 0.05, lambda: None)


async def run(
    reactor: Any,
    options: argparse.Namespace,
    database: str,
    child: subprocess.Popen[str] | None,
) -> None:
    await migrate(reactor, database)
    if options.same_process:
        ports = [
            reactor.listenTCP(0, QuietSite(Receiver(options.verify)), interface="127.0.0.1")
            for _ in range(options.receivers)
        ]
        numbers = [p.getHost().port for p in ports]
    else:
        assert child is not None and child.stdout is not None
        numbers = [int(p) for p in child.stdout.readline().split()]
    urls = [f"http://127.0.0.1:{port}/hook" for port in numbers]
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
    pool = outbox_pool(reactor, database)
    service = WebhookService(
        reactor,
        pool,
        SECRET,
        allow_private=True,
        max_in_flight=options.max_in_flight,
        per_host=options.per_host,
    )
    # As in the daemon, every stored message wakes the delivery service.
    listener = MessageListener(reactor=reactor, dsn=database, on_message=lambda _: service.wake())
    listener.startService()
    while not listener.connected:
        await task.deferLater(reactor, 0.02, lambda: None)
    started = time.perf_counter()
    service.startService()
    # One connection for watching, kept open: connecting blocks the reactor.
    watcher = psycopg2.connect(database)
    watcher.autocommit = True
    with watcher.cursor() as cursor:
        await settled(reactor, cursor)
        elapsed = time.perf_counter() - started
        # Latency: messages published one by one, 20 ms apart, into an idle
        # service; from the publish's commit to the receiver's arrival.
        sent: dict[str, float] = {}
        for _ in range(options.latency):
            cursor.execute("SELECT realtime.publish('bench', 'latency', '{}')::text")
            sent[cursor.fetchone()[0]] = time.time()
            await task.deferLater(reactor, 0.02, lambda: None)
        await settled(reactor, cursor)
    watcher.close()
    listener.stopService()
    await service.stopService()
    pool.close()
    if options.same_process:
        seen = await ensureDeferred(_counts_async(reactor, urls))
        for port in ports:
            await port.stopListening()
    else:
        seen = [counts(url) for url in urls]
        assert child is not None and child.stdin is not None
        child.stdin.close()
        child.wait(10)
    delivered = query(database, "SELECT sum(wh_delivered_count) FROM realtime.messages")[0][0]
    print(
        f"published {options.messages} messages x {options.receivers} webhook URLs"
        f" in {published:.2f} s"
    )
    print(
        f"delivered {expected} webhooks in {elapsed:.2f} s:"
        f" {expected / elapsed:.0f} deliveries/s"
        f" (max_in_flight={options.max_in_flight}, per_host={options.per_host},"
        f" verify={options.verify}, receivers in"
        f" {'this' if options.same_process else 'a child'} process)"
    )
    latencies = sorted(
        (s["arrivals"][webhook_id] - at) * 1000
        for s in seen
        for webhook_id, at in sent.items()
        if webhook_id in s["arrivals"]
    )
    if latencies:
        print(
            f"latency of {len(latencies)} single deliveries, publish to arrival:"
            f" p50 {latencies[len(latencies) // 2]:.1f} ms,"
            f" p99 {latencies[min(len(latencies) - 1, len(latencies) * 99 // 100)]:.1f} ms,"
            f" max {latencies[-1]:.1f} ms"
        )
    total = options.messages + options.latency
    print(
        f"received {[s['count'] for s in seen]}, distinct ids"
        f" {[s['distinct'] for s in seen]}, wh_delivered_count total {delivered}"
    )
    if any(s["count"] != total or s["distinct"] != total for s in seen):
        raise SystemExit("a receiver missed a message or got one twice")


async def _counts_async(reactor: Any, urls: list[str]) -> list[dict[str, Any]]:
    from twisted.internet.threads import deferToThread

    return [await deferToThread(counts, url) for url in urls]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--receivers", type=int, default=2)
    parser.add_argument("--max-in-flight", type=int, default=64)
    parser.add_argument("--per-host", type=int, default=8)
    parser.add_argument("--latency", type=int, default=100)
    parser.add_argument("--verify", action="store_true")
    parser.add_argument("--same-process", action="store_true")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres")
    options = parser.parse_args()
    if options.serve:
        serve(options.serve, options.verify)
        return
    name = "realtimed_bench_" + uuid.uuid4().hex[:12]
    admin(options.postgres, f'CREATE DATABASE "{name}"')
    database = urlunsplit(urlsplit(options.postgres)._replace(path="/" + name))
    child = None
    if not options.same_process:
        command = [sys.executable, __file__, "--serve", str(options.receivers)]
        if options.verify:
            command.append("--verify")
        child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:

        def go(reactor: Any) -> Deferred[None]:
            return ensureDeferred(run(reactor, options, database, child))

        task.react(go)
    finally:
        if child is not None and child.poll() is None:
            child.kill()
        admin(options.postgres, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
