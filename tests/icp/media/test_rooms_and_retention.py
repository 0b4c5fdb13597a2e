"""A room another node holds is refused with room_elsewhere; recordings past their retention are swept
(file and row); a call's two recorded sides are mixed into one file on one timeline."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import av
import numpy as np
import pytest

from icp import appkeys
from icp.client import OpError
from icp.client.media import ToneTrack
from icp.media import MEDIA
from icp.media.tracks import FRAME_SAMPLES, OggRecorder, OpusEncoder, mix_recordings
from tests.icp.media.support import unit
from tests.icp.test_dispatch_api import City, bearer

pytestmark = pytest.mark.slow


async def test_a_room_held_by_another_node_is_refused_with_its_address(city: City) -> None:
    pool = city.client.app[appkeys.POOL]
    await pool.execute("INSERT INTO media_rooms (room, node_id, node_url) VALUES ($1, 'other', 'http://node-b:8080')",
                       "agency:hki-fire")
    async with unit(city, "E1") as e1:
        with pytest.raises(OpError) as elsewhere:
            await e1.join("agency:hki-fire", audio=ToneTrack())
        assert elsewhere.value.code == "room_elsewhere" and "http://node-b:8080" in elsewhere.value.message
        # A claim its node stopped refreshing is taken over.
        await pool.execute("UPDATE media_rooms SET seen_at = now() - interval '5 minutes'")
        peer = await e1.join("agency:hki-fire", audio=ToneTrack())
        assert peer.pc.connectionState in ("new", "connecting", "connected")
        node = await pool.fetchval("SELECT node_id FROM media_rooms WHERE room = 'agency:hki-fire'")
        assert node == city.client.app[MEDIA].registry.node_id


async def test_recordings_past_their_retention_are_swept(city: City) -> None:
    app = city.client.app
    data_dir = app[appkeys.SETTINGS].data_dir
    old = data_dir / "recordings" / "old.ogg"
    old.parent.mkdir(parents=True, exist_ok=True)
    old.write_bytes(b"OggS")
    now = datetime.now(UTC)
    for rec_id, path, expires in (("r-old", "recordings/old.ogg", now - timedelta(days=1)),
                                  ("r-new", "recordings/new.ogg", now + timedelta(days=1))):
        await app[appkeys.POOL].execute(
            "INSERT INTO recordings (id, kind, room, path, started_at, ended_at, expires_at, agencies)"
            " VALUES ($1, 'talkgroup', 'agency:hki-fire', $2, $3, $3, $4, '{hki-fire}')", rec_id, path, now, expires)
    assert await app[MEDIA].sweep() == 1
    assert not old.exists()
    left = await app[appkeys.POOL].fetch("SELECT id FROM recordings")
    assert [r["id"] for r in left] == ["r-new"]
    listed = await city.call("GET", "/api/v1/recordings", city.tokens["hki-fire"])
    assert [r["id"] for r in listed["recordings"]] == ["r-new"]
    # A unit that did not take part does not see it; its audio file is missing: 404, not a crash.
    response = await city.client.get("/api/v1/recordings/r-new/audio", headers=bearer(city.tokens["hki-fire"]))
    assert response.status == 404


def _side(path: Path, frequency: float, start_s: float, seconds: float) -> None:
    encoder = OpusEncoder(clocked=False)
    recorder = OggRecorder(path, encoder.extradata, origin=0)
    encoder._next_pts = int(start_s * 48_000)
    for i in range(int(seconds * 50)):
        t = (np.arange(FRAME_SAMPLES) + i * FRAME_SAMPLES) / 48_000
        for packet in encoder.encode((np.sin(2 * np.pi * frequency * t) * 8000).astype(np.int16)):
            recorder.write(packet)
    recorder.close()


def test_the_two_sides_of_a_call_mix_into_one_recording_on_one_timeline(tmp_path: Path) -> None:
    _side(tmp_path / "a.ogg", 440, 0.0, 2.0)
    _side(tmp_path / "b.ogg", 1320, 1.0, 2.0)
    duration, size = mix_recordings([tmp_path / "a.ogg", tmp_path / "b.ogg"], tmp_path / "call.ogg")
    assert 2.9 < duration < 3.1 and size > 0
    with av.open(str(tmp_path / "call.ogg")) as container:
        samples = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
    first, last = samples[: 48_000 // 2], samples[-48_000 // 2:]

    def power(chunk: np.ndarray, frequency: float) -> float:
        spectrum = np.abs(np.fft.rfft(chunk))
        freqs = np.fft.rfftfreq(len(chunk), 1 / 48_000)
        return float(spectrum[(freqs > frequency - 20) & (freqs < frequency + 20)].max())

    # The first half-second is A alone, the last B alone: the sides kept their places in time.
    assert power(first, 440) > 10 * power(first, 1320)
    assert power(last, 1320) > 10 * power(last, 440)
