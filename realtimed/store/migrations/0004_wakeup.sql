-- Stored messages reach the realtimed processes by polling, with NOTIFY as a
-- doorbell for listeners that are asleep.
--
-- A transaction that sends NOTIFY takes a database-wide lock at commit and
-- holds it until its commit record is flushed, so such transactions commit
-- one at a time, one WAL flush each.  With a NOTIFY for every stored message,
-- every application transaction that touches a tracked table was serialized
-- behind that lock.  Now a listener that is busy reads what was committed by
-- polling (each poll returns the messages committed since its previous
-- snapshot, exactly), and a transaction sends NOTIFY only when some listener
-- has gone to sleep.
--
-- The handshake, with two advisory locks:
--
-- * A listener that wants to sleep holds the SLEEP lock in shared mode (on
--   its own session) for as long as it sleeps.
-- * A transaction that stores messages takes the GATE lock in shared mode
--   until it ends, then looks at SLEEP: if no listener holds it, nobody needs
--   a doorbell; otherwise it sends NOTIFY.
-- * A listener falls asleep only after it holds SLEEP and then finds GATE
--   free (a try, never a wait): every transaction that looked at SLEEP before
--   has ended by then, so one more poll sees its messages, and every later
--   one rings.  Until GATE is found free the listener keeps polling.
--
-- The listener does all of this through the functions below, so the lock
-- keys live here only.

-- Message order within a transaction: the poll returns messages ordered by
-- transaction, then by this sequence.  Rows stored before this migration
-- keep NULL; they are history, never polled.
CREATE SEQUENCE realtime.messages_seq;
ALTER TABLE realtime.messages ADD COLUMN seq bigint;
ALTER SEQUENCE realtime.messages_seq OWNED BY realtime.messages.seq;

-- One BEFORE INSERT trigger instead of two: the inserting transaction, the
-- order within it, and the webhook audience (see 0003).
CREATE FUNCTION realtime.prepare_message() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
    BEGIN
        NEW.xact_id := pg_current_xact_id();
        NEW.seq := nextval('realtime.messages_seq');
        NEW.wh_audience_count := cardinality(realtime.webhook_urls_of(NEW.channel_id));
        NEW.wh_delivered_count := 0;
        RETURN NEW;
    END
    $$;

REVOKE ALL ON FUNCTION realtime.prepare_message() FROM PUBLIC;

DROP TRIGGER stamp_message_xact ON realtime.messages;
DROP TRIGGER webhook_count_audience ON realtime.messages;
DROP FUNCTION realtime.stamp_message_xact();
DROP FUNCTION realtime.webhook_count_audience();

CREATE TRIGGER prepare_message BEFORE INSERT ON realtime.messages
    FOR EACH ROW EXECUTE FUNCTION realtime.prepare_message();

-- The outbox is written only for messages that have webhooks.
DROP TRIGGER webhook_enqueue ON realtime.messages;
CREATE TRIGGER webhook_enqueue AFTER INSERT ON realtime.messages
    FOR EACH ROW WHEN (NEW.wh_audience_count > 0)
    EXECUTE FUNCTION realtime.webhook_enqueue();

-- No more NOTIFY per message.
DROP TRIGGER notify_message ON realtime.messages;
DROP FUNCTION realtime.notify_message();

-- The lock keys: the bytes "rt.sleep" and "rt.gate" as bigints.
CREATE FUNCTION realtime.sleep_lock_key() RETURNS bigint
    LANGUAGE sql IMMUTABLE AS $$ SELECT 8247267890896921968 $$;
CREATE FUNCTION realtime.gate_lock_key() RETURNS bigint
    LANGUAGE sql IMMUTABLE AS $$ SELECT 8247267839173747968 $$;

-- Once per statement that stores messages: ring the doorbell if a listener
-- sleeps.  A failed try on SLEEP may also mean another transaction was
-- looking at that instant; ringing then is harmless.  A statement that
-- stored no row (INSERT ... SELECT of nothing, ON CONFLICT DO NOTHING) does
-- neither.
CREATE FUNCTION realtime.ring_doorbell() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    AS $$
    BEGIN
        IF NOT EXISTS (SELECT FROM stored) THEN
            RETURN NULL;
        END IF;
        PERFORM pg_advisory_xact_lock_shared(realtime.gate_lock_key());
        IF pg_try_advisory_lock(realtime.sleep_lock_key()) THEN
            PERFORM pg_advisory_unlock(realtime.sleep_lock_key());
        ELSE
            PERFORM pg_notify('realtime_wakeup', '');
        END IF;
        RETURN NULL;
    END
    $$;

CREATE TRIGGER ring_doorbell AFTER INSERT ON realtime.messages
    REFERENCING NEW TABLE AS stored
    FOR EACH STATEMENT EXECUTE FUNCTION realtime.ring_doorbell();

-- The listener's side.  Doze: from now on, every transaction rings.
CREATE FUNCTION realtime.listener_doze() RETURNS void
    LANGUAGE sql
    AS $$ SELECT pg_advisory_lock_shared(realtime.sleep_lock_key()) $$;

-- Has every transaction that might not ring ended?  (Never waits.)
CREATE FUNCTION realtime.listener_gate_clear() RETURNS boolean
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    AS $$
    BEGIN
        IF pg_try_advisory_lock(realtime.gate_lock_key()) THEN
            PERFORM pg_advisory_unlock(realtime.gate_lock_key());
            RETURN true;
        END IF;
        RETURN false;
    END
    $$;

-- Awake again: transactions stop ringing (once no other listener sleeps).
CREATE FUNCTION realtime.listener_wake() RETURNS void
    LANGUAGE sql
    AS $$ SELECT pg_advisory_unlock_shared(realtime.sleep_lock_key()) $$;

REVOKE ALL ON FUNCTION realtime.listener_doze() FROM PUBLIC;
REVOKE ALL ON FUNCTION realtime.listener_gate_clear() FROM PUBLIC;
REVOKE ALL ON FUNCTION realtime.listener_wake() FROM PUBLIC;

-- The messages committed after snapshot `since` and visible in snapshot
-- `upto`, in (transaction, seq) order, after the position `after_xact`,
-- `after_seq` (NULLs: from the start), at most `max_rows` of them.  Exact:
-- those are the transactions in progress at `since` or started after it,
-- found by two index ranges however old `since`'s oldest transaction is.
-- A poll passes the current snapshot as `upto` (and starts the next poll
-- from it); reading a long backlog page by page keeps the same `upto`.
CREATE FUNCTION realtime.messages_between(
    since pg_snapshot, upto pg_snapshot, after_xact xid8, after_seq bigint, max_rows integer
) RETURNS SETOF realtime.messages
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
    BEGIN
        -- PL/pgSQL rather than SQL: the plan is kept for the session, and a
        -- poll that finds nothing costs a fraction of a millisecond.
        RETURN QUERY SELECT (p.m).* FROM (
            (SELECT m, m.xact_id, m.seq FROM realtime.messages m
             WHERE m.xact_id = ANY (ARRAY(SELECT pg_snapshot_xip(since)))
               AND pg_visible_in_snapshot(m.xact_id, upto)
               AND (after_xact IS NULL OR (m.xact_id, m.seq) > (after_xact, after_seq))
             ORDER BY m.xact_id, m.seq LIMIT max_rows)
            UNION ALL
            (SELECT m, m.xact_id, m.seq FROM realtime.messages m
             WHERE m.xact_id >= pg_snapshot_xmax(since)
               AND m.xact_id >= coalesce(after_xact, '0'::xid8)
               AND pg_visible_in_snapshot(m.xact_id, upto)
               AND (after_xact IS NULL OR (m.xact_id, m.seq) > (after_xact, after_seq))
             ORDER BY m.xact_id, m.seq LIMIT max_rows)
        ) p
        ORDER BY p.xact_id, p.seq
        LIMIT max_rows;
    END
    $$;

REVOKE ALL ON FUNCTION realtime.messages_between(pg_snapshot, pg_snapshot, xid8, bigint, integer)
    FROM PUBLIC;
