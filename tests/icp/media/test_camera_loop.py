"""A file camera plays over and over at its own pace, with timestamps that keep increasing."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

from aiortc.contrib.media import MediaPlayer

from icp.media.camera import LoopedFile
from tests.icp.media.test_conference import _video_file


async def test_a_looped_file_keeps_its_frame_rate_and_timestamps_across_passes(tmp_path: Path) -> None:
    path = tmp_path / "short.mp4"
    _video_file(path, seconds=0.5)  # 5 frames at 10 frames/s
    track = LoopedFile(str(path), await asyncio.to_thread(MediaPlayer, str(path)))
    try:
        pts: list[int] = []
        started = time.monotonic()
        while time.monotonic() - started < 2.5:  # five passes
            frame = await asyncio.wait_for(track.recv(), 5)
            assert frame.pts is not None
            pts.append(frame.pts)
    finally:
        track.stop()
    # About 10 frames a second over every pass (aiortc's own looping floods after the first: hundreds).
    assert 15 <= len(pts) <= 40, len(pts)
    assert all(b > a for a, b in itertools.pairwise(pts)), pts  # one continuous stream
