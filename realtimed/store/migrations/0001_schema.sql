-- The realtime schema: roles, channels, messages, row-level security, and the
-- SQL functions applications call (realtime.publish, realtime.track_table).
--
-- Applied once per database by realtimed's migration runner, inside a
-- transaction and under an advisory lock.

-- Roles are shared by every database of the cluster, so another database may
-- have created them already (or be creating them right now).
DO $$
DECLARE
    role_name text;
BEGIN
    FOREACH role_name IN ARRAY ARRAY['anon', 'authenticated', 'project_admin'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = role_name) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', role_name);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;
            END;
        END IF;
    END LOOP;
END
$$;

-- The daemon's own user acts as each role (SET LOCAL ROLE) for the duration
-- of one authorization check, and has no other power through them.
DO $$
BEGIN
    EXECUTE format('GRANT anon, authenticated, project_admin TO %I', current_user);
EXCEPTION WHEN others THEN
    -- Already a member, or a superuser (who needs no grant).
    NULL;
END
$$;

GRANT USAGE ON SCHEMA realtime TO anon, authenticated, project_admin;

-- Channel names: 1-255 characters of A-Z a-z 0-9 _ - : . @.  Patterns may
-- also hold '*'.
CREATE DOMAIN realtime.channel_pattern AS text
    CHECK (VALUE ~ '^[A-Za-z0-9_\-:.@*]{1,255}$');

CREATE TABLE realtime.channels (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    pattern realtime.channel_pattern NOT NULL UNIQUE,
    description text,
    webhook_urls text[],
    enabled boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX channels_created_at ON realtime.channels (created_at DESC);

CREATE TABLE realtime.messages (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    event_name text NOT NULL CHECK (length(event_name) BETWEEN 1 AND 255),
    channel_id uuid REFERENCES realtime.channels (id) ON DELETE SET NULL,
    channel_name text NOT NULL CHECK (channel_name ~ '^[A-Za-z0-9_\-:.@*]{1,255}$'),
    payload jsonb NOT NULL DEFAULT '{}'::jsonb,
    sender_type text NOT NULL CHECK (sender_type IN ('system', 'user')),
    sender_id text,
    ws_audience_count integer NOT NULL DEFAULT 0,
    wh_audience_count integer NOT NULL DEFAULT 0,
    wh_delivered_count integer NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    -- The inserting transaction: a LISTEN connection that was away finds
    -- every message committed since its last snapshot by this column.
    xact_id xid8 NOT NULL DEFAULT pg_current_xact_id()
);

-- History: newest first, optionally by channel or event.
CREATE INDEX messages_created_at ON realtime.messages (created_at DESC, id DESC);
CREATE INDEX messages_channel_created_at ON realtime.messages (channel_id, created_at DESC);
CREATE INDEX messages_event_created_at ON realtime.messages (event_name, created_at DESC);
CREATE INDEX messages_xact_id ON realtime.messages (xact_id);

-- xact_id is always the inserting transaction, whatever the INSERT says: a
-- LISTEN connection catching up trusts it to find what it missed.
CREATE FUNCTION realtime.stamp_message_xact() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    AS $$
    BEGIN
        NEW.xact_id := pg_current_xact_id();
        RETURN NEW;
    END
    $$;

CREATE TRIGGER stamp_message_xact BEFORE INSERT ON realtime.messages
    FOR EACH ROW EXECUTE FUNCTION realtime.stamp_message_xact();

ALTER TABLE realtime.channels ENABLE ROW LEVEL SECURITY;
ALTER TABLE realtime.messages ENABLE ROW LEVEL SECURITY;

-- Privileges let each role reach the tables; the policies decide.
GRANT SELECT ON realtime.channels TO anon, authenticated, project_admin;
GRANT INSERT ON realtime.messages TO anon, authenticated, project_admin;

CREATE POLICY allow_authenticated_subscribe ON realtime.channels
    FOR SELECT TO authenticated USING (enabled = true);

CREATE POLICY allow_authenticated_publish ON realtime.messages
    FOR INSERT TO authenticated WITH CHECK (true);

-- The channel name being authorized, for use in policies:
--   USING (realtime.channel_name() = 'user:' || (auth claims ->> 'sub'))
CREATE FUNCTION realtime.channel_name() RETURNS text
    LANGUAGE sql STABLE
    AS $$ SELECT nullif(current_setting('realtime.channel_name', true), '') $$;

-- The JWT claims of the caller being authorized, as jsonb.
CREATE FUNCTION realtime.jwt_claims() RETURNS jsonb
    LANGUAGE sql STABLE
    AS $$ SELECT coalesce(nullif(current_setting('request.jwt.claims', true), ''), '{}')::jsonb $$;

GRANT EXECUTE ON FUNCTION realtime.channel_name() TO anon, authenticated, project_admin;
GRANT EXECUTE ON FUNCTION realtime.jwt_claims() TO anon, authenticated, project_admin;

-- Does a channel pattern match a name?  '*' stands for any run of
-- characters, the empty run included.  LIKE's own wildcard '_' is a literal
-- character of names and is escaped.
CREATE FUNCTION realtime.pattern_matches(pattern text, name text) RETURNS boolean
    LANGUAGE sql IMMUTABLE STRICT
    AS $$
        SELECT name LIKE replace(replace(replace(pattern, '\', '\\'), '_', '\_'), '*', '%')
    $$;

-- The enabled channel that owns a name: an exact pattern first, then the
-- pattern with the most literal characters, then the oldest.
CREATE FUNCTION realtime.owning_channel(name text) RETURNS realtime.channels
    LANGUAGE sql STABLE STRICT
    AS $$
        SELECT c.*
        FROM realtime.channels c
        WHERE c.enabled AND realtime.pattern_matches(c.pattern, name)
        ORDER BY c.pattern = name DESC,
                 length(replace(c.pattern, '*', '')) DESC,
                 c.created_at, c.id
        LIMIT 1
    $$;

-- Times on the wire: RFC 3339 in UTC with milliseconds.
CREATE FUNCTION realtime.rfc3339(t timestamptz) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT
    AS $$ SELECT to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') $$;

-- A message as subscribers receive it.
CREATE FUNCTION realtime.message_json(m realtime.messages) RETURNS jsonb
    LANGUAGE sql STABLE
    AS $$
        SELECT jsonb_build_object(
            'channel', m.channel_name,
            'event', m.event_name,
            'messageId', m.id,
            'senderType', m.sender_type,
            'senderId', m.sender_id,
            'payload', m.payload,
            'createdAt', realtime.rfc3339(m.created_at)
        )
    $$;

-- Publish a system message from SQL (triggers, jobs).  Returns the message
-- id, or NULL when no enabled channel owns the name.
CREATE FUNCTION realtime.publish(channel text, event text, payload jsonb) RETURNS uuid
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
    DECLARE
        owner realtime.channels;
        message_id uuid;
    BEGIN
        owner := realtime.owning_channel(channel);
        IF owner.id IS NULL THEN
            RETURN NULL;
        END IF;
        INSERT INTO realtime.messages (event_name, channel_id, channel_name, payload, sender_type)
        VALUES (event, owner.id, channel, coalesce(payload, '{}'::jsonb), 'system')
        RETURNING id INTO message_id;
        RETURN message_id;
    END
    $$;

REVOKE ALL ON FUNCTION realtime.publish(text, text, jsonb) FROM public;

-- Every stored message is announced to every realtimed process.  The
-- notification carries the delivered message; one too large for NOTIFY's
-- 8000-byte limit carries only its id, and the listener reads the row.
CREATE FUNCTION realtime.notify_message() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    AS $$
    DECLARE
        body text;
    BEGIN
        -- 'webhooks' says how many webhook deliveries the message queued
        -- (set by a BEFORE INSERT trigger), so that a process wakes its
        -- webhook sender only when there is something to send.
        body := jsonb_build_object(
            'message', realtime.message_json(NEW),
            'channelId', NEW.channel_id,
            'webhooks', NEW.wh_audience_count
        )::text;
        IF octet_length(body) > 7900 THEN
            body := jsonb_build_object('id', NEW.id)::text;
        END IF;
        PERFORM pg_notify('realtime_messages', body);
        RETURN NULL;
    END
    $$;

CREATE TRIGGER notify_message AFTER INSERT ON realtime.messages
    FOR EACH ROW EXECUTE FUNCTION realtime.notify_message();

-- Row changes of a tracked table, published as INSERT / UPDATE / DELETE.
-- The trigger's argument is the channel, possibly a template naming columns
-- of the row in braces: 'order:{id}'.
CREATE FUNCTION realtime.publish_row_change() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
    DECLARE
        row_json jsonb;
        channel text := TG_ARGV[0];
        placeholder text;
    BEGIN
        IF TG_OP = 'DELETE' THEN
            row_json := to_jsonb(OLD);
        ELSE
            row_json := to_jsonb(NEW);
        END IF;
        FOR placeholder IN
            SELECT DISTINCT m[1] FROM regexp_matches(channel, '\{([^{}]+)\}', 'g') AS m
        LOOP
            channel := replace(channel, '{' || placeholder || '}',
                               coalesce(row_json ->> placeholder, ''));
        END LOOP;
        PERFORM realtime.publish(channel, TG_OP, row_json);
        RETURN NULL;
    END
    $$;

-- Publish every INSERT, UPDATE and DELETE of a table's rows on a channel
-- (by default the table's own name).  Calling it again replaces the trigger.
CREATE FUNCTION realtime.track_table(tbl regclass, channel text DEFAULT NULL) RETURNS void
    LANGUAGE plpgsql
    AS $$
    DECLARE
        channel_template text;
    BEGIN
        SELECT coalesce(channel, c.relname) INTO channel_template
        FROM pg_class c WHERE c.oid = tbl;
        EXECUTE format('DROP TRIGGER IF EXISTS realtime_publish ON %s', tbl);
        EXECUTE format(
            'CREATE TRIGGER realtime_publish AFTER INSERT OR UPDATE OR DELETE ON %s '
            'FOR EACH ROW EXECUTE FUNCTION realtime.publish_row_change(%L)',
            tbl, channel_template);
    END
    $$;

-- Stop publishing a table's row changes.
CREATE FUNCTION realtime.untrack_table(tbl regclass) RETURNS void
    LANGUAGE plpgsql
    AS $$
    BEGIN
        EXECUTE format('DROP TRIGGER IF EXISTS realtime_publish ON %s', tbl);
    END
    $$;
