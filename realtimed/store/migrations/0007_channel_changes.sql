-- A subscription lasts as long as the channel row that granted it.  When
-- channel rows are created, changed or deleted, every realtimed process is
-- told (NOTIFY realtime_channels) so that it checks its sockets'
-- subscriptions against the rows as they now are.  The payload lists each
-- row's id with its old and new pattern, enabled flag and creation time
-- (seconds), so that a process can tell which rows newly own names; when
-- a statement changes too many rows for one notification, the payload is
-- '{}' and the processes check everything.  Channel rows change seldom
-- (administration), so the notification lock costs nothing here.

CREATE FUNCTION realtime.channel_state(c realtime.channels) RETURNS jsonb
    LANGUAGE sql IMMUTABLE
    AS $$
        SELECT jsonb_build_object(
            'pattern', c.pattern, 'enabled', c.enabled,
            'created_at', extract(epoch FROM c.created_at))
    $$;

CREATE FUNCTION realtime.announce_channel_changes() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    AS $$
    DECLARE
        changes jsonb;
        payload text;
    BEGIN
        IF TG_OP = 'INSERT' THEN
            SELECT jsonb_agg(jsonb_build_object(
                       'id', n.id, 'old', NULL, 'new', realtime.channel_state(n)))
            INTO changes FROM new_rows n;
        ELSIF TG_OP = 'UPDATE' THEN
            SELECT jsonb_agg(jsonb_build_object(
                       'id', n.id, 'old', realtime.channel_state(o),
                       'new', realtime.channel_state(n)))
            INTO changes FROM new_rows n JOIN old_rows o USING (id);
        ELSE
            SELECT jsonb_agg(jsonb_build_object(
                       'id', o.id, 'old', realtime.channel_state(o), 'new', NULL))
            INTO changes FROM old_rows o;
        END IF;
        payload := jsonb_build_object('changes', coalesce(changes, '[]'::jsonb))::text;
        IF octet_length(payload) > 7000 THEN
            payload := '{}';
        END IF;
        PERFORM pg_notify('realtime_channels', payload);
        RETURN NULL;
    END
    $$;

CREATE TRIGGER announce_inserted AFTER INSERT ON realtime.channels
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION realtime.announce_channel_changes();
CREATE TRIGGER announce_updated AFTER UPDATE ON realtime.channels
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION realtime.announce_channel_changes();
CREATE TRIGGER announce_deleted AFTER DELETE ON realtime.channels
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION realtime.announce_channel_changes();

REVOKE ALL ON FUNCTION realtime.channel_state(realtime.channels) FROM PUBLIC;
REVOKE ALL ON FUNCTION realtime.announce_channel_changes() FROM PUBLIC;
