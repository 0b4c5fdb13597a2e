"""ICP persistence: the PostgreSQL cluster, migrations and the event log."""
