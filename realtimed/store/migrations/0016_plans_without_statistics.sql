-- The statements that store and read messages keep to the indexes whatever
-- PostgreSQL knows, or does not know, about the messages table.
--
-- Their plans depend on the table's statistics.  Where autovacuum is off
-- (or has not reached a busy table yet) the table is never analyzed and
-- the planner keeps estimating a few hundred rows however many it holds:
-- it then joins a stored batch to its messages by reading the whole table
-- and sorts the listener's poll out of a sequential scan, once per batch
-- and once per poll, so that every publish costs more the more messages
-- are stored (5.7 ms for a batch of one at 8,700 messages, against 1 ms
-- with statistics).
--
-- The stored batch is read back with one primary key lookup per item, and
-- in the functions that read messages by transaction (the listener's poll,
-- replay) sequential scans are ruled out: they read a handful of rows
-- through an index in every case.

CREATE OR REPLACE FUNCTION realtime.publish_batch_settled(
    items jsonb, since pg_snapshot, handed xid8[], local_limit integer
)
    RETURNS TABLE (id uuid, outcome text, detail text, message jsonb, channel_id uuid,
                   webhooks integer, xact text, settled boolean, seq bigint)
    LANGUAGE plpgsql VOLATILE
    AS $$
    #variable_conflict use_column
    DECLARE
        ids uuid[];
        outcomes text[];
        details text[];
        is_settled boolean;
    BEGIN
        SELECT array_agg(b.id ORDER BY b.n), array_agg(b.outcome ORDER BY b.n),
               array_agg(b.detail ORDER BY b.n)
        INTO ids, outcomes, details
        FROM realtime.publish_batch(items) WITH ORDINALITY AS b (id, outcome, detail, n);
        IF coalesce(cardinality(ids), 0) > local_limit THEN
            RETURN QUERY
                SELECT r.id, r.outcome, r.detail, NULL::jsonb, NULL::uuid, NULL::integer,
                       NULL::text, false, NULL::bigint
                FROM unnest(ids, outcomes, details) WITH ORDINALITY AS r (id, outcome, detail, n)
                ORDER BY r.n;
            RETURN;
        END IF;
        is_settled := realtime.settled_since(since, handed);
        RETURN QUERY
            SELECT r.id, r.outcome, r.detail, m.message, m.channel_id, m.wh_audience_count,
                   m.xact_id::text, is_settled, m.seq
            FROM unnest(ids, outcomes, details) WITH ORDINALITY AS r (id, outcome, detail, n)
            -- One primary key lookup per stored item (LIMIT keeps the
            -- subquery from being turned into a join, which without
            -- statistics reads the whole table).
            LEFT JOIN LATERAL (
                SELECT realtime.message_json(m) AS message, m.channel_id, m.wh_audience_count,
                       m.xact_id, m.seq
                FROM realtime.messages m
                WHERE r.outcome = 'stored' AND m.id = r.id
                LIMIT 1) AS m ON true
            ORDER BY r.n;
    END
    $$;

ALTER FUNCTION realtime.messages_between(pg_snapshot, pg_snapshot, xid8, bigint, integer)
    SET enable_seqscan = off;
ALTER FUNCTION realtime.replay(
    pg_snapshot, xid8[], pg_snapshot, xid8, bigint, pg_snapshot, xid8[], pg_snapshot, xid8,
    bigint, jsonb, integer, boolean)
    SET enable_seqscan = off;
ALTER FUNCTION realtime.position_of(uuid)
    SET enable_seqscan = off;
