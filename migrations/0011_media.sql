-- Media (issue 11): calls, recordings and the node each media room lives on. See docs/media.md.

-- A call between two members. Its lifecycle (icp/media/calls.py) is ringing → connected → ended,
-- or ringing → declined | missed | cancelled. `agencies` are those that may see it (both parties'
-- and the incident's), `members` its two parties.
CREATE TABLE calls (
    id          text        PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 64),
    caller      text        NOT NULL CHECK (length(caller) BETWEEN 1 AND 200),
    callee      text        NOT NULL CHECK (length(callee) BETWEEN 1 AND 200),
    incident_id text        CHECK (length(incident_id) <= 128),
    video       boolean     NOT NULL DEFAULT false,
    state       text        NOT NULL CHECK (state IN ('ringing', 'connected', 'ended', 'declined', 'missed',
                                                      'cancelled')),
    end_reason  text        CHECK (length(end_reason) <= 64),
    agencies    text[]      NOT NULL DEFAULT '{}',
    members     text[]      NOT NULL DEFAULT '{}',
    node        text        NOT NULL DEFAULT '',
    started_at  timestamptz NOT NULL DEFAULT now(),
    answered_at timestamptz,
    ended_at    timestamptz
);
CREATE INDEX calls_incident ON calls (incident_id) WHERE incident_id IS NOT NULL;

-- One recorded call, conference or talkgroup transmission: an Ogg Opus file under
-- data_dir/recordings/. Deleted with its file once `expires_at` passes (media_retention_days).
CREATE TABLE recordings (
    id           text        PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 64),
    kind         text        NOT NULL CHECK (kind IN ('call', 'conference', 'talkgroup')),
    room         text        NOT NULL CHECK (length(room) BETWEEN 1 AND 200),
    call_id      text,
    incident_id  text        CHECK (length(incident_id) <= 128),
    speaker      text        CHECK (length(speaker) <= 200),       -- a talkgroup transmission's speaker
    path         text        NOT NULL CHECK (length(path) BETWEEN 1 AND 400),  -- relative to data_dir
    content_type text        NOT NULL DEFAULT 'audio/ogg',
    bytes        bigint      NOT NULL DEFAULT 0,
    duration_s   double precision NOT NULL DEFAULT 0,
    agencies     text[]      NOT NULL DEFAULT '{}',
    members      text[]      NOT NULL DEFAULT '{}',
    started_at   timestamptz NOT NULL,
    ended_at     timestamptz NOT NULL,
    expires_at   timestamptz
);
CREATE INDEX recordings_incident ON recordings (incident_id, started_at) WHERE incident_id IS NOT NULL;
CREATE INDEX recordings_call ON recordings (call_id) WHERE call_id IS NOT NULL;
CREATE INDEX recordings_expiry ON recordings (expires_at) WHERE expires_at IS NOT NULL;

-- Which node holds each live media room (rooms live on one node each). A node refreshes its
-- rooms' `seen_at`; a claim not refreshed for a minute is stale (its node died) and may be taken.
CREATE TABLE media_rooms (
    room     text        PRIMARY KEY CHECK (length(room) BETWEEN 1 AND 200),
    node_id  text        NOT NULL,
    node_url text        NOT NULL DEFAULT '',
    seen_at  timestamptz NOT NULL DEFAULT now()
);
