"""The EIDO view of an incident for a webhook payload, from the live picture or, for an incident
that has left it (closed), from its rows."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from icp import dispatch_store as store
from icp.live import LivePicture
from icp.webhooks.eido import incident_eido, state_eido
from icp.webhooks.outbox import IncidentView


def incident_views(live: LivePicture, sender: str) -> IncidentView:
    async def view(conn: asyncpg.Connection, incident_id: str, at: datetime) -> dict[str, Any] | None:
        state = live.state
        if incident_id in state.incidents:
            return state_eido(state, incident_id, sender=sender, updated_at=at)
        doc = await conn.fetchval(f"SELECT {store.INCIDENT_DOC} FROM incidents WHERE id = $1", incident_id)
        if doc is None:
            return None
        rows = await conn.fetch("SELECT doc FROM assignments WHERE incident_id = $1", incident_id)
        assignments = {a.id: a for a in (store.assignment_from(r["doc"]) for r in rows)}
        return incident_eido(store.incident_from(doc), assignments=assignments, units=state.units,
                             agencies=state.agencies, sender=sender, updated_at=at)

    return view
