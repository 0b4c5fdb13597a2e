-- The real-time gateway: answered client operations (at most once, also across reconnects) and
-- the history of unit positions (high-rate: written in batches, kept out of the event log).

CREATE TABLE ws_ops (
    principal  text        NOT NULL,
    op_id      text        NOT NULL CHECK (length(op_id) BETWEEN 1 AND 100),
    answer     jsonb       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (principal, op_id)
);
CREATE INDEX ws_ops_created ON ws_ops (created_at);

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
