-- Areas: jurisdictions, zones, beats and geofences of agencies (GeoJSON geometry, [lon, lat]).
CREATE TABLE areas (
    id         text        PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 100),
    agency_id  text        NOT NULL CHECK (length(agency_id) BETWEEN 1 AND 100),
    kind       text        NOT NULL CHECK (kind IN ('jurisdiction', 'zone', 'beat', 'geofence')),
    name       text        NOT NULL DEFAULT '' CHECK (length(name) <= 200),
    geometry   jsonb       NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX areas_agency_kind ON areas (agency_id, kind);
