"""Decoding incoming audio with a few shared threads instead of one thread per stream.

aiortc starts a decoder thread per receiver and hands every decoded frame to the event loop with
``asyncio.run_coroutine_threadsafe(queue.put(frame), loop)``. With dozens of incoming streams the
server then has dozens of threads waking 50 times a second, all wanting the GIL: profiling
`bench/media.py` showed the event loop spending most of its time waiting to get the GIL back after
each socket call (`recvfrom`, `sendto` and SRTP calls at 70–220 µs each), not working.

`install` replaces aiortc's `decoder_worker`: an audio receiver's queue is redirected (on the event
loop, so no frame is reordered) to one of `SHARDS` shared decoder threads, chosen round-robin;
each stream stays on one thread (a decoder is not thread-safe, and frames stay in order). A shard
drains what is waiting, decodes it, and hands the frames to the loop in one
``call_soon_threadsafe`` per batch. Video receivers keep a thread each (their decodes are long and
must not hold up audio). Process-wide, like aiortc's own module state; idempotent.

`tap` also hands a room the *encoded* frames of a stream (Opus, as they leave the jitter buffer),
so a call or a talkgroup forwards them to the other side without decoding and encoding again, and
may skip decoding altogether.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import queue
import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiortc.rtcrtpreceiver as receiver
import av
from aiortc.codecs import get_decoder
from aiortc.jitterbuffer import JitterBuffer

log = logging.getLogger(__name__)
_original = receiver.decoder_worker
SHARDS = 2
MAX_BATCH = 256


@dataclass(eq=False)
class _Stream:
    loop: asyncio.AbstractEventLoop
    output_q: asyncio.Queue[Any]
    decode_error: threading.Event
    codec_name: str | None = None
    decoder: Any = None
    ended: bool = False


@dataclass(eq=False)
class _Shard:
    jobs: queue.SimpleQueue[tuple[_Stream, Any]] = field(default_factory=queue.SimpleQueue)
    thread: threading.Thread | None = None

    def start(self, name: str) -> None:
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name=name, daemon=True)
            self.thread.start()

    def _run(self) -> None:
        while True:
            batch = [self.jobs.get()]
            with contextlib.suppress(queue.Empty):
                while len(batch) < MAX_BATCH:
                    batch.append(self.jobs.get_nowait())
            out: dict[asyncio.AbstractEventLoop, list[tuple[Callable[..., None], tuple[Any, ...]]]] = defaultdict(list)
            for stream, task in batch:
                if stream.ended:
                    continue
                if task is None:  # the receiver stopped: tell the track it ended
                    stream.ended, stream.decoder = True, None
                    out[stream.loop].append((stream.output_q.put_nowait, (None,)))
                    continue
                codec, encoded_frame = task
                tap = _taps.get(id(stream.output_q))
                if tap is not None:
                    out[stream.loop].append((tap.on_packet, (encoded_frame.data, encoded_frame.timestamp)))
                    if not tap.decode:
                        continue
                if codec.name != stream.codec_name:
                    stream.decoder, stream.codec_name = get_decoder(codec), codec.name
                try:
                    frames = stream.decoder.decode(encoded_frame)
                except av.FFmpegError as exc:
                    log.warning("failed to decode a %s frame: %s", codec.name, exc)
                    stream.decode_error.set()
                    continue
                out[stream.loop] += [(stream.output_q.put_nowait, (frame,)) for frame in frames]
            for loop, items in out.items():
                with contextlib.suppress(RuntimeError):  # the loop is closed: nobody listens any more
                    loop.call_soon_threadsafe(_deliver, items)


def _deliver(items: list[tuple[Callable[..., None], tuple[Any, ...]]]) -> None:
    for call, args in items:
        try:
            call(*args)
        except Exception:
            log.exception("handing a frame to the loop failed")


@dataclass(frozen=True, slots=True)
class Tap:
    """Who wants a stream's encoded frames (``on_packet(payload, rtp_timestamp)``, on the loop), and
    whether its track still wants them decoded."""

    on_packet: Callable[[bytes, int], None]
    decode: bool = True


_taps: dict[int, Tap] = {}


def tap(track: Any, on_packet: Callable[[bytes, int], None], *, decode: bool = True) -> bool:
    """Receive the encoded frames of an incoming audio track (an aiortc RemoteStreamTrack) as they
    leave the jitter buffer, before decoding; with ``decode`` False they are not decoded at all.
    False when this cannot be done (`install` was not called): use the decoded frames then."""
    output_q = getattr(track, "_queue", None)
    if receiver.decoder_worker is not decoder_worker or output_q is None:
        return False
    _taps[id(output_q)] = Tap(on_packet, decode)
    return True


def forwarding_buffer(receiver_: Any, prefetch: int = 1) -> bool:
    """Make an audio receiver hand frames on as soon as they are complete. aiortc's audio jitter
    buffer holds 4 frames (80 ms) before the first leaves, right for a decoder that plays them, not
    for a server that forwards them to listeners whose own jitter buffers do that work; here the
    frame leaves when the next packet shows it is complete (20 ms)."""
    attribute = "_RTCRtpReceiver__jitter_buffer"  # aiortc keeps it private; checked, not assumed
    current = getattr(receiver_, attribute, None)
    if not isinstance(current, JitterBuffer) or current._is_video:
        return False
    setattr(receiver_, attribute, JitterBuffer(capacity=current.capacity, prefetch=prefetch))
    return True


def untap(track: Any) -> None:
    output_q = getattr(track, "_queue", None)
    if output_q is not None:
        _taps.pop(id(output_q), None)


_shards = [_Shard() for _ in range(SHARDS)]
_next = itertools.cycle(range(SHARDS))
_lock = threading.Lock()


def decoder_worker(loop: asyncio.AbstractEventLoop, input_q: queue.Queue[Any], output_q: asyncio.Queue[Any],
                   decode_error: threading.Event) -> None:
    if not threading.current_thread().name.startswith("audio"):
        _original(loop, input_q, output_q, decode_error)
        return
    with _lock:
        shard = _shards[next(_next)]
        shard.start(f"icp-audio-decoder-{_shards.index(shard)}")
    stream = _Stream(loop, output_q, decode_error)

    def redirect() -> None:
        # On the loop, where the receiver puts: what is queued goes first, in order, then the rest.
        def put(item: Any, block: bool = True, timeout: float | None = None) -> None:
            shard.jobs.put((stream, item))

        with contextlib.suppress(queue.Empty):
            while True:
                put(input_q.get_nowait())
        setattr(input_q, "put", put)  # noqa: B010  (the receiver calls its queue's put)

    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(redirect)


def install() -> None:
    receiver.decoder_worker = decoder_worker


def uninstall() -> None:
    receiver.decoder_worker = _original
