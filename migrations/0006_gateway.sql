-- The real-time gateway: the history of unit positions (high-rate: written in batches, kept out of
-- the event log). Client operations are made at-most-once through idempotency_keys (0003).

CREATE TABLE unit_positions (
    id       bigint           GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    unit_id  text             NOT NULL,
    at       timestamptz      NOT NULL,
    lat      double precision NOT NULL,
    lon      double precision NOT NULL,
    accuracy real,
    heading  real,
    speed    real,
    node     text             NOT NULL
);
CREATE INDEX unit_positions_unit_at ON unit_positions (unit_id, at);
