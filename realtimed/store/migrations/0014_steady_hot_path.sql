-- Statements on the publish path cost the same however many messages are
-- stored, and the messages table is only ever inserted into on that path.
--
-- 1. realtime.settled_since (0005) answered "is any message committed after
--    the listener's snapshot not yet handed over?" with two EXISTS queries.
--    Inside PL/pgSQL their plans are cached, and the generic plan of
--    `xact_id >= pg_snapshot_xmax(since)` cannot know how few rows lie past
--    the snapshot: it assumes a third of the table and scans all of it,
--    once per stored batch (hundreds of milliseconds at a million rows).
--    Each question is now "the first such transaction, in xact_id order",
--    which the xact_id index answers in a few pages under any plan.
--
-- 2. Audience counts were added to realtime.messages.ws_audience_count by an
--    UPDATE per second covering every message delivered in that second.
--    Each update wrote a new version of a wide row, rarely on the same page,
--    so every index of the table got a new entry and the table carried a
--    dead row per message until vacuum; right after a burst of publishes
--    those updates, and the bloat they left where the listener polls, kept
--    PostgreSQL busy.  The counts now go to a narrow table of their own,
--    insert-only: one row per message per flush of a process.  The column
--    keeps what was counted before this migration, and
--    realtime.ws_audience_count(m) is the total.

CREATE OR REPLACE FUNCTION realtime.settled_since(since pg_snapshot, handed xid8[]) RETURNS boolean
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
    DECLARE
        own xid8 := pg_current_xact_id_if_assigned();
    BEGIN
        IF since IS NULL THEN
            RETURN false;
        END IF;
        -- Scalar subqueries ordered by xact_id with LIMIT 1, not EXISTS: the
        -- planner drops ORDER BY and LIMIT from an EXISTS, and may then
        -- prefer a sequential scan that it expects to stop early.
        RETURN (SELECT m.xact_id FROM realtime.messages m
                WHERE m.xact_id = ANY (ARRAY(SELECT pg_snapshot_xip(since)))
                  AND m.xact_id IS DISTINCT FROM own
                  AND NOT m.xact_id = ANY (coalesce(handed, '{}'))
                ORDER BY m.xact_id
                LIMIT 1) IS NULL
           AND (SELECT m.xact_id FROM realtime.messages m
                WHERE m.xact_id >= pg_snapshot_xmax(since)
                  AND m.xact_id IS DISTINCT FROM own
                  AND NOT m.xact_id = ANY (coalesce(handed, '{}'))
                ORDER BY m.xact_id
                LIMIT 1) IS NULL;
    END
    $$;

REVOKE ALL ON FUNCTION realtime.settled_since(pg_snapshot, xid8[]) FROM PUBLIC;

-- How many sockets received a message, as counted by the realtimed
-- processes: any number of rows per message, summed.  No foreign key: its
-- check would lock the message's row, writing to the messages table again;
-- retention deletes the counts with their messages instead.
CREATE TABLE realtime.ws_audience_counts (
    message_id uuid NOT NULL,
    sockets integer NOT NULL CHECK (sockets > 0)
);

CREATE INDEX ws_audience_counts_message_id ON realtime.ws_audience_counts (message_id);

REVOKE ALL ON realtime.ws_audience_counts FROM PUBLIC;

COMMENT ON COLUMN realtime.messages.ws_audience_count IS
    'Sockets counted before migration 0014; realtime.ws_audience_count(m) is the total.';

-- A message's audience: what its column holds plus the counts since.
CREATE FUNCTION realtime.ws_audience_count(m realtime.messages) RETURNS integer
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
        SELECT m.ws_audience_count
               + coalesce((SELECT sum(a.sockets) FROM realtime.ws_audience_counts a
                           WHERE a.message_id = m.id), 0)::integer
    $$;

-- Retention (0010), deleting the audience counts of the messages it deletes.
CREATE OR REPLACE FUNCTION realtime.delete_expired_messages(batch_size integer) RETURNS integer
    LANGUAGE plpgsql VOLATILE
    AS $$
    DECLARE
        days integer;
        deleted integer;
    BEGIN
        IF NOT pg_try_advisory_xact_lock(realtime.retention_lock_key()) THEN
            RETURN NULL;
        END IF;
        SELECT c.retention_days INTO days FROM realtime.config c;
        IF days IS NULL THEN
            RETURN 0;
        END IF;
        WITH doomed AS (
            SELECT m.id
            FROM realtime.messages m
            WHERE m.created_at < now() - make_interval(days => days)
              AND NOT EXISTS (
                  SELECT 1 FROM realtime.webhook_deliveries d
                  WHERE d.message_id = m.id AND d.status = 'pending')
            ORDER BY m.created_at
            LIMIT batch_size
            FOR UPDATE SKIP LOCKED
        ), gone AS (
            DELETE FROM realtime.messages m USING doomed WHERE m.id = doomed.id
            RETURNING m.id
        ), counts AS (
            DELETE FROM realtime.ws_audience_counts a USING gone WHERE a.message_id = gone.id
        )
        SELECT count(*) INTO deleted FROM gone;
        RETURN deleted;
    END
    $$;

REVOKE ALL ON FUNCTION realtime.delete_expired_messages(integer) FROM PUBLIC;
