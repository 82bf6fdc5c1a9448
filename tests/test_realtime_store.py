"""
Tests for L{realtimed.store.publisher} against a real PostgreSQL: row-level
security decides subscribes and publishes, publishes are stored in batches,
audience counts are written in bulk.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import psycopg2
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from realtimed.auth import ADMIN_PRINCIPAL, ANON_PRINCIPAL, Principal
from realtimed.store.messages import StoredMessage
from realtimed.store.migrations import migrate
from realtimed.store.pool import ConnectionPool
from realtimed.store.publisher import (
    AudienceCounter,
    Authorizer,
    Publisher,
    Rejected,
    Rejection,
)
from tests.support import create_database, run_sql


def user(sub: str) -> Principal:
    return Principal("authenticated", "user", sub, {"sub": sub, "role": "authenticated"})


ALICE = user("alice")

OWN_CHANNEL_ONLY = """
CREATE POLICY own_channel_subscribe ON realtime.channels
    AS RESTRICTIVE FOR SELECT TO authenticated
    USING (realtime.channel_name() = 'user:' || (realtime.jwt_claims() ->> 'sub'));
CREATE POLICY own_channel_publish ON realtime.messages
    AS RESTRICTIVE FOR INSERT TO authenticated
    WITH CHECK (channel_name = 'user:' || (realtime.jwt_claims() ->> 'sub')
                AND realtime.channel_name() = channel_name);
"""


class CountingPool:
    """
    A pool that counts the queries it runs.
    """

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self.queries = 0

    def runQuery(self, *args: Any, **kwargs: Any) -> Deferred[list[tuple[Any, ...]]]:
        self.queries += 1
        return self.pool.runQuery(*args, **kwargs)

    def runOperation(self, *args: Any, **kwargs: Any) -> Deferred[None]:
        self.queries += 1
        return self.pool.runOperation(*args, **kwargs)


class ConcurrencyPool(CountingPool):
    """
    A pool that notes the most queries it had running at once.
    """

    def __init__(self, pool: ConnectionPool) -> None:
        super().__init__(pool)
        self.running = 0
        self.most = 0

    def runQuery(self, *args: Any, **kwargs: Any) -> Deferred[list[tuple[Any, ...]]]:
        self.running += 1
        self.most = max(self.most, self.running)

        def finished(result: object) -> object:
            self.running -= 1
            return result

        return super().runQuery(*args, **kwargs).addBoth(finished)


class StoreTestCase(TestCase):
    timeout = 60

    @inlineCallbacks
    def setUp(self) -> Any:  # type: ignore[override]
        self.url = create_database(self)
        yield migrate(reactor, self.url)
        run_sql(
            self.url,
            "INSERT INTO realtime.channels (pattern) VALUES ('orders'), ('chat:*'), ('user:*');"
            "INSERT INTO realtime.channels (pattern, enabled) VALUES ('off', false)",
        )
        self.pool = ConnectionPool(reactor, self.url)
        self.addCleanup(self.pool.close)

    def channel_id(self, pattern: str) -> str:
        return str(
            run_sql(self.url, "SELECT id FROM realtime.channels WHERE pattern = %s", (pattern,))[0][
                0
            ]
        )

    @inlineCallbacks
    def rejection(self, d: Deferred[Any]) -> Any:
        """
        Why the store did not do what C{d} asked.
        """
        try:
            yield d
        except Rejected as e:
            return e.rejection
        self.fail("not rejected")


class GrantTests(StoreTestCase):
    @inlineCallbacks
    def test_grants(self) -> Any:
        """
        A name subscription stands while its row still owns the name; a
        pattern subscription while its row is enabled with that pattern.
        """
        chat, orders = self.channel_id("chat:*"), self.channel_id("orders")
        held = [("chat:1", chat), ("chat:*", chat), ("orders", orders), ("chat:vip1", chat)]
        grants = yield Authorizer(self.pool).grants(held)
        self.assertEqual([g.granted for g in grants], [True, True, True, True])
        self.assertTrue(all(isinstance(g.created_at, float) for g in grants))
        run_sql(self.url, "INSERT INTO realtime.channels (pattern) VALUES ('chat:vip*')")
        run_sql(self.url, "UPDATE realtime.channels SET enabled = false WHERE pattern = 'orders'")
        grants = yield Authorizer(self.pool).grants(held)
        self.assertEqual([g.granted for g in grants], [True, True, False, False])
        run_sql(
            self.url, "UPDATE realtime.channels SET pattern = 'talk:*' WHERE pattern = 'chat:*'"
        )
        run_sql(self.url, "DELETE FROM realtime.channels WHERE pattern = 'orders'")
        grants = yield Authorizer(self.pool).grants(held)
        self.assertEqual([g.granted for g in grants], [False, False, False, False])
        self.assertIsNone(grants[2].created_at)


class AuthorizeSubscribeTests(StoreTestCase):
    @inlineCallbacks
    def test_default_policies(self) -> Any:
        """
        With the installed policies an authenticated user may subscribe to a
        name an enabled channel owns, and gets the owning row's id; anon may
        not.
        """
        channel_id = yield Authorizer(self.pool).authorize(ALICE, "chat:room123")
        self.assertEqual(channel_id, self.channel_id("chat:*"))
        rejection = yield self.rejection(Authorizer(self.pool).authorize(ANON_PRINCIPAL, "orders"))
        self.assertEqual(rejection, Rejection.DENIED)

    @inlineCallbacks
    def test_no_enabled_channel(self) -> Any:
        """
        A name no channel owns, a disabled channel, and a pattern that is not
        a row's pattern are refused, for admins too.
        """
        for principal in (ALICE, ADMIN_PRINCIPAL):
            for channel in ("nothing", "off", "order:*", "chat:room:*"):
                rejection = yield self.rejection(
                    Authorizer(self.pool).authorize(principal, channel)
                )
                self.assertEqual(rejection, Rejection.NO_CHANNEL)

    @inlineCallbacks
    def test_pattern(self) -> Any:
        """
        A row's pattern, exactly, may be subscribed to.
        """
        channel_id = yield Authorizer(self.pool).authorize(ALICE, "chat:*")
        self.assertEqual(channel_id, self.channel_id("chat:*"))

    @inlineCallbacks
    def test_admin_trusted(self) -> Any:
        """
        The admin is not checked against policies (there are none for its
        role).
        """
        channel_id = yield Authorizer(self.pool).authorize(ADMIN_PRINCIPAL, "orders")
        self.assertEqual(channel_id, self.channel_id("orders"))

    @inlineCallbacks
    def test_custom_policy(self) -> Any:
        """
        A policy reading C{realtime.channel_name()} and the claims decides:
        a user may subscribe to its own C{user:<sub>} only.
        """
        run_sql(self.url, OWN_CHANNEL_ONLY)
        yield Authorizer(self.pool).authorize(ALICE, "user:alice")
        rejection = yield self.rejection(Authorizer(self.pool).authorize(ALICE, "user:bob"))
        self.assertEqual(rejection, Rejection.DENIED)
        rejection = yield self.rejection(Authorizer(self.pool).authorize(ALICE, "user:*"))
        self.assertEqual(rejection, Rejection.DENIED)

    @inlineCallbacks
    def test_quotes_are_data(self) -> Any:
        """
        Whatever a channel name holds, it is a parameter: quotes do not
        change the statement.
        """
        rejection = yield self.rejection(
            Authorizer(self.pool).authorize(ALICE, "x'; DROP TABLE realtime.channels; --")
        )
        self.assertEqual(rejection, Rejection.NO_CHANNEL)
        self.assertEqual(len(run_sql(self.url, "SELECT * FROM realtime.channels")), 4)

    @inlineCallbacks
    def test_batched(self) -> Any:
        """
        Subscribes asked for while a batch is being decided are decided
        together by one statement; one whose policy fails with an error is
        rejected as failed and the others are decided as usual.
        """
        run_sql(
            self.url,
            """
            CREATE POLICY no_boom ON realtime.channels AS RESTRICTIVE FOR SELECT TO authenticated
                USING (CASE WHEN realtime.channel_name() = 'chat:boom'
                            THEN (length(realtime.channel_name()) / 0) = 1 ELSE true END);
            """,
        )
        pool = CountingPool(self.pool)
        authorizer = Authorizer(pool)
        names = ["orders", "chat:a", "chat:boom", "nothing", "user:x", "chat:*"]
        results = []
        for name in names:
            d = authorizer.authorize(ALICE, name)
            d.addErrback(lambda f: f.trap(Rejected) and f.value.rejection)
            results.append(d)
        outcomes = yield gatherResults(results)
        self.assertEqual(pool.queries, 2)
        self.assertEqual(
            outcomes,
            [
                self.channel_id("orders"),
                self.channel_id("chat:*"),
                Rejection.FAILED,
                Rejection.NO_CHANNEL,
                self.channel_id("user:*"),
                self.channel_id("chat:*"),
            ],
        )


class PublisherTests(StoreTestCase):
    def stored(self) -> list[tuple[Any, ...]]:
        return run_sql(
            self.url,
            "SELECT channel_name, event_name, payload, sender_type, sender_id, channel_id::text "
            "FROM realtime.messages ORDER BY xact_id, seq",
        )

    @inlineCallbacks
    def test_store(self) -> Any:
        """
        A publish is stored with the sender from the principal, the owning
        channel's id and the payload, under the id it answers with.
        """
        publisher = Publisher(self.pool)
        message_id = yield publisher.publish(ALICE, "chat:room123", "message", '{"text":"Hello!"}')
        row = run_sql(
            self.url,
            "SELECT channel_name, event_name, payload, sender_type, sender_id, channel_id::text "
            "FROM realtime.messages WHERE id = %s",
            (message_id,),
        )
        self.assertEqual(
            row,
            [
                (
                    "chat:room123",
                    "message",
                    {"text": "Hello!"},
                    "user",
                    "alice",
                    self.channel_id("chat:*"),
                )
            ],
        )
        admin_id = yield publisher.publish(ADMIN_PRINCIPAL, "orders", "e", "[1]")
        self.assertEqual(
            run_sql(
                self.url,
                "SELECT sender_type, sender_id FROM realtime.messages WHERE id = %s",
                (admin_id,),
            ),
            [("system", None)],
        )

    @inlineCallbacks
    def test_refusals(self) -> Any:
        """
        Anon cannot publish under the default policies; a name without an
        enabled channel is refused; neither stores anything.
        """
        publisher = Publisher(self.pool)
        rejection = yield self.rejection(publisher.publish(ANON_PRINCIPAL, "orders", "e", "{}"))
        self.assertEqual(rejection, Rejection.DENIED)
        rejection = yield self.rejection(publisher.publish(ALICE, "off", "e", "{}"))
        self.assertEqual(rejection, Rejection.NO_CHANNEL)
        self.assertEqual(self.stored(), [])

    @inlineCallbacks
    def test_custom_policy(self) -> Any:
        """
        An INSERT policy on messages reading the claims and
        C{realtime.channel_name()} decides publishes.
        """
        run_sql(self.url, OWN_CHANNEL_ONLY)
        publisher = Publisher(self.pool)
        yield publisher.publish(ALICE, "user:alice", "e", "{}")
        rejection = yield self.rejection(publisher.publish(ALICE, "user:bob", "e", "{}"))
        self.assertEqual(rejection, Rejection.DENIED)
        self.assertEqual([r[0] for r in self.stored()], ["user:alice"])

    @inlineCallbacks
    def test_callers_in_one_batch(self) -> Any:
        """
        Within one batch each publish is checked as its own caller, with its
        own claims and channel name, whether the batch is stored whole (one
        statement per run of a caller on a channel) or item by item.
        """
        run_sql(self.url, OWN_CHANNEL_ONLY)
        bob = user("bob")
        for refused in (False, True):
            publisher = Publisher(self.pool)
            calls = [
                (ALICE, "user:alice"),
                (bob, "user:bob"),
                (bob, "user:bob"),
                (ADMIN_PRINCIPAL, "user:carol"),
                (ADMIN_PRINCIPAL, "user:carol"),
                (bob, "user:bob"),
                (ALICE, "user:alice"),
                (ALICE, "user:alice"),
            ]
            if refused:
                calls.insert(2, (bob, "user:alice"))
            results = []
            for principal, channel in calls:
                d = publisher.publish(principal, channel, "e", "{}")
                d.addErrback(lambda f: f.trap(Rejected) and f.value.rejection)
                results.append(d)
            outcomes = yield gatherResults(results)
            codes = [o if o == Rejection.DENIED else "stored" for o in outcomes]
            expected: list[Any] = ["stored"] * len(calls)
            if refused:
                expected[2] = Rejection.DENIED
            self.assertEqual(codes, expected)
        self.assertEqual(
            [(r[0], r[4]) for r in self.stored()],
            [
                ("user:alice", "alice"),
                ("user:bob", "bob"),
                ("user:bob", "bob"),
                ("user:carol", None),
                ("user:carol", None),
                ("user:bob", "bob"),
                ("user:alice", "alice"),
                ("user:alice", "alice"),
            ]
            * 2,
        )

    @inlineCallbacks
    def test_batching(self) -> Any:
        """
        Publishes made while a batch is in flight are stored together by one
        statement, in the order they were made; a refused one does not stop
        the others.
        """
        pool = CountingPool(self.pool)
        publisher = Publisher(pool)
        results: list[Deferred[Any]] = []
        for i in range(20):
            principal = ANON_PRINCIPAL if i == 7 else ALICE
            d = publisher.publish(principal, "orders", "e", json.dumps({"i": i}))
            if i == 7:
                d.addErrback(lambda f: f.trap(Rejected) and "refused")
            results.append(d)
        outcomes = yield gatherResults(results)
        self.assertEqual(outcomes[7], "refused")
        self.assertEqual(pool.queries, 2)
        self.assertEqual([r[2]["i"] for r in self.stored()], [i for i in range(20) if i != 7])

    @inlineCallbacks
    def test_senders_in_lanes(self) -> Any:
        """
        With many senders publishing at once, several batches are in flight
        together, and each sender's publishes are stored in the order it
        made them.
        """
        pool = ConcurrencyPool(self.pool)
        publisher = Publisher(pool, lanes=3)
        results = []
        for i in range(12):
            for sender in range(8):
                results.append(
                    publisher.publish(
                        ALICE,
                        f"chat:{sender % 3}",
                        "e",
                        json.dumps({"s": sender, "i": i}),
                        f"socket-{sender}",
                    )
                )
        yield gatherResults(results)
        self.assertGreater(pool.most, 1)
        stored = [r[2] for r in self.stored()]
        self.assertEqual(len(stored), 96)
        for sender in range(8):
            self.assertEqual([p["i"] for p in stored if p["s"] == sender], list(range(12)))

    @inlineCallbacks
    def test_database_failure(self) -> Any:
        """
        An item the database fails on is rejected as failed, the others in
        its batch are stored.
        """
        run_sql(
            self.url,
            "ALTER TABLE realtime.messages ADD CONSTRAINT no_bad CHECK (event_name <> 'bad')",
        )
        publisher = Publisher(self.pool)
        bad = self.rejection(publisher.publish(ALICE, "orders", "bad", "{}"))
        good = publisher.publish(ALICE, "orders", "good", "{}")
        rejection = yield bad
        yield good
        self.assertEqual(rejection, Rejection.FAILED)
        self.assertEqual([r[1] for r in self.stored()], ["good"])

    def test_only_the_daemon_may_execute(self) -> None:
        """
        The roles clients act as cannot call the functions that take a role
        and claims as arguments.
        """
        connection = psycopg2.connect(self.url)
        self.addCleanup(connection.close)
        for statement in [
            "SELECT realtime.publish_batch('[]')",
            "SELECT * FROM realtime.authorize_subscribes('[]')",
            "SELECT realtime.subscribed_channel('orders')",
            "SELECT realtime.checked_role('anon')",
        ]:
            for role in ("anon", "authenticated", "project_admin"):
                with connection.cursor() as cursor:
                    cursor.execute(f"SET ROLE {role}")
                    with self.assertRaises(psycopg2.errors.InsufficientPrivilege):
                        cursor.execute(statement)
                connection.rollback()


class AudienceCounterTests(StoreTestCase):
    @inlineCallbacks
    def test_flush(self) -> Any:
        """
        Counts gathered for several messages are recorded by one statement
        when the interval has passed, and later counts add to them, without
        updating the messages' rows.
        """
        publisher = Publisher(self.pool)
        first = yield publisher.publish(ALICE, "orders", "e", "{}")
        second = yield publisher.publish(ALICE, "orders", "e", "{}")
        versions = "SELECT id::text, ctid::text, xmin::text, xmax::text FROM realtime.messages"
        before = sorted(run_sql(self.url, versions))
        pool = CountingPool(self.pool)
        clock = Clock()
        counter = AudienceCounter(pool, clock)
        counter.add(first, 2)
        counter.add(second, 1)
        counter.add(first, 3)
        counter.add(second, 0)
        self.assertEqual(pool.queries, 0)
        clock.advance(1)
        self.assertEqual(pool.queries, 1)
        counter.add(second, 4)
        yield counter.stop()
        self.assertEqual(pool.queries, 2)
        counts = dict(
            run_sql(
                self.url,
                "SELECT id::text, realtime.ws_audience_count(m) FROM realtime.messages m",
            )
        )
        self.assertEqual(counts, {first: 5, second: 5})
        # The messages' rows are the versions that were stored, untouched.
        self.assertEqual(sorted(run_sql(self.url, versions)), before)


class HistoryTests(StoreTestCase):
    """
    What the publish path asks of the messages table costs the same however
    many messages are stored.
    """

    def test_settled_reads_only_the_tail(self) -> None:
        """
        Whether a batch is settled is answered from the xact_id index, even
        by the generic plan a session keeps for it: the messages stored
        before the listener's snapshot are not read one by one.
        """
        # History as publishes leave it: many transactions of a few messages.
        connection = psycopg2.connect(self.url)
        try:
            with connection.cursor() as cursor:
                for _ in range(400):
                    cursor.execute(
                        "INSERT INTO realtime.messages"
                        " (event_name, channel_id, channel_name, sender_type)"
                        " SELECT 'e', c.id, 'orders', 'system' FROM realtime.channels c,"
                        " generate_series(1, 40) WHERE c.pattern = 'orders'"
                    )
                    connection.commit()
        finally:
            connection.close()
        run_sql(self.url, "ANALYZE realtime.messages")
        [(snapshot,)] = run_sql(self.url, "SELECT pg_current_snapshot()::text")
        scans = (
            "SELECT seq_scan, idx_scan > 0 FROM pg_stat_xact_user_tables"
            " WHERE relid = 'realtime.messages'::regclass"
        )
        # One transaction: the table's scans so far in it, then the check.
        rows = run_sql(
            self.url,
            "SET plan_cache_mode = force_generic_plan;"
            "SELECT realtime.settled_since(%s, '{}');"
            f"{scans}",
            (snapshot,),
        )
        self.assertEqual(rows, [(0, True)])
        settled = run_sql(self.url, "SELECT realtime.settled_since(%s, '{}')", (snapshot,))
        self.assertEqual(settled, [(True,)])

    def test_without_statistics(self) -> None:
        """
        Where the messages table is not analyzed (autovacuum off), a
        long-lived connection keeps the plans it made while the table was
        small; storing a batch and reading it back, and the listener's
        poll, still go through the indexes once the table has grown: no
        sequential scan of the stored messages.
        """
        run_sql(self.url, "ALTER TABLE realtime.messages SET (autovacuum_enabled = false)")

        def item() -> str:
            return json.dumps(
                [
                    {
                        "payload": {},
                        "id": str(uuid.uuid4()),
                        "role": None,
                        "claims": {},
                        "channel": "orders",
                        "event": "e",
                        "sender_type": "system",
                        "sender_id": None,
                    }
                ]
            )

        publish = (
            "SELECT outcome, settled FROM realtime.publish_batch_settled("
            "%s::jsonb, pg_current_snapshot(), '{}', 32)"
        )
        poll = (
            "SELECT count(*) FROM realtime.messages_between("
            "pg_current_snapshot(), pg_current_snapshot(), NULL, NULL, 500)"
        )
        scans = (
            "SELECT seq_scan FROM pg_stat_xact_user_tables"
            " WHERE relid = 'realtime.messages'::regclass"
        )
        connection = psycopg2.connect(self.url)
        self.addCleanup(connection.close)
        with connection.cursor() as cursor:
            # The session's plans, made while the table is small.
            for _ in range(8):
                cursor.execute(publish, (item(),))
                cursor.execute(poll)
                connection.commit()
            run_sql(
                self.url,
                "INSERT INTO realtime.messages (event_name, channel_id, channel_name, sender_type)"
                " SELECT 'e', c.id, 'orders', 'system' FROM realtime.channels c,"
                " generate_series(1, 20000) WHERE c.pattern = 'orders'",
            )
            for statement, parameters in [(publish, (item(),)), (poll, None)]:
                cursor.execute(statement, parameters)
                cursor.execute(scans)
                self.assertEqual(cursor.fetchall(), [(0,)], statement)
                connection.commit()

    def test_retention_deletes_audience_counts(self) -> None:
        """
        Retention deletes the audience counts of the messages it deletes,
        and only theirs.
        """
        [(old,), (new,)] = run_sql(
            self.url,
            "INSERT INTO realtime.messages (event_name, channel_id, channel_name, sender_type,"
            " created_at) SELECT 'e', c.id, 'orders', 'system', t FROM realtime.channels c,"
            " unnest(ARRAY[now() - interval '3 days', now()]) AS t"
            " WHERE c.pattern = 'orders' ORDER BY t RETURNING id::text",
        )
        run_sql(
            self.url,
            "INSERT INTO realtime.ws_audience_counts (message_id, sockets)"
            " VALUES (%s, 2), (%s, 3), (%s, 4)",
            (old, old, new),
        )
        run_sql(self.url, "UPDATE realtime.config SET retention_days = 1")
        self.assertEqual(run_sql(self.url, "SELECT realtime.delete_expired_messages(10)"), [(1,)])
        self.assertEqual(
            run_sql(self.url, "SELECT message_id::text, sockets FROM realtime.ws_audience_counts"),
            [(new, 4)],
        )


class RecordingLocal:
    """
    A L{LocalDelivery} that records what it is handed.
    """

    def __init__(self, since: str | None) -> None:
        self.since = since
        self.handed: list[str] = []
        self.calls: list[tuple[str, list[dict[str, Any]], bool]] = []

    def read_up_to(self) -> tuple[str | None, list[str]]:
        return self.since, self.handed

    def stored_here(self, xact: str, messages: list[dict[str, Any]], settled: bool) -> None:
        self.calls.append((xact, messages, settled))


class LocalDeliveryTests(StoreTestCase):
    """
    A stored batch is handed to the process's listener with its messages and
    whether every message committed before it was read already.
    """

    def snapshot(self) -> str:
        return str(run_sql(self.url, "SELECT pg_current_snapshot()::text")[0][0])

    @inlineCallbacks
    def test_settled(self) -> Any:
        """
        With nothing committed since the listener's snapshot, the batch is
        settled, and handed over with its transaction and its messages as
        sockets receive them.
        """
        local = RecordingLocal(self.snapshot())
        publisher = Publisher(self.pool, local)
        message_id = yield publisher.publish(ALICE, "chat:1", "said", '{"text":"hi"}')
        ((xact, messages, settled),) = local.calls
        self.assertTrue(settled)
        expected = run_sql(
            self.url,
            "SELECT xact_id::text, realtime.message_json(m), channel_id::text"
            " FROM realtime.messages m WHERE id = %s",
            (message_id,),
        )
        self.assertEqual(
            [(xact, messages)],
            [(x, [StoredMessage(m, c, 0)]) for x, m, c in expected],
        )

    @inlineCallbacks
    def test_not_settled_after_another_commit(self) -> Any:
        """
        A message another transaction committed after the listener's
        snapshot makes the batch unsettled: the listener must read it
        first.
        """
        local = RecordingLocal(self.snapshot())
        run_sql(self.url, "SELECT realtime.publish('orders', 'before', '{}')")
        publisher = Publisher(self.pool, local)
        yield publisher.publish(ALICE, "orders", "after", "{}")
        self.assertEqual([settled for _, _, settled in local.calls], [False])

    @inlineCallbacks
    def test_handed_transactions_do_not_unsettle(self) -> Any:
        """
        A transaction committed after the listener's snapshot does not
        unsettle the batch when the listener says it handed it over already
        (an earlier batch of this process).
        """
        local = RecordingLocal(self.snapshot())
        (message_id,) = run_sql(self.url, "SELECT realtime.publish('orders', 'handed', '{}')")[0]
        (xact,) = run_sql(
            self.url, "SELECT xact_id::text FROM realtime.messages WHERE id = %s", (message_id,)
        )[0]
        local.handed = [xact]
        publisher = Publisher(self.pool, local)
        yield publisher.publish(ALICE, "orders", "next", "{}")
        self.assertEqual([settled for _, _, settled in local.calls], [True])

    @inlineCallbacks
    def test_open_transaction_does_not_unsettle(self) -> Any:
        """
        A transaction still open when the batch is stored runs at the same
        time as the batch, so it does not keep the batch from being settled.
        """
        local = RecordingLocal(self.snapshot())
        other = psycopg2.connect(self.url)
        self.addCleanup(other.close)
        with other.cursor() as cursor:
            cursor.execute("SELECT realtime.publish('orders', 'open', '{}')")
        publisher = Publisher(self.pool, local)
        yield publisher.publish(ALICE, "orders", "batch", "{}")
        other.commit()
        self.assertEqual([settled for _, _, settled in local.calls], [True])

    @inlineCallbacks
    def test_large_batch_left_to_the_listener(self) -> Any:
        """
        A batch larger than C{local_limit} is stored but announced as not
        settled, without its messages, so that the listener reads them.
        """
        local = RecordingLocal(self.snapshot())
        publisher = Publisher(self.pool, local, local_limit=2)
        first = publisher.publish(ALICE, "orders", "alone", "{}")
        rest = [publisher.publish(ALICE, "orders", f"e{i}", "{}") for i in range(3)]
        yield gatherResults([first, *rest])
        self.assertEqual(
            [(settled, len(m)) for _, m, settled in local.calls], [(True, 1), (False, 0)]
        )
        self.assertEqual(len(run_sql(self.url, "SELECT id FROM realtime.messages")), 4)

    @inlineCallbacks
    def test_without_snapshot(self) -> Any:
        """
        Before the listener has read anything, no batch is settled; a batch
        that stored nothing is not handed over.
        """
        local = RecordingLocal(None)
        publisher = Publisher(self.pool, local)
        yield publisher.publish(ALICE, "orders", "e", "{}")
        yield self.rejection(publisher.publish(ALICE, "off", "e", "{}"))
        self.assertEqual([settled for _, _, settled in local.calls], [False])
