-- Intake's reads at the start of a transaction in one round trip: the correlation lock, the
-- alerts already received among the batch's keys, and the open incidents its alerts could join.
-- (It replaces icp_alerts_seen_locked of migration 0012, which read only the repeats.)
DROP FUNCTION icp_alerts_seen_locked(bigint, text[], text[]);

-- The open incidents of the given types within boxes (lat0, lat1, lon0, lon1, comma-separated
-- types), each read from the open-incident index (incidents_open_type).
CREATE FUNCTION icp_open_incidents_near(lat0s float8[], lat1s float8[], lon0s float8[], lon1s float8[],
                                        type_lists text[])
RETURNS TABLE (id text, incident_type text, lat float8, lon float8, created_at timestamptz, priority integer,
               alert_count integer, last_alert_at timestamptz, agency_ids text[])
LANGUAGE sql STABLE AS $$
    SELECT DISTINCT ON (i.id) i.id, i.incident_type, i.lat, i.lon, i.created_at, i.priority, i.alert_count,
           i.last_alert_at, i.agency_ids
    FROM unnest(lat0s, lat1s, lon0s, lon1s, type_lists) AS b(lat0, lat1, lon0, lon1, types)
    JOIN LATERAL (SELECT * FROM incidents WHERE status NOT IN ('closed', 'cancelled')
        AND incident_type = ANY(string_to_array(b.types, ','))
        AND lat BETWEEN b.lat0 AND b.lat1 AND lon BETWEEN b.lon0 AND b.lon1) AS i ON true
$$;

-- Under the lock (read after it is granted, as migration 0012's functions): rows with
-- seen_source set are alerts received before; the others are open incidents nearby.
CREATE FUNCTION icp_intake_read_locked(lock_key bigint, sources text[], identifiers text[],
                                       lat0s float8[], lat1s float8[], lon0s float8[], lon1s float8[],
                                       type_lists text[])
RETURNS TABLE (seen_source text, seen_identifier text, alert_id text, alert_incident text,
               id text, incident_type text, lat float8, lon float8, created_at timestamptz, priority integer,
               alert_count integer, last_alert_at timestamptz, agency_ids text[])
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(lock_key);
    RETURN QUERY SELECT a.source, a.identifier, a.id, a.incident_id, NULL::text, NULL::text, NULL::float8,
        NULL::float8, NULL::timestamptz, NULL::integer, NULL::integer, NULL::timestamptz, NULL::text[]
        FROM alerts a JOIN unnest(sources, identifiers) AS k(s, i) ON a.source = k.s AND a.identifier = k.i;
    RETURN QUERY SELECT NULL::text, NULL::text, NULL::text, NULL::text, o.*
        FROM icp_open_incidents_near(lat0s, lat1s, lon0s, lon1s, type_lists) AS o;
END $$;
