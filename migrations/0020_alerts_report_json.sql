-- An alert's parsed report is stored as json (its text, checked to be JSON) instead of jsonb.
-- It is written once, with the alert, and only ever read back whole (GET /alerts/{id}); no
-- query looks inside it. jsonb's conversion cost PostgreSQL about a sixth of each alert's insert,
-- and the inserts of a storm's last alerts are what a lot's 202s wait for.
ALTER TABLE alerts ALTER report TYPE json USING report::json;
