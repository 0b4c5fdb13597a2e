"""Client operations over the gateway, carried out by the same services the REST API uses.

State-changing operations run through `transact` with the op id as an idempotency key (namespaced
``ws:``), so an operation is applied at most once: a repeat — in the same session or after a
reconnect — gets the stored answer. Positions are not stored per op (a repeated fix is refused
as "older than the last" anyway). Messages are made at most once by their client id (the op id
unless the client names one), which the message store keeps with the message; receipts are
cumulative, so a repeat changes nothing.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import asyncpg
from aiohttp import web

from dispatch import codec
from dispatch import commands as cmd
from dispatch import events as dev
from geo.coords import Point
from icp import appkeys
from icp.auth.principal import Principal, Role
from icp.dispatch_service import Written, sees_incident, transact
from icp.errors import Problem, forbidden
from icp.gateway.positions import Fix
from icp.messaging import MESSAGING
from icp.messaging.hub import Subscriber

ASSIGNMENT_OPS: dict[str, type[cmd.Command]] = {
    "ack": cmd.AcknowledgeAssignment, "decline": cmd.DeclineAssignment, "en_route": cmd.UnitEnRoute,
    "on_scene": cmd.UnitOnScene, "clear": cmd.ClearAssignment,
}
UNIT_ONLY = frozenset({"position", "status", *ASSIGNMENT_OPS})


def check_audience(who: Principal, op: str, audience: str) -> None:
    """Unit operations are for field units (bound to a unit); console operations for dispatchers."""
    if audience == "unit" and (who.role is not Role.UNIT or who.unit is None):
        raise forbidden(f"{op} is an operation of field units (a token bound to a unit)")
    if audience == "console" and not who.has(Role.DISPATCHER):
        raise forbidden(f"{op} is an operation of dispatchers")


async def execute(app: web.Application, who: Principal, op: str, op_id: str, args: dict[str, Any]) -> dict[str, Any]:
    """Carry out one validated operation; return the ``ok`` frame's fields (raises Problem or a
    domain error, which the caller turns into an ``error`` frame)."""
    if op == "position":
        return position(app, who, args)
    if op.startswith(("message.", "channel.")):
        return await _messaging(app, who, op, op_id, args)
    if op == "recommend":
        return await _recommend(app, who, args["incident"])
    if op == "incident.create":
        return await _create(app, who, op_id, args)
    command = _command(app, who, op, args)
    service = app[appkeys.DISPATCH]

    async def work(conn: asyncpg.Connection) -> Written:
        outcome = await service.run(conn, command, who)
        result: dict[str, Any] = {"events": [e.to_dict() for e in outcome.events]}
        created = next((e for e in outcome.events if isinstance(e, dev.IncidentCreated)), None)
        if created is not None:
            result["incident_id"] = created.incident_id
        return Written(200, result, last_seq=outcome.last_seq)

    written = await transact(app[appkeys.POOL], app[appkeys.FEED], who, work,
                             idempotency_key=f"ws:{op_id}", fingerprint=_fingerprint(op, args))
    return dict(written.body)


def _fingerprint(op: str, args: dict[str, Any]) -> bytes:
    return hashlib.sha256(f"{op}\n{json.dumps(args, sort_keys=True, default=str)}".encode()).digest()


def _command(app: web.Application, who: Principal, op: str, args: dict[str, Any]) -> cmd.Command:
    if op in ASSIGNMENT_OPS:
        fields: dict[str, Any] = {"assignment_id": args["assignment"]}
        if op == "decline":
            fields["reason"] = args.get("reason", "")
            service = app[appkeys.DISPATCH]
            if service.live.policy.on_decline != "none":
                fields["replacement_unit_id"] = service.replacement(args["assignment"], datetime.now(UTC))
        return codec.decode(ASSIGNMENT_OPS[op], fields)
    if op == "status":
        assert who.unit is not None
        return codec.decode(cmd.ChangeUnitStatus, {"unit_id": who.unit, "status": args["status"]})
    if op == "incident.dispatch":
        units = [{"unit_id": u} if isinstance(u, str) else u for u in args["units"]]
        return codec.decode(cmd.DispatchUnits, {"incident_id": args["incident"], "units": units})
    if op == "incident.note":
        return codec.decode(cmd.AddNote, {"incident_id": args["incident"], "author": who.name, "text": args["text"]})
    if op == "incident.close":
        return cmd.CloseIncident(incident_id=args["incident"], disposition=args.get("disposition", ""))
    if op == "incident.cancel":
        return cmd.CancelIncident(incident_id=args["incident"], reason=args.get("reason", ""))
    raise Problem(400, "unknown_op", f"unknown operation {op!r}")


async def _create(app: web.Application, who: Principal, op_id: str, args: dict[str, Any]) -> dict[str, Any]:
    location = args.get("location")
    geography = app[appkeys.GEOGRAPHY]
    address = args.get("address", "") or ""
    if location is None:
        found = geography.geocode(address, 1)
        if not found:
            raise Problem(422, "invalid_request", f"{address!r} was not found; give a location")
        point, address = Point(found[0]["lat"], found[0]["lon"]), found[0]["label"]
    else:
        point = Point.from_mapping(location)
    service = app[appkeys.DISPATCH]

    async def work(conn: asyncpg.Connection) -> Written:
        outcome = await service.create_incident(conn, who, incident_type=args["type"], priority=args["priority"],
                                                location=point, address=address)
        created = next(e for e in outcome.events if isinstance(e, dev.IncidentCreated))
        return Written(200, {"incident_id": created.incident_id, "number": str(created.number)},
                       last_seq=outcome.last_seq)

    written = await transact(app[appkeys.POOL], app[appkeys.FEED], who, work,
                             idempotency_key=f"ws:{op_id}", fingerprint=_fingerprint("incident.create", args))
    return dict(written.body)


async def _recommend(app: web.Application, who: Principal, incident_id: str) -> dict[str, Any]:
    live = app[appkeys.LIVE]
    if incident_id not in live.state.incidents or not sees_incident(who, live.incident_agencies.get(incident_id, [])):
        raise Problem(404, "not_found", f"incident {incident_id} is not open or not yours")
    rec = await app[appkeys.DISPATCH].recommend(incident_id)
    return {"recommendation": rec.to_dict()}


async def _messaging(app: web.Application, who: Principal, op: str, op_id: str, args: dict[str, Any]
                     ) -> dict[str, Any]:
    service = app[MESSAGING]
    if op == "message.send":
        return await service.send(who, args["channel"], args["text"], priority=args.get("priority", "normal"),
                                  attachment_id=args.get("attachment"),
                                  client_id=args.get("client_id") or _client_id(op_id))
    if op == "message.ack":
        return await service.acknowledge(who, args["channel"], args["seq"])
    if op == "message.history":
        return await service.history(who, args["channel"], args.get("before"), args.get("limit", 50))
    if op == "channel.list":
        return {"channels": await service.list_channels(who)}
    raise Problem(400, "unknown_op", f"unknown operation {op!r}")


def _client_id(op_id: str) -> str:
    """The op id as a message's client id (ids with other characters are hashed into the alphabet)."""
    if 0 < len(op_id) <= 100 and all(c.isascii() and (c.isalnum() or c in "._:-") for c in op_id):
        return op_id
    return "op." + hashlib.sha256(op_id.encode("utf-8", "surrogatepass")).hexdigest()[:40]


def notify(app: web.Application, subscriber: Subscriber | None, op: str, args: dict[str, Any]) -> None:
    """A notification op: a client's delivered/read cursors (memory only, written in batches)."""
    if op != "message.receipt":
        raise Problem(400, "unknown_op", f"unknown operation {op!r}")
    if subscriber is None:
        raise forbidden("messaging is for units, dispatchers, supervisors and administrators")
    app[MESSAGING].confirm(subscriber, args["receipts"])


def position(app: web.Application, who: Principal, args: dict[str, Any]) -> dict[str, Any]:
    """A unit's fix (synchronous: the gateway answers it without queueing)."""
    assert who.unit is not None
    at = args["time"] if isinstance(args["time"], datetime) else datetime.fromisoformat(args["time"])
    fix = Fix(who.unit, at, float(args["lat"]), float(args["lon"]), args.get("accuracy"), args.get("heading"),
              args.get("speed"))
    accepted, reason = app[appkeys.POSITIONS].report(fix)
    return {"accepted": accepted, "reason": reason}
