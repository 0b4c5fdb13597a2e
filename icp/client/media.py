"""Voice for SDK clients (field units, console scripts, the simulator, tests): calls, conferences and
push-to-talk over aiortc, signaled on the client's resumable link.

    async with MediaUnitClient(url, token) as unit:
        peer = await unit.join("talkgroup:fire:ops", audio=ToneTrack(440))
        granted = await unit.request_floor("talkgroup:fire:ops")
        ...
        print(peer.frames)  # audio frames received from the server

The server's media frames (`rtc.ring`, `rtc.ended`, `ptt.speaker`, …) wait in a bounded buffer
read with `media_frame`. Media does not survive a dropped link: the server leaves the rooms of a
connection that closed, so after a reconnect a client joins again.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import av
import numpy as np
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame, VideoFrame
from av.packet import Packet
from websockets.asyncio.client import ClientConnection

from icp.client.connection import Connection, _decode
from icp.client.console import ConsoleClient
from icp.client.field_unit import FieldUnitClient
from icp.media import handoff

RATE = 48_000
SAMPLES = 960  # 20 ms
MAX_MEDIA_FRAMES = 500  # server media frames waiting for the application; the oldest go first
LEVELS = 500  # (time, level) of the last received audio frames, per peer


class ToneTrack(MediaStreamTrack):
    """A microphone stand-in: a sine tone in 20 ms frames, paced in real time. Set ``amplitude``
    (0..1) to speak louder or fall silent; ``on_sent(time, amplitude)`` hears of every frame sent.

    With ``encoded`` (the default) the track yields Opus packets it encoded once per amplitude (a
    second of tone, looped), which aiortc sends without encoding: a test or benchmark with many
    peers then spends its CPU on what it measures, not on its microphones."""

    kind = "audio"
    LOOP = 50  # packets (1 s) encoded per amplitude

    def __init__(self, frequency: float = 440.0, amplitude: float = 0.3, *, encoded: bool = True) -> None:
        super().__init__()
        self.frequency = frequency
        self.amplitude = amplitude
        self.encoded = encoded
        self.sent = 0
        self.on_sent: Callable[[float, float], None] | None = None
        self._pts = 0
        self._start: float | None = None
        self._loops: dict[float, list[bytes]] = {}

    def _samples(self, pts: int, amplitude: float) -> np.ndarray:
        t = (np.arange(SAMPLES) + pts) / RATE
        return (np.sin(2 * math.pi * self.frequency * t) * amplitude * 32767).astype(np.int16)

    def _frame(self, pts: int, amplitude: float, layout: str = "mono") -> AudioFrame:
        frame = AudioFrame.from_ndarray(self._samples(pts, amplitude).reshape(1, -1), format="s16", layout=layout)
        frame.sample_rate = RATE
        frame.pts = pts
        frame.time_base = fractions.Fraction(1, RATE)
        return frame

    def _packets(self, amplitude: float) -> list[bytes]:
        loop = self._loops.get(amplitude)
        if loop is None:
            codec = av.CodecContext.create("libopus", "w")
            assert isinstance(codec, av.AudioCodecContext)
            codec.bit_rate, codec.format, codec.layout, codec.sample_rate = 32_000, "s16", "mono", RATE
            codec.time_base = fractions.Fraction(1, RATE)
            codec.options = {"application": "voip", "frame_duration": "20"}
            loop = []
            pts = 0
            while len(loop) < self.LOOP:
                loop += [bytes(p) for p in codec.encode(self._frame(pts, amplitude))]
                pts += SAMPLES
            self._loops[amplitude] = loop = loop[: self.LOOP]
        return loop

    async def recv(self) -> AudioFrame | Packet[Any]:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            self._pts += SAMPLES
            wait = self._start + self._pts / RATE - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        amplitude = self.amplitude
        out: AudioFrame | Packet[Any]
        if self.encoded:
            loop = self._packets(amplitude)
            out = Packet(loop[(self._pts // SAMPLES) % len(loop)])
            out.pts = self._pts
            out.time_base = fractions.Fraction(1, RATE)
        else:
            out = self._frame(self._pts, amplitude)
        self.sent += 1
        if self.on_sent is not None:
            self.on_sent(time.monotonic(), amplitude)
        return out


def level(frame: AudioFrame) -> float:
    """A frame's RMS level, 0..1."""
    data = frame.to_ndarray().astype(np.float64)
    return float(np.sqrt(np.mean(data * data)) / 32768) if data.size else 0.0


class RoomPeer:
    """This client's peer connection in one room: what it sends, and a count of what it receives."""

    def __init__(self, room: str, pc: RTCPeerConnection, audio: MediaStreamTrack | None) -> None:
        self.room = room
        self.pc = pc
        self.audio = audio
        self.frames = 0  # audio frames received
        self.video_frames = 0
        self.levels: deque[tuple[float, float]] = deque(maxlen=LEVELS)
        self.on_audio: Callable[[float, AudioFrame], None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._got = asyncio.Event()

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            task = asyncio.ensure_future(self._count(track))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _count(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            now = time.monotonic()
            self._got.set()
            if isinstance(frame, AudioFrame):
                self.frames += 1
                self.levels.append((now, level(frame)))
                if self.on_audio is not None:
                    self.on_audio(now, frame)
            elif isinstance(frame, VideoFrame):
                self.video_frames += 1

    def heard_since(self, since: float, threshold: float = 0.02) -> int:
        """Received frames louder than ``threshold`` since ``since`` (time.monotonic)."""
        return sum(1 for at, lvl in self.levels if at >= since and lvl > threshold)

    async def wait_frames(self, count: int, timeout: float = 10.0, *, video: bool = False) -> None:
        async with asyncio.timeout(timeout):
            while (self.video_frames if video else self.frames) < count:
                self._got.clear()
                await self._got.wait()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self.audio is not None:
            self.audio.stop()
        await self.pc.close()


class MediaMixin(Connection):
    """Calls, rooms and the floor for a `Connection` subclass."""

    ice_servers: list[RTCIceServer] = []  # noqa: RUF012  (none: host candidates only)

    def _media_init(self) -> None:
        if not hasattr(self, "_media"):
            self._media: deque[dict[str, Any]] = deque(maxlen=MAX_MEDIA_FRAMES)
            self._media_wake = asyncio.Event()
            self.peers: dict[str, RoomPeer] = {}

    async def _on_frame(self, ws: ClientConnection, raw: str | bytes) -> None:
        frame = _decode(raw)
        op = frame.get("op") if frame is not None else None
        if frame is not None and isinstance(op, str) and op.startswith(("rtc.", "ptt.")):
            self._media_init()
            self._media.append(frame)
            self._media_wake.set()
            return
        await super()._on_frame(ws, raw)

    async def media_frame(self, op: str | tuple[str, ...], *, where: Mapping[str, Any] | None = None,
                          timeout: float = 10.0) -> dict[str, Any]:
        """The next server media frame ``op`` (matching ``where``); earlier non-matching ones are kept."""
        self._media_init()
        ops = (op,) if isinstance(op, str) else op
        async with asyncio.timeout(timeout):
            while True:
                for frame in self._media:
                    if frame.get("op") in ops and all(frame.get(k) == v for k, v in (where or {}).items()):
                        self._media.remove(frame)
                        return frame
                self._media_wake.clear()
                await self._media_wake.wait()

    # -- calls ----------------------------------------------------------------------------------------------
    async def call(self, to: str, *, incident: str | None = None, video: bool = False) -> dict[str, Any]:
        fields: dict[str, Any] = {"to": to}
        if incident is not None:
            fields["incident"] = incident
        if video:
            fields["video"] = True
        return dict((await self.request("rtc.call", **fields))["call"])

    async def accept(self, call: str) -> dict[str, Any]:
        return dict((await self.request("rtc.accept", call=call))["call"])

    async def decline(self, call: str, reason: str = "") -> dict[str, Any]:
        fields: dict[str, Any] = {"reason": reason} if reason else {}
        return dict((await self.request("rtc.decline", call=call, **fields))["call"])

    # -- rooms ----------------------------------------------------------------------------------------------
    async def join(self, room: str, *, audio: MediaStreamTrack | None = None, receive_audio: bool = True,
                   video: bool = False, timeout: float = 20.0) -> RoomPeer:
        """Join a room with one peer connection (this client offers): send ``audio`` (a track, e.g.
        `ToneTrack`; None: listen only), receive the room's audio, and its video when ``video``."""
        self._media_init()
        handoff.install()
        pc = RTCPeerConnection(RTCConfiguration(iceServers=list(self.ice_servers)))
        peer = RoomPeer(room, pc, audio)
        if audio is not None:
            pc.addTransceiver(audio, direction="sendrecv" if receive_audio else "sendonly")
        else:
            pc.addTransceiver("audio", direction="recvonly")
        if video:
            pc.addTransceiver("video", direction="recvonly")
        try:
            await pc.setLocalDescription(await pc.createOffer())
            answer = await self.request("rtc.offer", room=room, sdp=pc.localDescription.sdp, timeout=timeout)
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
        except BaseException:
            await peer.close()
            raise
        old = self.peers.pop(room, None)
        if old is not None:
            await old.close()
        self.peers[room] = peer
        return peer

    async def hangup(self, room: str) -> None:
        peer = self.peers.pop(room, None) if hasattr(self, "peers") else None
        try:
            await self.request("rtc.hangup", room=room)
        finally:
            if peer is not None:
                await peer.close()

    async def choose_video(self, room: str, source: str | None) -> dict[str, Any]:
        return await self.request("rtc.video", room=room, source=source or "")

    # -- push-to-talk -------------------------------------------------------------------------------------------
    async def request_floor(self, talkgroup: str, *, emergency: bool = False) -> dict[str, Any]:
        """``{"outcome": "granted" | "queued" | "denied", …}``."""
        fields: dict[str, Any] = {"emergency": True} if emergency else {}
        return await self.request("ptt.request", talkgroup=talkgroup, **fields)

    async def release_floor(self, talkgroup: str) -> None:
        await self.request("ptt.release", talkgroup=talkgroup)

    async def close(self) -> None:
        for peer in list(getattr(self, "peers", {}).values()):
            with contextlib.suppress(Exception):
                await peer.close()
        await super().close()


class MediaUnitClient(MediaMixin, FieldUnitClient):
    """A field unit that also talks."""


class MediaConsoleClient(MediaMixin, ConsoleClient):
    """A console script (a dispatcher) that also talks."""
