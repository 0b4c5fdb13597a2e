"""The node's media: signaling ops from the gateway, calls, rooms, cameras, recordings and their retention.

Who may do what is decided with the messaging rules (`icp.messaging.channels`): an incident's
conference is open to the members of the incident's channel, a talkgroup room to its channel's
members, and a call may join two members a direct channel could join. Membership is checked
against the database at every op, so a unit whose assignment ended is refused from then on.

Rooms live on one node each: `RoomRegistry` claims a room in the database when this node opens it
and refreshes the claim while it lives; a node asked about a room another node holds answers
`room_elsewhere` with that node's address.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp import web

from icp import appkeys
from icp.auth.principal import Principal, Role
from icp.config import Settings
from icp.errors import Problem, conflict, forbidden, not_found
from icp.media import MEDIA, handoff
from icp.media.calls import CallState, CallTrigger, IllegalCallTransition, end_reason, step
from icp.media.floor import FloorPolicy, Rank
from icp.media.ice import parse_ice_servers, servers_json, use_host_addresses
from icp.media.rooms import (
    CallRoom,
    MixerClock,
    MixingRoom,
    NegotiationError,
    Participant,
    Recording,
    Room,
    RoomFull,
    Talkgroup,
)
from icp.messaging import MESSAGING
from icp.messaging.channels import can_read, incident_channel_id, member_key
from icp.messaging.hub import dumps
from icp.messaging.service import MessagingService
from icp.store.eventlog import NewEvent
from icp.store.group_commit import Staged

log = logging.getLogger(__name__)

MAX_ROOMS_PER_LINK = 8
CLAIM_STALE_S = 60.0
CLAIM_REFRESH_S = 20.0
SWEEP_EVERY_S = 3600.0
CLOSE_S = 15.0
MEDIA_THREADS = max(2, min(8, os.cpu_count() or 2))


class MediaLink:
    """One gateway connection's side of media: who it is, how to send it a frame, the rooms it is in."""

    def __init__(self, who: Principal, send: Callable[[dict[str, Any]], None]) -> None:
        self.who = who
        self.member = member_key(who)
        self.send = send
        self.rooms: set[str] = set()


@dataclass(eq=False)
class Call:
    id: str
    caller: str
    caller_view: dict[str, Any]
    callee: str
    callee_name: str
    incident_id: str | None
    video: bool
    agencies: tuple[str, ...]
    state: CallState = CallState.RINGING
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    answered_at: datetime | None = None
    timer: asyncio.TimerHandle | None = None

    @property
    def room(self) -> str:
        return f"call:{self.id}"

    @property
    def subject(self) -> str:
        return f"incident/{self.incident_id}" if self.incident_id else f"call/{self.id}"

    def view(self) -> dict[str, Any]:
        return {"id": self.id, "room": self.room, "state": self.state.value, "caller": self.caller,
                "callee": self.callee, "incident": self.incident_id, "video": self.video}


class RoomRegistry:
    """Which node holds which room, in the database (`media_rooms`)."""

    def __init__(self, pool: asyncpg.Pool, node_url: str) -> None:
        self.pool = pool
        self.node_id = uuid.uuid4().hex
        self.node_url = node_url
        self.held: set[str] = set()

    async def claim(self, room: str) -> str | None:
        """None when this node holds the room now; else the address of the node that does."""
        if room in self.held:
            return None
        row = await self.pool.fetchrow(
            "INSERT INTO media_rooms (room, node_id, node_url) VALUES ($1, $2, $3)"
            " ON CONFLICT (room) DO UPDATE SET node_id = EXCLUDED.node_id, node_url = EXCLUDED.node_url,"
            " seen_at = now() WHERE media_rooms.node_id = EXCLUDED.node_id"
            f" OR media_rooms.seen_at < now() - interval '{int(CLAIM_STALE_S)} seconds'"
            " RETURNING node_id", room, self.node_id, self.node_url)
        if row is not None:
            self.held.add(room)
            return None
        other = await self.pool.fetchval("SELECT node_url FROM media_rooms WHERE room = $1", room)
        return str(other or "another node")

    async def release(self, room: str) -> None:
        self.held.discard(room)
        with contextlib.suppress(asyncpg.PostgresError, OSError):
            await self.pool.execute("DELETE FROM media_rooms WHERE room = $1 AND node_id = $2", room, self.node_id)

    async def refresh(self) -> None:
        if self.held:
            await self.pool.execute("UPDATE media_rooms SET seen_at = now() WHERE node_id = $1 AND room = ANY($2)",
                                    self.node_id, sorted(self.held))


class LoopLag:
    """How late the event loop runs a timer (the media path's health): sampled every 20 ms."""

    EVERY_S = 0.02

    def __init__(self, keep: int = 3000) -> None:
        self.samples: deque[float] = deque(maxlen=keep)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.EVERY_S
            await asyncio.sleep(self.EVERY_S)
            self.samples.append(max(0.0, loop.time() - due))

    def summary(self) -> dict[str, float]:
        values = sorted(self.samples)
        if not values:
            return {}
        return {"p50_ms": round(values[len(values) // 2] * 1000, 2),
                "p99_ms": round(values[min(len(values) - 1, int(len(values) * 0.99))] * 1000, 2),
                "max_ms": round(values[-1] * 1000, 2), "samples": len(values)}


class MediaService:
    def __init__(self, app: web.Application, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.pool: asyncpg.Pool = app[appkeys.POOL]
        self.committer = app[appkeys.COMMITTER]
        self.ice = parse_ice_servers(settings.media_ice_servers)
        self.registry = RoomRegistry(self.pool, settings.media_node_url or f"http://{settings.host}:{settings.port}")
        self.executor = ThreadPoolExecutor(MEDIA_THREADS, thread_name_prefix="icp-media")
        self.clock = MixerClock(self.executor, workers=min(MEDIA_THREADS, os.cpu_count() or 2))
        self.recordings_dir = settings.data_dir / "recordings" if settings.media_record else None
        self.rooms: dict[str, Room] = {}
        self.calls: dict[str, Call] = {}
        self.links: set[MediaLink] = set()
        self.cameras: dict[str, dict[str, Any]] = {}  # incident → camera id → camera (icp.media.camera)
        self.policy = FloorPolicy(max_talk_s=settings.media_ptt_max_talk_s,
                                  emergency_max_talk_s=settings.media_ptt_emergency_max_talk_s,
                                  queue=settings.media_ptt_queue)
        self._closing = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.loop_lag = LoopLag()

    @property
    def messaging(self) -> MessagingService:
        service = self.app.get(MESSAGING)
        if service is None:
            raise Problem(501, "unsupported", "media needs messaging, which this node does not run")
        return service

    def display_name(self, who: Principal) -> str:
        """How others see a principal in calls and on the floor: people know a unit by its call
        sign, not by the name of its terminal's token."""
        unit = self.messaging.live.state.units.get(who.unit) if who.unit else None
        return unit.call_sign if unit is not None else who.name

    def ice_json(self) -> list[dict[str, Any]]:
        return servers_json(self.ice)

    # -- the gateway's side ------------------------------------------------------------------------------
    def link(self, who: Principal, send: Callable[[dict[str, Any]], None]) -> MediaLink:
        link = MediaLink(who, send)
        self.links.add(link)
        return link

    def unlink(self, link: MediaLink) -> None:
        """The connection closed: it leaves every room (a call it was in ends)."""
        self.links.discard(link)
        for room_id in list(link.rooms):
            self._spawn(self._leave(link, room_id, "hangup"))

    async def execute(self, link: MediaLink, op: str, args: dict[str, Any]) -> dict[str, Any]:
        if self._closing:
            raise Problem(503, "unsupported", "media is shutting down on this node")
        self.messaging.member(link.who)  # messaging principals only (units, dispatchers, …)
        if op == "rtc.call":
            return await self.call(link, args["to"], args.get("incident"), bool(args.get("video")))
        if op == "rtc.accept":
            return await self.accept(link, args["call"])
        if op == "rtc.decline":
            return await self.decline(link, args["call"])
        if op in ("rtc.offer", "rtc.join"):
            room, participant = await self._enter(link, args["room"])
            fresh = participant.pc is None
            try:
                if op == "rtc.offer":
                    return {"sdp": await room.answer(participant, args["sdp"]), "type": "answer", **room.view()}
                return {"sdp": await room.offer(participant, bool(args.get("video"))), "type": "offer", **room.view()}
            except (ValueError, NegotiationError) as exc:
                if fresh:  # a join that failed leaves no participant behind
                    await self._leave(link, args["room"], "failed")
                raise Problem(400, "invalid_request", f"the session description was refused: {str(exc)[:200]}") \
                    from None
        if op == "rtc.answer":
            room, participant = self._joined(link, args["room"])
            try:
                await room.accept_answer(participant, args["sdp"])
            except (ValueError, NegotiationError) as exc:
                raise Problem(400, "invalid_request", str(exc)[:200]) from None
            return {}
        if op == "rtc.candidate":
            room, participant = self._joined(link, args["room"])
            try:
                await room.candidate(participant, args["candidate"], args.get("sdpMid"), args.get("sdpMLineIndex"))
            except (ValueError, NegotiationError) as exc:
                raise Problem(400, "invalid_request", f"the candidate was refused: {str(exc)[:200]}") from None
            return {}
        if op == "rtc.hangup":
            return await self.hangup(link, args["room"])
        if op == "rtc.video":
            return await self.choose_video(link, args["room"], args["source"] or None)
        if op == "ptt.request":
            talkgroup = await self._talkgroup(link, args["talkgroup"])
            rank = Rank.EMERGENCY if args.get("emergency") else (
                Rank.DISPATCHER if link.who.has(Role.DISPATCHER) else Rank.MEMBER)
            return talkgroup.request(link.member, rank)
        if op == "ptt.release":
            talkgroup = await self._talkgroup(link, args["talkgroup"])
            return talkgroup.release(link.member)
        raise Problem(400, "unknown_op", f"unknown operation {op!r}")

    # -- rooms ---------------------------------------------------------------------------------------------
    async def _authorize(self, link: MediaLink, room_id: str) -> None:
        """May this link's principal be in the room now? (Raises forbidden / not_found.)"""
        kind, _, rest = room_id.partition(":")
        if kind == "call":
            call = self.calls.get(rest)
            if call is None:
                node = await self.pool.fetchval("SELECT node FROM calls WHERE id = $1 AND state IN ('ringing',"
                                                " 'connected') AND $2 = ANY(members)", rest, link.member)
                if node and node != self.registry.node_id:
                    raise _elsewhere(room_id, await self._node_url(room_id))
                raise not_found(f"call {rest}")
            if link.member not in (call.caller, call.callee):
                raise not_found(f"call {rest}")
            if call.state is not CallState.CONNECTED:
                raise conflict(f"call {rest} is {call.state.value}; it can be joined once accepted")
            return
        channel = incident_channel_id(rest) if kind == "conference" else room_id
        await self.messaging.channel_for(link.who, channel)

    async def _node_url(self, room_id: str) -> str:
        return str(await self.pool.fetchval("SELECT node_url FROM media_rooms WHERE room = $1", room_id)
                   or "another node")

    async def _enter(self, link: MediaLink, room_id: str) -> tuple[Room, Participant]:
        await self._authorize(link, room_id)
        room = self.rooms.get(room_id)
        if room is None:
            elsewhere = await self.registry.claim(room_id)
            if elsewhere is not None:
                raise _elsewhere(room_id, elsewhere)
            room = self.rooms.get(room_id) or self._open(room_id)
        if room_id not in link.rooms and len(link.rooms) >= MAX_ROOMS_PER_LINK:
            raise Problem(409, "room_full", f"a connection may be in at most {MAX_ROOMS_PER_LINK} rooms at once")
        who = link.who
        existing = room.participants.get(link.member)
        if existing is not None and existing.link is link:
            return room, existing
        rank = Rank.DISPATCHER if who.has(Role.DISPATCHER) else Rank.MEMBER
        try:
            participant = room.admit(Participant(link.member, self.display_name(who), who.role.value, rank,
                                                 link.send, link))
        except RoomFull:
            raise Problem(409, "room_full", f"{room_id} has {self.settings.media_max_participants} participants, "
                                            "as many as it may") from None
        link.rooms.add(room_id)
        return room, participant

    def _joined(self, link: MediaLink, room_id: str) -> tuple[Room, Participant]:
        room = self.rooms.get(room_id)
        participant = room.participants.get(link.member) if room is not None else None
        if room is None or participant is None or participant.link is not link:
            raise conflict(f"you have not joined {room_id}: rtc.offer or rtc.join first")
        return room, participant

    def _open(self, room_id: str) -> Room:
        kind = room_id.partition(":")[0]
        common: dict[str, Any] = {
            "executor": self.executor, "ice": self.ice, "recordings_dir": self.recordings_dir,
            "on_recording": lambda rec: self._recorded(room_id, rec), "on_empty": self._empty,
            "on_left": self._left, "max_participants": self.settings.media_max_participants}
        room: Room
        if kind == "call":
            room = CallRoom(room_id, **common)
        elif kind == "conference":
            conference = MixingRoom(room_id, clock=self.clock, **common)
            for camera_id, camera in self.cameras.get(room_id.partition(":")[2], {}).items():
                conference.add_camera(camera_id, camera.track)
            room = conference
        else:
            room = Talkgroup(room_id, self.policy, **common)
        self.rooms[room_id] = room
        return room

    def _empty(self, room: Room) -> None:
        if room.id.startswith("conference:") and self.cameras.get(room.id.partition(":")[2]):
            return  # cameras keep an incident's conference open
        if self.rooms.get(room.id) is room:
            del self.rooms[room.id]
            self._spawn(self._close_room(room))

    async def _close_room(self, room: Room) -> None:
        await room.close()
        await self.registry.release(room.id)

    def _left(self, room: Room, participant: Participant, reason: str) -> None:
        link = participant.link
        if isinstance(link, MediaLink):
            link.rooms.discard(room.id)
        if isinstance(room, CallRoom):
            call = self.calls.get(room.id.partition(":")[2])
            if call is not None and call.state is CallState.CONNECTED:
                by = participant.member
                self._spawn(self._end(call, CallTrigger.FAIL if reason == "failed" else CallTrigger.HANGUP, by))

    async def _leave(self, link: MediaLink, room_id: str, reason: str) -> None:
        link.rooms.discard(room_id)
        room = self.rooms.get(room_id)
        participant = room.participants.get(link.member) if room is not None else None
        if room is not None and participant is not None and participant.link is link:
            await room.leave(link.member, reason)
        kind, _, rest = room_id.partition(":")
        if kind == "call":
            call = self.calls.get(rest)
            if call is not None and link.member in (call.caller, call.callee) and call.state in (
                    CallState.RINGING, CallState.CONNECTED):
                await self._end(call, CallTrigger.HANGUP, link.member)

    async def hangup(self, link: MediaLink, room_id: str) -> dict[str, Any]:
        kind, _, rest = room_id.partition(":")
        if kind == "call":
            call = self.calls.get(rest)
            if call is None or link.member not in (call.caller, call.callee):
                raise not_found(f"call {rest}")
        elif room_id not in link.rooms:
            raise conflict(f"you are not in {room_id}")
        await self._leave(link, room_id, "hangup")
        return {}

    async def _talkgroup(self, link: MediaLink, room_id: str) -> Talkgroup:
        await self._authorize(link, room_id)  # still a member?
        room, _ = self._joined(link, room_id)
        if not isinstance(room, Talkgroup):
            raise conflict(f"{room_id} is not a talkgroup")
        return room

    async def choose_video(self, link: MediaLink, room_id: str, source: str | None) -> dict[str, Any]:
        if not link.who.has(Role.DISPATCHER):
            raise forbidden("dispatchers choose a conference's video")
        await self._authorize(link, room_id)
        room, _ = self._joined(link, room_id)
        if not isinstance(room, MixingRoom):
            raise conflict("only a conference has a chosen video")
        try:
            room.choose_video(source)
        except KeyError:
            raise not_found(f"video source {source}") from None
        return room.view()

    # -- calls ---------------------------------------------------------------------------------------------
    async def call(self, link: MediaLink, to: str, incident_id: str | None, video: bool) -> dict[str, Any]:
        messaging = self.messaging
        member = messaging.member(link.who)
        if to == member.key:
            raise Problem(422, "invalid_request", "a call joins two different members")
        # Who may call whom: the members a direct channel could join (same agency, mutual aid).
        peer = await messaging.peer(to)
        if peer is None or not messaging.may_talk(member, peer):
            raise not_found(f"member {to}")
        agencies = {a for a in (member.agency, peer.agency) if a}
        if incident_id is not None:
            channel, known = await messaging.load(self.pool, incident_channel_id(incident_id))
            messaging.require(channel, known, link.who, member)
            agencies |= set(channel.agencies)
        subs = messaging.hub.by_member.get(to)
        if not subs:
            raise Problem(503, "callee_unavailable", f"{to} has no connection on this node")
        call = Call(secrets.token_hex(8), member.key, {"member": member.key, "name": self.display_name(link.who),
                                                       "role": link.who.role.value,
                                                       **({"agency": member.agency} if member.agency else {}),
                                                       **({"unit": member.unit} if member.unit else {})},
                    to, peer.name, incident_id, video, tuple(sorted(agencies)))

        async def work(conn: asyncpg.Connection) -> Staged[None]:
            await conn.execute(
                "INSERT INTO calls (id, caller, callee, incident_id, video, state, agencies, members, node,"
                " started_at) VALUES ($1, $2, $3, $4, $5, 'ringing', $6, $7, $8, $9)",
                call.id, call.caller, call.callee, incident_id, video, list(call.agencies), [call.caller, to],
                self.registry.node_id, call.started_at)
            return Staged(None, [NewEvent("call.started", call.subject, {
                "call_id": call.id, "caller": call.caller, "callee": call.callee, "incident_id": incident_id,
                "video": video}, actor=link.who.actor(), visibility=call.agencies)])

        await self.committer.submit(work)
        self.calls[call.id] = call
        ring = {"op": "rtc.ring", "call": call.id, "room": call.room, "from": call.caller_view,
                "incident": incident_id, "video": video}
        self._tell(to, ring)
        call.timer = asyncio.get_running_loop().call_later(
            self.settings.media_ring_timeout_s, lambda: self._spawn(self._ring_out(call)))
        return {"call": call.view()}

    async def _ring_out(self, call: Call) -> None:
        if call.state is CallState.RINGING:
            await self._end(call, CallTrigger.TIMEOUT, None)

    def _owned_call(self, link: MediaLink, call_id: str) -> Call:
        call = self.calls.get(call_id)
        if call is None or link.member != call.callee:
            raise not_found(f"call {call_id}")
        return call

    async def accept(self, link: MediaLink, call_id: str) -> dict[str, Any]:
        call = self._owned_call(link, call_id)
        try:
            state = step(call.state, CallTrigger.ACCEPT)
        except IllegalCallTransition as exc:
            raise Problem(409, "illegal_transition", str(exc)) from None
        call.state, call.answered_at = state, datetime.now(UTC)
        if call.timer is not None:
            call.timer.cancel()
        await self.pool.execute("UPDATE calls SET state = 'connected', answered_at = $2 WHERE id = $1", call.id,
                                call.answered_at)
        elsewhere = await self.registry.claim(call.room)
        if elsewhere is not None:  # a fresh random id: only a clash of ids could get here
            raise _elsewhere(call.room, elsewhere)
        self.rooms.get(call.room) or self._open(call.room)
        self._tell(call.caller, {"op": "rtc.accepted", "call": call.id, "room": call.room, "by": call.callee})
        return {"call": call.view()}

    async def decline(self, link: MediaLink, call_id: str) -> dict[str, Any]:
        call = self._owned_call(link, call_id)
        await self._end(call, CallTrigger.DECLINE, link.member)
        return {"call": call.view()}

    async def _end(self, call: Call, trigger: CallTrigger, by: str | None) -> None:
        try:
            state = step(call.state, trigger)
        except IllegalCallTransition:
            if trigger is CallTrigger.DECLINE:
                raise Problem(409, "illegal_transition", f"the call is {call.state.value}") from None
            return  # ended meanwhile
        reason = end_reason(call.state, trigger)
        call.state = state
        if call.timer is not None:
            call.timer.cancel()
        self.calls.pop(call.id, None)
        ended = datetime.now(UTC)
        duration = (ended - call.answered_at).total_seconds() if call.answered_at else 0.0
        room = self.rooms.pop(call.room, None)

        async def work(conn: asyncpg.Connection) -> Staged[None]:
            await conn.execute("UPDATE calls SET state = $2, end_reason = $3, ended_at = $4 WHERE id = $1",
                               call.id, state.value, reason, ended)
            return Staged(None, [NewEvent("call.ended", call.subject, {
                "call_id": call.id, "state": state.value, "reason": reason, "incident_id": call.incident_id,
                "duration_s": round(duration, 3), "by": by}, visibility=call.agencies)])

        try:
            await self.committer.submit(work)  # recorded before anyone is told
        finally:
            frame: dict[str, Any] = {"op": "rtc.ended", "call": call.id, "room": call.room, "reason": reason}
            if by is not None:
                frame["by"] = by
            for member in (call.caller, call.callee):
                if member != by:
                    self._tell(member, frame)
            if room is not None:
                await self._close_room(room)

    def _tell(self, member: str, frame: dict[str, Any]) -> None:
        """A frame to every connection of a member on this node."""
        text = dumps(frame)
        for sub in list(self.messaging.hub.by_member.get(member, ())):
            sub.send(text)

    # -- recordings ------------------------------------------------------------------------------------------
    async def _recorded(self, room_id: str, rec: Recording) -> None:
        kind, _, rest = room_id.partition(":")
        call = None
        incident_id: str | None = None
        agencies: set[str] = set()
        if kind == "call":
            row = await self.pool.fetchrow("SELECT incident_id, agencies FROM calls WHERE id = $1", rest)
            call, incident_id = rest, (row["incident_id"] if row else None)
            agencies |= set(row["agencies"] if row else ())
        elif kind in ("conference", "incident"):
            incident_id = rest
        if incident_id is not None:
            known = await self.pool.fetchval("SELECT agency_ids FROM incidents WHERE id = $1", incident_id)
            agencies |= set(known or ())
        if kind in ("talkgroup", "agency"):
            agencies |= {rest.partition(":")[0]}
            channel = self.messaging.hub.defined.get(room_id)
            if channel is not None:
                agencies |= set(channel.agencies)
        recording_id = "r" + secrets.token_hex(8)
        relative = str(rec.path.relative_to(self.settings.data_dir))
        days = self.settings.media_retention_days
        expires = rec.ended_at + timedelta(days=days) if days > 0 else None
        subject = f"incident/{incident_id}" if incident_id else f"room/{room_id}"
        data = {"recording_id": recording_id, "kind": rec.kind, "room": room_id, "call_id": call,
                "incident_id": incident_id, "speaker": rec.speaker, "duration_s": round(rec.duration_s, 3),
                "started_at": rec.started_at.isoformat(), "url": f"/api/v1/recordings/{recording_id}/audio"}

        async def work(conn: asyncpg.Connection) -> Staged[None]:
            await conn.execute(
                "INSERT INTO recordings (id, kind, room, call_id, incident_id, speaker, path, bytes, duration_s,"
                " agencies, members, started_at, ended_at, expires_at)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
                recording_id, rec.kind, room_id, call, incident_id, rec.speaker, relative, rec.size, rec.duration_s,
                sorted(agencies), list(rec.members), rec.started_at, rec.ended_at, expires)
            return Staged(None, [NewEvent("recording.available", subject, data,
                                          visibility=tuple(sorted(agencies)) or ("*",))])

        try:
            await self.committer.submit(work)
        except Exception:
            log.exception("indexing recording %s failed; the file stays at %s", recording_id, rec.path)

    async def sweep(self) -> int:
        """Delete recordings past their retention, files first."""
        rows = await self.pool.fetch("SELECT id, path FROM recordings WHERE expires_at < now() LIMIT 1000")
        loop = asyncio.get_running_loop()
        for row in rows:
            path = self.settings.data_dir / row["path"]
            await loop.run_in_executor(self.executor, _unlink, path)
        if rows:
            await self.pool.execute("DELETE FROM recordings WHERE id = ANY($1)", [r["id"] for r in rows])
        return len(rows)

    # -- cameras ---------------------------------------------------------------------------------------------
    def conference(self, incident_id: str) -> MixingRoom | None:
        room = self.rooms.get(f"conference:{incident_id}")
        return room if isinstance(room, MixingRoom) else None

    async def open_conference(self, incident_id: str) -> MixingRoom | None:
        """The incident's conference on this node (opened for a camera); None when another node has it."""
        room_id = f"conference:{incident_id}"
        room = self.rooms.get(room_id)
        if room is None:
            if await self.registry.claim(room_id) is not None:
                return None
            room = self.rooms.get(room_id) or self._open(room_id)
        return room if isinstance(room, MixingRoom) else None

    def stats(self) -> dict[str, Any]:
        """What the node's media is doing (rooms, participants, packets, the loop's lag)."""
        rooms = []
        for room in self.rooms.values():
            entry: dict[str, Any] = {"room": room.id, "kind": room.kind, "participants": len(room.participants),
                                     "frames_in": sum(p.frames_in for p in room.participants.values()),
                                     "dropped_out": sum(p.audio_out.dropped for p in room.participants.values())}
            if isinstance(room, Talkgroup):
                entry["forwarded"] = room.forwarded
            if isinstance(room, MixingRoom):
                entry["ticks"], entry["mixer_lag_ms"] = room.ticks, round(room.lag_s * 1000, 2)
            rooms.append(entry)
        return {"rooms": rooms, "calls": len(self.calls), "links": len(self.links), "loop_lag": self.loop_lag.summary(),
                "mixer": {"ticks": self.clock.ticks, "worst_lag_ms": round(self.clock.lag_s * 1000, 2),
                          "job_ms": _ms(self.clock.job_s)}}

    # -- life ------------------------------------------------------------------------------------------------
    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def background(self) -> None:
        waited = SWEEP_EVERY_S
        while True:
            await asyncio.sleep(CLAIM_REFRESH_S)
            waited += CLAIM_REFRESH_S
            try:
                await self.registry.refresh()
                if waited >= SWEEP_EVERY_S:
                    waited = 0.0
                    removed = await self.sweep()
                    if removed:
                        log.info("removed %d recordings past their retention", removed)
            except (asyncpg.PostgresError, OSError) as exc:
                log.warning("media housekeeping failed: %s", exc)

    async def close(self) -> None:
        self._closing = True
        for call in list(self.calls.values()):
            with contextlib.suppress(Exception):
                await self._end(call, CallTrigger.FAIL, None)
        for cameras in self.cameras.values():
            for camera in cameras.values():
                camera.stop()
        for room in list(self.rooms.values()):
            with contextlib.suppress(Exception):
                await self._close_room(room)
        self.rooms.clear()
        await self.clock.stop()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # Never block the loop on a worker: what is queued is dropped, a running job finishes alone.
        self.executor.shutdown(wait=False, cancel_futures=True)


def _ms(values: deque[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {}
    return {"p50": round(ordered[len(ordered) // 2] * 1000, 2),
            "p99": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 2)}


def _elsewhere(room_id: str, node: str) -> Problem:
    return Problem(409, "room_elsewhere", f"{room_id} lives on {node}; connect there to join it",
                   extra={"node": node})


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def may_see_recording(who: Principal, agencies: list[str], members: list[str]) -> bool:
    if who.unrestricted:
        return True
    if who.role is Role.UNIT:
        return member_key(who) in members
    return who.agency is not None and (who.agency in agencies or "*" in agencies)


async def media_context(app: web.Application) -> AsyncIterator[None]:
    """The node's media service (off with ``media_enabled = false``)."""
    settings = app[appkeys.SETTINGS]
    if not settings.media_enabled:
        yield
        return
    use_host_addresses(settings.media_host_addresses)
    handoff.install()
    app[MEDIA] = service = MediaService(app, settings)
    housekeeping = asyncio.create_task(service.background(), name="icp-media-housekeeping")
    lag = asyncio.create_task(service.loop_lag.run(), name="icp-media-loop-lag")
    try:
        with contextlib.suppress(asyncpg.PostgresError, OSError):
            await service.sweep()
        yield
    finally:
        for task in (housekeeping, lag):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        try:
            await asyncio.wait_for(service.close(), CLOSE_S)
        except TimeoutError:
            log.warning("media did not close within %.0f s", CLOSE_S)


__all__ = ["MediaLink", "MediaService", "can_read", "may_see_recording", "media_context"]
