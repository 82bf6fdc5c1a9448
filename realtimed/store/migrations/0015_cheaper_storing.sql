-- Storing messages costs PostgreSQL less: a batch of publishes takes a
-- statement per run of items rather than per item, a message's webhook
-- audience a key lookup, and a change of a tracked table no planning.
--
-- 1. realtime.publish_batch (0002) inserted each item with a statement of
--    its own.  Every statement pays for its executor, its AFTER trigger
--    queue and its statement-level trigger (the doorbell, 0004): some 70
--    microseconds of a message's 130.  Items in a row that share a caller
--    (role and claims) and a channel share the settings row-level security
--    reads, so they are now stored by one INSERT ... SELECT, in their order.
--    realtimed puts the items of one caller and channel next to each other
--    when that reorders no socket's own publishes.  Whatever fails is
--    handled as before: the whole batch is tried again item by item, each
--    in a subtransaction of its own.
--
-- 2. realtime.prepare_message computed every message's webhook audience
--    with realtime.webhook_urls_of, a security-definer SQL function that
--    PostgreSQL cannot inline: some 20 microseconds a row.  Most channels
--    have no webhooks, which one look at the channel's row tells.
--
-- 3. realtime.owning_channel, called for every change of a tracked table
--    and every channel of a batch, was an SQL function that cannot be
--    inlined either (it returns a row), so PostgreSQL planned its query
--    again at every call.  As PL/pgSQL its plan is kept for the session.
--
-- 4. realtime.publish_row_change matched the channel template against a
--    regular expression for every row, even a template without
--    placeholders, and went through realtime.publish, which checks the name
--    again and switches settings as a security-definer function.  It now
--    looks for placeholders only in a template that has some, and stores
--    the message itself, with the same outcome: a warning for a name that
--    is not a channel name, nothing for a name no enabled channel owns.

CREATE OR REPLACE FUNCTION realtime.owning_channel(name text) RETURNS realtime.channels
    LANGUAGE plpgsql STABLE STRICT
    AS $$
    DECLARE
        owner realtime.channels;
    BEGIN
        SELECT c.* INTO owner
        FROM realtime.channels c
        WHERE c.enabled AND realtime.pattern_matches(c.pattern, name)
        ORDER BY c.pattern = name DESC,
                 length(replace(c.pattern, '*', '')) DESC,
                 c.created_at, c.id
        LIMIT 1;
        RETURN owner;
    END
    $$;

CREATE OR REPLACE FUNCTION realtime.prepare_message() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
    DECLARE
        urls text[];
    BEGIN
        NEW.xact_id := pg_current_xact_id();
        NEW.seq := nextval('realtime.messages_seq');
        NEW.stored_in := pg_current_snapshot();
        SELECT c.webhook_urls INTO urls FROM realtime.channels c WHERE c.id = NEW.channel_id;
        NEW.wh_audience_count := CASE
            WHEN coalesce(cardinality(urls), 0) = 0 THEN 0
            ELSE cardinality(realtime.webhook_urls_of(NEW.channel_id))
        END;
        NEW.wh_delivered_count := 0;
        RETURN NEW;
    END
    $$;

CREATE OR REPLACE FUNCTION realtime.publish_row_change() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
    DECLARE
        row_json jsonb;
        channel text := TG_ARGV[0];
        placeholder text;
        owner uuid;
    BEGIN
        IF TG_OP = 'DELETE' THEN
            row_json := to_jsonb(OLD);
        ELSE
            row_json := to_jsonb(NEW);
        END IF;
        IF strpos(channel, '{') > 0 THEN
            FOR placeholder IN
                SELECT DISTINCT m[1] FROM regexp_matches(channel, '\{([^{}]+)\}', 'g') AS m
            LOOP
                -- A NULL column makes the whole name NULL: not published.
                channel := replace(channel, '{' || placeholder || '}', row_json ->> placeholder);
            END LOOP;
        END IF;
        IF NOT realtime.is_channel_name(channel) THEN
            RAISE WARNING 'realtime: % of a row of %.% not published: the channel template % gives %, which is not a channel name',
                TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME, quote_literal(TG_ARGV[0]),
                coalesce(quote_literal(channel), 'NULL');
            RETURN NULL;
        END IF;
        owner := (realtime.owning_channel(channel)).id;
        IF owner IS NOT NULL THEN
            INSERT INTO realtime.messages (event_name, channel_id, channel_name, payload, sender_type)
            VALUES (TG_OP, owner, channel, row_json, 'system');
        END IF;
        RETURN NULL;
    END
    $$;

CREATE OR REPLACE FUNCTION realtime.publish_batch(items jsonb)
    RETURNS TABLE (id uuid, outcome text, detail text)
    LANGUAGE plpgsql VOLATILE
    AS $$
    DECLARE
        owners jsonb;
        list jsonb[];
        outcomes text[] := '{}';
        details text[] := '{}';
        item jsonb;
        owner uuid;
        starts integer[];
        run_start integer;
        run_end integer;
        fast boolean := true;
    BEGIN
        SELECT array_agg(value ORDER BY ordinality) INTO list
        FROM jsonb_array_elements(items) WITH ORDINALITY;
        IF list IS NULL THEN
            RETURN;
        END IF;
        PERFORM realtime.checked_role(i ->> 'role') FROM unnest(list) AS i;
        SELECT jsonb_object_agg(name, (realtime.owning_channel(name)).id) INTO owners
        FROM (SELECT DISTINCT i ->> 'channel' AS name FROM unnest(list) AS i) AS names;

        -- Where each run starts: an item whose caller or channel differs
        -- from the one before it.
        SELECT array_agg(n ORDER BY n) INTO starts
        FROM (SELECT n, k, lag(k) OVER (ORDER BY n) AS previous
              FROM unnest(list) WITH ORDINALITY AS u (i, n),
                   jsonb_build_array(i -> 'role', i -> 'channel', i -> 'claims') AS k) AS keyed
        WHERE previous IS DISTINCT FROM k;

        BEGIN
            FOR run IN 1 .. cardinality(starts) LOOP
                run_start := starts[run];
                run_end := coalesce(starts[run + 1] - 1, cardinality(list));
                item := list[run_start];
                owner := (owners ->> (item ->> 'channel'))::uuid;
                CONTINUE WHEN owner IS NULL;
                PERFORM set_config('request.jwt.claims', coalesce(item -> 'claims', '{}')::text, true),
                        set_config('realtime.channel_name', item ->> 'channel', true),
                        set_config('role', coalesce(item ->> 'role', 'none'), true);
                IF run_start = run_end THEN
                    INSERT INTO realtime.messages
                        (id, event_name, channel_id, channel_name, payload, sender_type, sender_id)
                    VALUES (
                        (item ->> 'id')::uuid, item ->> 'event', owner, item ->> 'channel',
                        coalesce(item -> 'payload', '{}'::jsonb),
                        item ->> 'sender_type', item ->> 'sender_id');
                    CONTINUE;
                END IF;
                INSERT INTO realtime.messages
                    (id, event_name, channel_id, channel_name, payload, sender_type, sender_id)
                SELECT (r.i ->> 'id')::uuid, r.i ->> 'event', owner, r.i ->> 'channel',
                       coalesce(r.i -> 'payload', '{}'::jsonb),
                       r.i ->> 'sender_type', r.i ->> 'sender_id'
                FROM unnest(list[run_start:run_end]) WITH ORDINALITY AS r (i, n)
                ORDER BY r.n;
            END LOOP;
        EXCEPTION WHEN others THEN
            fast := false;
        END;

        IF fast THEN
            SELECT array_agg(CASE WHEN owners ->> (i ->> 'channel') IS NULL
                                  THEN 'no_channel' ELSE 'stored' END ORDER BY n),
                   array_agg(NULL::text)
            INTO outcomes, details
            FROM unnest(list) WITH ORDINALITY AS u (i, n);
        ELSE
            FOREACH item IN ARRAY list LOOP
                owner := (owners ->> (item ->> 'channel'))::uuid;
                BEGIN
                    IF owner IS NULL THEN
                        outcomes := outcomes || 'no_channel'::text;
                    ELSE
                        PERFORM set_config('request.jwt.claims', coalesce(item -> 'claims', '{}')::text, true),
                                set_config('realtime.channel_name', item ->> 'channel', true),
                                set_config('role', coalesce(item ->> 'role', 'none'), true);
                        INSERT INTO realtime.messages
                            (id, event_name, channel_id, channel_name, payload, sender_type, sender_id)
                        VALUES (
                            (item ->> 'id')::uuid, item ->> 'event', owner, item ->> 'channel',
                            coalesce(item -> 'payload', '{}'::jsonb),
                            item ->> 'sender_type', item ->> 'sender_id');
                        PERFORM set_config('role', 'none', true);
                        outcomes := outcomes || 'stored'::text;
                    END IF;
                    details := details || NULL::text;
                EXCEPTION
                    WHEN insufficient_privilege THEN
                        outcomes := outcomes || 'denied'::text;
                        details := details || SQLERRM;
                    WHEN others THEN
                        outcomes := outcomes || 'error'::text;
                        details := details || (SQLSTATE || ': ' || SQLERRM);
                END;
            END LOOP;
        END IF;

        PERFORM set_config('role', 'none', true),
                set_config('request.jwt.claims', '', true),
                set_config('realtime.channel_name', '', true);
        RETURN QUERY
            SELECT (i ->> 'id')::uuid, o, d
            FROM unnest(list, outcomes, details) AS u (i, o, d);
    END
    $$;
