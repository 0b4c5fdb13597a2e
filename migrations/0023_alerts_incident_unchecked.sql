-- An alert's incident is no longer a foreign key. Only intake writes alerts.incident_id, in the
-- transaction that read the incident under the correlation lock or saved it, and incidents are
-- never deleted (they close). The key's check, an index probe and a share lock on the incident
-- for each alert, was a quarter of PostgreSQL's work per inserted alert: in a storm the inserts
-- fell behind routing, and a lot's last alerts waited for them.
ALTER TABLE alerts DROP CONSTRAINT alerts_incident_id_fkey;
