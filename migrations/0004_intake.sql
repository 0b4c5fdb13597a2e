-- Sensor intake: every alert kept with its raw payload verbatim, de-duplicated by (source,
-- identifier); the sensor registry; bearer keys bound to a sensor network.

ALTER TABLE api_tokens ADD COLUMN source text CHECK (length(source) BETWEEN 1 AND 200);

CREATE TABLE alerts (
    id           text             PRIMARY KEY,
    source       text             NOT NULL,
    identifier   text             NOT NULL,
    kind         text             NOT NULL,
    msg_type     text             NOT NULL,
    status       text             NOT NULL,
    sent         timestamptz      NOT NULL,
    received_at  timestamptz      NOT NULL DEFAULT now(),
    lat          double precision,
    lon          double precision,
    incident_id  text             REFERENCES incidents (id),
    outcome      text             NOT NULL CHECK (outcome IN ('created', 'attached', 'recorded')),
    report       jsonb            NOT NULL,
    raw          bytea            NOT NULL,
    content_type text             NOT NULL,
    principal    text             NOT NULL,
    UNIQUE (source, identifier)
);
CREATE INDEX alerts_incident ON alerts (incident_id, received_at);
CREATE INDEX alerts_received ON alerts (received_at);

-- Sensors and things with a fixed place, so a device that posts only its id is placed correctly.
CREATE TABLE sensors (
    id               text             PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 200),
    source           text             NOT NULL,
    kind             text             NOT NULL,
    name             text             NOT NULL DEFAULT '',
    lat              double precision,
    lon              double precision,
    observed_property text            NOT NULL DEFAULT '',
    unit             text             NOT NULL DEFAULT '',
    datastream_ids   text[]           NOT NULL DEFAULT '{}',
    thing_ids        text[]           NOT NULL DEFAULT '{}',
    updated_at       timestamptz      NOT NULL DEFAULT now()
);
CREATE INDEX sensors_datastreams ON sensors USING gin (datastream_ids);
CREATE INDEX sensors_things ON sensors USING gin (thing_ids);
