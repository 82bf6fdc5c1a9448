"""
Tests for L{realtimed.store.retention}: expired messages are deleted in
batches by one process at a time, keeping those with webhook deliveries
still pending.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg2
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from realtimed.store.migrations import migrate
from realtimed.store.pool import ConnectionPool
from realtimed.store.retention import MessageRetention
from tests.support import create_database, run_sql, wait_for


class RetentionTests(TestCase):
    """
    A migrated database with a channel, and a pool on it.
    """

    @inlineCallbacks
    def setUp(self) -> Any:  # type: ignore[override]
        self.url = create_database(self)
        yield migrate(reactor, self.url)
        self.pool = ConnectionPool(reactor, self.url, size=2)
        yield self.pool.start()
        self.addCleanup(self.pool.close)
        [(self.channel_id,)] = run_sql(
            self.url, "INSERT INTO realtime.channels (pattern) VALUES ('orders') RETURNING id"
        )

    def message(self, age_days: float, event: str = "e") -> str:
        """
        Store a message C{age_days} old; returns its id.
        """
        [(message_id,)] = run_sql(
            self.url,
            "INSERT INTO realtime.messages (event_name, channel_id, channel_name, payload,"
            " sender_type, created_at) VALUES (%s, %s, 'orders', %s, 'system',"
            " now() - make_interval(secs => %s)) RETURNING id::text",
            (event, self.channel_id, json.dumps({}), age_days * 86400),
        )
        return str(message_id)

    def delivery(self, message_id: str, status: str) -> None:
        run_sql(
            self.url,
            "INSERT INTO realtime.webhook_deliveries (message_id, url, host, status)"
            " VALUES (%s, 'https://example.com/hook', 'example.com', %s)",
            (message_id, status),
        )

    def remaining(self) -> set[str]:
        return {row[0] for row in run_sql(self.url, "SELECT id::text FROM realtime.messages")}

    def retain(self, days: int | None) -> None:
        run_sql(self.url, "UPDATE realtime.config SET retention_days = %s", (days,))

    @inlineCallbacks
    def test_off_by_default(self) -> Any:
        """
        Without a retention, nothing is deleted, however old.
        """
        old = self.message(5000)
        deleted = yield MessageRetention(self.pool, reactor).delete_expired()
        self.assertEqual((deleted, self.remaining()), (0, {old}))

    @inlineCallbacks
    def test_deletes_older_in_batches(self) -> Any:
        """
        Messages older than the retention are deleted, batch after batch,
        except those with a webhook delivery still pending; those whose
        deliveries ended go, and younger ones stay.
        """
        self.retain(2)
        expired = [self.message(3 + i) for i in range(5)]
        young = self.message(1)
        waiting = self.message(10)
        self.delivery(waiting, "pending")
        self.delivery(expired[0], "delivered")
        self.delivery(expired[1], "failed")
        retention = MessageRetention(self.pool, reactor, batch_size=2)
        deleted = yield retention.delete_expired()
        self.assertEqual(deleted, 5)
        self.assertEqual(self.remaining(), {young, waiting})
        # Once its delivery has ended, the held message goes too.
        run_sql(self.url, "UPDATE realtime.webhook_deliveries SET status = 'delivered'")
        deleted = yield retention.delete_expired()
        self.assertEqual((deleted, self.remaining()), (1, {young}))

    @inlineCallbacks
    def test_one_process_at_a_time(self) -> Any:
        """
        While another process holds the retention lock, this one deletes
        nothing and leaves the work to it.
        """
        self.retain(1)
        old = self.message(3)
        holder = psycopg2.connect(self.url)
        self.addCleanup(holder.close)
        holder.autocommit = True
        with holder.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(realtime.retention_lock_key())")
        deleted = yield MessageRetention(self.pool, reactor).delete_expired()
        self.assertEqual((deleted, self.remaining()), (0, {old}))
        with holder.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(realtime.retention_lock_key())")
        deleted = yield MessageRetention(self.pool, reactor).delete_expired()
        self.assertEqual((deleted, self.remaining()), (1, set()))

    @inlineCallbacks
    def test_service_runs_periodically(self) -> Any:
        """
        As a service, retention runs at start and every C{interval}: a
        retention set later is applied without a restart.
        """
        old = self.message(3)
        service = MessageRetention(self.pool, reactor, interval=0.05)
        service.startService()
        self.addCleanup(service.stopService)
        yield wait_for(lambda: service._pass is None, "the first pass")
        self.assertEqual(self.remaining(), {old})
        self.retain(1)
        yield wait_for(lambda: not self.remaining(), "the expired message to be deleted")
        yield service.stopService()
