"""The field-unit client: report position and status, work assignments, receive what concerns this unit."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any

from icp.client.connection import Connection, ConnectionOptions, Event, Resync
from icp.client.errors import ClientError

POSITION_TIMEOUT_S = 10.0


def iso_time(when: datetime | str | None) -> str:
    """ISO 8601 with an offset (now when None): the server refuses naive times."""
    if isinstance(when, str):
        return when
    when = when or datetime.now(UTC)
    if when.tzinfo is None:
        raise ValueError("a position time needs a UTC offset")
    return when.isoformat()


class FieldUnitClient(Connection):
    """One field unit on one resumable link; the token is bound to the unit (``--role unit --unit U``).

    ``unit_id`` is needed only to filter `assignments`; it defaults to the unit the server names in
    ``welcome`` (``principal.unit``), if it names one.

    Operations wait in the offline queue until they are answered (``request_timeout`` None), since
    a crew's acknowledgement must survive a tunnel; positions are the exception (`send_position`).
    """

    def __init__(self, url: str, token: str, *, unit_id: str | None = None,
                 options: ConnectionOptions | None = None, **overrides: Any) -> None:
        if options is None:
            overrides.setdefault("request_timeout", None)
        super().__init__(url, token, options, **overrides)
        self._unit_id = unit_id

    @property
    def unit_id(self) -> str | None:
        if self._unit_id is not None:
            return self._unit_id
        principal = self.welcome.get("principal")
        unit = principal.get("unit") if isinstance(principal, Mapping) else None
        return unit if isinstance(unit, str) else None

    async def send_position(self, lat: float, lon: float, accuracy: float | None = None, heading: float | None = None,
                            speed: float | None = None, time: datetime | str | None = None, *,
                            timeout: float | None = POSITION_TIMEOUT_S) -> dict[str, Any]:
        """Report a fix (accuracy in metres, heading in degrees from north, speed in m/s). The answer
        says whether the server kept it (``accepted``) and why not (``reason``). Unlike other
        operations a fix is withdrawn after ``timeout`` (`OpTimeout`): once a newer one exists an
        old one is worth nothing, so a long outage does not replay a backlog of them."""
        fields: dict[str, Any] = {"lat": lat, "lon": lon, "time": iso_time(time)}
        optional = {"accuracy": accuracy, "heading": heading, "speed": speed}
        fields.update((k, v) for k, v in optional.items() if v is not None)
        return await self.request("position", timeout=timeout, **fields)

    async def set_status(self, status: str) -> dict[str, Any]:
        return await self.request("status", status=status)

    async def ack(self, assignment: str) -> dict[str, Any]:
        return await self.request("ack", assignment=assignment)

    async def decline(self, assignment: str, reason: str = "") -> dict[str, Any]:
        return await self.request("decline", assignment=assignment, reason=reason)

    async def en_route(self, assignment: str) -> dict[str, Any]:
        return await self.request("en_route", assignment=assignment)

    async def on_scene(self, assignment: str) -> dict[str, Any]:
        return await self.request("on_scene", assignment=assignment)

    async def clear(self, assignment: str) -> dict[str, Any]:
        return await self.request("clear", assignment=assignment)

    async def assignments(self) -> AsyncIterator[Event | Resync]:
        """The ``assignment.*`` events of this unit (``assignment.dispatched`` is a new job; others
        follow it: acknowledged, cancelled, …), and a `Resync` when the server could not replay a gap
        (assignments may have changed meanwhile: refetch them). Consumes `events`."""
        async for item in self.events():
            if isinstance(item, Resync):
                yield item
                continue
            if not item.type.startswith("assignment."):
                continue
            unit = self.unit_id
            if unit is None:
                raise ClientError("this unit's id is unknown: pass FieldUnitClient(..., unit_id=…)")
            if item.data.get("unit_id") == unit:
                yield item
