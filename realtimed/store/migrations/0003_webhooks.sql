-- The webhook outbox: one row per (message, webhook URL), written in the same
-- transaction as the message, so a stored message's deliveries are never lost.
-- realtimed's delivery service claims due rows (FOR UPDATE SKIP LOCKED), sends
-- them and records the outcome here; several realtimed processes share it.
--
-- status:  pending    waiting for its first or next attempt (next_attempt_at);
--                     while an attempt is in flight, next_attempt_at is pushed
--                     past the request timeout (a lease), so a process that
--                     dies mid-send leaves the row to be retried later;
--          delivered  a 2xx answer was received;
--          failed     a final answer, a refused URL, or retries exhausted.

CREATE TABLE realtime.webhook_deliveries (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id uuid NOT NULL REFERENCES realtime.messages (id) ON DELETE CASCADE,
    url text NOT NULL,
    -- The receiving host as written in the URL, in lower case, without
    -- port: the key for the per-host concurrency limit.
    host text NOT NULL,
    status text NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_status integer,
    last_error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (message_id, url)
);

-- What is due, per receiving host, oldest first; also lists the hosts with
-- pending deliveries (one probe per host), so that a claim never wades
-- through the backlog of a host that has no room.
CREATE INDEX webhook_deliveries_due ON realtime.webhook_deliveries (host, next_attempt_at)
    WHERE status = 'pending';
-- What may be pruned.
CREATE INDEX webhook_deliveries_finished ON realtime.webhook_deliveries (updated_at)
    WHERE status <> 'pending';

-- The outbox is realtimed's own: no application role reads or writes it.
REVOKE ALL ON realtime.webhook_deliveries FROM PUBLIC;

-- The host of a URL, without user information or port, in lower case
-- (an IPv6 address keeps its brackets).
CREATE FUNCTION realtime.webhook_host(url text) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT
    SET search_path = pg_catalog, pg_temp
    AS $$
        SELECT lower(regexp_replace(regexp_replace(
            substring(url from '^[A-Za-z][A-Za-z0-9+.-]*://([^/?#]*)'),
            '^.*@', ''), ':[0-9]*$', ''))
    $$;

-- The distinct, non-empty webhook URLs of a channel (none for NULL).
CREATE FUNCTION realtime.webhook_urls_of(channel uuid) RETURNS text[]
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
        SELECT coalesce(array_agg(DISTINCT u ORDER BY u), '{}'::text[])
        FROM realtime.channels c, unnest(c.webhook_urls) AS u
        WHERE c.id = channel AND u IS NOT NULL AND u <> ''
    $$;

REVOKE ALL ON FUNCTION realtime.webhook_urls_of(uuid) FROM PUBLIC;

-- Before a message is stored: its webhook audience is the number of its
-- channel's webhook URLs, and nothing is delivered yet.  Runs as the owner,
-- whatever role inserts the message (RLS applies to the inserting role only).
CREATE FUNCTION realtime.webhook_count_audience() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
    BEGIN
        NEW.wh_audience_count := cardinality(realtime.webhook_urls_of(NEW.channel_id));
        NEW.wh_delivered_count := 0;
        RETURN NEW;
    END
    $$;

-- After a message is stored: one pending delivery per webhook URL.  The
-- message's own notification (realtime_messages, sent on commit) is what
-- wakes the delivery services.
CREATE FUNCTION realtime.webhook_enqueue() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
    DECLARE
        queued integer;
    BEGIN
        INSERT INTO realtime.webhook_deliveries (message_id, url, host)
        SELECT NEW.id, u, coalesce(realtime.webhook_host(u), '')
        FROM unnest(realtime.webhook_urls_of(NEW.channel_id)) AS u;
        GET DIAGNOSTICS queued = ROW_COUNT;
        -- The channel's URLs may have changed between the two triggers; the
        -- audience is what was actually queued.
        IF queued <> NEW.wh_audience_count THEN
            UPDATE realtime.messages SET wh_audience_count = queued WHERE id = NEW.id;
        END IF;
        RETURN NULL;
    END
    $$;

REVOKE ALL ON FUNCTION realtime.webhook_count_audience() FROM PUBLIC;
REVOKE ALL ON FUNCTION realtime.webhook_enqueue() FROM PUBLIC;

CREATE TRIGGER webhook_count_audience BEFORE INSERT ON realtime.messages
    FOR EACH ROW EXECUTE FUNCTION realtime.webhook_count_audience();

CREATE TRIGGER webhook_enqueue AFTER INSERT ON realtime.messages
    FOR EACH ROW EXECUTE FUNCTION realtime.webhook_enqueue();
