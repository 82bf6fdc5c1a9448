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

-- The messages on the given names, or owned by the given channel rows,
-- after position `o` (or after the message `after_id`, for replay from a
-- message id) and at or before position `p` (what the listener has handed
-- over), in transaction order; at most `lim`.
CREATE FUNCTION realtime.missed_messages(
    o_since pg_snapshot, o_handed xid8[], o_upto pg_snapshot, o_xact xid8, o_seq bigint,
    p_since pg_snapshot, p_handed xid8[], p_upto pg_snapshot, p_xact xid8, p_seq bigint,
    names text[], channel_ids uuid[], lim integer
)
    RETURNS TABLE (xact text, seq bigint, message jsonb, channel_id uuid, webhooks integer)
    LANGUAGE sql STABLE
    AS $$
        SELECT m.xact_id::text, m.seq, realtime.message_json(m), m.channel_id,
               m.wh_audience_count
        FROM realtime.messages m
        WHERE m.xact_id >= pg_snapshot_xmin(o_since)
          AND (m.channel_name = ANY (names) OR m.channel_id = ANY (channel_ids))
          AND realtime.covered(p_since, p_handed, p_upto, p_xact, p_seq, m.xact_id, m.seq)
          AND NOT realtime.covered(o_since, o_handed, o_upto, o_xact, o_seq, m.xact_id, m.seq)
        ORDER BY m.xact_id, m.seq
        LIMIT lim
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
    presence_id text NOT NULL,
    presence_type text NOT NULL,
    -- [{"channel": ..., "channelId": ..., "from": <position>}, ...]
    subscriptions jsonb NOT NULL DEFAULT '[]',
    connected_at text NOT NULL,
    disconnected_at timestamptz
);
CREATE INDEX sessions_process ON realtime.sessions (process);

REVOKE ALL ON realtime.sessions, realtime.processes FROM PUBLIC;
REVOKE ALL ON FUNCTION realtime.missed_messages(
    pg_snapshot, xid8[], pg_snapshot, xid8, bigint, pg_snapshot, xid8[], pg_snapshot, xid8,
    bigint, text[], uuid[], integer) FROM PUBLIC;
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
