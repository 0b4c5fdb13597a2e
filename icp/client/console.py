"""The console client for scripts: subscribe to topics, follow events and positions, run dispatch commands."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any

from icp.client.connection import Connection, ConnectionOptions, Event, Item, Resync

DEFAULT_TOPICS = ("events",)  # what every session starts subscribed to (docs/protocol.md)


class ConsoleClient(Connection):
    """A dispatcher's (or supervisor's, or administrator's) link. Topics are ``events`` (everything
    the principal may see), ``incident:<id>`` and ``positions``.

    ``topics`` sets what the session receives from the first link on (None: the server's default,
    ``events``). The server forgets subscriptions with the session, so the client repeats every
    change from the default (subscriptions and unsubscriptions) at the start of each new link.
    """

    def __init__(self, url: str, token: str, *, topics: Iterable[str] | None = None,
                 options: ConnectionOptions | None = None, **overrides: Any) -> None:
        super().__init__(url, token, options, **overrides)
        self._added: dict[str, None] = {}  # ordered sets: topics beyond the default ...
        self._removed: dict[str, None] = {}  # ... and default topics given up
        if topics is not None:
            wanted = list(topics)
            self._change(wanted, subscribe=True)
            self._change([t for t in DEFAULT_TOPICS if t not in wanted], subscribe=False)

    @property
    def topics(self) -> list[str]:
        """What this client keeps the session subscribed to."""
        return [t for t in DEFAULT_TOPICS if t not in self._removed] + list(self._added)

    async def events(self) -> AsyncIterator[Item]:
        """Events of the topics this client keeps (see `Connection.events`). The client filters
        too: right after a (re)connect the server may still send by the default topics, until the
        repeated subscriptions are applied."""
        async for item in super().events():
            if isinstance(item, Resync) or self._wanted(item):
                yield item

    def _wanted(self, event: Event) -> bool:
        if "events" not in self._removed:
            return True
        incident = event.data.get("incident_id")
        return isinstance(incident, str) and f"incident:{incident}" in self._added

    async def subscribe(self, topics: Iterable[str]) -> dict[str, Any]:
        """Add topics; the answer's ``topics`` lists all the session now has."""
        wanted = list(topics)
        answer = await self.request("subscribe", topics=wanted)
        self._change(wanted, subscribe=True)
        return answer

    async def unsubscribe(self, topics: Iterable[str]) -> dict[str, Any]:
        gone = list(topics)
        answer = await self.request("unsubscribe", topics=gone)
        self._change(gone, subscribe=False)
        return answer

    def _change(self, topics: list[str], *, subscribe: bool) -> None:
        grow, shrink = (self._added, self._removed) if subscribe else (self._removed, self._added)
        for topic in topics:
            shrink.pop(topic, None)
            if subscribe != (topic in DEFAULT_TOPICS):
                grow[topic] = None
        self.set_sticky("subscribe", {"topics": list(self._added)} if self._added else None)
        self.set_sticky("unsubscribe", {"topics": list(self._removed)} if self._removed else None)

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
