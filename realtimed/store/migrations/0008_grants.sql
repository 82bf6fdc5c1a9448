-- Who may do what from SQL.
--
-- No security-definer function of the schema is executable by PUBLIC: such
-- a function runs with realtimed's own rights.  Trigger functions need no
-- EXECUTE right to fire, so revoking it takes nothing from tracked tables.
--
-- Application roles that publish from their own SQL (jobs, functions) are
-- granted realtime_publisher, which may call realtime.publish:
--     GRANT realtime_publisher TO app_role;

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'realtime_publisher') THEN
        CREATE ROLE realtime_publisher NOLOGIN;
    END IF;
END
$$;

GRANT USAGE ON SCHEMA realtime TO realtime_publisher;
GRANT EXECUTE ON FUNCTION realtime.publish(text, text, jsonb) TO realtime_publisher;
REVOKE ALL ON FUNCTION realtime.publish_row_change() FROM PUBLIC;

-- Is `name` a channel name (1-255 characters from A-Z a-z 0-9 _ - : . @)?
CREATE FUNCTION realtime.is_channel_name(name text) RETURNS boolean
    LANGUAGE sql IMMUTABLE
    AS $$ SELECT coalesce(name ~ '^[A-Za-z0-9_\-:.@]{1,255}$', false) $$;

-- realtime.publish refuses a name that is not a channel name, with an error
-- that says so (it used to fail on the messages table's check).
CREATE OR REPLACE FUNCTION realtime.publish(channel text, event text, payload jsonb) RETURNS uuid
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
    DECLARE
        owner realtime.channels;
        message_id uuid;
    BEGIN
        IF NOT realtime.is_channel_name(channel) THEN
            RAISE EXCEPTION '% is not a channel name', coalesce(quote_literal(channel), 'NULL')
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'A channel name is 1-255 characters from A-Z a-z 0-9 _ - : . @';
        END IF;
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

-- A tracked table's change whose channel template gives something that is
-- not a channel name (a column that is NULL, or holds a space) is not
-- published, and PostgreSQL logs a warning; the application's write goes
-- through.
CREATE OR REPLACE FUNCTION realtime.publish_row_change() RETURNS trigger
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
            -- A NULL column makes the whole name NULL: not published.
            channel := replace(channel, '{' || placeholder || '}', row_json ->> placeholder);
        END LOOP;
        IF NOT realtime.is_channel_name(channel) THEN
            RAISE WARNING 'realtime: % of a row of %.% not published: the channel template % gives %, which is not a channel name',
                TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME, quote_literal(TG_ARGV[0]),
                coalesce(quote_literal(channel), 'NULL');
            RETURN NULL;
        END IF;
        PERFORM realtime.publish(channel, TG_OP, row_json);
        RETURN NULL;
    END
    $$;
