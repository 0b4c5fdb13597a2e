-- Drop the index of alerts by time of receipt: no query reads alerts by it (an incident's
-- alerts are read by incident_id, repeats by (source, identifier), one alert by id), and every
-- alert a storm brings paid for one more B-tree insert.
DROP INDEX IF EXISTS alerts_received;
