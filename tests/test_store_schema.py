"""
Tests for the realtime schema (0001_schema.sql) against a real PostgreSQL:
the default policies, realtime.channel_name(), realtime.publish(),
realtime.track_table() and the channel precedence of
realtime.owning_channel().
"""

from __future__ import annotations

import json
import select
import time
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


def notifications(connection: Any, count: int, timeout: float = 10.0) -> list[Any]:
    """
    Wait for C{count} notifications on a LISTENing psycopg2 connection.
    """
    deadline = time.monotonic() + timeout
    while len(connection.notifies) < count and time.monotonic() < deadline:
        select.select([connection], [], [], 0.1)
        connection.poll()
    return list(connection.notifies)


class PublishTests(SchemaTestCase):
    """
    realtime.publish() and realtime.track_table().
    """

    def listen(self) -> Any:
        connection = psycopg2.connect(self.url)
        connection.autocommit = True
        self.addCleanup(connection.close)
        with connection.cursor() as cursor:
            cursor.execute("LISTEN realtime_messages")
        return connection

    def messages(self) -> list[tuple[Any, ...]]:
        return run_sql(
            self.url,
            "SELECT channel_name, event_name, payload, sender_type, channel_id::text "
            "FROM realtime.messages ORDER BY created_at, xact_id",
        )

    def test_publish_stores_and_notifies(self) -> None:
        """
        C{realtime.publish()} stores a system message on the owning channel
        and announces it with NOTIFY in the delivered shape.
        """
        channel = self.channel("room:*")
        listener = self.listen()
        rows = run_sql(self.url, "SELECT realtime.publish('room:1', 'hello', '{\"a\": 1}')")
        message_id = str(rows[0][0])
        self.assertEqual(self.messages(), [("room:1", "hello", {"a": 1}, "system", channel)])
        (notify,) = notifications(listener, 1)
        self.assertEqual(notify.channel, "realtime_messages")
        body = json.loads(notify.payload)
        self.assertEqual(body["channelId"], channel)
        message = body["message"]
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

    def test_publish_large_announces_id(self) -> None:
        """
        A message too large for NOTIFY is announced by its id alone.
        """
        self.channel("room:*")
        listener = self.listen()
        rows = run_sql(
            self.url,
            "SELECT realtime.publish('room:1', 'big', %s::jsonb)",
            (json.dumps({"t": "x" * 9000}),),
        )
        (notify,) = notifications(listener, 1)
        self.assertEqual(json.loads(notify.payload), {"id": str(rows[0][0])})

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
        listener = self.listen()
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
        events = [json.loads(n.payload)["message"]["event"] for n in notifications(listener, 3)]
        self.assertEqual(events, ["INSERT", "UPDATE", "DELETE"])

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
