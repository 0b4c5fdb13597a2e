-- An event's data, when it is large enough to be stored out of line (an alerts.received lists up
-- to 64 alerts, ~25 kB), is stored without compression. pglz compressed each such value as a lot
-- of alerts waited for its commit: about a quarter of the time its events took to append. The
-- log is written once and read back in order; the price is disk (a summary takes ~400 bytes per
-- alert instead of ~70). Values stored before keep their compression.
ALTER TABLE events ALTER data SET STORAGE EXTERNAL;
