-- Agency webhooks. The event log is the outbox: a fan-out step turns each committed event into one
-- delivery row per subscribed endpoint (in the same transaction that advances webhook_outbox, so
-- no node fans an event out twice); deliveries and their retries are rows with due_at, worked per
-- endpoint in seq order by the node holding that endpoint's lease. Signing secrets are sealed
-- (AES-GCM with the server's key): HMAC needs them in clear at send time, so they cannot be hashed.

CREATE TABLE webhook_endpoints (
    id              text        PRIMARY KEY,
    agency_id       text        NOT NULL,
    url             text        NOT NULL,
    events          text[]      NOT NULL,            -- type patterns: 'incident.*', 'assignment.dispatched', '*'
    description     text        NOT NULL DEFAULT '',
    status          text        NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'paused', 'disabled')),
    disabled_reason text,
    secret          bytea       NOT NULL,            -- sealed
    previous_secret bytea,                           -- sealed; also signs until previous_until (rotation overlap)
    previous_until  timestamptz,
    from_seq        bigint      NOT NULL,            -- only events after this seq are delivered
    lease_owner     text,
    lease_until     timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_endpoints_agency ON webhook_endpoints (agency_id);

CREATE TABLE webhook_deliveries (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    endpoint_id     text        NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    seq             bigint      NOT NULL,
    event_type      text        NOT NULL,
    msg_id          text        NOT NULL,            -- the webhook-id: stable per event and endpoint
    body            bytea       NOT NULL,            -- exactly the bytes signed and sent, every attempt
    status          text        NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts        integer     NOT NULL DEFAULT 0,
    retry_base      integer     NOT NULL DEFAULT 0,  -- attempts made before a manual retry restarted the schedule
    due_at          timestamptz NOT NULL DEFAULT now(),
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_attempt_at timestamptz,
    last_status     integer,
    last_error      text,
    delivered_at    timestamptz,
    UNIQUE (endpoint_id, seq)
);
CREATE INDEX webhook_deliveries_pending ON webhook_deliveries (endpoint_id, seq) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_recent ON webhook_deliveries (endpoint_id, id DESC);

CREATE TABLE webhook_attempts (
    delivery_id bigint      NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempt     integer     NOT NULL,
    at          timestamptz NOT NULL,
    status_code integer,
    latency_ms  real        NOT NULL,
    error       text,
    PRIMARY KEY (delivery_id, attempt)
);

-- One row: the last event seq fanned out. Locked FOR UPDATE by the fan-out step.
CREATE TABLE webhook_outbox (
    id       boolean PRIMARY KEY DEFAULT true CHECK (id),
    last_seq bigint  NOT NULL
);
INSERT INTO webhook_outbox (last_seq) SELECT coalesce(max(seq), 0) FROM events;

-- Agencies sign their requests to /api/v1/agencies/{id}/inbound with this secret.
CREATE TABLE agency_inbound_secrets (
    agency_id       text        PRIMARY KEY,
    secret          bytea       NOT NULL,            -- sealed
    previous_secret bytea,
    previous_until  timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- Replay protection: a webhook-id is accepted once per agency (kept past the timestamp tolerance).
CREATE TABLE inbound_messages (
    agency_id   text        NOT NULL,
    msg_id      text        NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (agency_id, msg_id)
);
CREATE INDEX inbound_messages_received ON inbound_messages (received_at);
