-- An incident's alert list moves out of its document into rows of its own.
--
-- Every alert that joined an incident rewrote the whole document (jsonb_set of a list that grows
-- with every detector that fires): a busy incident's document is kilobytes, stored out of line
-- and compressed, so each link cost a rewrite of all of it, its WAL and, after a checkpoint, a
-- full page. Under sustained intake that update became a quarter of the database's time. Now a
-- link is one small row; the document is written without `alert_ids` and read back with them.

CREATE TABLE incident_alerts (
    incident_id text NOT NULL,
    n integer NOT NULL,          -- 1-based position in the incident's alert list
    alert_id text NOT NULL,
    PRIMARY KEY (incident_id, n)
);

INSERT INTO incident_alerts (incident_id, n, alert_id)
SELECT i.id, a.n::integer, a.alert_id
FROM incidents i, jsonb_array_elements_text(coalesce(i.doc->'alert_ids', '[]')) WITH ORDINALITY AS a(alert_id, n);

UPDATE incidents SET doc = doc - 'alert_ids',
    alert_count = coalesce(jsonb_array_length(doc->'alert_ids'), 0)
WHERE doc ? 'alert_ids';

-- The document as the domain knows it: the stored one with its alert list put back (in order).
CREATE FUNCTION icp_incident_doc(incident text, doc jsonb) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT doc || jsonb_build_object('alert_ids', coalesce(
        (SELECT jsonb_agg(l.alert_id ORDER BY l.n) FROM incident_alerts l WHERE l.incident_id = incident),
        '[]'::jsonb))
$$;

-- Write an incident: its row and document (without the list), and the alerts of its list not
-- stored yet (the list only grows; positions already stored are left as they are).
CREATE FUNCTION icp_save_incident(
    incident text, num text, st text, itype text, prio integer, agencies text[],
    ilat double precision, ilon double precision, created timestamptz, full_doc jsonb, alert_ids text[]
) RETURNS void LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    stored integer;
BEGIN
    SELECT alert_count INTO stored FROM incidents WHERE id = incident;
    INSERT INTO incidents (id, number, status, incident_type, priority, agency_ids, lat, lon, created_at, doc,
                           alert_count)
    VALUES (incident, num, st, itype, prio, agencies, ilat, ilon, created, full_doc - 'alert_ids',
            coalesce(cardinality(alert_ids), 0))
    ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, incident_type = EXCLUDED.incident_type,
        priority = EXCLUDED.priority, agency_ids = EXCLUDED.agency_ids, lat = EXCLUDED.lat, lon = EXCLUDED.lon,
        doc = EXCLUDED.doc, alert_count = EXCLUDED.alert_count, updated_at = now();
    INSERT INTO incident_alerts (incident_id, n, alert_id)
    SELECT incident, a.n::integer, a.alert_id FROM unnest(alert_ids) WITH ORDINALITY AS a(alert_id, n)
    WHERE a.n > coalesce(stored, 0)
    ON CONFLICT (incident_id, n) DO NOTHING;
END $$;
