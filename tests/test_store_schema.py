"""
Tests for the realtime schema against a real PostgreSQL: the default
policies, realtime.channel_name(), realtime.publish(), realtime.track_table()
and the channel precedence of realtime.owning_channel() (0001_schema.sql);
and how stored messages reach listeners (0004_wakeup.sql): the BEFORE INSERT
trigger realtime.prepare_message(), the doorbell NOTIFY on realtime_wakeup
for dozing listeners, the gate, and realtime.messages_between().
"""

from __future__ import annotations

import json
import select
import time
import uuid
from collections import Counter
from typing import Any

import psycopg2
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from realtimed.store.migrations import migrate
from tests.support import create_database, run_sql

CLAIMS = json.dumps({"sub": "user-1", "role": "authenticated"})


class SchemaTestCase(TestCase):
    """
    A freshly migrated database per test.
    """

    @inlineCallbacks
    def setUp(self) -> Any:
        self.url = create_database(self)
        yield migrate(reactor, self.url)

    def channel(self, pattern: str, enabled: bool = True, created_at: str | None = None) -> str:
        rows = run_sql(
            self.url,
            "INSERT INTO realtime.channels (pattern, enabled, created_at) "
            "VALUES (%s, %s, coalesce(%s::timestamptz, now())) RETURNING id",
            (pattern, enabled, created_at),
        )
        return str(rows[0][0])

    def connect(self, autocommit: bool = True) -> Any:
        """
        A psycopg2 connection to the test database, closed in cleanup.  Lock
        and statement timeouts turn an unexpected wait into an error rather
        than a hung test.
        """
        connection = psycopg2.connect(
            self.url, options="-c lock_timeout=5s -c statement_timeout=20s"
        )
        connection.autocommit = autocommit
        self.addCleanup(connection.close)
        return connection

    def as_role(
        self,
        role: str,
        statement: str,
        params: Any = None,
        channel_name: str | None = None,
        claims: str | None = CLAIMS,
    ) -> list[tuple[Any, ...]]:
        """
        Run C{statement} the way realtimed authorizes: in a transaction, as
        C{role}, with the claims and channel name set; rolled back after.
        """
        connection = psycopg2.connect(self.url)
        try:
            with connection.cursor() as cursor:
                cursor.execute(f"SET LOCAL ROLE {role}")
                cursor.execute(
                    "SELECT set_config('request.jwt.claims', %s, true), "
                    "set_config('realtime.channel_name', %s, true)",
                    (claims or "", channel_name or ""),
                )
                cursor.execute(statement, params)
                return list(cursor.fetchall()) if cursor.description else []
        finally:
            connection.rollback()
            connection.close()


class PolicyTests(SchemaTestCase):
    """
    The default policies.
    """

    def test_authenticated_selects_enabled_channel(self) -> None:
        """
        An C{authenticated} caller may select an enabled channel, not a
        disabled one.
        """
        enabled = self.channel("room:*")
        self.channel("closed:*", enabled=False)
        rows = self.as_role(
            "authenticated", "SELECT id FROM realtime.channels", channel_name="room:1"
        )
        self.assertEqual(rows, [(enabled,)])

    def test_anon_selects_nothing(self) -> None:
        """
        An C{anon} caller sees no channel: no policy lets it.
        """
        self.channel("room:*")
        rows = self.as_role(
            "anon", "SELECT id FROM realtime.channels", channel_name="room:1", claims=None
        )
        self.assertEqual(rows, [])

    def test_authenticated_publishes(self) -> None:
        """
        An C{authenticated} caller may insert a message.
        """
        channel = self.channel("room:*")
        rows = self.as_role(
            "authenticated",
            "INSERT INTO realtime.messages "
            "(event_name, channel_id, channel_name, sender_type, sender_id) "
            "VALUES ('hi', %s, 'room:1', 'user', 'user-1')",
            (channel,),
            channel_name="room:1",
        )
        self.assertEqual(rows, [])

    def test_anon_cannot_publish(self) -> None:
        """
        Without a policy for it, an C{anon} caller cannot insert a message.
        """
        channel = self.channel("room:*")
        with self.assertRaises(psycopg2.errors.InsufficientPrivilege):
            self.as_role(
                "anon",
                "INSERT INTO realtime.messages (event_name, channel_id, channel_name, sender_type) "
                "VALUES ('hi', %s, 'room:1', 'user')",
                (channel,),
                channel_name="room:1",
                claims=None,
            )

    def test_project_admin_cannot_publish_without_policy(self) -> None:
        """
        The default publish policy is for C{authenticated} only.
        """
        channel = self.channel("room:*")
        with self.assertRaises(psycopg2.errors.InsufficientPrivilege):
            self.as_role(
                "project_admin",
                "INSERT INTO realtime.messages (event_name, channel_id, channel_name, sender_type) "
                "VALUES ('hi', %s, 'room:1', 'user')",
                (channel,),
            )

    def test_channel_name_in_policy(self) -> None:
        """
        Inside a policy check, C{realtime.channel_name()} is the name being
        authorized, and C{realtime.jwt_claims()} the caller's claims.
        """
        channel = self.channel("user:*")
        run_sql(
            self.url,
            "CREATE POLICY own_channel ON realtime.channels FOR SELECT TO anon "
            "USING (realtime.channel_name() = 'user:' || (realtime.jwt_claims() ->> 'sub'))",
        )
        statement = "SELECT id FROM realtime.channels"
        self.assertEqual(self.as_role("anon", statement, channel_name="user:user-1"), [(channel,)])
        self.assertEqual(self.as_role("anon", statement, channel_name="user:user-2"), [])
        self.assertEqual(self.as_role("anon", statement, channel_name=None), [])

    def test_channel_name_unset(self) -> None:
        """
        With no channel name set, C{realtime.channel_name()} is NULL.
        """
        self.assertEqual(
            self.as_role("anon", "SELECT realtime.channel_name()", claims=None), [(None,)]
        )


def query(connection: Any, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
    """
    Run one statement on C{connection} (in its transaction, if it is not in
    autocommit mode) and return its rows, if any.
    """
    with connection.cursor() as cursor:
        cursor.execute(statement, params)
        return list(cursor.fetchall()) if cursor.description else []


def publish(connection: Any, event: str, channel: str = "room:1", payload: str = "{}") -> Any:
    """
    C{realtime.publish()} on C{connection}; the message id, or C{None}.
    """
    return query(
        connection, "SELECT realtime.publish(%s, %s, %s::jsonb)", (channel, event, payload)
    )[0][0]


def snapshot(connection: Any) -> str:
    """
    C{pg_current_snapshot()} on C{connection}, as text.
    """
    return str(query(connection, "SELECT pg_current_snapshot()::text")[0][0])


def current_xact(connection: Any) -> str:
    """
    The id of the transaction open on C{connection} (assigning one if need be).
    """
    return str(query(connection, "SELECT pg_current_xact_id()::text")[0][0])


def in_progress(connection: Any, xact: str, snap: str) -> bool:
    """
    Is transaction C{xact} in the in-progress list of snapshot C{snap}?
    """
    rows = query(
        connection,
        "SELECT %s::xid8 IN (SELECT pg_snapshot_xip(%s::pg_snapshot))",
        (xact, snap),
    )
    return bool(rows[0][0])


WAKEUP = "realtime_wakeup"
MARKER = "realtimed_test_marker"


def listen_for_wakeups(connection: Any) -> None:
    """
    LISTEN on the doorbell channel and on the marker channel of L{wakeups}.
    """
    query(connection, f"LISTEN {WAKEUP}")
    query(connection, f"LISTEN {MARKER}")


def wakeups(listener: Any, url: str, timeout: float = 10.0) -> list[str]:
    """
    The payloads of the doorbell notifications received by C{listener} (see
    L{listen_for_wakeups}) from every transaction committed so far, and not
    returned by an earlier call.

    Waiting for a while is not needed to see that none came: a NOTIFY on a
    marker channel is committed now, and as PostgreSQL delivers the
    notifications of different transactions in commit order, everything
    committed before it has arrived once the marker has.
    """
    run_sql(url, f"NOTIFY {MARKER}")
    received: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        select.select([listener], [], [], 0.1)
        listener.poll()
        while listener.notifies:
            notify = listener.notifies.pop(0)
            if notify.channel == MARKER:
                return received
            if notify.channel == WAKEUP:
                received.append(notify.payload)
    raise AssertionError("The marker notification never arrived.")


class PublishTests(SchemaTestCase):
    """
    realtime.publish(), realtime.message_json() and realtime.track_table().
    """

    def messages(self) -> list[tuple[Any, ...]]:
        return run_sql(
            self.url,
            "SELECT channel_name, event_name, payload, sender_type, channel_id::text "
            "FROM realtime.messages ORDER BY seq",
        )

    def test_publish_stores_delivered_shape(self) -> None:
        """
        C{realtime.publish()} stores a system message on the owning channel,
        and C{realtime.message_json()} of the stored row is the message as
        subscribers receive it.
        """
        channel = self.channel("room:*")
        rows = run_sql(self.url, "SELECT realtime.publish('room:1', 'hello', '{\"a\": 1}')")
        message_id = str(rows[0][0])
        self.assertEqual(self.messages(), [("room:1", "hello", {"a": 1}, "system", channel)])
        ((message,),) = run_sql(
            self.url, "SELECT realtime.message_json(m) FROM realtime.messages m"
        )
        self.assertEqual(
            sorted(message),
            ["channel", "createdAt", "event", "messageId", "payload", "senderId", "senderType"],
        )
        self.assertEqual(message["messageId"], message_id)
        self.assertEqual(
            {k: message[k] for k in ("channel", "event", "senderType", "senderId", "payload")},
            {
                "channel": "room:1",
                "event": "hello",
                "senderType": "system",
                "senderId": None,
                "payload": {"a": 1},
            },
        )
        self.assertRegex(message["createdAt"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

    def test_publish_large_polled_whole(self) -> None:
        """
        A message far larger than a NOTIFY could carry is stored, and
        C{realtime.messages_between()} returns it whole.
        """
        self.channel("room:*")
        poller = self.connect()
        since = snapshot(poller)
        payload = {"t": "x" * 9000}
        message_id = publish(poller, "big", payload=json.dumps(payload))
        rows = query(
            poller,
            "SELECT m.id::text, m.payload, realtime.message_json(m), "
            "octet_length(realtime.message_json(m)::text) "
            "FROM realtime.messages_between(%s::pg_snapshot, pg_current_snapshot(), "
            "NULL, NULL, 100) m",
            (since,),
        )
        self.assertEqual(len(rows), 1)
        ((polled_id, stored, message, size),) = rows
        self.assertEqual(polled_id, str(message_id))
        self.assertEqual(stored, payload)
        self.assertEqual(message["payload"], payload)
        self.assertEqual(message["event"], "big")
        self.assertGreater(size, 9000)

    def test_publish_without_channel(self) -> None:
        """
        With no enabled channel owning the name, C{realtime.publish()}
        returns NULL and stores nothing.
        """
        self.channel("room:*", enabled=False)
        rows = run_sql(self.url, "SELECT realtime.publish('room:1', 'hello', '{}')")
        self.assertEqual(rows, [(None,)])
        rows = run_sql(self.url, "SELECT realtime.publish('other', 'hello', '{}')")
        self.assertEqual(rows, [(None,)])
        self.assertEqual(self.messages(), [])

    def test_publish_not_for_callers(self) -> None:
        """
        The client roles cannot call C{realtime.publish()} directly.
        """
        self.channel("room:*")
        with self.assertRaises(psycopg2.errors.InsufficientPrivilege):
            self.as_role("authenticated", "SELECT realtime.publish('room:1', 'x', '{}')")

    def test_track_table_template(self) -> None:
        """
        A tracked table publishes INSERT, UPDATE and DELETE with the row as
        payload (the old row for DELETE), on a channel made from the row.
        """
        channel = self.channel("order:*")
        run_sql(self.url, "CREATE TABLE public.orders (id int PRIMARY KEY, status text)")
        run_sql(self.url, "SELECT realtime.track_table('public.orders', 'order:{id}')")
        run_sql(self.url, "INSERT INTO public.orders VALUES (7, 'new')")
        run_sql(self.url, "UPDATE public.orders SET status = 'paid' WHERE id = 7")
        run_sql(self.url, "DELETE FROM public.orders WHERE id = 7")
        self.assertEqual(
            self.messages(),
            [
                ("order:7", "INSERT", {"id": 7, "status": "new"}, "system", channel),
                ("order:7", "UPDATE", {"id": 7, "status": "paid"}, "system", channel),
                ("order:7", "DELETE", {"id": 7, "status": "paid"}, "system", channel),
            ],
        )

    def test_track_table_default_channel(self) -> None:
        """
        Without a channel, a tracked table publishes on its own name; a
        change with no owning channel publishes nothing and does not fail.
        """
        run_sql(self.url, "CREATE TABLE public.items (id int PRIMARY KEY)")
        run_sql(self.url, "SELECT realtime.track_table('public.items')")
        run_sql(self.url, "INSERT INTO public.items VALUES (1)")
        self.assertEqual(self.messages(), [])
        channel = self.channel("items")
        run_sql(self.url, "INSERT INTO public.items VALUES (2)")
        self.assertEqual(self.messages(), [("items", "INSERT", {"id": 2}, "system", channel)])

    def test_untrack_table(self) -> None:
        """
        After C{realtime.untrack_table()} changes are no longer published.
        """
        self.channel("items")
        run_sql(self.url, "CREATE TABLE public.items (id int PRIMARY KEY)")
        run_sql(self.url, "SELECT realtime.track_table('public.items')")
        run_sql(self.url, "SELECT realtime.untrack_table('public.items')")
        run_sql(self.url, "INSERT INTO public.items VALUES (1)")
        self.assertEqual(self.messages(), [])


class PrepareMessageTests(SchemaTestCase):
    """
    The BEFORE INSERT trigger realtime.prepare_message(): the inserting
    transaction, the order of insertion and the webhook audience of each
    message, whatever the INSERT says; and the webhook outbox it feeds.
    """

    INSERT = (
        "INSERT INTO realtime.messages "
        "(event_name, channel_id, channel_name, sender_type, xact_id, seq, "
        "wh_audience_count, wh_delivered_count) "
        "VALUES (%s, %s, %s, 'user', '1'::xid8, %s, 5, 3) "
        "RETURNING xact_id = pg_current_xact_id(), seq, wh_audience_count, "
        "wh_delivered_count, id::text"
    )

    def test_xact_id_is_the_inserting_transaction(self) -> None:
        """
        A message records the transaction that inserted it, whatever the
        inserting statement says.
        """
        channel = self.channel("room:*")
        rows = run_sql(
            self.url,
            "WITH m AS (INSERT INTO realtime.messages "
            "(event_name, channel_id, channel_name, sender_type, xact_id) "
            "VALUES ('x', %s, 'room:1', 'user', '1'::xid8) RETURNING xact_id) "
            "SELECT m.xact_id = pg_current_xact_id() FROM m",
            (channel,),
        )
        self.assertEqual(rows, [(True,)])

    def test_seq_in_insertion_order(self) -> None:
        """
        C{seq} increases in the order messages are inserted, across
        transactions that interleave, whatever the INSERT says.
        """
        channel = self.channel("room:*")
        first = self.connect(autocommit=False)
        second = self.connect()
        seqs = []
        for connection, event, given in [
            (first, "a", 1_000_000),
            (second, "b", None),
            (first, "c", -1),
            (second, "d", 1_000_000),
            (first, "e", None),
        ]:
            ((stamped, seq, _, _, _),) = query(
                connection, self.INSERT, (event, channel, "room:1", given)
            )
            self.assertTrue(stamped)
            seqs.append(seq)
        first.commit()
        self.assertEqual(seqs, sorted(set(seqs)))
        self.assertNotIn(1_000_000, seqs)
        self.assertNotIn(-1, seqs)
        self.assertEqual(
            run_sql(self.url, "SELECT event_name FROM realtime.messages ORDER BY seq"),
            [("a",), ("b",), ("c",), ("d",), ("e",)],
        )

    def test_webhook_deliveries_only_with_urls(self) -> None:
        """
        A message on a channel without webhook URLs has a webhook audience
        of 0 and queues no delivery (the outbox trigger does not even run);
        one on a channel with two URLs has an audience of 2 and queues one
        pending delivery per URL.  Nothing is delivered yet, whatever the
        INSERT says.
        """
        quiet = self.channel("quiet:*")
        hooked = self.channel("hooked:*")
        run_sql(
            self.url,
            "UPDATE realtime.channels SET webhook_urls = %s WHERE id = %s",
            (["https://one.example/hook", "https://Two.example:8443/hook"], hooked),
        )
        connection = self.connect(autocommit=False)
        # Counts the trigger functions run in this transaction, in
        # pg_stat_xact_user_functions.
        query(connection, "SET LOCAL track_functions = 'all'")

        def enqueue_calls() -> int:
            rows = query(
                connection,
                "SELECT coalesce(sum(calls), 0) FROM pg_stat_xact_user_functions "
                "WHERE schemaname = 'realtime' AND funcname = 'webhook_enqueue'",
            )
            return int(rows[0][0])

        ((_, _, audience, delivered, quiet_id),) = query(
            connection, self.INSERT, ("q", quiet, "quiet:1", None)
        )
        self.assertEqual((audience, delivered), (0, 0))
        self.assertEqual(enqueue_calls(), 0)
        ((_, _, audience, delivered, hooked_id),) = query(
            connection, self.INSERT, ("h", hooked, "hooked:1", None)
        )
        self.assertEqual((audience, delivered), (2, 0))
        self.assertEqual(enqueue_calls(), 1)
        connection.commit()

        self.assertEqual(
            run_sql(
                self.url,
                "SELECT message_id::text, url, host, status FROM realtime.webhook_deliveries "
                "ORDER BY url",
            ),
            [
                (hooked_id, "https://Two.example:8443/hook", "two.example", "pending"),
                (hooked_id, "https://one.example/hook", "one.example", "pending"),
            ],
        )
        self.assertEqual(
            run_sql(
                self.url,
                "SELECT id::text, wh_audience_count, wh_delivered_count "
                "FROM realtime.messages ORDER BY seq",
            ),
            [(quiet_id, 0, 0), (hooked_id, 2, 0)],
        )


class DoorbellTests(SchemaTestCase):
    """
    The doorbell: a statement that stores messages sends NOTIFY on
    realtime_wakeup when, and only when, some session dozes (holds the
    sleep lock through realtime.listener_doze()).
    """

    def setUp(self) -> Any:
        d = super().setUp()

        def ready(result: object) -> object:
            self.listener = self.connect()
            listen_for_wakeups(self.listener)
            return result

        return d.addCallback(ready)

    def wakeups(self) -> list[str]:
        return wakeups(self.listener, self.url)

    def doze(self) -> Any:
        """
        A new session that dozes.
        """
        sleeper = self.connect()
        query(sleeper, "SELECT realtime.listener_doze()")
        return sleeper

    def count(self) -> int:
        return int(run_sql(self.url, "SELECT count(*) FROM realtime.messages")[0][0])

    def test_silent_while_nobody_dozes(self) -> None:
        """
        With no session dozing, storing messages sends no notification: not
        for a publish, nor for a transaction of several.  The same listener
        hears the doorbell as soon as a session dozes.
        """
        self.channel("room:*")
        run_sql(self.url, "SELECT realtime.publish('room:1', 'a', '{}')")
        run_sql(self.url, "SELECT realtime.publish('room:1', 'b', '{}')")
        connection = self.connect(autocommit=False)
        publish(connection, "c")
        publish(connection, "d")
        connection.commit()
        self.assertEqual(self.count(), 4)
        self.assertEqual(self.wakeups(), [])

        self.doze()
        run_sql(self.url, "SELECT realtime.publish('room:1', 'e', '{}')")
        self.assertEqual(self.wakeups(), [""])

    def test_rings_while_a_session_dozes(self) -> None:
        """
        While a session dozes, every committed transaction that stored
        messages rings once (PostgreSQL folds the identical notifications of
        one transaction); publishing nothing does not ring.  After
        C{realtime.listener_wake()} the doorbell is silent again.
        """
        self.channel("room:*")
        sleeper = self.doze()
        self.assertEqual(self.wakeups(), [])

        run_sql(self.url, "SELECT realtime.publish('room:1', 'a', '{}')")
        self.assertEqual(self.wakeups(), [""])

        run_sql(self.url, "SELECT realtime.publish('room:1', 'b', '{}')")
        run_sql(self.url, "SELECT realtime.publish('room:1', 'c', '{}')")
        self.assertEqual(self.wakeups(), ["", ""])

        connection = self.connect(autocommit=False)
        publish(connection, "d")
        publish(connection, "e")
        connection.commit()
        self.assertEqual(self.wakeups(), [""])

        connection = self.connect(autocommit=False)
        publish(connection, "f")
        connection.rollback()
        self.assertIsNone(publish(self.connect(), "g", channel="nobody"))
        self.assertEqual(self.wakeups(), [])
        self.assertEqual(self.count(), 5)

        query(sleeper, "SELECT realtime.listener_wake()")
        run_sql(self.url, "SELECT realtime.publish('room:1', 'h', '{}')")
        self.assertEqual(self.count(), 6)
        self.assertEqual(self.wakeups(), [])

    def test_rings_until_the_last_sleeper_wakes(self) -> None:
        """
        With two sessions dozing, the doorbell rings until both have woken.
        """
        self.channel("room:*")
        first = self.doze()
        second = self.doze()
        run_sql(self.url, "SELECT realtime.publish('room:1', 'a', '{}')")
        self.assertEqual(self.wakeups(), [""])
        query(first, "SELECT realtime.listener_wake()")
        run_sql(self.url, "SELECT realtime.publish('room:1', 'b', '{}')")
        self.assertEqual(self.wakeups(), [""])
        query(second, "SELECT realtime.listener_wake()")
        run_sql(self.url, "SELECT realtime.publish('room:1', 'c', '{}')")
        self.assertEqual(self.count(), 3)
        self.assertEqual(self.wakeups(), [])

    def test_tracked_table_rings(self) -> None:
        """
        Changes of a tracked table ring the same way: not while nobody
        dozes; once per committed statement (several rows included) while a
        session dozes; not after it wakes.
        """
        self.channel("order:*")
        run_sql(self.url, "CREATE TABLE public.orders (id int PRIMARY KEY, status text)")
        run_sql(self.url, "SELECT realtime.track_table('public.orders', 'order:{id}')")
        run_sql(self.url, "INSERT INTO public.orders VALUES (1, 'new')")
        self.assertEqual(self.count(), 1)
        self.assertEqual(self.wakeups(), [])

        sleeper = self.doze()
        run_sql(self.url, "INSERT INTO public.orders VALUES (2, 'new')")
        self.assertEqual(self.wakeups(), [""])
        run_sql(self.url, "UPDATE public.orders SET status = 'paid'")
        self.assertEqual(self.count(), 4)
        self.assertEqual(self.wakeups(), [""])

        query(sleeper, "SELECT realtime.listener_wake()")
        run_sql(self.url, "DELETE FROM public.orders")
        self.assertEqual(self.count(), 6)
        self.assertEqual(self.wakeups(), [])


class GateTests(SchemaTestCase):
    """
    The gate: realtime.listener_gate_clear() is true iff no open
    transaction has stored messages; it never waits.
    """

    def gate_clear(self, connection: Any) -> bool:
        return bool(query(connection, "SELECT realtime.listener_gate_clear()")[0][0])

    def test_closed_while_a_storing_transaction_is_open(self) -> None:
        """
        While a transaction that stored a message is open, the gate is not
        clear (asking again does not wait, nor keep others from storing);
        once it commits or rolls back, it is.
        """
        self.channel("room:*")
        listener = self.connect()
        self.assertTrue(self.gate_clear(listener))

        storing = self.connect(autocommit=False)
        publish(storing, "a")
        self.assertFalse(self.gate_clear(listener))
        self.assertFalse(self.gate_clear(listener))
        other = self.connect(autocommit=False)
        publish(other, "b")
        other.commit()
        self.assertFalse(self.gate_clear(listener))
        storing.commit()
        self.assertTrue(self.gate_clear(listener))

        publish(storing, "c")
        self.assertFalse(self.gate_clear(listener))
        storing.rollback()
        self.assertTrue(self.gate_clear(listener))

    def test_clear_while_nothing_stored(self) -> None:
        """
        An open transaction that stored nothing (a publish without an owning
        channel, a tracked change without one, reads of the messages, an
        INSERT of no rows) leaves the gate clear, until it stores a message.
        """
        self.channel("room:*")
        run_sql(self.url, "CREATE TABLE public.items (id int PRIMARY KEY)")
        run_sql(self.url, "SELECT realtime.track_table('public.items')")
        listener = self.connect()
        connection = self.connect(autocommit=False)
        self.assertIsNone(publish(connection, "a", channel="nobody"))
        query(connection, "INSERT INTO public.items VALUES (1)")
        query(connection, "SELECT * FROM realtime.messages")
        query(
            connection,
            "INSERT INTO realtime.messages (event_name, channel_name, sender_type)"
            " SELECT 'x', 'room:1', 'system' WHERE false",
        )
        self.assertTrue(self.gate_clear(listener))
        publish(connection, "b")
        self.assertFalse(self.gate_clear(listener))
        connection.commit()
        self.assertTrue(self.gate_clear(listener))

    def test_handshake(self) -> None:
        """
        A transaction that stored messages before a listener dozed does not
        ring, but keeps the gate closed until it ends; what it stores after
        the listener dozed rings.
        """
        self.channel("room:*")
        listener = self.connect()
        listen_for_wakeups(listener)
        storing = self.connect(autocommit=False)
        publish(storing, "a")
        query(listener, "SELECT realtime.listener_doze()")
        self.assertFalse(self.gate_clear(listener))
        storing.commit()
        self.assertTrue(self.gate_clear(listener))
        self.assertEqual(wakeups(listener, self.url), [])

        publish(storing, "b")
        query(listener, "SELECT realtime.listener_wake()")
        self.assertFalse(self.gate_clear(listener))
        storing.commit()
        self.assertEqual(wakeups(listener, self.url), [""])


# The poll as realtimed's listener runs it (realtimed/store/listener.py):
# the snapshot read up to (the current one, taken in the same statement,
# unless given) and the messages between, in the order messages_between()
# returns them; one row of NULLs when there are none.
POLL = """
WITH s AS (SELECT coalesce(%(upto)s::pg_snapshot, pg_current_snapshot()) AS upto)
SELECT s.upto::text, m.xact_id::text, m.seq, m.event_name
FROM s LEFT JOIN LATERAL realtime.messages_between(
    %(since)s::pg_snapshot, s.upto, %(xact)s::xid8, %(seq)s::bigint, %(limit)s) m ON true
"""


class MessagesBetweenTests(SchemaTestCase):
    """
    realtime.messages_between(): the messages committed after one snapshot
    and visible in another, in (transaction, seq) order, page by page.
    """

    def poll(
        self,
        connection: Any,
        since: str,
        upto: str | None = None,
        after: tuple[str | None, int | None] = (None, None),
        limit: int = 100,
    ) -> tuple[str, list[tuple[str, int, str]]]:
        """
        Run L{POLL}: the snapshot read up to and the messages as
        C{(xact_id, seq, event_name)}.
        """
        rows = query(
            connection,
            POLL,
            {"since": since, "upto": upto, "xact": after[0], "seq": after[1], "limit": limit},
        )
        (read_upto,) = {row[0] for row in rows}
        if upto is not None:
            self.assertEqual(read_upto, upto)
        if rows == [(read_upto, None, None, None)]:
            return read_upto, []
        return read_upto, [(xact, seq, event) for _, xact, seq, event in rows]

    def assertOrdered(self, messages: list[tuple[str, int, str]]) -> None:
        """
        C{messages} are in (transaction, seq) order.
        """
        keys = [(int(xact), seq) for xact, seq, _ in messages]
        self.assertEqual(keys, sorted(keys))

    def test_successive_polls(self) -> None:
        """
        Successive polls, each from the snapshot the previous one read up
        to, return every message committed after the first snapshot exactly
        once, in transaction order and, within a transaction, in the order
        stored, however the transactions interleave: a transaction in
        progress at the start, one still open at a poll and committed later,
        one committed after the snapshot a read goes up to.
        """
        self.channel("room:*")
        poller = self.connect()

        early = self.connect(autocommit=False)
        publish(early, "z1")
        early_xact = current_xact(early)
        publish(self.connect(), "w1")
        since = snapshot(poller)
        self.assertTrue(in_progress(poller, early_xact, since))

        late = self.connect(autocommit=False)
        publish(late, "a1")
        late_xact = current_xact(late)
        publish(self.connect(), "b1")
        several = self.connect(autocommit=False)
        for event in ("c0", "c2", "c3"):
            publish(several, event)
        # c0 becomes c1 in a new row version, placed after c2 and c3 in the
        # table and in its indexes: only seq keeps the order stored.
        query(several, "UPDATE realtime.messages SET event_name = 'c1' WHERE event_name = 'c0'")
        several.commit()
        early.commit()

        upto1, first = self.poll(poller, since)
        self.assertEqual([e for _, _, e in first], ["z1", "b1", "c1", "c2", "c3"])
        self.assertOrdered(first)
        self.assertTrue(in_progress(poller, late_xact, upto1))

        publish(late, "a2")
        publish(self.connect(), "f1")
        upto2 = snapshot(poller)
        late.commit()
        publish(self.connect(), "e1")
        # a1, a2 and e1 are committed when this reads, but not in upto2.
        _, second = self.poll(poller, upto1, upto=upto2)
        self.assertEqual([e for _, _, e in second], ["f1"])
        self.assertTrue(in_progress(poller, late_xact, upto2))

        upto3, third = self.poll(poller, upto2)
        self.assertEqual([e for _, _, e in third], ["a1", "a2", "e1"])
        self.assertOrdered(third)
        self.assertEqual({x for x, _, e in third if e.startswith("a")}, {late_xact})

        _, fourth = self.poll(poller, upto3)
        self.assertEqual(fourth, [])

        polled = Counter(e for _, _, e in first + second + third)
        stored = Counter(
            e for (e,) in run_sql(self.url, "SELECT event_name FROM realtime.messages")
        )
        del stored["w1"]
        self.assertEqual(polled, stored)
        self.assertEqual(set(polled.values()), {1})

    def test_pages(self) -> None:
        """
        Read with a fixed C{upto}, page by page with C{max_rows} 2 and the
        position of the last message read, the messages come exactly once
        and in order, across transactions and within one; a message
        committed after C{upto} is left for the next poll.
        """
        self.channel("room:*")
        poller = self.connect()
        early = self.connect(autocommit=False)
        for event in ("z1", "z2", "z3"):
            publish(early, event)
        early_xact = current_xact(early)
        publish(self.connect(), "w1")
        since = snapshot(poller)
        self.assertTrue(in_progress(poller, early_xact, since))

        several = self.connect(autocommit=False)
        for event in ("b1", "b2", "b3"):
            publish(several, event)
        several.commit()
        publish(self.connect(), "c1")
        early.commit()
        upto = snapshot(poller)
        publish(self.connect(), "d1")

        pages = []
        after: tuple[str | None, int | None] = (None, None)
        while True:
            _, page = self.poll(poller, since, upto=upto, after=after, limit=2)
            pages.append([e for _, _, e in page])
            if len(page) < 2:
                break
            after = page[-1][:2]
            self.assertLess(len(pages), 10)
        self.assertEqual(pages, [["z1", "z2"], ["z3", "b1"], ["b2", "b3"], ["c1"]])

        _, rest = self.poll(poller, upto)
        self.assertEqual([e for _, _, e in rest], ["d1"])


class OwningChannelTests(SchemaTestCase):
    """
    realtime.owning_channel(): exact beats wildcard, more literal
    characters win, then the oldest; disabled channels own nothing.
    """

    def owner(self, name: str) -> str | None:
        rows = run_sql(self.url, "SELECT (realtime.owning_channel(%s)).pattern", (name,))
        return rows[0][0]

    def test_precedence(self) -> None:
        """
        The exact pattern wins over wildcards; among wildcards, the one
        with more literal characters; among equals, the oldest.
        """
        self.channel("a:*", created_at="2020-01-01")
        self.channel("a:b*", created_at="2020-01-02")
        self.channel("a:bc", created_at="2020-01-03")
        self.channel("*:bc", created_at="2019-01-01")
        self.channel("x*y", created_at="2020-01-02")
        self.channel("*xy", created_at="2020-01-01")
        self.assertEqual(self.owner("a:bc"), "a:bc")
        self.assertEqual(self.owner("a:bd"), "a:b*")
        self.assertEqual(self.owner("a:z"), "a:*")
        self.assertEqual(self.owner("q:bc"), "*:bc")
        self.assertEqual(self.owner("xy"), "*xy")
        self.assertIsNone(self.owner("nothing"))

    def test_disabled_and_literal_underscore(self) -> None:
        """
        A disabled channel owns nothing; C{_} in a pattern is a literal
        character, not a LIKE wildcard.
        """
        self.channel("room_*", enabled=False)
        self.channel("a_b")
        self.assertIsNone(self.owner("room_1"))
        self.assertEqual(self.owner("a_b"), "a_b")
        self.assertIsNone(self.owner("axb"))


class ChannelAnnouncementTests(SchemaTestCase):
    """
    Changes of channel rows are announced on realtime_channels, with each
    row's old and new pattern, enabled flag and creation time.
    """

    def announcements(self, listener: Any) -> list[Any]:
        """
        The announcements received by C{listener} so far, decoded.
        """
        run_sql(self.url, "NOTIFY realtime_channels_done")
        found = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            listener.poll()
            while listener.notifies:
                notify = listener.notifies.pop(0)
                if notify.channel == "realtime_channels_done":
                    return found
                found.append(json.loads(notify.payload))
            select.select([listener], [], [], 0.1)
        raise AssertionError("the marker notification did not arrive")

    def test_changes(self) -> None:
        """
        A create, an update and a delete each announce the rows changed.
        """
        listener = self.connect()
        query(listener, "LISTEN realtime_channels; LISTEN realtime_channels_done")
        first = self.channel("order:*")
        run_sql(self.url, "UPDATE realtime.channels SET enabled = false WHERE id = %s", (first,))
        run_sql(self.url, "DELETE FROM realtime.channels WHERE id = %s", (first,))
        created, updated, deleted = self.announcements(listener)
        ((insert,),) = [created["changes"]]
        self.assertEqual((insert["id"], insert["old"]), (first, None))
        self.assertEqual((insert["new"]["pattern"], insert["new"]["enabled"]), ("order:*", True))
        self.assertIsInstance(insert["new"]["created_at"], float)
        ((update,),) = [updated["changes"]]
        self.assertEqual((update["old"]["enabled"], update["new"]["enabled"]), (True, False))
        ((delete,),) = [deleted["changes"]]
        self.assertEqual((delete["old"]["pattern"], delete["new"]), ("order:*", None))

    def test_too_many(self) -> None:
        """
        A statement changing more rows than one notification can describe
        announces {} (check everything).
        """
        listener = self.connect()
        query(listener, "LISTEN realtime_channels; LISTEN realtime_channels_done")
        run_sql(
            self.url,
            "INSERT INTO realtime.channels (pattern)"
            " SELECT 'c' || g || ':*' FROM generate_series(1, 500) AS g",
        )
        self.assertEqual(self.announcements(listener), [{}])


class GrantTests(SchemaTestCase):
    """
    Who may do what from SQL: no security-definer function is open to
    PUBLIC; realtime_publisher may publish; tracked tables publish for
    every role that writes them.
    """

    def test_no_definer_open_to_public(self) -> None:
        """
        No security-definer function of the realtime schema is executable
        by PUBLIC (a NULL ACL means the default, which lets PUBLIC execute).
        """
        rows = run_sql(
            self.url,
            "SELECT p.oid::regprocedure::text FROM pg_proc p"
            " JOIN pg_namespace n ON n.oid = p.pronamespace"
            " WHERE n.nspname = 'realtime' AND p.prosecdef AND (p.proacl IS NULL OR EXISTS ("
            "  SELECT FROM aclexplode(p.proacl) a"
            "  WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE'))",
        )
        self.assertEqual(rows, [])

    def test_publisher_role(self) -> None:
        """
        A role granted realtime_publisher may call realtime.publish; a role
        without it may not.
        """
        self.channel("jobs")
        role = "app_" + uuid.uuid4().hex[:12]
        run_sql(self.url, f"CREATE ROLE {role} NOLOGIN")
        self.addCleanup(run_sql, self.url, f"DROP ROLE {role}")
        with self.assertRaises(psycopg2.errors.InsufficientPrivilege):
            self.as_role(role, "SELECT realtime.publish('jobs', 'done', '{}')")
        run_sql(self.url, f"GRANT realtime_publisher TO {role}")
        self.addCleanup(run_sql, self.url, f"REVOKE realtime_publisher FROM {role}")
        connection = self.connect()
        query(connection, f"SET ROLE {role}")
        (message_id,) = query(connection, "SELECT realtime.publish('jobs', 'done', '{}')")[0]
        self.assertIsNotNone(message_id)
        with self.assertRaises(psycopg2.errors.InvalidParameterValue) as raised:
            query(connection, "SELECT realtime.publish('not a name', 'done', '{}')")
        self.assertIn("'not a name' is not a channel name", str(raised.exception))

    def test_tracked_by_any_writer(self) -> None:
        """
        A tracked table's changes are published whichever role writes it,
        though PUBLIC may not execute the trigger function itself.
        """
        self.channel("notes")
        role = "writer_" + uuid.uuid4().hex[:12]
        run_sql(
            self.url,
            f"CREATE ROLE {role} NOLOGIN; CREATE TABLE public.notes (id int, body text);"
            f" GRANT INSERT ON public.notes TO {role};"
            " SELECT realtime.track_table('public.notes')",
        )
        self.addCleanup(run_sql, self.url, f"DROP TABLE public.notes; DROP ROLE {role}")
        connection = self.connect()
        query(connection, f"SET ROLE {role}")
        query(connection, "INSERT INTO public.notes VALUES (1, 'hi')")
        self.assertEqual(
            run_sql(self.url, "SELECT channel_name, event_name FROM realtime.messages"),
            [("notes", "INSERT")],
        )

    def test_bad_template_value(self) -> None:
        """
        A change whose template gives something that is not a channel name
        (a NULL column, a space) is written but not published, with a
        warning; the others are published.
        """
        self.channel("order:*")
        run_sql(
            self.url,
            "CREATE TABLE public.orders (id int, code text);"
            " SELECT realtime.track_table('public.orders', 'order:{code}')",
        )
        self.addCleanup(run_sql, self.url, "DROP TABLE public.orders")
        connection = self.connect()
        query(connection, "INSERT INTO public.orders VALUES (1, 'a b'), (2, NULL), (3, 'ok')")
        self.assertEqual(run_sql(self.url, "SELECT count(*) FROM public.orders"), [(3,)])
        self.assertEqual(
            run_sql(self.url, "SELECT channel_name FROM realtime.messages"), [("order:ok",)]
        )
        warnings = [n for n in connection.notices if "not published" in n]
        self.assertEqual(len(warnings), 2, connection.notices)
        self.assertIn("'order:a b'", warnings[0])
