-- The messages already written among (sender, client id) pairs, read after taking the event log's
-- append lock, in one round trip (as migration 0012's functions): a plain statement that takes
-- the lock in a CTE reads with the snapshot taken before it waited, so a resend committed by the
-- previous holder on another node was not seen there and failed on the unique constraint instead
-- of being answered as a repeat.
CREATE FUNCTION icp_messages_seen_locked(lock_key bigint, senders text[], client_ids text[])
RETURNS TABLE (m_seq bigint, m_channel_id text, m_sender text, m_client_id text, m_request_hash bytea,
               m_at timestamptz)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(lock_key);
    RETURN QUERY SELECT m.seq, m.channel_id, m.sender, m.client_id, m.request_hash, m.at FROM messages m
        JOIN unnest(senders, client_ids) AS k(sender, client_id)
        ON m.sender = k.sender AND m.client_id = k.client_id;
END $$;
