"""The console client for scripts: subscribe to topics, follow events and positions, run dispatch commands."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from icp.client.connection import Connection, ConnectionOptions


class ConsoleClient(Connection):
    """A dispatcher's (or supervisor's, or administrator's) link. Topics are ``events``,
    ``positions`` and ``incident:<id>``; ``topics`` are subscribed from the first link on, and every
    subscription is repeated on each new link (the server forgets them with the session)."""

    def __init__(self, url: str, token: str, *, topics: Iterable[str] = ("events",),
                 options: ConnectionOptions | None = None, **overrides: Any) -> None:
        super().__init__(url, token, options, **overrides)
        self._topics: dict[str, None] = {}  # ordered set
        self._remember(topics, add=True)

    @property
    def topics(self) -> list[str]:
        return list(self._topics)

    async def subscribe(self, topics: Iterable[str]) -> dict[str, Any]:
        """Add topics (the server merges repeats)."""
        wanted = list(topics)
        answer = await self.request("subscribe", topics=wanted)
        self._remember(wanted, add=True)
        return answer

    async def unsubscribe(self, topics: Iterable[str]) -> dict[str, Any]:
        gone = list(topics)
        answer = await self.request("unsubscribe", topics=gone)
        self._remember(gone, add=False)
        return answer

    def _remember(self, topics: Iterable[str], *, add: bool) -> None:
        for topic in topics:
            if add:
                self._topics[topic] = None
            else:
                self._topics.pop(topic, None)
        self.set_sticky("subscribe", {"topics": list(self._topics)} if self._topics else None)

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
