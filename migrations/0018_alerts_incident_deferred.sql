-- An alert's foreign key to its incident is checked at commit: intake inserts a storm's alerts
-- while it routes the next ones, before it saves the incidents they opened (all in one
-- transaction), so that PostgreSQL's work overlaps the node's.
ALTER TABLE alerts ALTER CONSTRAINT alerts_incident_id_fkey DEFERRABLE INITIALLY DEFERRED;
