-- An alert's foreign key to its incident is checked as the alert is inserted again (0018 had
-- moved the check to commit). Intake now holds back the alerts of incidents a lot opened until
-- they are saved, so the rest can go in while the lot is routed; checked at commit, the key cost
-- an index read per alert at the end of every lot, where nothing else overlaps it.
ALTER TABLE alerts ALTER CONSTRAINT alerts_incident_id_fkey NOT DEFERRABLE;
