-- Which stale positions have been announced: a node claims (unit, last position time) atomically,
-- so a unit going silent becomes one `unit.position_stale` event however many nodes notice.
CREATE TABLE position_stale (
    unit_id     text        PRIMARY KEY,
    position_at timestamptz NOT NULL,
    noted_at    timestamptz NOT NULL DEFAULT now()
);
