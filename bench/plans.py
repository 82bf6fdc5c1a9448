#!/usr/bin/env python3
"""
The query plans of every statement on realtimed's hot path, on a database
holding a given number of stored messages.

    bench/plans.py [--prefill N] [--postgres URL] [--generic] > plans.txt

Creates a database, applies realtimed's migrations, stores N messages of
history the way ``bench/run.py --prefill`` does, then runs each statement
once as realtimed would and prints its plan with EXPLAIN (ANALYZE, BUFFERS)
through auto_explain, with the plans of the statements inside the SQL
functions it calls.  ``--generic`` forces the generic plans that a
long-lived connection ends up using for the statements inside PL/pgSQL
functions.  The database is dropped afterwards.

Needs a PostgreSQL server with the auto_explain module (contrib) and a role
that may create databases and LOAD it (a superuser).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg2
from run import prefill_messages

CLAIMS = {"sub": "bench-user", "role": "authenticated"}


def publish_item() -> str:
    return json.dumps(
        [
            {
                "payload": {"t": 1, "p": "x" * 70},
                "id": str(uuid.uuid4()),
                "role": "authenticated",
                "claims": CLAIMS,
                "channel": "bench",
                "event": "m",
                "sender_type": "user",
                "sender_id": "bench-user",
            }
        ]
    )


# (what, statement, parameters): realtimed's own statements (see
# realtimed/store/publisher.py and realtimed/store/listener.py).
def statements(snapshot: str, message_id: str) -> list[tuple[str, str, Any]]:
    from realtimed.store.listener import POLL
    from realtimed.store.publisher import _RECORD_AUDIENCES

    return [
        (
            "publish (a batch of one publish, settled against the listener's snapshot)",
            "SELECT id::text, outcome, detail, message, channel_id, webhooks, xact, settled, seq"
            " FROM realtime.publish_batch_settled(%s::jsonb, %s::pg_snapshot, %s::xid8[], %s)",
            (publish_item(), snapshot, [], 32),
        ),
        (
            "poll (the listener, from its last snapshot)",
            POLL,
            {"upto": None, "skip": [], "since": snapshot, "xact": None, "seq": None, "limit": 1000},
        ),
        (
            "subscribe authorization (a batch of one subscribe)",
            "SELECT channel_id::text, outcome, detail"
            " FROM realtime.authorize_subscribes(%s::jsonb)",
            (json.dumps([{"role": "authenticated", "claims": CLAIMS, "channel": "bench"}]),),
        ),
        (
            "audience count (one flush of one message)",
            _RECORD_AUDIENCES,
            ([message_id], [1000]),
        ),
        (
            "one message as the REST API reads it, with its audience",
            "SELECT m.id, realtime.ws_audience_count(m) FROM realtime.messages m WHERE m.id = %s",
            (message_id,),
        ),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prefill", type=int, default=1_000_000, metavar="N")
    parser.add_argument(
        "--postgres",
        default=os.environ.get("BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432"),
    )
    parser.add_argument("--generic", action="store_true", help="force generic plans")
    parser.add_argument(
        "--database",
        metavar="NAME",
        help="use this database, already migrated with the bench's channels and history,"
        " instead of a new one",
    )
    args = parser.parse_args()
    postgres = args.postgres.rstrip("/")
    if args.database:
        return explain(postgres, args.database, 0, args.generic, migrate=False)
    database = f"realtimed_plans_{os.getpid()}"
    admin = psycopg2.connect(f"{postgres}/postgres")
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{database}"')
    try:
        return explain(postgres, database, args.prefill, args.generic)
    finally:
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        admin.close()


def explain(postgres: str, database: str, prefill: int, generic: bool, migrate: bool = True) -> int:
    from realtimed.store.migrations import available_migrations

    connection = psycopg2.connect(f"{postgres}/{database}")
    if migrate:
        with connection.cursor() as cursor:
            cursor.execute("CREATE SCHEMA IF NOT EXISTS realtime")
            for migration in available_migrations():
                cursor.execute(migration.sql)
            cursor.execute(
                "INSERT INTO realtime.channels (pattern)"
                " VALUES ('bench'), ('room:*'), ('pub:*'), ('t')"
            )
        connection.commit()
        prefill_messages(postgres, database, prefill)
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM realtime.messages")
        print(f"-- realtime.messages holds {cursor.fetchone()[0]:,} rows", flush=True)
        cursor.execute("SELECT version()")
        print(f"-- {cursor.fetchone()[0]}", flush=True)
        print(f"-- plans: {'generic (forced)' if generic else 'as chosen'}\n", flush=True)
        cursor.execute("SELECT pg_current_snapshot()::text")
        snapshot = cursor.fetchone()[0]
        # A message of the run's own, which the audience statements count.
        what, sql, params = statements(snapshot, str(uuid.uuid4()))[0]
        cursor.execute(sql, params)
        message_id = cursor.fetchone()[0]
        # Warm the caches and the session's plans, as a running process has.
        for _what, sql, params in statements(snapshot, message_id):
            cursor.execute(sql, params)
        cursor.execute("LOAD 'auto_explain'")
        for setting in (
            "auto_explain.log_min_duration = 0",
            "auto_explain.log_nested_statements = on",
            "auto_explain.log_analyze = on",
            "auto_explain.log_buffers = on",
            "client_min_messages = log",
        ):
            cursor.execute(f"SET {setting}")
        if generic:
            cursor.execute("SET plan_cache_mode = force_generic_plan")
        for what, sql, params in statements(snapshot, message_id):
            del connection.notices[:]
            cursor.execute(sql, params)
            print(f"==== {what}\n")
            for notice in connection.notices:
                text = re.sub(r"^LOG:\s+", "", notice.rstrip())
                # Trivial lookups of constants and settings: left out.
                if "rows=1 loops=1)" in text and text.count("\n") <= 3 and "Scan" not in text:
                    continue
                print(text + "\n")
    connection.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
