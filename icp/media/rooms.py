"""Media rooms on this node: one peer connection per participant, and how each kind of room routes audio.

- `Talkgroup` (push-to-talk): only the floor holder's audio is used. It is encoded once and the same
  packets go to every other member and into the transmission's recording. Floor control is the pure
  `icp.media.floor.Floor`; this module carries its effects out as `ptt.*` frames.
- `MixingRoom` (a call, an incident's conference): every 20 ms each participant's latest audio is
  mixed; each hears the sum less their own voice, and the recording gets the whole sum. Video: in a
  call each party sees the other; in a conference everyone sees the chosen source (a participant or
  a camera).

Decoding happens in aiortc's receiver threads, encoding and file writes in the service's worker
threads (`executor`); the event loop only moves packets and frames between queues. A room's jobs run
one at a time, in order, so its encoders and recorder need no locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from aiortc import RTCIceCandidate, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.sdp import candidate_from_sdp
from av import AudioFrame

from icp.media import handoff
from icp.media.floor import Denied, Effect, Floor, FloorPolicy, Granted, Queued, Rank, Revoked, Speaker
from icp.media.ice import configuration
from icp.media.tracks import (
    FRAME_S,
    FRAME_SAMPLES,
    SILENCE,
    OggRecorder,
    OpusEncoder,
    PacketTrack,
    Restamper,
    Samples,
    VideoSwitch,
    mix_recordings,
    mono,
)
from icp.tasks import cancel_all

if TYPE_CHECKING:
    from icp.media.tracks import AudioPacket

log = logging.getLogger(__name__)

INBOX = 5  # decoded frames held per participant for the mixer (100 ms); older ones are dropped
TALK_QUEUE = 50  # the floor holder's frames waiting to be encoded (1 s)
FLOOR_TICK_S = 0.25
PC_CLOSE_S = 5.0
CAMERA_PREFIX = "camera:"  # rtc.video names a camera camera:<id> (the bare id is taken too)
MAX_AUDIO_LEVEL = 32767


@dataclass(frozen=True, slots=True)
class Recording:
    """A finished recording file, for the service to index."""

    room: str
    kind: str
    path: Path
    started_at: datetime
    ended_at: datetime
    duration_s: float
    size: int
    speaker: str | None
    members: tuple[str, ...]


@dataclass(eq=False)
class Participant:
    member: str
    name: str
    role: str
    rank: Rank
    send: Callable[[dict[str, Any]], None]  # a frame to this participant's connection
    link: object  # the connection it joined from
    pc: RTCPeerConnection | None = None
    audio_out: PacketTrack = field(default_factory=PacketTrack)
    video_out: VideoSwitch = field(default_factory=VideoSwitch)
    video_in: MediaStreamTrack | None = None
    audio_in: MediaStreamTrack | None = None
    tapped: bool = False  # its encoded audio reaches the room directly (icp.media.handoff.tap)
    restamp: Restamper = field(default_factory=Restamper)  # for what is forwarded to it
    video_proxy: MediaStreamTrack | None = None  # what video_out shows now (a relay subscription)
    video_source: object = None  # the track (or camera) video_proxy relays
    inbox: deque[AudioFrame] = field(default_factory=lambda: deque(maxlen=INBOX))
    encoder: OpusEncoder | None = None
    frames_in: int = 0
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def view(self) -> dict[str, Any]:
        return {"member": self.member, "name": self.name, "role": self.role}


class Room:
    """Participants and their peer connections; subclasses route the audio."""

    kind = "room"
    tap_audio = False  # take the encoded audio (on_packet) as well as, or instead of, decoded frames
    decode_audio = True  # decoded frames are needed (on_audio)

    def __init__(self, room_id: str, *, executor: Executor, ice: Any, recordings_dir: Path | None,
                 on_recording: Callable[[Recording], Awaitable[None]], on_empty: Callable[[Room], None],
                 on_left: Callable[[Room, Participant, str], None], max_participants: int) -> None:
        self.id = room_id
        self.executor = executor
        self.ice = ice
        self.recordings_dir = recordings_dir
        self.on_recording = on_recording
        self.on_empty = on_empty
        self.on_left = on_left
        self.max_participants = max_participants
        self.participants: dict[str, Participant] = {}
        self.heard: set[str] = set()  # every member that took part (who may play the recordings)
        self.relay = MediaRelay()
        self.closed = False
        self._tasks: set[asyncio.Task[None]] = set()

    # -- membership ----------------------------------------------------------------------------------
    def admit(self, participant: Participant) -> Participant:
        """Add (or replace: the same member from another connection) a participant, without media yet."""
        current = self.participants.get(participant.member)
        if current is not None and current.link is participant.link:
            return current
        if current is None and len(self.participants) >= self.max_participants:
            raise RoomFull(self.id)
        if current is not None:
            self._spawn(self._drop(current, "replaced"))
        self.participants[participant.member] = participant
        self.heard.add(participant.member)
        participant.encoder = self.encoder_for(participant)
        self.joined(participant)
        self.announce()
        return participant

    def encoder_for(self, participant: Participant) -> OpusEncoder | None:
        return None

    def joined(self, participant: Participant) -> None:
        """Hook: a participant came in."""

    async def leave(self, member: str, reason: str = "hangup") -> None:
        participant = self.participants.get(member)
        if participant is not None:
            await self._drop(participant, reason)

    async def _drop(self, participant: Participant, reason: str) -> None:
        if self.participants.get(participant.member) is participant:
            del self.participants[participant.member]
            self.left(participant)
            self.on_left(self, participant, reason)
            self.announce()
        for task in participant.tasks:
            task.cancel()
        if participant.audio_in is not None:
            handoff.untap(participant.audio_in)
        participant.audio_out.stop()
        participant.video_out.stop()
        if participant.video_proxy is not None:
            participant.video_proxy.stop()
        if participant.pc is not None:
            with contextlib.suppress(Exception):  # a peer that vanished must not hold the room up
                await asyncio.wait_for(participant.pc.close(), PC_CLOSE_S)
        if not self.participants and not self.closed:
            self.on_empty(self)

    def left(self, participant: Participant) -> None:
        """Hook: a participant went."""

    def announce(self) -> None:
        frame = {"op": "rtc.room", **self.view()}
        for p in list(self.participants.values()):
            p.send(frame)

    def view(self) -> dict[str, Any]:
        return {"room": self.id, "participants": [p.view() for p in self.participants.values()]}

    async def close(self) -> None:
        """Everyone leaves; recordings are finished."""
        if self.closed:
            return
        self.closed = True
        for participant in list(self.participants.values()):
            await self._drop(participant, "closed")
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.finish()

    async def finish(self) -> None:
        """Hook: the room closed; finish recordings."""

    # -- negotiation -----------------------------------------------------------------------------------
    def _peer(self, participant: Participant) -> RTCPeerConnection:
        if participant.pc is not None:
            return participant.pc
        pc = RTCPeerConnection(configuration(self.ice))
        participant.pc = pc

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "audio":
                participant.audio_in = track
                if self.tap_audio:
                    participant.tapped = handoff.tap(
                        track, lambda data, ts: self.on_packet(participant, data, ts), decode=self.decode_audio)
                    if participant.tapped and not self.decode_audio:
                        for rtp_receiver in pc.getReceivers():
                            if rtp_receiver.track is track:
                                handoff.forwarding_buffer(rtp_receiver)
                if self.decode_audio or not participant.tapped:
                    task = asyncio.create_task(self._read_audio(participant, track))
                    participant.tasks.add(task)
                    task.add_done_callback(participant.tasks.discard)
            elif track.kind == "video":
                participant.video_in = track
                self.route_video()

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState == "failed" and self.participants.get(participant.member) is participant:
                await self._drop(participant, "failed")

        return pc

    async def answer(self, participant: Participant, offer_sdp: str) -> str:
        """The client offered: set it, attach this participant's outgoing tracks, answer."""
        pc = self._peer(participant)
        if not offer_sdp.startswith("v=0"):
            raise NegotiationError("an SDP offer starts with v=0")
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        if not any(t.kind == "audio" for t in pc.getTransceivers()):
            raise NegotiationError("the offer has no audio section")
        self._attach(pc, participant)
        await pc.setLocalDescription(await pc.createAnswer())
        return pc.localDescription.sdp

    async def offer(self, participant: Participant, video: bool) -> str:
        """The server offers: audio (and video) both ways."""
        pc = self._peer(participant)
        if not pc.getTransceivers():
            pc.addTrack(participant.audio_out)
            if video:
                pc.addTrack(participant.video_out)
        await pc.setLocalDescription(await pc.createOffer())
        return pc.localDescription.sdp

    async def accept_answer(self, participant: Participant, answer_sdp: str) -> None:
        pc = participant.pc
        if pc is None or pc.signalingState != "have-local-offer":
            raise NegotiationError("there is no server offer to answer: rtc.join first")
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer_sdp, type="answer"))

    async def candidate(self, participant: Participant, text: str, sdp_mid: str | None, index: int | None) -> None:
        pc = participant.pc
        if pc is None:
            raise NegotiationError("no connection to add a candidate to: offer first")
        if not text.strip():
            await pc.addIceCandidate(None)  # end of candidates
            return
        found: RTCIceCandidate = candidate_from_sdp(text.removeprefix("candidate:").strip())
        found.sdpMid, found.sdpMLineIndex = sdp_mid, index
        await pc.addIceCandidate(found)

    @staticmethod
    def _attach(pc: RTCPeerConnection, participant: Participant) -> None:
        for transceiver in pc.getTransceivers():
            if transceiver.sender.track is not None:
                continue
            if transceiver.kind == "audio" and participant.audio_out not in _sent_tracks(pc):
                pc.addTrack(participant.audio_out)
            elif transceiver.kind == "video" and participant.video_out not in _sent_tracks(pc):
                pc.addTrack(participant.video_out)

    # -- media ---------------------------------------------------------------------------------------------
    async def _read_audio(self, participant: Participant, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if isinstance(frame, AudioFrame):
                participant.frames_in += 1
                self.on_audio(participant, frame)

    def on_audio(self, participant: Participant, frame: AudioFrame) -> None:
        raise NotImplementedError

    def on_packet(self, participant: Participant, payload: bytes, rtp_timestamp: int) -> None:
        """An encoded (Opus) frame from the participant, when the room taps its audio."""

    def route_video(self) -> None:
        """Hook: which video each participant is shown."""

    def show(self, participant: Participant, source: MediaStreamTrack | None) -> None:
        """Show ``source`` (relayed) in this participant's video."""
        if participant.video_source is source:
            return
        if participant.video_proxy is not None:
            participant.video_proxy.stop()
        participant.video_source = source
        participant.video_proxy = self.relay.subscribe(source, buffered=False) if source is not None else None
        participant.video_out.switch(participant.video_proxy)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _recording_path(self, stamp: datetime, suffix: str = "") -> Path | None:
        if self.recordings_dir is None:
            return None
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in self.id)[:100]
        day = stamp.strftime("%Y/%m/%d")
        return self.recordings_dir / day / f"{safe}-{stamp.strftime('%H%M%S%f')}{suffix}.ogg"


def _sent_tracks(pc: RTCPeerConnection) -> list[MediaStreamTrack]:
    return [s.track for s in pc.getSenders() if s.track is not None]


class RoomFull(Exception):
    def __init__(self, room: str) -> None:
        super().__init__(f"{room} is full")


class NegotiationError(Exception):
    """The client's signaling does not fit the connection's state."""


# ---------------------------------------------------------------------------------------------------
# Push-to-talk.

@dataclass(eq=False)
class _Transmission:
    speaker: str
    started_at: datetime
    path: Path | None
    members: set[str]
    recorder: OggRecorder | None = None


class Talkgroup(Room):
    kind = "talkgroup"
    tap_audio = True  # the floor holder's Opus frames are forwarded as they are: no decoding, no encoding
    decode_audio = False
    MAX_WRITES = 500  # recording packets waiting for the worker (10 s); beyond, the recording has a gap

    def __init__(self, room_id: str, policy: FloorPolicy, **kwargs: Any) -> None:
        super().__init__(room_id, **kwargs)
        self.floor = Floor(policy)
        self.encoder = OpusEncoder()
        self._work: deque[tuple[str, Any, _Transmission | None]] = deque()
        self._wake = asyncio.Event()
        self._transmission: _Transmission | None = None
        self.forwarded = 0  # packets handed to listeners
        self.restamp = Restamper()
        self._spawn(self._worker())
        self._spawn(self._ticker())

    def view(self) -> dict[str, Any]:
        holder = self.floor.holder
        return {**super().view(), "talkgroup": self.id, "speaker": holder.member if holder else None}

    # -- floor -----------------------------------------------------------------------------------------
    def request(self, member: str, rank: Rank) -> dict[str, Any]:
        floor, effects = self.floor.request(member, rank, datetime.now(UTC))
        return self._apply(floor, effects, member)

    def release(self, member: str) -> dict[str, Any]:
        floor, effects = self.floor.release(member, datetime.now(UTC))
        self._apply(floor, effects, member)
        return {}

    def left(self, participant: Participant) -> None:
        floor, effects = self.floor.leave(participant.member, datetime.now(UTC))
        self._apply(floor, effects, None)

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(FLOOR_TICK_S)
            if self.floor.holder is not None:
                floor, effects = self.floor.tick(datetime.now(UTC))
                if effects:
                    self._apply(floor, effects, None)

    def _apply(self, floor: Floor, effects: list[Effect], asker: str | None) -> dict[str, Any]:
        before = self.floor.holder.member if self.floor.holder else None
        self.floor = floor
        after = floor.holder.member if floor.holder else None
        if before != after:
            self._switch_transmission(after)
        answer: dict[str, Any] = {}
        for effect in effects:
            if isinstance(effect, Granted):
                frame = {"talkgroup": self.id, "until": _iso(effect.until), "emergency": effect.rank is Rank.EMERGENCY}
                self._to(effect.member, {"op": "ptt.granted", **frame})
                if effect.member == asker:
                    answer = {"outcome": "granted", "until": frame["until"]}
            elif isinstance(effect, Queued):
                self._to(effect.member, {"op": "ptt.queued", "talkgroup": self.id, "position": effect.position})
                if effect.member == asker:
                    answer = {"outcome": "queued", "position": effect.position}
            elif isinstance(effect, Denied):
                self._to(effect.member, {"op": "ptt.denied", "talkgroup": self.id, "reason": effect.reason})
                if effect.member == asker:
                    answer = {"outcome": "denied", "reason": effect.reason}
            elif isinstance(effect, Revoked):
                frame = {"op": "ptt.revoked", "talkgroup": self.id, "reason": effect.reason}
                if effect.by is not None:
                    frame["by"] = effect.by
                self._to(effect.member, frame)
            elif isinstance(effect, Speaker):
                speaking = self.participants.get(effect.member) if effect.member else None
                frame = {"op": "ptt.speaker", "talkgroup": self.id, "member": effect.member,
                         "name": speaking.name if speaking else (effect.member or None),
                         "rank": effect.rank.name.lower() if effect.rank is not None else None}
                for p in list(self.participants.values()):
                    p.send(frame)
        return answer

    def _to(self, member: str, frame: dict[str, Any]) -> None:
        participant = self.participants.get(member)
        if participant is not None:
            participant.send(frame)

    def _switch_transmission(self, speaker: str | None) -> None:
        ending, self._transmission = self._transmission, None
        if ending is not None:
            self._queue("close", None, ending)
        if speaker is not None:
            now = datetime.now(UTC)
            self._transmission = _Transmission(speaker, now, self._recording_path(now, f"-{_safe(speaker)}"),
                                               set(self.participants))

    # -- audio -------------------------------------------------------------------------------------------
    def on_packet(self, participant: Participant, payload: bytes, rtp_timestamp: int) -> None:
        holder = self.floor.holder
        if holder is None or holder.member != participant.member:
            return  # only the floor holder is heard
        participant.frames_in += 1
        packet = Restamper.packet(payload, self.restamp(participant, rtp_timestamp))
        for p in list(self.participants.values()):
            if p is not participant:
                p.audio_out.push(packet)
                self.forwarded += 1
        transmission = self._transmission
        if transmission is not None and transmission.path is not None and sum(
                1 for w in self._work if w[0] == "write") < self.MAX_WRITES:
            self._work.append(("write", packet, transmission))
            self._wake.set()

    def on_audio(self, participant: Participant, frame: AudioFrame) -> None:
        holder = self.floor.holder
        if holder is None or holder.member != participant.member:
            return  # only the floor holder is heard
        self._queue("audio", frame, self._transmission)

    def _queue(self, what: str, item: Any, transmission: _Transmission | None) -> None:
        if what == "audio" and sum(1 for w in self._work if w[0] == "audio") >= TALK_QUEUE:
            return  # the workers are this far behind: drop rather than add delay
        self._work.append((what, item, transmission))
        self._wake.set()

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._work:
                self._wake.clear()
                await self._wake.wait()
                continue
            what, item, transmission = self._work.popleft()
            try:
                if what == "write":
                    packets = [item]
                    while self._work and self._work[0][0] == "write" and self._work[0][2] is transmission:
                        packets.append(self._work.popleft()[1])
                    await loop.run_in_executor(self.executor, self._write, packets, transmission)
                elif what == "audio":
                    packets = await loop.run_in_executor(self.executor, self._encode, item, transmission)
                    holder = self.floor.holder.member if self.floor.holder else None
                    speaker = transmission.speaker if transmission is not None else holder
                    for p in list(self.participants.values()):
                        if p.member != speaker:
                            for packet in packets:
                                p.audio_out.push(packet)
                                self.forwarded += 1
                elif transmission is not None:
                    await self._finish_transmission(transmission)
            except Exception:
                log.exception("talkgroup %s: media work failed", self.id)

    def _encode(self, frame: AudioFrame, transmission: _Transmission | None) -> list[AudioPacket]:
        packets: list[AudioPacket] = []
        for chunk in _chunks(mono(frame)):
            packets += self.encoder.encode(chunk)
        if transmission is not None and transmission.path is not None:
            if transmission.recorder is None:
                transmission.recorder = OggRecorder(transmission.path, self.encoder.extradata)
            for packet in packets:
                transmission.recorder.write(packet)
        return packets

    def _write(self, packets: list[AudioPacket], transmission: _Transmission | None) -> None:
        if transmission is None or transmission.path is None:
            return
        if transmission.recorder is None:
            transmission.recorder = OggRecorder(transmission.path, self.encoder.extradata)
        for packet in packets:
            transmission.recorder.write(packet)

    async def _finish_transmission(self, transmission: _Transmission) -> None:
        recorder = transmission.recorder
        if recorder is None:
            return
        size = await asyncio.get_running_loop().run_in_executor(self.executor, recorder.close)
        await self.on_recording(Recording(self.id, self.kind, recorder.path, transmission.started_at,
                                          datetime.now(UTC), recorder.duration_s, size, transmission.speaker,
                                          tuple(sorted(transmission.members))))

    async def finish(self) -> None:
        if self._transmission is not None:
            ending, self._transmission = self._transmission, None
            # Frames still queued are dropped; what was written is kept.
            await self._finish_transmission(ending)


# ---------------------------------------------------------------------------------------------------
# Calls and conferences: mixed audio.

class MixerClock:
    """One 20 ms clock for every mixing room of the node: each tick gathers every room's frames on
    the loop and mixes them all in one job in a worker thread (one hand-off per tick, not per room),
    then hands the packets out. A tick that starts late is caught up at once (the inboxes hold the
    frames), unless the clock is more than 200 ms behind (a stalled host): then it skips ahead."""

    def __init__(self, executor: Executor, workers: int = 2) -> None:
        self.executor = executor
        self.workers = max(1, workers)  # a tick's rooms are shared among this many jobs
        self.rooms: dict[MixingRoom, None] = {}  # ordered: rooms mix in the order they opened
        self.lag_s = 0.0
        self.ticks = 0
        self.job_s: deque[float] = deque(maxlen=500)  # how long each tick's mixing took (wall)
        self._task: asyncio.Task[None] | None = None
        self._batch: asyncio.Future[Any] | None = None

    def add(self, room: MixingRoom) -> None:
        self.rooms[room] = None
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    async def remove(self, room: MixingRoom) -> None:
        """Stop mixing the room; returns once no job touches it any more."""
        self.rooms.pop(room, None)
        batch = self._batch
        if batch is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(batch)

    async def stop(self) -> None:
        await cancel_all([self._task])
        self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            due += FRAME_S
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.2:
                due = loop.time()
            late = max(0.0, -delay)
            self.lag_s = max(self.lag_s, late)
            batch = []
            for room in list(self.rooms):
                people = list(room.participants.values())
                batch.append((room, people, [p.inbox.popleft() if p.inbox else None for p in people]))
                room.lag_s = max(room.lag_s, late)
            if not batch:
                continue
            size = -(-len(batch) // self.workers)
            parts = [batch[i:i + size] for i in range(0, len(batch), size)]
            self._batch = asyncio.gather(*(loop.run_in_executor(self.executor, _mix_all, part) for part in parts))
            started = loop.time()
            try:
                results = [out for part in await self._batch for out in part]
                self.job_s.append(loop.time() - started)
            except Exception:
                log.exception("mixing failed")
                continue
            finally:
                self._batch = None
            for (room, people, _), out in zip(batch, results, strict=True):
                if room not in self.rooms:
                    continue
                for participant, packets in zip(people, out, strict=True):
                    for packet in packets:
                        participant.audio_out.push(packet)
                room.ticks += 1
            self.ticks += 1


def _mix_all(batch: list[tuple[MixingRoom, list[Participant], list[AudioFrame | None]]]
             ) -> list[list[list[AudioPacket]]]:
    out = []
    for room, people, frames in batch:
        try:
            out.append(room._mix(people, frames))
        except Exception:  # one room's failure is its own
            log.exception("room %s: mixing failed", room.id)
            out.append([[] for _ in people])
    return out


class MixingRoom(Room):
    """Each participant hears the sum of the others; the recording is the sum of all."""

    kind = "conference"

    def __init__(self, room_id: str, *, clock: MixerClock, record: bool = True, **kwargs: Any) -> None:
        super().__init__(room_id, **kwargs)
        self.clock = clock
        self.record = record
        self.recorder: OggRecorder | None = None
        self.record_encoder: OpusEncoder | None = None
        self.started_at: datetime | None = None
        self.video_choice: str | None = None  # a member key, or a camera id
        self.cameras: dict[str, MediaStreamTrack] = {}
        self.ticks = 0
        self.lag_s = 0.0  # the worst a tick started late

    def encoder_for(self, participant: Participant) -> OpusEncoder | None:
        return OpusEncoder()

    def joined(self, participant: Participant) -> None:
        if self.started_at is None:
            self.started_at = datetime.now(UTC)
            self.clock.add(self)
        self.route_video()

    def left(self, participant: Participant) -> None:
        if self.video_choice == participant.member:
            self.video_choice = None
        self.route_video()

    def view(self) -> dict[str, Any]:
        return {**super().view(), "video": self.video_choice, "cameras": sorted(self.cameras)}

    def on_audio(self, participant: Participant, frame: AudioFrame) -> None:
        participant.inbox.append(frame)

    def _mix(self, people: list[Participant], frames: list[AudioFrame | None]) -> list[list[AudioPacket]]:
        voices = [_first_chunk(mono(f)) if f is not None else SILENCE for f in frames]
        total = np.sum(np.stack(voices).astype(np.int32), axis=0) if voices else np.zeros(FRAME_SAMPLES, np.int32)
        out: list[list[AudioPacket]] = []
        for participant, voice in zip(people, voices, strict=True):
            if participant.encoder is None or participant.pc is None:
                out.append([])
                continue
            mix = np.clip(total - voice, -MAX_AUDIO_LEVEL, MAX_AUDIO_LEVEL).astype(np.int16)
            out.append(participant.encoder.encode(mix))
        if self.record and self.recordings_dir is not None and self.started_at is not None:
            if self.recorder is None:
                path = self._recording_path(self.started_at)
                assert path is not None
                self.record_encoder = OpusEncoder()
                self.recorder = OggRecorder(path, self.record_encoder.extradata)
            assert self.record_encoder is not None
            for packet in self.record_encoder.encode(np.clip(total, -MAX_AUDIO_LEVEL, MAX_AUDIO_LEVEL)
                                                     .astype(np.int16)):
                self.recorder.write(packet)
        return out

    async def finish(self) -> None:
        await self.clock.remove(self)
        recorder, self.recorder = self.recorder, None
        if recorder is None or self.started_at is None:
            return
        size = await asyncio.get_running_loop().run_in_executor(self.executor, recorder.close)
        await self.on_recording(Recording(self.id, self.kind, recorder.path, self.started_at, datetime.now(UTC),
                                          recorder.duration_s, size, None, tuple(sorted(self.heard))))

    # -- video ---------------------------------------------------------------------------------------------
    def choose_video(self, source: str | None) -> None:
        if source is not None and source.startswith(CAMERA_PREFIX):  # the documented spelling of a camera
            source = source.removeprefix(CAMERA_PREFIX)
        if source is not None and source not in self.participants and source not in self.cameras:
            raise KeyError(source)
        self.video_choice = source
        self.route_video()
        self.announce()

    def add_camera(self, camera_id: str, track: MediaStreamTrack) -> None:
        self.cameras[camera_id] = track
        if self.video_choice is None:
            self.video_choice = camera_id
        self.route_video()
        self.announce()

    def remove_camera(self, camera_id: str) -> None:
        if self.cameras.pop(camera_id, None) is not None:
            if self.video_choice == camera_id:
                self.video_choice = next(iter(self.cameras), None)
            self.route_video()
            self.announce()

    def route_video(self) -> None:
        choice = self.video_choice
        source: MediaStreamTrack | None = None
        if choice is not None:
            if choice in self.cameras:
                source = self.cameras[choice]
            elif choice in self.participants:
                source = self.participants[choice].video_in
        for participant in self.participants.values():
            self.show(participant, source if choice != participant.member else None)


class CallRoom(Room):
    """A call: two parties. Each party's Opus frames are forwarded to the other as they are — no
    decoding, no encoding while the call lasts — and written as they pass to that party's side of
    the recording (both sides on one timeline); when the call ends a worker mixes the two sides into
    the call's one recording. Each party sees the other's video."""

    kind = "call"
    tap_audio = True
    decode_audio = False
    MAX_WRITES = 1000  # recording packets waiting for the worker (10 s for two parties)

    def __init__(self, room_id: str, **kwargs: Any) -> None:
        handoff.install()  # forwarding needs the tap
        super().__init__(room_id, **kwargs)
        self.started_at: datetime | None = None
        self._t0 = time.monotonic()  # one timeline for both sides of the recording
        self._clocks: dict[str, Restamper] = {}
        self._sides: dict[str, OggRecorder] = {}
        self._writes: deque[tuple[str, AudioPacket]] = deque()
        self._wake = asyncio.Event()
        self._extradata = OpusEncoder().extradata
        self._writer: asyncio.Task[None] | None = None

    def joined(self, participant: Participant) -> None:
        if self.started_at is None:
            self.started_at = datetime.now(UTC)
        self.route_video()

    def left(self, participant: Participant) -> None:
        self.route_video()

    def on_audio(self, participant: Participant, frame: AudioFrame) -> None:
        pass  # not decoded (the tap forwards the encoded frames)

    def on_packet(self, participant: Participant, payload: bytes, rtp_timestamp: int) -> None:
        participant.frames_in += 1
        for other in list(self.participants.values()):
            if other is not participant and other.pc is not None:
                other.audio_out.push(Restamper.packet(payload, other.restamp(participant, rtp_timestamp)))
        if self.recordings_dir is not None and len(self._writes) < self.MAX_WRITES:
            self._writes.append((participant.member, Restamper.packet(payload, self._pts(participant, rtp_timestamp))))
            self._wake.set()
            if self._writer is None:
                self._writer = asyncio.ensure_future(self._write_loop())

    def _pts(self, participant: Participant, rtp_timestamp: int) -> int:
        # Each side keeps its own RTP clock; a side's first packet is placed at its arrival.
        clock = self._clocks.get(participant.member)
        if clock is None:
            clock = self._clocks[participant.member] = Restamper(started=self._t0)
        return clock(participant.member, rtp_timestamp)

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._writes:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = list(self._writes)
            self._writes.clear()
            try:
                await loop.run_in_executor(self.executor, self._write, batch)
            except Exception:
                log.exception("call %s: recording failed", self.id)

    def _write(self, batch: list[tuple[str, AudioPacket]]) -> None:
        for member, packet in batch:
            side = self._sides.get(member)
            if side is None:
                assert self.started_at is not None
                path = self._recording_path(self.started_at, f"-side-{_safe(member)}")
                assert path is not None
                side = self._sides[member] = OggRecorder(path, self._extradata, origin=0)
            side.write(packet)

    async def finish(self) -> None:
        loop = asyncio.get_running_loop()
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        if self._writes:
            batch = list(self._writes)
            self._writes.clear()
            await loop.run_in_executor(self.executor, self._write, batch)
        if not self._sides or self.started_at is None:
            return
        sides = list(self._sides.values())
        self._sides = {}
        path = self._recording_path(self.started_at)
        assert path is not None
        duration, size = await loop.run_in_executor(self.executor, _mix_sides, sides, path)
        await self.on_recording(Recording(self.id, self.kind, path, self.started_at, datetime.now(UTC), duration,
                                          size, None, tuple(sorted(self.heard))))

    def route_video(self) -> None:
        people = list(self.participants.values())
        for participant in people:
            other = next((p for p in people if p is not participant), None)
            self.show(participant, other.video_in if other is not None else None)


def _mix_sides(sides: list[OggRecorder], out: Path) -> tuple[float, int]:
    for side in sides:
        side.close()
    try:
        return mix_recordings([side.path for side in sides], out)
    finally:
        for side in sides:
            side.path.unlink(missing_ok=True)


def _chunks(samples: Samples) -> Iterable[Samples]:
    """20 ms chunks (the decoder's frames are 20 ms from every client we know; a shorter tail is padded)."""
    for start in range(0, len(samples), FRAME_SAMPLES):
        chunk = samples[start:start + FRAME_SAMPLES]
        if len(chunk) < FRAME_SAMPLES:
            chunk = np.concatenate([chunk, SILENCE[: FRAME_SAMPLES - len(chunk)]])
        yield chunk


def _first_chunk(samples: Samples) -> Samples:
    return next(iter(_chunks(samples)), SILENCE)


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)[:60]

