-- What correlation asks of every open incident, without decoding its document: how many alerts
-- it has and when the last one was sent.
ALTER TABLE incidents ADD COLUMN alert_count integer NOT NULL DEFAULT 0;
ALTER TABLE incidents ADD COLUMN last_alert_at timestamptz;
CREATE INDEX incidents_open_type ON incidents (incident_type, lat, lon) WHERE status NOT IN ('closed', 'cancelled');
