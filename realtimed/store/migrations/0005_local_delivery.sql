-- Publishes stored by a realtimed process are handed to its own sockets as
-- soon as the batch is stored, without waiting for its listener's next poll,
-- when that keeps the order: every message another transaction committed
-- before has been handed over by the listener already.  The listener passes
-- the snapshot it has read up to (`since`) and the transactions after it
-- that it handed over already (`handed`: batches of its own process); the
-- batch answers whether every message committed so far, other than its own,
-- is visible in that snapshot or in one of those transactions (`settled`).  Messages committed after the check come from transactions
-- that ran at the same time as the batch, in no defined order with it.

-- Has every message committed so far, other than the current transaction's,
-- a transaction visible in `since` or listed in `handed`?  False for a NULL
-- `since`.
CREATE FUNCTION realtime.settled_since(since pg_snapshot, handed xid8[]) RETURNS boolean
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
    DECLARE
        own xid8 := pg_current_xact_id_if_assigned();
    BEGIN
        IF since IS NULL THEN
            RETURN false;
        END IF;
        RETURN NOT EXISTS (
                   SELECT FROM realtime.messages m
                   WHERE m.xact_id = ANY (ARRAY(SELECT pg_snapshot_xip(since)))
                     AND m.xact_id IS DISTINCT FROM own
                     AND NOT m.xact_id = ANY (coalesce(handed, '{}')))
           AND NOT EXISTS (
                   SELECT FROM realtime.messages m
                   WHERE m.xact_id >= pg_snapshot_xmax(since)
                     AND m.xact_id IS DISTINCT FROM own
                     AND NOT m.xact_id = ANY (coalesce(handed, '{}')));
    END
    $$;

-- realtime.publish_batch, answering also, for each stored item, the message
-- as delivered, its channel, its webhook audience and its transaction, and
-- for the whole batch whether it is settled against `since` and `handed`
-- (see above).  A batch of more than `local_limit` items is answered as by
-- realtime.publish_batch, never settled: under such a load the listener's
-- poll, running beside the next batch, reads the messages at less cost than
-- this statement would, which holds up the next batch.
CREATE FUNCTION realtime.publish_batch_settled(
    items jsonb, since pg_snapshot, handed xid8[], local_limit integer
)
    RETURNS TABLE (id uuid, outcome text, detail text, message jsonb, channel_id uuid,
                   webhooks integer, xact text, settled boolean)
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
                       NULL::text, false
                FROM unnest(ids, outcomes, details) WITH ORDINALITY AS r (id, outcome, detail, n)
                ORDER BY r.n;
            RETURN;
        END IF;
        is_settled := realtime.settled_since(since, handed);
        RETURN QUERY
            SELECT r.id, r.outcome, r.detail,
                   CASE WHEN m.id IS NOT NULL THEN realtime.message_json(m) END, m.channel_id,
                   m.wh_audience_count, m.xact_id::text, is_settled
            FROM unnest(ids, outcomes, details) WITH ORDINALITY AS r (id, outcome, detail, n)
            LEFT JOIN realtime.messages m ON r.outcome = 'stored' AND m.id = r.id
            ORDER BY r.n;
    END
    $$;

REVOKE ALL ON FUNCTION realtime.settled_since(pg_snapshot, xid8[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION realtime.publish_batch_settled(jsonb, pg_snapshot, xid8[], integer)
    FROM PUBLIC;
