"""An incident's conference: three participants mixed on the server (each hears the others, not
themselves), a camera from a local file shown to the participants, and the SSRF rules for camera URLs."""

from __future__ import annotations

import asyncio
import fractions
from pathlib import Path

import av
import numpy as np
import pytest
from av import AudioFrame

from icp.client.media import ToneTrack
from tests.icp.media.support import dispatcher, unit
from tests.icp.test_dispatch_api import City, bearer

pytestmark = pytest.mark.slow
TONES = {"desk": 440.0, "E1": 880.0, "E2": 1320.0}


def _power(samples: np.ndarray, frequency: float) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    freqs = np.fft.rfftfreq(len(samples), 1 / 48_000)
    band = (freqs > frequency - 30) & (freqs < frequency + 30)
    return float(spectrum[band].max())


async def _dispatch(city: City, incident_id: str, *units: str) -> None:
    await city.call("POST", f"/api/v1/incidents/{incident_id}/assignments", city.tokens["hki-fire"],
                    json={"units": list(units)})


async def test_a_conference_of_three_each_hears_the_others_but_not_themselves(city: City) -> None:
    incident = await city.incident("structure_fire", priority=1)
    await _dispatch(city, incident["id"], "E1", "E2")
    room = f"conference:{incident['id']}"
    async with dispatcher(city) as desk, unit(city, "E1") as e1, unit(city, "E2") as e2:
        peers = await asyncio.gather(desk.join(room, audio=ToneTrack(TONES["desk"], 0.2)),
                                     e1.join(room, audio=ToneTrack(TONES["E1"], 0.2)),
                                     e2.join(room, audio=ToneTrack(TONES["E2"], 0.2)))
        captured: dict[str, list[np.ndarray]] = {name: [] for name in TONES}
        for name, peer in zip(TONES, peers, strict=True):
            await peer.wait_frames(25, 15)

            def keep(_: float, frame: AudioFrame, name: str = name) -> None:
                data = frame.to_ndarray().reshape(-1, len(frame.layout.channels))[:, 0]
                captured[name].append(data.astype(np.float64))

            peer.on_audio = keep
        await asyncio.sleep(1.5)
        for name in TONES:
            heard = np.concatenate(captured[name][-50:])
            powers = {other: _power(heard, tone) for other, tone in TONES.items()}
            others = [p for other, p in powers.items() if other != name]
            # The others' tones are there; one's own is not mixed back (at least 20 dB below).
            assert min(others) > 10 * powers[name], (name, powers)
        # A unit not assigned to the incident is not in its conference.
        async with unit(city, "E3") as e3:
            with pytest.raises(Exception) as outsider:
                await e3.join(room, audio=ToneTrack())
            assert getattr(outsider.value, "code", "") in ("forbidden", "not_found")


def _video_file(path: Path, seconds: float = 2.0) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        for i in range(int(seconds * 10)):
            image = np.full((120, 160, 3), (i * 12) % 255, dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = i, fractions.Fraction(1, 10)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture
def camera_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "cameras"
    directory.mkdir()
    _video_file(directory / "lobby.mp4")
    return directory


@pytest.fixture
def settings(settings, camera_dir: Path):  # type: ignore[no-untyped-def]
    return settings.replace(media_camera_dir=camera_dir)


async def test_a_camera_from_a_local_file_is_shown_in_the_conference(city: City, camera_dir: Path) -> None:
    incident = await city.incident("structure_fire", priority=1)
    await _dispatch(city, incident["id"], "E1")
    base = f"/api/v1/incidents/{incident['id']}/cameras"
    token = city.tokens["hki-fire"]
    for url, why in (("http://127.0.0.1:8554/stream", "loopback"), ("rtsp://169.254.169.254/x", "metadata"),
                     (f"file:{camera_dir.parent}/elsewhere.mp4", "outside the directory"), ("ftp://cam/x", "scheme")):
        response = await city.client.post(base, headers=bearer(token), json={"url": url})
        assert response.status == 422, (why, await response.text())
    camera = await city.call("POST", base, token, json={"url": f"file:{camera_dir / 'lobby.mp4'}"})
    assert camera["id"].startswith("k") and (await city.call("GET", base, token))["cameras"][0]["id"] == camera["id"]
    async with unit(city, "E1") as e1:
        peer = await e1.join(f"conference:{incident['id']}", audio=ToneTrack(), video=True)
        await peer.wait_frames(5, 15, video=True)
        assert peer.video_frames >= 5
        room = await e1.media_frame("rtc.room")
        assert room["video"] == camera["id"] and room["cameras"] == [camera["id"]]
    response = await city.client.delete(f"{base}/{camera['id']}", headers=bearer(token))
    assert response.status == 204
    timeline = await city.call("GET", f"/api/v1/incidents/{incident['id']}/timeline", token)
    assert {"camera.attached", "camera.detached"} <= {e["type"] for e in timeline["events"]}
