"""The console client for scripts: subscribe to topics, follow events and positions, run dispatch commands."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from icp.client.connection import Connection


class ConsoleClient(Connection):
    """A dispatcher's (or supervisor's, or administrator's) link. Subscriptions are repeated on every
    reconnect; topics are ``events``, ``positions`` and ``incident:<id>``."""

    async def subscribe(self, topics: Iterable[str]) -> dict[str, Any]:
        return await self.request("subscribe", sticky=True, topics=list(topics))

    async def create_incident(self, type: str, priority: int, *, location: Mapping[str, float] | None = None,
                              address: str | None = None, **extra: Any) -> dict[str, Any]:
        """``location`` is ``{"lat": …, "lon": …}``; without it the server geocodes ``address``."""
        fields: dict[str, Any] = {"type": type, "priority": priority, **extra}
        if location is not None:
            fields["location"] = dict(location)
        if address is not None:
            fields["address"] = address
        return await self.request("incident.create", **fields)

    async def dispatch(self, incident: str, units: Sequence[str]) -> dict[str, Any]:
        return await self.request("incident.dispatch", incident=incident, units=list(units))

    async def recommend(self, incident: str) -> dict[str, Any]:
        return await self.request("recommend", incident=incident)

    async def add_note(self, incident: str, text: str) -> dict[str, Any]:
        return await self.request("incident.note", incident=incident, text=text)

    async def close_incident(self, incident: str, disposition: str = "") -> dict[str, Any]:
        return await self.request("incident.close", incident=incident, disposition=disposition)

    async def cancel_incident(self, incident: str, reason: str = "") -> dict[str, Any]:
        return await self.request("incident.cancel", incident=incident, reason=reason)
