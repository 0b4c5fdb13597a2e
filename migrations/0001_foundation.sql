-- ICP foundation: the event log (audit trail, outbox, replay source) and principals.

-- The event log. seq is assigned by the appender under a transaction-level advisory lock, so
-- commit order equals seq order (see docs/event-log.md). hash = sha256(prev_hash || canonical).
CREATE TABLE events (
    seq        bigint      PRIMARY KEY CHECK (seq > 0),
    at         timestamptz NOT NULL,
    type       text        NOT NULL CHECK (length(type) BETWEEN 1 AND 100),
    subject    text        NOT NULL CHECK (length(subject) <= 200),
    visibility text[]      NOT NULL,
    actor      jsonb       NOT NULL,
    data       jsonb       NOT NULL,
    prev_hash  bytea       NOT NULL CHECK (length(prev_hash) = 32),
    hash       bytea       NOT NULL CHECK (length(hash) = 32)
);
CREATE INDEX events_subject_seq ON events (subject, seq);

-- Append-only: rewriting history needs a deliberate act (disabling this trigger as a table
-- owner), and even then `icp audit verify` names the first row that no longer fits the chain.
CREATE FUNCTION events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the event log is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER events_no_update_delete BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_append_only();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_append_only();

-- Bearer tokens: the secret is shown once; only its SHA-256 is kept (tokens are 256-bit random,
-- so a fast hash is as strong as a slow one here and keeps every request cheap).
CREATE TABLE api_tokens (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name         text        NOT NULL DEFAULT '' CHECK (length(name) <= 200),
    role         text        NOT NULL
                 CHECK (role IN ('admin','supervisor','dispatcher','unit','agency','sensor')),
    agency_id    text        CHECK (length(agency_id) <= 100),
    unit_id      text        CHECK (length(unit_id) <= 100),
    token_hash   bytea       NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz,
    revoked_at   timestamptz,
    last_used_at timestamptz
);

-- Console users: argon2id password hashes.
CREATE TABLE users (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    username      text        NOT NULL CHECK (length(username) BETWEEN 1 AND 100),
    password_hash text        NOT NULL,
    role          text        NOT NULL
                  CHECK (role IN ('admin','supervisor','dispatcher','unit','agency','sensor')),
    agency_id     text        CHECK (length(agency_id) <= 100),
    disabled      boolean     NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_username_ci ON users (lower(username));

-- Console sessions (cookie value hashed like tokens).
CREATE TABLE sessions (
    id_hash      bytea       PRIMARY KEY,
    user_id      bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL
);
CREATE INDEX sessions_expiry ON sessions (expires_at);
