-- Dispatch: agencies, stations, units, incidents, assignments, response plans, durable timers and
-- idempotency keys. Each aggregate row keeps the domain value as `doc` (dispatch.codec's JSON
-- shape) plus the columns queries filter on; rows and log events change in one transaction.

CREATE TABLE agencies (
    id         text        PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 128),
    doc        jsonb       NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE stations (
    id         text        PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 128),
    agency_id  text        NOT NULL REFERENCES agencies (id),
    doc        jsonb       NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX stations_agency ON stations (agency_id);

CREATE TABLE units (
    id         text        PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 128),
    agency_id  text        NOT NULL REFERENCES agencies (id),
    status     text        NOT NULL,
    doc        jsonb       NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX units_agency ON units (agency_id);

-- Human incident numbers: one counter row per year, taken under its row lock.
CREATE TABLE incident_numbers (
    year integer PRIMARY KEY,
    last bigint  NOT NULL
);

CREATE TABLE incidents (
    id            text             PRIMARY KEY,
    number        text             NOT NULL UNIQUE,
    status        text             NOT NULL,
    incident_type text             NOT NULL,
    priority      integer          NOT NULL,
    -- Agencies that see and act on it: home jurisdictions, the creator's, mutual-aid partners.
    agency_ids    text[]           NOT NULL,
    lat           double precision NOT NULL,
    lon           double precision NOT NULL,
    created_at    timestamptz      NOT NULL,
    updated_at    timestamptz      NOT NULL DEFAULT now(),
    doc           jsonb            NOT NULL
);
CREATE INDEX incidents_open ON incidents (created_at) WHERE status NOT IN ('closed', 'cancelled');
CREATE INDEX incidents_agency_ids ON incidents USING gin (agency_ids);
CREATE INDEX incidents_created ON incidents (created_at);

CREATE TABLE assignments (
    id          text        PRIMARY KEY,
    incident_id text        NOT NULL REFERENCES incidents (id),
    unit_id     text        NOT NULL REFERENCES units (id),
    status      text        NOT NULL,
    doc         jsonb       NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX assignments_incident ON assignments (incident_id);
CREATE INDEX assignments_unit ON assignments (unit_id);

-- Operator overrides of the shipped run cards, per incident type.
CREATE TABLE response_plans (
    incident_type text        PRIMARY KEY,
    plans         jsonb       NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- Durable timers (acknowledgement deadlines, …): claimed with FOR UPDATE SKIP LOCKED, so a
-- restart loses none and two nodes never fire one twice.
CREATE TABLE timers (
    id       bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind     text        NOT NULL,
    ref      text        NOT NULL,
    due_at   timestamptz NOT NULL,
    attempts integer     NOT NULL DEFAULT 0,
    UNIQUE (kind, ref)
);
CREATE INDEX timers_due ON timers (due_at);

-- REST writes with an Idempotency-Key: the first answer is kept and repeated.
CREATE TABLE idempotency_keys (
    principal    text        NOT NULL,
    key          text        NOT NULL CHECK (length(key) BETWEEN 1 AND 200),
    request_hash bytea       NOT NULL,
    status       integer     NOT NULL,
    body         jsonb       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (principal, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
