-- POST /api/realtime/disconnect reaches every realtimed process of the
-- database: the process answering it sends a NOTIFY on realtime_control
-- (every process's listener LISTENs there) naming the request, each process
-- disconnects its matching sockets and records here how many, and the
-- answering process adds up the rows of its request.

CREATE TABLE realtime.disconnect_results (
    request_id uuid NOT NULL,
    -- The process that answered, as it names itself.
    process text NOT NULL,
    disconnected integer NOT NULL CHECK (disconnected >= 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (request_id, process)
);

CREATE INDEX disconnect_results_created_at ON realtime.disconnect_results (created_at);
