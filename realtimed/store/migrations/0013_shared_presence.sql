-- Presence shared by every realtimed process of the database.
--
-- Each process keeps its own sockets in memory and shares only which members
-- it holds: one row per (process, channel, member), written when the
-- member's first socket on that process joins the channel and deleted when
-- its last one there leaves.  Every insert and delete is announced on
-- realtime_presence, so each process keeps a copy of what the others hold
-- and announces joins and leaves to its own sockets; the cost grows with the
-- changes of membership, not with the number of members.
--
-- A process proves it is alive with a heartbeat (its row in
-- presence_processes).  Every process, at each of its own heartbeats, deletes
-- the processes that have not beaten for longer than their timeout; their
-- members go with them (ON DELETE CASCADE), and each deleted row is
-- announced like any other, so the survivors see those members leave.

CREATE TABLE realtime.presence_processes (
    -- The process's own name for itself (random, new at each start).
    id text PRIMARY KEY,
    last_seen timestamptz NOT NULL DEFAULT now(),
    -- After how many seconds without a heartbeat the process counts as dead.
    timeout double precision NOT NULL CHECK (timeout > 0)
);

CREATE TABLE realtime.presence_members (
    process text NOT NULL REFERENCES realtime.presence_processes (id) ON DELETE CASCADE,
    channel text NOT NULL,
    presence_id text NOT NULL,
    presence_type text NOT NULL,
    -- RFC 3339, as clients see it.
    joined_at text NOT NULL,
    PRIMARY KEY (process, channel, presence_id)
);

-- Announce a member row's arrival ('+') or departure ('-').  A row too
-- large for a notification (a user id of several kilobytes) is announced as
-- '*': read every row again.
CREATE FUNCTION realtime.announce_presence() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    AS $$
    DECLARE
        r realtime.presence_members;
        payload text;
    BEGIN
        IF TG_OP = 'DELETE' THEN
            r := OLD;
        ELSE
            r := NEW;
        END IF;
        payload := json_build_object(
            'op', CASE WHEN TG_OP = 'DELETE' THEN '-' ELSE '+' END,
            'process', r.process, 'channel', r.channel, 'presenceId', r.presence_id,
            'type', r.presence_type, 'joinedAt', r.joined_at)::text;
        IF octet_length(payload) > 7000 THEN
            payload := '{"op": "*"}';
        END IF;
        PERFORM pg_notify('realtime_presence', payload);
        RETURN NULL;
    END
    $$;

CREATE TRIGGER announce_presence AFTER INSERT OR DELETE ON realtime.presence_members
    FOR EACH ROW EXECUTE FUNCTION realtime.announce_presence();

-- One process's heartbeat and its changes, in one transaction: delete the
-- processes that stopped beating (skipping rows another process is deleting
-- already), record this process's heartbeat, then remove the members it
-- released and add those it holds now.  `released` is [{channel,
-- presenceId}], `held` [{channel, presenceId, type, joinedAt}].  Returns
-- whether this process's heartbeat row was created, which after the first
-- call means the others had taken it for dead and its members are gone.
CREATE FUNCTION realtime.presence_sync(
    p_process text, p_timeout double precision, released jsonb, held jsonb
) RETURNS boolean
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
    DECLARE
        created boolean;
    BEGIN
        DELETE FROM realtime.presence_processes
        WHERE id IN (
            SELECT p.id FROM realtime.presence_processes p
            WHERE p.id <> p_process
              AND p.last_seen < now() - make_interval(secs => p.timeout)
            FOR UPDATE SKIP LOCKED);
        INSERT INTO realtime.presence_processes AS p (id, timeout)
        VALUES (p_process, p_timeout)
        ON CONFLICT (id) DO UPDATE SET last_seen = now(), timeout = excluded.timeout
        RETURNING (p.xmax = 0) INTO created;
        DELETE FROM realtime.presence_members m
        USING jsonb_to_recordset(released) AS r (channel text, "presenceId" text)
        WHERE m.process = p_process AND m.channel = r.channel
          AND m.presence_id = r."presenceId";
        INSERT INTO realtime.presence_members
            (process, channel, presence_id, presence_type, joined_at)
        SELECT p_process, h.channel, h."presenceId", h.type, h."joinedAt"
        FROM jsonb_to_recordset(held)
            AS h (channel text, "presenceId" text, type text, "joinedAt" text)
        ON CONFLICT DO NOTHING;
        RETURN created;
    END
    $$;

REVOKE ALL ON realtime.presence_processes, realtime.presence_members FROM PUBLIC;
REVOKE ALL ON FUNCTION realtime.announce_presence() FROM PUBLIC;
REVOKE ALL ON FUNCTION realtime.presence_sync(text, double precision, jsonb, jsonb)
    FROM PUBLIC;
