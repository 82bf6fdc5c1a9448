-- '%' is the wildcard as upstream InsForge writes it ('order:%'); it means
-- the same as '*'.  Patterns are kept in one canonical form, with '*', so
-- that 'order:%' and 'order:*' are one pattern: whoever writes a channel
-- row (the REST API, or the application's own SQL), its pattern is stored
-- with '*', and the UNIQUE constraint sees the two spellings as one.

-- The domain is checked as a value is read, before the trigger below turns
-- its '%' into '*': it must let '%' through.
ALTER DOMAIN realtime.channel_pattern DROP CONSTRAINT channel_pattern_check;
ALTER DOMAIN realtime.channel_pattern
    ADD CONSTRAINT channel_pattern_check CHECK (VALUE ~ '^[A-Za-z0-9_\-:.@*%]{1,255}$');

CREATE FUNCTION realtime.canonical_pattern(pattern text) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT
    AS $$ SELECT replace(pattern, '%', '*') $$;

CREATE FUNCTION realtime.channels_canonical_pattern() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
    BEGIN
        NEW.pattern := realtime.canonical_pattern(NEW.pattern);
        RETURN NEW;
    END
    $$;

CREATE TRIGGER channels_canonical_pattern
    BEFORE INSERT OR UPDATE OF pattern ON realtime.channels
    FOR EACH ROW EXECUTE FUNCTION realtime.channels_canonical_pattern();

-- A subscription to 'order:%' is one to the row whose pattern is 'order:*'.
-- (realtime.pattern_matches already reads '%' as LIKE's own wildcard.)
CREATE OR REPLACE FUNCTION realtime.subscribed_channel(channel text) RETURNS uuid
    LANGUAGE plpgsql STABLE
    AS $$
    BEGIN
        IF position('*' IN channel) > 0 OR position('%' IN channel) > 0 THEN
            RETURN (SELECT c.id FROM realtime.channels c
                    WHERE c.pattern = realtime.canonical_pattern(channel) AND c.enabled);
        END IF;
        RETURN (realtime.owning_channel(channel)).id;
    END
    $$;
