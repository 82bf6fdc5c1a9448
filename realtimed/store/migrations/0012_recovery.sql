-- Nothing lost across reconnections: what connection state recovery and
-- replay from a message id need, kept in the database so that any process
-- can serve a client that was connected to another.
--
-- A position in the stream a listener hands over (see
-- realtimed/store/positions.py) is: the messages visible in a snapshot
-- `since`, those of the transactions `handed`, and those of the poll in
-- progress (visible in `upto`) up to (xact, seq), or, for a batch handed
-- over between polls (no `upto`), those of transaction `xact` up to `seq`.

-- Is message (x, s) at or before the position?
CREATE FUNCTION realtime.covered(
    since pg_snapshot, handed xid8[], upto pg_snapshot, px xid8, ps bigint, x xid8, s bigint
) RETURNS boolean
    LANGUAGE sql IMMUTABLE
    AS $$
        SELECT pg_visible_in_snapshot(x, since)
            OR x = ANY (coalesce(handed, '{}'))
            OR (px IS NOT NULL AND ps IS NOT NULL AND CASE
                    WHEN upto IS NULL THEN x = px AND s <= ps
                    ELSE pg_visible_in_snapshot(x, upto) AND (x, s) <= (px, ps)
                END)
    $$;

-- The snapshot a message was stored in, for replay from its id: the
-- messages visible in it, of transactions older than its own, were handed
-- over before it by every listener.
ALTER TABLE realtime.messages ADD COLUMN stored_in pg_snapshot;

CREATE OR REPLACE FUNCTION realtime.prepare_message() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
    BEGIN
        NEW.xact_id := pg_current_xact_id();
        NEW.seq := nextval('realtime.messages_seq');
        NEW.stored_in := pg_current_snapshot();
        NEW.wh_audience_count := cardinality(realtime.webhook_urls_of(NEW.channel_id));
        NEW.wh_delivered_count := 0;
        RETURN NEW;
    END
    $$;

-- The messages a client missed: those covered by position `h` (what the
-- listener of the process serving it had handed over when its
-- subscriptions were registered again) and not by its position `o`, on its
-- subscriptions `subs` (each {channel, channelId, since, handed, upto,
-- xact, seq}: a name, or a row's pattern, and the position it was
-- subscribed from), in transaction order: the oldest `lim` of them, or the
-- newest if `newest`.
CREATE FUNCTION realtime.replay(
    o_since pg_snapshot, o_handed xid8[], o_upto pg_snapshot, o_xact xid8, o_seq bigint,
    h_since pg_snapshot, h_handed xid8[], h_upto pg_snapshot, h_xact xid8, h_seq bigint,
    subs jsonb, lim integer, newest boolean
)
    RETURNS TABLE (xact text, seq bigint, message jsonb, channel_id uuid, webhooks integer)
    LANGUAGE sql STABLE
    AS $$
        WITH subscribed AS (
            SELECT s.channel, s."channelId" AS channel_id, strpos(s.channel, '*') > 0 AS pattern,
                   s.since::pg_snapshot AS since, s.handed::xid8[] AS handed,
                   s.upto::pg_snapshot AS upto, s.xact::xid8 AS xact, s.seq
            FROM jsonb_to_recordset(subs) AS s (
                channel text, "channelId" uuid, since text, handed text[], upto text,
                xact text, seq bigint)
        ),
        missed AS (
            SELECT m.*
            FROM realtime.messages m
            WHERE m.xact_id >= least(pg_snapshot_xmin(o_since), pg_snapshot_xmin(h_since))
              AND realtime.covered(h_since, h_handed, h_upto, h_xact, h_seq, m.xact_id, m.seq)
              AND NOT realtime.covered(o_since, o_handed, o_upto, o_xact, o_seq,
                                       m.xact_id, m.seq)
              AND EXISTS (
                  SELECT FROM subscribed s
                  WHERE CASE WHEN s.pattern THEN m.channel_id = s.channel_id
                             ELSE m.channel_name = s.channel END
                    AND NOT realtime.covered(s.since, s.handed, s.upto, s.xact, s.seq,
                                             m.xact_id, m.seq))
            ORDER BY CASE WHEN newest THEN m.xact_id END DESC,
                     CASE WHEN newest THEN m.seq END DESC,
                     m.xact_id, m.seq
            LIMIT lim
        )
        SELECT m.xact_id::text, m.seq, realtime.message_json(m), m.channel_id,
               m.wh_audience_count
        FROM missed m
        ORDER BY m.xact_id, m.seq
    $$;

-- Where replay from message `id` starts: the position the message has in
-- every listener's stream at the latest (the messages visible in the
-- snapshot it was stored in, of older transactions, and its own transaction
-- up to it); no row for a message that is not there (any more).
CREATE FUNCTION realtime.position_of(id uuid)
    RETURNS TABLE (since pg_snapshot, xact xid8, seq bigint)
    LANGUAGE sql STABLE
    AS $$
        SELECT
            -- Only what is visible in `stored_in` and older than the message's
            -- own transaction: a snapshot that sees exactly that.
            (least(pg_snapshot_xmin(m.stored_in), m.xact_id)::text || ':'
                || m.xact_id::text || ':'
                || array_to_string(ARRAY(
                       SELECT x FROM pg_snapshot_xip(m.stored_in) AS x
                       WHERE x < m.xact_id ORDER BY x), ','))::pg_snapshot,
            m.xact_id, m.seq
        FROM realtime.messages m
        WHERE m.id = position_of.id AND m.stored_in IS NOT NULL
    $$;

-- Connection state recovery: one row per Socket.IO session that may be
-- recovered, by its private id.  A row lives while its socket is connected
-- and for the recovery window after it went away: `disconnected_at`, or, for
-- a process that died without saying so, the last heartbeat of its process.
-- `process` is the process serving it: only that process writes the row.
CREATE TABLE realtime.processes (
    id text PRIMARY KEY,
    last_seen timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE realtime.sessions (
    pid text PRIMARY KEY,
    sid text NOT NULL,
    process text NOT NULL,
    role text NOT NULL,
    sender_id text,
    -- [{"channel": ..., "channelId": ..., "from": <position>}, ...]
    subscriptions jsonb NOT NULL DEFAULT '[]',
    connected_at text NOT NULL,
    disconnected_at timestamptz
);
CREATE INDEX sessions_process ON realtime.sessions (process);

REVOKE ALL ON realtime.sessions, realtime.processes FROM PUBLIC;
REVOKE ALL ON FUNCTION realtime.replay(
    pg_snapshot, xid8[], pg_snapshot, xid8, bigint, pg_snapshot, xid8[], pg_snapshot, xid8,
    bigint, jsonb, integer, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION realtime.position_of(uuid) FROM PUBLIC;

-- Local delivery needs each message's place in its transaction.
DROP FUNCTION realtime.publish_batch_settled(jsonb, pg_snapshot, xid8[], integer);
CREATE FUNCTION realtime.publish_batch_settled(
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
            SELECT r.id, r.outcome, r.detail,
                   CASE WHEN m.id IS NOT NULL THEN realtime.message_json(m) END, m.channel_id,
                   m.wh_audience_count, m.xact_id::text, is_settled, m.seq
            FROM unnest(ids, outcomes, details) WITH ORDINALITY AS r (id, outcome, detail, n)
            LEFT JOIN realtime.messages m ON r.outcome = 'stored' AND m.id = r.id
            ORDER BY r.n;
    END
    $$;
REVOKE ALL ON FUNCTION realtime.publish_batch_settled(jsonb, pg_snapshot, xid8[], integer)
    FROM PUBLIC;
