"""Media over HTTP: recordings (listed, described, played with range requests), camera feeds, ICE servers.

A recording may be played by whoever could see what was recorded: administrators; dispatchers and
supervisors of the agencies it concerns (the incident's, the call parties', the talkgroup's); and a
unit that took part.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg
from aiohttp import web

from icp import appkeys
from icp.api.writes import reject_unknown
from icp.auth.guard import principal, require
from icp.auth.principal import Role
from icp.dispatch_service import sees_incident
from icp.errors import Problem, not_found
from icp.httpapi import json_response, operation, query_int, read_json_object
from icp.media import MEDIA
from icp.messaging.channels import member_key
from icp.webhooks.ssrf import AllowList

OBJ = {"type": "object"}
RECORDING_SCHEMA = {"type": "object", "properties": {
    "id": {"type": "string"}, "kind": {"type": "string", "enum": ["call", "conference", "talkgroup"]},
    "room": {"type": "string"}, "call_id": {"type": ["string", "null"]}, "incident_id": {"type": ["string", "null"]},
    "speaker": {"type": ["string", "null"]}, "duration_s": {"type": "number"}, "bytes": {"type": "integer"},
    "content_type": {"type": "string"}, "started_at": {"type": "string", "format": "date-time"},
    "ended_at": {"type": "string", "format": "date-time"}, "expires_at": {"type": ["string", "null"]},
    "url": {"type": "string", "description": "the audio (Ogg Opus), with HTTP range requests"}}}
CAMERA_SCHEMA = {"type": "object", "properties": {
    "id": {"type": "string"}, "incident_id": {"type": "string"}, "url": {"type": "string"},
    "host": {"type": "string"}, "added_at": {"type": "string"}, "added_by": {"type": "string"}}}
_COLUMNS = ("id, kind, room, call_id, incident_id, speaker, path, content_type, bytes, duration_s, agencies,"
            " members, started_at, ended_at, expires_at")


def _service(request: web.Request) -> Any:
    service = request.app.get(MEDIA)
    if service is None:
        raise Problem(501, "unsupported", "media is switched off on this server (media_enabled)")
    return service


def _view(row: asyncpg.Record) -> dict[str, Any]:
    return {"id": row["id"], "kind": row["kind"], "room": row["room"], "call_id": row["call_id"],
            "incident_id": row["incident_id"], "speaker": row["speaker"], "duration_s": row["duration_s"],
            "bytes": row["bytes"], "content_type": row["content_type"], "started_at": row["started_at"].isoformat(),
            "ended_at": row["ended_at"].isoformat(),
            "expires_at": row["expires_at"].isoformat() if row["expires_at"] else None,
            "url": f"/api/v1/recordings/{row['id']}/audio"}


def _visible_clause(request: web.Request, args: list[Any]) -> str:
    who = principal(request)
    if who.unrestricted:
        return "true"
    if who.role is Role.UNIT:
        args.append(member_key(who))
        return f"${len(args)} = ANY(members)"
    if not who.has(Role.DISPATCHER) or who.agency is None:
        return "false"
    args.append(who.agency)
    return f"(${len(args)} = ANY(agencies) OR '*' = ANY(agencies))"


@operation("Recordings you may play, newest first: `incident=` an incident's, `call=` a call's", tags=("media",),
           parameters=({"name": "incident", "in": "query", "schema": {"type": "string"}},
                       {"name": "call", "in": "query", "schema": {"type": "string"}},
                       {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500}}),
           responses={200: {"description": "recordings", "schema": {"type": "object", "properties": {
               "recordings": {"type": "array", "items": RECORDING_SCHEMA}}}}})
@require()
async def list_recordings(request: web.Request) -> web.Response:
    _service(request)
    args: list[Any] = []
    where = [_visible_clause(request, args)]
    for name, column in (("incident", "incident_id"), ("call", "call_id")):
        value = request.query.get(name)
        if value:
            args.append(value[:128])
            where.append(f"{column} = ${len(args)}")
    limit = query_int(request, "limit", 100, lo=1, hi=500)
    rows = await request.app[appkeys.POOL].fetch(
        f"SELECT {_COLUMNS} FROM recordings WHERE {' AND '.join(where)} ORDER BY started_at DESC LIMIT {limit}",
        *args)
    return json_response({"recordings": [_view(r) for r in rows]})


async def _recording(request: web.Request) -> asyncpg.Record:
    _service(request)
    args: list[Any] = [request.match_info["id"][:64]]
    clause = _visible_clause(request, args)
    row = await request.app[appkeys.POOL].fetchrow(f"SELECT {_COLUMNS} FROM recordings WHERE id = $1 AND {clause}",
                                                   *args)
    if row is None:
        raise not_found(f"recording {request.match_info['id'][:64]}")
    return row


@operation("A recording's description", tags=("media",),
           responses={200: {"description": "the recording", "schema": RECORDING_SCHEMA}})
@require()
async def get_recording(request: web.Request) -> web.Response:
    return json_response(_view(await _recording(request)))


@operation("A recording's audio (Ogg Opus); supports HTTP range requests (`Range: bytes=…` → 206)",
           tags=("media",), responses={200: {"description": "audio/ogg"}, 206: {"description": "a range"}})
@require()
async def recording_audio(request: web.Request) -> web.StreamResponse:
    row = await _recording(request)
    settings = request.app[appkeys.SETTINGS]
    path = (settings.data_dir / row["path"]).resolve()
    if not path.is_relative_to(settings.data_dir.resolve()) or not path.is_file():
        raise not_found(f"the audio of recording {row['id']}")
    return web.FileResponse(path, headers={"Content-Type": row["content_type"], "Cache-Control": "private, max-age=0",
                                           "X-Content-Type-Options": "nosniff"})


async def _incident(request: web.Request) -> str:
    incident_id = request.match_info["id"][:128]
    row = await request.app[appkeys.POOL].fetchrow("SELECT agency_ids FROM incidents WHERE id = $1", incident_id)
    if row is None or not sees_incident(principal(request), row["agency_ids"]):
        raise not_found(f"incident {incident_id}")
    return incident_id


@operation("Attach a camera or video stream to an incident: `url` rtsp://, http(s):// (the SSRF rules apply) or "
           "file: inside media_camera_dir; its video is shown in the incident's conference", tags=("media",),
           request={"type": "object", "required": ["url"], "properties": {"url": {"type": "string"}}},
           responses={201: {"description": "the camera", "schema": CAMERA_SCHEMA}})
@require(Role.DISPATCHER)
async def add_camera(request: web.Request) -> web.Response:
    from icp.media.camera import MAX_CAMERAS, open_camera

    service = _service(request)
    incident_id = await _incident(request)
    body = await read_json_object(request, max_bytes=8192)
    reject_unknown(body, {"url"})
    cameras = service.cameras.setdefault(incident_id, {})
    if len(cameras) >= MAX_CAMERAS:
        raise Problem(409, "conflict", f"an incident has at most {MAX_CAMERAS} cameras")
    settings = request.app[appkeys.SETTINGS]
    allow = AllowList.parse([e for e in settings.media_camera_allow.split(",") if e.strip()])
    files = None if settings.media_camera_dir is None else Path(str(settings.media_camera_dir))
    camera = await open_camera(incident_id, body.get("url"), allow, files, principal(request).name)
    room = await service.open_conference(incident_id)
    if room is None:
        camera.stop()
        raise Problem(409, "room_elsewhere", "the incident's conference lives on another node; attach it there")
    cameras[camera.id] = camera
    room.add_camera(camera.id, camera.track)
    await request.app[appkeys.COMMITTER].append(_camera_event("camera.attached", camera, principal(request)))
    return json_response(camera.view(), status=201)


def _camera_event(kind: str, camera: Any, who: Any) -> Any:
    from icp.store.eventlog import NewEvent

    return NewEvent(kind, f"incident/{camera.incident_id}", {
        "incident_id": camera.incident_id, "camera_id": camera.id, "url": camera.url}, actor=who.actor(),
        visibility=(who.agency,) if who.agency else ("*",))


@operation("The cameras attached to an incident", tags=("media",),
           responses={200: {"description": "cameras", "schema": {"type": "object", "properties": {
               "cameras": {"type": "array", "items": CAMERA_SCHEMA}}}}})
@require(Role.DISPATCHER)
async def list_cameras(request: web.Request) -> web.Response:
    service = _service(request)
    incident_id = await _incident(request)
    return json_response({"cameras": [c.view() for c in service.cameras.get(incident_id, {}).values()]})


@operation("Detach a camera from an incident", tags=("media",), responses={204: {"description": "detached"}})
@require(Role.DISPATCHER)
async def remove_camera(request: web.Request) -> web.Response:
    service = _service(request)
    incident_id = await _incident(request)
    camera = service.cameras.get(incident_id, {}).pop(request.match_info["camera"], None)
    if camera is None:
        raise not_found(f"camera {request.match_info['camera'][:40]}")
    room = service.conference(incident_id)
    if room is not None:
        room.remove_camera(camera.id)
    camera.stop()
    await request.app[appkeys.COMMITTER].append(_camera_event("camera.detached", camera, principal(request)))
    return web.Response(status=204)


@operation("The ICE servers (STUN/TURN) a WebRTC client should use with this server (`iceServers`), and how long "
           "a call rings before it ends as missed (`ring_timeout_s`, for a client's ringing countdown)",
           tags=("media",), responses={200: {"description": "ICE servers", "schema": OBJ}})
@require()
async def ice_servers(request: web.Request) -> web.Response:
    return json_response({"iceServers": _service(request).ice_json(),
                          "ring_timeout_s": request.app[appkeys.SETTINGS].media_ring_timeout_s})


@operation("This node's media now: rooms, participants, packets forwarded, the event loop's lag (administrators); "
           "`reset=1` starts the lag figures afresh", tags=("media",),
           responses={200: {"description": "figures", "schema": OBJ}})
@require(Role.ADMIN)
async def media_stats(request: web.Request) -> web.Response:
    service = _service(request)
    figures = service.stats()
    if request.query.get("reset") in ("1", "true"):
        service.loop_lag.samples.clear()
    return json_response(figures)


def setup(app: web.Application) -> None:
    app.router.add_get("/api/v1/recordings", list_recordings)
    app.router.add_get("/api/v1/recordings/{id}", get_recording)
    app.router.add_get("/api/v1/recordings/{id}/audio", recording_audio)
    app.router.add_post("/api/v1/incidents/{id}/cameras", add_camera)
    app.router.add_get("/api/v1/incidents/{id}/cameras", list_cameras)
    app.router.add_delete("/api/v1/incidents/{id}/cameras/{camera}", remove_camera)
    app.router.add_get("/api/v1/media/ice", ice_servers)
    app.router.add_get("/api/v1/media/stats", media_stats)
