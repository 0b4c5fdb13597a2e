-- Reads that must see what the previous holder of a transaction-level advisory lock committed,
-- in one round trip with taking the lock. In READ COMMITTED a VOLATILE function takes a fresh
-- snapshot for each statement it runs, so the read below runs after the lock is granted (a
-- plain "SELECT lock, read" would read with the snapshot taken before it waited).

-- The event log's head for an appender (then the wake-up carrying the seq it will end at).
CREATE FUNCTION icp_event_head_locked(lock_key bigint, channel text, appending integer)
RETURNS TABLE (head_seq bigint, head_hash bytea) LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(lock_key);
    SELECT e.seq, e.hash INTO head_seq, head_hash FROM events e ORDER BY e.seq DESC LIMIT 1;
    PERFORM pg_notify(channel, (coalesce(head_seq, 0) + appending)::text);
    RETURN NEXT;
END $$;

-- The alerts already received among (source, identifier) pairs, for intake under its lock.
CREATE FUNCTION icp_alerts_seen_locked(lock_key bigint, sources text[], identifiers text[])
RETURNS TABLE (seen_source text, seen_identifier text, alert_id text, alert_incident text)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(lock_key);
    RETURN QUERY SELECT a.source, a.identifier, a.id, a.incident_id FROM alerts a
        JOIN unnest(sources, identifiers) AS k(s, i) ON a.source = k.s AND a.identifier = k.i;
END $$;
