-- Appending events in one round trip when the appender guessed the log's head right.
--
-- An appender that knows the head its last append ended at (one node's group commit, usually
-- the only appender) chains and hashes its events before it asks, and sends them with the head
-- it expects. Under the append lock the function compares: the same head, and the events are
-- inserted (and the wake-up sent with the seq they end at); another head (another node appended
-- meanwhile), and nothing is written: the appender rechains from the head returned, which cannot
-- move while its transaction holds the lock, and calls again. Before: a round trip for the lock
-- and head (icp_event_head_locked), then two for COPY.
--
-- Visibility is sent as one array literal per event (text[] of text[] cannot be ragged).
CREATE FUNCTION icp_events_append_locked(
    lock_key bigint, channel text, expect_seq bigint, expect_hash bytea, appended_at timestamptz,
    seqs bigint[], types text[], subjects text[], visibilities text[], actors text[], datas text[],
    prevs bytea[], hashes bytea[]
) RETURNS TABLE (head_seq bigint, head_hash bytea) LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(lock_key);
    SELECT e.seq, e.hash INTO head_seq, head_hash FROM events e ORDER BY e.seq DESC LIMIT 1;
    IF coalesce(head_seq, 0) = expect_seq AND coalesce(head_hash, '\x'::bytea) = coalesce(expect_hash, '\x'::bytea)
    THEN
        INSERT INTO events (seq, at, type, subject, visibility, actor, data, prev_hash, hash)
        SELECT u.seq, appended_at, u.type, u.subject, u.vis::text[], u.actor::jsonb, u.data::jsonb, u.prev, u.hash
        FROM unnest(seqs, types, subjects, visibilities, actors, datas, prevs, hashes)
            AS u(seq, type, subject, vis, actor, data, prev, hash);
        PERFORM pg_notify(channel, (expect_seq + cardinality(seqs))::text);
    END IF;
    RETURN NEXT;
END $$;
