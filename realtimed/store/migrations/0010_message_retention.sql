-- Message retention, as upstream InsForge has it: one setting shared by
-- every realtimed process on the database, read and changed through
-- GET/PATCH /api/realtime/config.  NULL keeps messages forever.

CREATE TABLE realtime.config (
    -- One row only.
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    retention_days integer CHECK (retention_days > 0),
    updated_at timestamptz NOT NULL DEFAULT now()
);

INSERT INTO realtime.config DEFAULT VALUES;

CREATE FUNCTION realtime.retention_lock_key() RETURNS bigint
    LANGUAGE sql IMMUTABLE AS $$ SELECT 8243122671965202799 $$;

-- Delete at most batch_size messages older than the retention, oldest
-- first, in this statement's transaction.  A message with a webhook
-- delivery still pending is kept until its deliveries end.  One process at
-- a time: when another holds the retention lock, nothing is deleted and
-- the answer is NULL; otherwise how many messages were deleted (0 when
-- retention is off).
CREATE FUNCTION realtime.delete_expired_messages(batch_size integer) RETURNS integer
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
        )
        DELETE FROM realtime.messages m USING doomed WHERE m.id = doomed.id;
        GET DIAGNOSTICS deleted = ROW_COUNT;
        RETURN deleted;
    END
    $$;

REVOKE ALL ON FUNCTION realtime.delete_expired_messages(integer) FROM PUBLIC;
