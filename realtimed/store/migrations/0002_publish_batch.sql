-- Authorization of subscribes, and batched, authorized publishes.
--
-- These functions check a caller the way the contract puts it: inside the
-- current transaction, as the caller's role (set_config('role', ..., true)
-- is SET LOCAL ROLE), with request.jwt.claims and realtime.channel_name set
-- locally, so that the row-level security policies on realtime.channels and
-- realtime.messages decide.  A NULL role stands for a trusted caller (the
-- admin API key): only the channel rows are consulted, not the policies.
--
-- They take a role and claims as arguments, so whoever may call them may act
-- as any of the three roles with any claims: only the daemon's own user (the
-- owner, which applied this migration) may EXECUTE them.  They are not
-- SECURITY DEFINER (a security-definer function may not change role), and
-- they keep the session's search_path, so that policies and the functions
-- they call resolve names as they would for any query of the caller's.
--
-- Once a caller's role is assumed only what that role may execute can be
-- called, so switching back (set_config is public) is written out inline.
--
-- Cost: the owning channel is looked up once per distinct name of a batch,
-- and a batch first runs as one subtransaction; only when some item raises
-- (a policy refusing an INSERT, a failing policy) is it run again item by
-- item, each in its own subtransaction, so that one item cannot fail the
-- others.

-- The role name a caller may be checked as, or an error.
CREATE FUNCTION realtime.checked_role(caller_role text) RETURNS text
    LANGUAGE plpgsql IMMUTABLE
    AS $$
    BEGIN
        IF caller_role IS NOT NULL
           AND caller_role NOT IN ('anon', 'authenticated', 'project_admin') THEN
            RAISE EXCEPTION 'not a realtime role: %', caller_role
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        RETURN caller_role;
    END
    $$;

-- The enabled channel row a subscription to C{channel} refers to: the row
-- with exactly that pattern when it holds '*', else the owner of the name.
CREATE FUNCTION realtime.subscribed_channel(channel text) RETURNS uuid
    LANGUAGE plpgsql STABLE
    AS $$
    BEGIN
        IF position('*' IN channel) > 0 THEN
            RETURN (SELECT c.id FROM realtime.channels c
                    WHERE c.pattern = channel AND c.enabled);
        END IF;
        RETURN (realtime.owning_channel(channel)).id;
    END
    $$;

-- Decide subscribes for many callers in one round trip.  Each item:
--   {"role": text or null, "claims": {...}, "channel": name or pattern}
-- One row per item, in order: outcome 'allowed' with the channel row's id,
-- 'no_channel' when no enabled row owns the name (or has the pattern),
-- 'denied' when the caller cannot SELECT the row, or 'error' (detail says
-- why; a policy raised an error).
CREATE FUNCTION realtime.authorize_subscribes(items jsonb)
    RETURNS TABLE (channel_id uuid, outcome text, detail text)
    LANGUAGE plpgsql VOLATILE
    AS $$
    DECLARE
        owners jsonb;
        list jsonb[];
        ids uuid[] := '{}';
        outcomes text[] := '{}';
        details text[] := '{}';
        item jsonb;
        owner uuid;
        visible boolean;
        fast boolean := true;
    BEGIN
        SELECT array_agg(value ORDER BY ordinality) INTO list
        FROM jsonb_array_elements(items) WITH ORDINALITY;
        IF list IS NULL THEN
            RETURN;
        END IF;
        PERFORM realtime.checked_role(i ->> 'role') FROM unnest(list) AS i;
        SELECT jsonb_object_agg(name, realtime.subscribed_channel(name)) INTO owners
        FROM (SELECT DISTINCT i ->> 'channel' AS name FROM unnest(list) AS i) AS names;

        BEGIN
            FOREACH item IN ARRAY list LOOP
                owner := (owners ->> (item ->> 'channel'))::uuid;
                IF owner IS NULL THEN
                    ids := ids || NULL::uuid;
                    outcomes := outcomes || 'no_channel'::text;
                ELSIF item ->> 'role' IS NULL THEN
                    ids := ids || owner;
                    outcomes := outcomes || 'allowed'::text;
                ELSE
                    PERFORM set_config('request.jwt.claims', coalesce(item -> 'claims', '{}')::text, true),
                            set_config('realtime.channel_name', item ->> 'channel', true),
                            set_config('role', item ->> 'role', true);
                    visible := EXISTS (SELECT 1 FROM realtime.channels c WHERE c.id = owner);
                    PERFORM set_config('role', 'none', true);
                    ids := ids || owner;
                    outcomes := outcomes || CASE WHEN visible THEN 'allowed' ELSE 'denied' END;
                END IF;
                details := details || NULL::text;
            END LOOP;
        EXCEPTION WHEN others THEN
            fast := false;
        END;

        IF NOT fast THEN
            ids := '{}';
            outcomes := '{}';
            details := '{}';
            FOREACH item IN ARRAY list LOOP
                owner := (owners ->> (item ->> 'channel'))::uuid;
                BEGIN
                    IF owner IS NULL THEN
                        ids := ids || NULL::uuid;
                        outcomes := outcomes || 'no_channel'::text;
                    ELSIF item ->> 'role' IS NULL THEN
                        ids := ids || owner;
                        outcomes := outcomes || 'allowed'::text;
                    ELSE
                        PERFORM set_config('request.jwt.claims', coalesce(item -> 'claims', '{}')::text, true),
                                set_config('realtime.channel_name', item ->> 'channel', true),
                                set_config('role', item ->> 'role', true);
                        visible := EXISTS (SELECT 1 FROM realtime.channels c WHERE c.id = owner);
                        PERFORM set_config('role', 'none', true);
                        ids := ids || owner;
                        outcomes := outcomes || CASE WHEN visible THEN 'allowed' ELSE 'denied' END;
                    END IF;
                    details := details || NULL::text;
                EXCEPTION WHEN others THEN
                    ids := ids || NULL::uuid;
                    outcomes := outcomes || 'error'::text;
                    details := details || (SQLSTATE || ': ' || SQLERRM);
                END;
            END LOOP;
        END IF;

        PERFORM set_config('role', 'none', true),
                set_config('request.jwt.claims', '', true),
                set_config('realtime.channel_name', '', true);
        RETURN QUERY SELECT * FROM unnest(ids, outcomes, details);
    END
    $$;

-- One subscribe decision: realtime.authorize_subscribes for a single item.
CREATE FUNCTION realtime.authorize_subscribe(caller_role text, claims jsonb, channel text)
    RETURNS TABLE (channel_id uuid, outcome text)
    LANGUAGE sql VOLATILE
    AS $$
        SELECT a.channel_id, a.outcome
        FROM realtime.authorize_subscribes(jsonb_build_array(jsonb_build_object(
            'role', caller_role, 'claims', claims, 'channel', channel))) AS a
    $$;

-- Store a batch of publishes in one transaction, each as its own caller.
-- Each item:
--   {"id": uuid, "role": text or null, "claims": {...}, "channel": name,
--    "event": text, "payload": json, "sender_type": text, "sender_id": text}
-- One row per item, in order: outcome 'stored', 'no_channel' (no enabled
-- row owns the name), 'denied' (the INSERT policy says no) or 'error'
-- (detail says why).  A refused or failing item leaves the others stored.
CREATE FUNCTION realtime.publish_batch(items jsonb)
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
        caller text;
        previous text := NULL;
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

        BEGIN
            FOREACH item IN ARRAY list LOOP
                owner := (owners ->> (item ->> 'channel'))::uuid;
                IF owner IS NULL THEN
                    outcomes := outcomes || 'no_channel'::text;
                ELSE
                    -- Consecutive items of one caller on one channel share
                    -- the settings.
                    caller := concat_ws(' ', item ->> 'role', item ->> 'channel', item ->> 'claims');
                    IF previous IS DISTINCT FROM caller THEN
                        PERFORM set_config('request.jwt.claims', coalesce(item -> 'claims', '{}')::text, true),
                                set_config('realtime.channel_name', item ->> 'channel', true),
                                set_config('role', coalesce(item ->> 'role', 'none'), true);
                        previous := caller;
                    END IF;
                    INSERT INTO realtime.messages
                        (id, event_name, channel_id, channel_name, payload, sender_type, sender_id)
                    VALUES (
                        (item ->> 'id')::uuid, item ->> 'event', owner, item ->> 'channel',
                        coalesce(item -> 'payload', '{}'::jsonb),
                        item ->> 'sender_type', item ->> 'sender_id');
                    outcomes := outcomes || 'stored'::text;
                END IF;
                details := details || NULL::text;
            END LOOP;
        EXCEPTION WHEN others THEN
            fast := false;
        END;

        IF NOT fast THEN
            outcomes := '{}';
            details := '{}';
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

REVOKE ALL ON FUNCTION realtime.checked_role(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION realtime.subscribed_channel(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION realtime.authorize_subscribes(jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION realtime.authorize_subscribe(text, jsonb, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION realtime.publish_batch(jsonb) FROM PUBLIC;
