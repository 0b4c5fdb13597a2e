"""Calls between a dispatcher and a unit over real aiortc peers on loopback: ring, accept, audio both
ways, hang-up, the recording and its playback; decline, timeout and who may call whom."""

from __future__ import annotations

import asyncio
import time

import av
import pytest

from icp import appkeys
from icp.client import OpError
from icp.client.media import ToneTrack
from tests.icp.media.support import dispatcher, member, unit
from tests.icp.test_dispatch_api import City, bearer

pytestmark = pytest.mark.slow


async def test_a_call_connects_audio_flows_both_ways_and_is_recorded(city: City) -> None:
    async with dispatcher(city) as desk, unit(city, "E1") as e1:
        incident = await city.incident("structure_fire", priority=1)
        call = await desk.call("unit:E1", incident=incident["id"])
        assert call["state"] == "ringing" and call["room"] == f"call:{call['id']}"
        ring = await e1.media_frame("rtc.ring")
        assert ring["call"] == call["id"] and ring["from"]["member"] == member(desk)
        assert ring["incident"] == incident["id"]
        await e1.accept(call["id"])
        accepted = await desk.media_frame("rtc.accepted")
        assert accepted["by"] == "unit:E1"
        started = time.monotonic()
        desk_peer, unit_peer = await asyncio.gather(desk.join(call["room"], audio=ToneTrack(440)),
                                                    e1.join(call["room"], audio=ToneTrack(660)))
        await asyncio.gather(desk_peer.wait_frames(50, 15), unit_peer.wait_frames(50, 15))
        await asyncio.sleep(1.0)
        # Each side hears the other's tone (not silence): frames counted on both ends.
        assert desk_peer.heard_since(started) > 20 and unit_peer.heard_since(started) > 20
        await desk.hangup(call["room"])
        held = time.monotonic() - started
        ended = await e1.media_frame("rtc.ended")
        assert ended["reason"] == "hangup" and ended["by"] == member(desk)

        async def recorded() -> list[dict]:
            found = (await city.call("GET", f"/api/v1/recordings?call={call['id']}", city.tokens["hki-fire"]))
            return found["recordings"]

        for _ in range(100):
            recordings = await recorded()
            if recordings:
                break
            await asyncio.sleep(0.1)
        assert len(recordings) == 1, recordings
        rec = recordings[0]
        assert rec["kind"] == "call" and rec["incident_id"] == incident["id"]
        assert held - 1.5 < rec["duration_s"] <= held + 0.5, (rec["duration_s"], held)
        # Played back with a range request, and the file really holds that much Opus audio.
        response = await city.client.get(rec["url"], headers={**bearer(city.tokens["hki-fire"]),
                                                               "Range": "bytes=0-99"})
        assert response.status == 206 and len(await response.read()) == 100
        whole = await city.client.get(rec["url"], headers=bearer(city.tokens["hki-fire"]))
        assert whole.status == 200 and whole.headers["Content-Type"] == "audio/ogg"
        tmp = city.client.app[appkeys.SETTINGS].data_dir / "copy.ogg"
        tmp.write_bytes(await whole.read())
        with av.open(str(tmp)) as container:
            samples = sum(f.samples for f in container.decode(audio=0))
        assert abs(samples / 48_000 - rec["duration_s"]) < 0.1
        # A dispatcher of an agency the call does not concern may not play it; the timeline links it.
        other = await city.client.get(rec["url"], headers=bearer(city.tokens["espoo-fire"]))
        assert other.status == 404
        timeline = await city.call("GET", f"/api/v1/incidents/{incident['id']}/timeline", city.tokens["hki-fire"])
        types = [e["type"] for e in timeline["events"]]
        assert {"call.started", "call.ended", "recording.available"} <= set(types)


async def test_decline_timeout_and_who_may_call_whom(city: City) -> None:
    async with dispatcher(city) as desk, unit(city, "E1") as e1, unit(city, "P1", "hki-police") as p1:
        call = await desk.call("unit:E1")
        await e1.media_frame("rtc.ring")
        await e1.decline(call["id"])
        ended = await desk.media_frame("rtc.ended")
        assert ended["reason"] == "declined"
        with pytest.raises(OpError) as again:
            await e1.accept(call["id"])
        assert again.value.code == "not_found"
        # Another agency's unit is not reachable (agency isolation), nor is a member not connected.
        with pytest.raises(OpError) as other:
            await desk.call("unit:P1")
        assert other.value.code == "not_found"
        with pytest.raises(OpError) as away:
            await desk.call("unit:E2")
        assert away.value.code == "callee_unavailable"
        # Only the parties of a call may join its room, and only once it is accepted.
        call = await desk.call("unit:E1")
        with pytest.raises(OpError) as early:
            await e1.join(call["room"], audio=ToneTrack())
        assert early.value.code == "conflict"
        with pytest.raises(OpError) as stranger:
            await p1.join(call["room"], audio=ToneTrack())
        assert stranger.value.code == "not_found"
        await desk.hangup(call["room"])
        cancelled = await e1.media_frame("rtc.ended", where={"call": call["id"]})
        assert cancelled["reason"] == "cancelled"


@pytest.mark.media_settings(media_ring_timeout_s=0.5)
async def test_a_call_nobody_answers_ends_as_missed(city: City) -> None:
    async with dispatcher(city) as desk, unit(city, "E1") as e1:
        call = await desk.call("unit:E1")
        await e1.media_frame("rtc.ring")
        ended = await desk.media_frame("rtc.ended", timeout=5)
        assert ended["reason"] == "timeout"
        assert (await e1.media_frame("rtc.ended"))["call"] == call["id"]
        state = await city.client.app[appkeys.POOL].fetchval("SELECT state FROM calls WHERE id = $1", call["id"])
        assert state == "missed"
