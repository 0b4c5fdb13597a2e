"""Media building blocks: Opus encoding once for many listeners, packet tracks, Ogg recording, switched video.

aiortc's `RTCRtpSender` packs an `av.Packet` it receives from a track without encoding it again
(`_next_encoded_frame`: a Frame is encoded in the executor, a Packet only packed). So a room
encodes each distinct stream once (`OpusEncoder`, called in a worker thread) and hands the same
packets to every listener's `PacketTrack`, and to the `OggRecorder`, which muxes them into a file
without another encode. The CPU cost of a talkgroup is then one decode and one encode per 20 ms,
however many members listen.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import av
import numpy as np
import numpy.typing as npt
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame, VideoFrame
from av.packet import Packet

RATE = 48_000
FRAME_SAMPLES = 960  # 20 ms at 48 kHz: one Opus packet
FRAME_S = FRAME_SAMPLES / RATE
TIME_BASE = fractions.Fraction(1, RATE)
BITRATE = 32_000  # mono voice; aiortc's own default (96 kb/s stereo) is meant for music
PACKET_QUEUE = 25  # packets waiting for one listener's sender (0.5 s); the oldest go first
VIDEO_CLOCK = fractions.Fraction(1, 90_000)

Samples = npt.NDArray[np.int16]
if TYPE_CHECKING:
    AudioPacket: TypeAlias = Packet[Any]
SILENCE: Samples = np.zeros(FRAME_SAMPLES, dtype=np.int16)


def mono(frame: AudioFrame) -> Samples:
    """A decoded frame's samples as mono s16 at 48 kHz (aiortc's Opus decoder gives stereo s16)."""
    data = frame.to_ndarray()
    if frame.format.name != "s16" or frame.sample_rate != RATE:
        raise ValueError(f"expected s16 at {RATE} Hz, got {frame.format.name} at {frame.sample_rate} Hz")
    channels = len(frame.layout.channels)
    if channels == 1:
        flat: Samples = data.reshape(-1).astype(np.int16, copy=False)
        return flat
    interleaved = data.reshape(-1, channels)  # packed s16: [[l, r, l, r, …]]
    mixed: Samples = (interleaved.astype(np.int32).sum(axis=1) // channels).astype(np.int16)
    return mixed


class OpusEncoder:
    """One Opus stream (mono, 20 ms packets). ``encode`` runs in a worker thread; the packets' pts
    follow the wall clock so that a pause (an idle floor) is a pause in RTP time too."""

    def __init__(self, bitrate: int = BITRATE, *, clocked: bool = True) -> None:
        codec = av.CodecContext.create("libopus", "w")
        assert isinstance(codec, av.AudioCodecContext)
        codec.bit_rate = bitrate
        codec.format = "s16"
        codec.layout = "mono"
        codec.sample_rate = RATE
        codec.time_base = TIME_BASE
        codec.options = {"application": "voip", "frame_duration": "20"}
        codec.open()
        self.codec = codec
        self.extradata = bytes(codec.extradata or b"")
        self._started = time.monotonic()
        self._next_pts = 0
        self.clocked = clocked  # pts follow the wall clock (live); else one frame after another (files)

    def encode(self, samples: Samples) -> list[AudioPacket]:
        """Exactly one 20 ms frame of mono samples → its packets (usually one)."""
        now_pts = int((time.monotonic() - self._started) * RATE) if self.clocked else 0
        pts = max(self._next_pts, now_pts - now_pts % FRAME_SAMPLES)
        self._next_pts = pts + FRAME_SAMPLES
        frame = AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = pts
        frame.time_base = TIME_BASE
        out = []
        for packet in self.codec.encode(frame):
            # A packet of our own: the sender reads pts, time_base and bytes and never changes it,
            # so one object serves every listener.
            copy = Packet(bytes(packet))
            copy.pts = copy.dts = packet.pts if packet.pts is not None else pts
            copy.time_base = TIME_BASE
            out.append(copy)
        return out


class Restamper:
    """Timestamps for forwarded packets: a source's RTP timestamps (any origin, wrapping at 2**32)
    become pts on one continuous clock, and a new source (the floor passing on) starts where the
    wall clock is, never before the last packet sent."""

    def __init__(self, started: float | None = None) -> None:
        self._started = time.monotonic() if started is None else started
        self._source: object = None
        self._first = 0
        self._base = 0
        self._last = -FRAME_SAMPLES

    def __call__(self, source: object, rtp_timestamp: int) -> int:
        if source is not self._source and source != self._source:
            self._source, self._first = source, rtp_timestamp
            now = int((time.monotonic() - self._started) * RATE)
            self._base = max(self._last + FRAME_SAMPLES, now)
        pts = self._base + ((rtp_timestamp - self._first) & 0xFFFFFFFF)
        self._last = max(self._last, pts)
        return pts

    @staticmethod
    def packet(payload: bytes, pts: int) -> AudioPacket:
        packet = Packet(payload)
        packet.pts = packet.dts = pts
        packet.time_base = TIME_BASE
        return packet


class PacketTrack(MediaStreamTrack):
    """An audio track that yields pre-encoded Opus packets pushed to it (one per listener)."""

    kind = "audio"

    def __init__(self, limit: int = PACKET_QUEUE) -> None:
        super().__init__()
        self._queue: deque[AudioPacket] = deque(maxlen=limit)
        self._wake = asyncio.Event()
        self.dropped = 0

    def push(self, packet: AudioPacket) -> None:
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1  # a listener this far behind hears the newest, not a growing delay
        self._queue.append(packet)
        self._wake.set()

    def flush(self) -> None:
        self._queue.clear()

    async def recv(self) -> AudioPacket:
        while not self._queue:
            if self.readyState != "live":
                raise MediaStreamError
            self._wake.clear()
            await self._wake.wait()
        return self._queue.popleft()

    def stop(self) -> None:
        super().stop()
        self._wake.set()


class OggRecorder:
    """Opus packets muxed into an Ogg file as they come (no re-encoding); used from one worker
    thread at a time. Timestamps count from the first packet, or from ``origin`` when given (so
    several files share one timeline); a packet that does not move time forward is skipped (the
    muxer needs them in order). ``duration_s`` is the audio written, from the timestamps."""

    def __init__(self, path: Path, extradata: bytes, *, origin: int | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._container = av.open(str(path), "w", format="ogg")
        stream = self._container.add_stream("libopus", rate=RATE, layout="mono")
        stream.codec_context.extradata = extradata
        stream.time_base = TIME_BASE
        self._stream = stream
        self._first: int | None = origin
        self._last = -1
        self.packets = 0

    def write(self, packet: AudioPacket) -> None:
        pts = packet.pts or 0
        if self._first is None:
            self._first = pts
        relative = pts - self._first
        if relative <= self._last:
            return
        copy = Packet(bytes(packet))
        copy.pts = copy.dts = relative
        copy.time_base = TIME_BASE
        copy.stream = self._stream
        self._container.mux(copy)
        self._last = relative
        self.packets += 1

    @property
    def duration_s(self) -> float:
        return 0.0 if self._last < 0 else (self._last + FRAME_SAMPLES) / RATE

    def close(self) -> int:
        """Finish the file; its size in bytes."""
        self._container.close()
        return self.path.stat().st_size


def _decoded(path: Path) -> Iterator[tuple[int, Samples]]:
    """(pts, mono s16 samples) of an Ogg Opus file, frame by frame."""
    with av.open(str(path)) as container:
        for frame in container.decode(audio=0):
            data: npt.NDArray[Any] = frame.to_ndarray()
            if data.dtype.kind == "f":
                data = np.clip(data * 32767, -32767, 32767)
            if frame.format.is_planar:
                samples = data.reshape(len(frame.layout.channels), -1).mean(axis=0)
            else:
                samples = data.reshape(-1, len(frame.layout.channels)).mean(axis=1)
            yield max(0, frame.pts or 0), samples.astype(np.int16)


def mix_recordings(sources: list[Path], out: Path) -> tuple[float, int]:
    """Mix Ogg Opus files that share one timeline into one (after a call: the parties' sides were
    recorded as they were forwarded, with no codec work while the call lasted). Streams through
    the files 20 ms at a time, whatever their length; returns (duration in s, size in bytes)."""
    encoder = OpusEncoder(clocked=False)
    recorder = OggRecorder(out, encoder.extradata, origin=0)
    feeds: list[dict[str, Any]] = [{"frames": _decoded(p), "pending": None, "done": False} for p in sources]
    pos = 0
    written_to = 0
    while True:
        end = pos + FRAME_SAMPLES
        mix = np.zeros(FRAME_SAMPLES, dtype=np.int32)
        for feed in feeds:
            while not feed["done"]:
                if feed["pending"] is None:
                    feed["pending"] = next(feed["frames"], None)
                    if feed["pending"] is None:
                        feed["done"] = True
                        break
                start, samples = feed["pending"]
                stop = start + len(samples)
                if stop <= pos:
                    feed["pending"] = None
                    continue
                if start >= end:
                    break
                a, b = max(start, pos), min(stop, end)
                mix[a - pos:b - pos] += samples[a - start:b - start]
                written_to = max(written_to, b)
                if stop <= end:
                    feed["pending"] = None
                    continue
                break
        if all(f["done"] for f in feeds) and pos >= written_to:
            break
        for packet in encoder.encode(np.clip(mix, -32767, 32767).astype(np.int16)):
            recorder.write(packet)
        pos = end
    size = recorder.close()
    return recorder.duration_s, size


class VideoSwitch(MediaStreamTrack):
    """The video a participant is shown: frames of whichever source is chosen now (another
    participant, a camera), restamped on one clock so a switch is seamless to the encoder; a
    small black picture a few times a second while there is none."""

    kind = "video"
    IDLE_FPS = 2

    def __init__(self) -> None:
        super().__init__()
        self._source: MediaStreamTrack | None = None
        self._changed = asyncio.Event()
        self._started = time.monotonic()
        self._black: VideoFrame | None = None
        self.frames = 0

    def switch(self, source: MediaStreamTrack | None) -> None:
        self._source = source
        self._changed.set()

    async def recv(self) -> VideoFrame:
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            source = self._source
            if source is None:
                self._changed.clear()
                try:
                    await asyncio.wait_for(self._changed.wait(), 1 / self.IDLE_FPS)
                    continue
                except TimeoutError:
                    frame = self._black_frame()
            else:
                try:
                    got = await source.recv()
                except MediaStreamError:
                    if self._source is source:
                        self._source = None
                    continue
                if not isinstance(got, VideoFrame):
                    continue
                frame = got
            frame.pts = int((time.monotonic() - self._started) * 90_000)
            frame.time_base = VIDEO_CLOCK
            self.frames += 1
            return frame

    def _black_frame(self) -> VideoFrame:
        if self._black is None:
            self._black = VideoFrame(width=160, height=120, format="yuv420p")
            for plane, value in zip(self._black.planes, (16, 128, 128), strict=True):
                plane.update(bytes([value]) * plane.buffer_size)
        frame = VideoFrame(width=160, height=120, format="yuv420p")
        for src, dst in zip(self._black.planes, frame.planes, strict=True):
            dst.update(bytes(src))
        return frame
