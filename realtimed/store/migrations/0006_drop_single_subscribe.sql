-- realtime.authorize_subscribe decided one subscribe; realtimed decides them
-- in batches with realtime.authorize_subscribes, and nothing calls it.
DROP FUNCTION realtime.authorize_subscribe(text, jsonb, text);
