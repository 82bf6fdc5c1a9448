"""
The webhook outbox: ``realtime.webhook_deliveries``, one row per message and
webhook URL of its channel, written by a trigger in the message's own
transaction (migration 0003).  `Outbox` runs the three statements the
delivery service needs: claim due rows, record outcomes, prune finished rows.

Claiming picks due rows with ``FOR UPDATE SKIP LOCKED``, within the free
concurrency (overall and per receiving host), counts the attempt and pushes
``next_attempt_at`` past the request timeout (a lease), and commits.
Another process never picks a leased row; if this process dies mid-send,
the row becomes due again when the lease ends.  Recording updates a row only
if it still carries the claimed attempt, so a late answer never overwrites a
newer one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from attrs import define, frozen
from twisted.internet.defer import Deferred

from realtimed.store.pool import ConnectionPool, IQueries

#: The outbox has connections of its own (a pool of `CONNECTIONS`: one
#: claiming, one recording, one pruning) which run only the statements below,
#: prepared once per connection, planned once (their plan does not depend on
#: the parameters), and steered to the indexes even while the table's
#: statistics lag behind a burst.  Commits do not wait for the WAL flush:
#: were one lost in a database crash, a delivery would be sent again, never
#: lost.
_SESSION = (
    "SET synchronous_commit TO off",
    "SET plan_cache_mode TO force_generic_plan",
    "SET enable_seqscan TO off",
    "SET enable_bitmapscan TO off",
)

#: At most one claim, one write of outcomes and one pruning run at once.
CONNECTIONS = 3

_PREPARE_CLAIM = """
PREPARE webhook_claim (text[], int[], int, int, float8) AS
WITH RECURSIVE hosts (host) AS (
    -- Every host with pending deliveries, one index probe each.
    (SELECT host FROM realtime.webhook_deliveries
     WHERE status = 'pending' ORDER BY host LIMIT 1)
    UNION ALL
    SELECT (SELECT d.host FROM realtime.webhook_deliveries d
            WHERE d.status = 'pending' AND d.host > hosts.host
            ORDER BY d.host LIMIT 1)
    FROM hosts WHERE hosts.host IS NOT NULL
), room AS (
    -- How many more attempts each host may take now.
    SELECT h.host, least($3 - coalesce(b.n, 0), $4) AS n
    FROM hosts h LEFT JOIN unnest($1, $2) AS b (host, n) ON b.host = h.host
    WHERE h.host IS NOT NULL
), candidates AS (
    -- Each host's oldest due deliveries, as many as it has room for, not
    -- those another process is claiming right now.
    SELECT c.id, c.next_attempt_at
    FROM room r
    CROSS JOIN LATERAL (
        SELECT d.id, d.next_attempt_at
        FROM realtime.webhook_deliveries d
        WHERE d.status = 'pending' AND d.host = r.host AND d.next_attempt_at <= now()
        ORDER BY d.next_attempt_at
        LIMIT greatest(r.n, 0)
        FOR UPDATE SKIP LOCKED
    ) c
), chosen AS (
    -- The oldest of them all, as many as there is room for overall.
    SELECT id FROM candidates ORDER BY next_attempt_at, id LIMIT $4
)
UPDATE realtime.webhook_deliveries d
SET attempts = d.attempts + 1,
    next_attempt_at = now() + make_interval(secs => $5),
    updated_at = now()
FROM realtime.messages m
WHERE d.id = ANY (ARRAY(SELECT id FROM chosen)) AND m.id = d.message_id
RETURNING d.id, d.url, d.host, d.attempts,
          extract(epoch FROM now() - d.created_at)::float8,
          m.id::text, m.event_name, m.channel_name,
          realtime.message_json(m)::text
"""

_PREPARE_RECORD = """
PREPARE webhook_record (bigint[], int[], text[], int[], text[], float8[]) AS
WITH outcomes AS (
    SELECT *
    FROM unnest($1, $2, $3, $4, $5, $6)
        AS o (id, attempts, status, http_status, error, delay)
), recorded AS (
    UPDATE realtime.webhook_deliveries d
    SET status = o.status,
        last_status = o.http_status,
        last_error = o.error,
        next_attempt_at = CASE WHEN o.status = 'pending'
                               THEN now() + make_interval(secs => o.delay)
                               ELSE d.next_attempt_at END,
        updated_at = now()
    FROM outcomes o
    WHERE d.id = o.id AND d.attempts = o.attempts AND d.status = 'pending'
    RETURNING d.message_id, d.status
), delivered AS (
    SELECT message_id, count(*)::int AS n
    FROM recorded WHERE status = 'delivered'
    GROUP BY message_id
)
UPDATE realtime.messages m
SET wh_delivered_count = m.wh_delivered_count + delivered.n
FROM delivered
WHERE m.id = delivered.message_id
"""

# (An array of NULLs is text[] to PostgreSQL, hence the casts.)
_CLAIM = (
    "EXECUTE webhook_claim (%(busy_hosts)s::text[], %(busy_counts)s::int[],"
    " %(per_host)s, %(free)s, %(lease)s)"
)

_RECORD = (
    "EXECUTE webhook_record (%(ids)s::bigint[], %(attempts)s::int[],"
    " %(statuses)s::text[], %(http_statuses)s::int[], %(errors)s::text[],"
    " %(delays)s::float8[])"
)

_PRUNE = """
WITH gone AS (
    DELETE FROM realtime.webhook_deliveries
    WHERE id IN (
        SELECT id FROM realtime.webhook_deliveries
        WHERE status <> 'pending'
          AND updated_at < now() - make_interval(secs => %(age)s)
        LIMIT %(batch)s
    )
    RETURNING 1
)
SELECT count(*) FROM gone
"""


@frozen
class Delivery:
    """
    A claimed delivery: one attempt to POST one message to one URL.

    @ivar attempts: Attempts made, this one included.
    @ivar age: Seconds since the delivery was queued, at the claim.
    @ivar body: The message as delivered on sockets, JSON.
    """

    id: int
    url: str
    host: str
    attempts: int
    age: float
    message_id: str
    event: str
    channel: str
    body: bytes


@frozen
class Outcome:
    """
    What became of one attempt, to be recorded.

    @ivar status: The delivery's new status: delivered, pending, failed.
    @ivar delay: For pending, seconds until the next attempt.
    """

    delivery: Delivery
    status: str
    http_status: int | None = None
    error: str | None = None
    delay: float = 0.0


#: What each connection of the outbox's pool runs before its first query.
SESSION_SETUP: tuple[str, ...] = (*_SESSION, _PREPARE_CLAIM, _PREPARE_RECORD)


@define
class Outbox:
    """
    The outbox's statements, on a pool set up with L{SESSION_SETUP} (at
    most L{CONNECTIONS} connections are ever used at once).
    """

    pool: IQueries

    def claim(
        self, busy: Mapping[str, int], per_host: int, free: int, lease: float
    ) -> Deferred[list[Delivery]]:
        """
        Lease the oldest due deliveries: at most C{free} overall, and no
        more per host than C{per_host} less what is C{busy} there already.

        @param busy: Attempts in flight per host.
        @param lease: Seconds before a claimed row is due again.
        """
        d: Deferred[Any] = self.pool.runQuery(
            _CLAIM,
            {
                "busy_hosts": list(busy),
                "busy_counts": list(busy.values()),
                "per_host": per_host,
                "free": free,
                "lease": lease,
            },
        )
        return d.addCallback(lambda rows: [_delivery(row) for row in rows])

    def record(self, outcomes: Sequence[Outcome]) -> Deferred[None]:
        """
        Write the outcomes of attempts in one statement, counting the
        deliveries on their messages.
        """
        return self.pool.runOperation(
            _RECORD,
            {
                "ids": [o.delivery.id for o in outcomes],
                "attempts": [o.delivery.attempts for o in outcomes],
                "statuses": [o.status for o in outcomes],
                "http_statuses": [o.http_status for o in outcomes],
                "errors": [o.error for o in outcomes],
                "delays": [o.delay for o in outcomes],
            },
        )

    def prune(self, older_than: float, batch: int = 5000) -> Deferred[int]:
        """
        Delete delivered and failed rows last changed more than
        C{older_than} seconds ago, C{batch} rows per statement.

        @return: A Deferred firing with how many rows were deleted.
        """
        total = 0

        def step(rows: list[tuple[Any, ...]]) -> Any:
            nonlocal total
            deleted = int(rows[0][0])
            total += deleted
            if deleted < batch:
                return total
            return self._prune_batch(older_than, batch).addCallback(step)

        return self._prune_batch(older_than, batch).addCallback(step)

    def _prune_batch(self, older_than: float, batch: int) -> Deferred[list[tuple[Any, ...]]]:
        return self.pool.runQuery(_PRUNE, {"age": older_than, "batch": batch})


def _delivery(row: Sequence[Any]) -> Delivery:
    id_, url, host, attempts, age, message_id, event, channel, body = row
    return Delivery(id_, url, host, attempts, age, message_id, event, channel, body.encode("utf-8"))


def outbox_pool(reactor: Any, dsn: str) -> ConnectionPool:
    """
    The connections the outbox runs on: L{CONNECTIONS} of them, set up with
    L{SESSION_SETUP}.  Failed statements are reported by the delivery
    service (at most once a minute) rather than by the pool at every poll.
    """
    return ConnectionPool(
        reactor,
        dsn,
        size=CONNECTIONS,
        setup=SESSION_SETUP,
        warn_connect_failures=False,
        application_name="realtimed webhooks",
    )
