-- Room in each page of incidents for the next version of its rows. Every lot of alerts updates
-- each incident its alerts joined (last alert time, alert count), and with full pages every such
-- update put its new row in another page, with an entry in each of the table's five indexes.
-- With room left, PostgreSQL keeps the new version in the same page and touches no index (a
-- "HOT" update: no indexed column changes). Pages written before this keep no room until the
-- table is rewritten (VACUUM FULL), which a busy deployment may do at a quiet hour.
ALTER TABLE incidents SET (fillfactor = 70);
