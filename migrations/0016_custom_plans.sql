-- Plan the locked reads for the values of each call, not once for all.
--
-- A PL/pgSQL function's statements are prepared once per session and, after a few calls, may run
-- on a generic plan made without the values of their parameters. For a join of a table with
-- unnest(array parameter) that plan cannot know how many keys come in, and made while the
-- table was small it scans the table: measured under sustained intake, each transaction's
-- look-up of repeats read every row of `alerts` and the open-incident read every row of
-- `incidents` (PostgreSQL's time per alert grew fourfold, p99 latency to ~95 ms). Planning each
-- call costs a fraction of a millisecond and uses the indexes.
ALTER FUNCTION icp_intake_read_locked(bigint, text[], text[], float8[], float8[], float8[], float8[], text[])
    SET plan_cache_mode = force_custom_plan;
ALTER FUNCTION icp_messages_seen_locked(bigint, text[], text[]) SET plan_cache_mode = force_custom_plan;
