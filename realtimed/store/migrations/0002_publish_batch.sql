-- Authorization of subscribes and batched, authorized publishes.
--
-- Both functions run a caller's check the way DESIGN section 6 puts it:
-- inside the current transaction, as the caller's role (set_config('role',
-- ..., true) is SET LOCAL ROLE), with request.jwt.claims and
-- realtime.channel_name set locally, so that the row-level security
-- policies on realtime.channels and realtime.messages decide.
--
-- They take a role and claims as arguments, so whoever may call them may act
-- as any of the three roles with any claims: only the daemon's own user (the
-- owner, which applied this migration) may EXECUTE them.  They are not
-- SECURITY DEFINER (a security-definer function may not change role), and
-- they keep the session's search_path, so that policies and the functions
-- they call resolve names as they would for any query of the caller's.

-- The caller's role, or NULL for a trusted caller (the admin API key) whose
-- access is not checked.
CREATE FUNCTION realtime.assume_caller(caller_role text, claims jsonb, channel text) RETURNS void
    LANGUAGE plpgsql VOLATILE
    AS $$
    BEGIN
        PERFORM set_config('request.jwt.claims', coalesce(claims, '{}'::jsonb)::text, true);
        PERFORM set_config('realtime.channel_name', channel, true);
        IF caller_role IS NULL THEN
            RETURN;
        END IF;
        IF caller_role NOT IN ('anon', 'authenticated', 'project_admin') THEN
            RAISE EXCEPTION 'not a realtime role: %', caller_role
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        PERFORM set_config('role', caller_role, true);
    END
    $$;

-- Back to the daemon's own identity, with nothing of the caller left, is
-- written out inline where needed: once the caller's role is assumed, only
-- what that role may execute can be called (set_config is public).

-- May the caller subscribe to a channel name, or to a channel row's pattern
-- exactly as the row has it?  Outcome 'allowed' with the owning row's id,
-- 'no_channel' when no enabled row owns it, 'denied' when the caller cannot
-- SELECT the row.
CREATE FUNCTION realtime.authorize_subscribe(caller_role text, claims jsonb, channel text)
    RETURNS TABLE (channel_id uuid, outcome text)
    LANGUAGE plpgsql VOLATILE
    AS $$
    DECLARE
        owner realtime.channels;
        visible boolean;
    BEGIN
        IF position('*' IN channel) > 0 THEN
            SELECT c.* INTO owner FROM realtime.channels c
            WHERE c.pattern = channel AND c.enabled;
        ELSE
            owner := realtime.owning_channel(channel);
        END IF;
        IF owner.id IS NULL THEN
            RETURN QUERY SELECT NULL::uuid, 'no_channel'::text;
            RETURN;
        END IF;
        IF caller_role IS NULL THEN
            RETURN QUERY SELECT owner.id, 'allowed'::text;
            RETURN;
        END IF;
        PERFORM realtime.assume_caller(caller_role, claims, channel);
        SELECT EXISTS (SELECT 1 FROM realtime.channels c WHERE c.id = owner.id) INTO visible;
        PERFORM set_config('role', 'none', true),
                set_config('request.jwt.claims', '', true),
                set_config('realtime.channel_name', '', true);
        RETURN QUERY SELECT owner.id,
            CASE WHEN visible THEN 'allowed' ELSE 'denied' END;
    END
    $$;

-- authorize_subscribe for many callers at once, in one round trip.  Each
-- item: {"role": text or null, "claims": {...}, "channel": text}.  One row
-- per item, in order; an item whose check fails (a policy raising an error)
-- gets outcome 'error' and detail, and does not affect the others.
CREATE FUNCTION realtime.authorize_subscribes(items jsonb)
    RETURNS TABLE (channel_id uuid, outcome text, detail text)
    LANGUAGE plpgsql VOLATILE
    AS $$
    DECLARE
        item jsonb;
    BEGIN
        FOR item IN SELECT value FROM jsonb_array_elements(items) LOOP
            detail := NULL;
            BEGIN
                SELECT a.channel_id, a.outcome INTO channel_id, outcome
                FROM realtime.authorize_subscribe(
                    item ->> 'role', item -> 'claims', item ->> 'channel') AS a;
            EXCEPTION WHEN others THEN
                channel_id := NULL;
                outcome := 'error';
                detail := SQLSTATE || ': ' || SQLERRM;
            END;
            RETURN NEXT;
        END LOOP;
    END
    $$;

-- Store a batch of publishes in one transaction, each as its own caller.
-- Each item of the array:
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
        item jsonb;
        owner realtime.channels;
    BEGIN
        FOR item IN SELECT value FROM jsonb_array_elements(items) LOOP
            id := (item ->> 'id')::uuid;
            detail := NULL;
            BEGIN
                owner := realtime.owning_channel(item ->> 'channel');
                IF owner.id IS NULL THEN
                    outcome := 'no_channel';
                ELSE
                    PERFORM realtime.assume_caller(
                        item ->> 'role', item -> 'claims', item ->> 'channel');
                    INSERT INTO realtime.messages
                        (id, event_name, channel_id, channel_name, payload,
                         sender_type, sender_id)
                    VALUES (
                        (item ->> 'id')::uuid, item ->> 'event', owner.id,
                        item ->> 'channel', coalesce(item -> 'payload', '{}'::jsonb),
                        item ->> 'sender_type', item ->> 'sender_id');
                    PERFORM set_config('role', 'none', true),
                        set_config('request.jwt.claims', '', true),
                        set_config('realtime.channel_name', '', true);
                    outcome := 'stored';
                END IF;
            EXCEPTION
                WHEN insufficient_privilege THEN
                    outcome := 'denied';
                    detail := SQLERRM;
                WHEN others THEN
                    outcome := 'error';
                    detail := SQLSTATE || ': ' || SQLERRM;
            END;
            RETURN NEXT;
        END LOOP;
    END
    $$;

REVOKE ALL ON FUNCTION realtime.assume_caller(text, jsonb, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION realtime.authorize_subscribe(text, jsonb, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION realtime.authorize_subscribes(jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION realtime.publish_batch(jsonb) FROM PUBLIC;
