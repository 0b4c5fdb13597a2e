"""Push-to-talk on a talkgroup with real aiortc peers: one speaker at a time, the queue, denial,
pre-emption by a dispatcher and by an emergency, the talk-time limit, the speaker heard by field
units through the SDK, and one recording per transmission."""

from __future__ import annotations

import asyncio
import time

import pytest

from icp.client import OpError
from icp.client.media import ToneTrack
from tests.icp.media.support import dispatcher, member, unit
from tests.icp.test_dispatch_api import City

pytestmark = pytest.mark.slow
TALKGROUP = "agency:hki-fire"  # the agency's channel as a talkgroup: its units and dispatchers


async def test_one_speaker_heard_by_all_a_second_queued_then_passed_the_floor(city: City) -> None:
    async with unit(city, "E1") as e1, unit(city, "E2") as e2, dispatcher(city) as desk:
        p1, p2, pd = await asyncio.gather(e1.join(TALKGROUP, audio=ToneTrack(500)),
                                          e2.join(TALKGROUP, audio=ToneTrack(700)),
                                          desk.join(TALKGROUP, audio=ToneTrack(900)))
        assert (await e1.request_floor(TALKGROUP))["outcome"] == "granted"
        assert (await e1.media_frame("ptt.granted"))["talkgroup"] == TALKGROUP
        queued = await e2.request_floor(TALKGROUP)
        assert queued == {"outcome": "queued", "position": 1}
        for client in (e1, e2, desk):
            speaker = await client.media_frame("ptt.speaker")
            assert speaker["member"] == "unit:E1" and speaker["name"] and speaker["rank"] == "member"
        since = time.monotonic()
        await asyncio.sleep(1.5)
        # The floor holder is heard by the field unit and the dispatcher; nobody else is forwarded,
        # so the holder hears nothing.
        assert p2.heard_since(since) > 25 and pd.heard_since(since) > 25
        assert p1.heard_since(since) == 0
        await e1.release_floor(TALKGROUP)
        granted = await e2.media_frame("ptt.granted")
        assert granted["talkgroup"] == TALKGROUP and granted["emergency"] is False
        assert (await desk.media_frame("ptt.speaker", where={"member": "unit:E2"}))["rank"] == "member"
        since = time.monotonic()
        await asyncio.sleep(1.0)
        assert p1.heard_since(since) > 15 and p2.heard_since(since + 0.3) == 0
        await e2.release_floor(TALKGROUP)
        assert (await desk.media_frame("ptt.speaker", where={"member": None}))["talkgroup"] == TALKGROUP

        recordings = []
        for _ in range(50):
            recordings = (await city.call("GET", "/api/v1/recordings", city.tokens["hki-fire"]))["recordings"]
            if len(recordings) >= 2:
                break
            await asyncio.sleep(0.1)
        speakers = sorted(r["speaker"] for r in recordings if r["kind"] == "talkgroup")
        assert speakers == ["unit:E1", "unit:E2"]
        first = next(r for r in recordings if r["speaker"] == "unit:E1")
        assert 1.0 < first["duration_s"] < 4.0
        assert pd.frames > 0


async def test_pre_emption_by_a_dispatcher_and_by_an_emergency(city: City) -> None:
    async with unit(city, "E1") as e1, unit(city, "E2") as e2, dispatcher(city) as desk:
        await asyncio.gather(e1.join(TALKGROUP, audio=ToneTrack()), e2.join(TALKGROUP, audio=ToneTrack()),
                             desk.join(TALKGROUP, audio=ToneTrack()))
        await e1.request_floor(TALKGROUP)
        assert (await desk.request_floor(TALKGROUP))["outcome"] == "granted"
        revoked = await e1.media_frame("ptt.revoked")
        assert revoked["by"] == member(desk) and "pre-empted" in revoked["reason"]
        speaker = await e2.media_frame("ptt.speaker", where={"member": member(desk)})
        assert speaker["rank"] == "dispatcher"
        emergency = await e2.request_floor(TALKGROUP, emergency=True)
        assert emergency["outcome"] == "granted"
        assert (await desk.media_frame("ptt.revoked"))["by"] == "unit:E2"
        assert (await e1.media_frame("ptt.speaker", where={"member": "unit:E2"}))["rank"] == "emergency"
        # Nobody pre-empts an emergency: another dispatcher request waits.
        assert (await desk.request_floor(TALKGROUP))["outcome"] == "queued"


@pytest.mark.media_settings(media_ptt_max_talk_s=1.0, media_ptt_queue=False)
async def test_talk_time_limit_and_denial_without_queueing(city: City) -> None:
    async with unit(city, "E1") as e1, unit(city, "E2") as e2:
        await asyncio.gather(e1.join(TALKGROUP, audio=ToneTrack()), e2.join(TALKGROUP, audio=ToneTrack()))
        granted = await e1.request_floor(TALKGROUP)
        assert granted["outcome"] == "granted"
        denied = await e2.request_floor(TALKGROUP)
        assert denied["outcome"] == "denied" and "unit:E1" in denied["reason"]
        assert (await e2.media_frame("ptt.denied"))["talkgroup"] == TALKGROUP
        started = time.monotonic()
        revoked = await e1.media_frame("ptt.revoked", timeout=5)
        assert revoked["reason"] == "maximum talk time reached"
        assert 0.9 < time.monotonic() - started + 0.1 < 2.5
        assert (await e2.media_frame("ptt.speaker", where={"member": None}))["member"] is None


async def test_only_members_join_and_only_joined_members_ask_for_the_floor(city: City) -> None:
    async with unit(city, "P1", "hki-police") as p1, unit(city, "E1") as e1:
        with pytest.raises(OpError) as outsider:
            await p1.join(TALKGROUP, audio=ToneTrack())
        assert outsider.value.code in ("forbidden", "not_found")
        with pytest.raises(OpError) as not_joined:
            await e1.request_floor(TALKGROUP)
        assert not_joined.value.code == "conflict"
        with pytest.raises(OpError) as bad_sdp:
            await e1.request("rtc.offer", room=TALKGROUP, sdp="v=0\r\nnonsense")
        assert bad_sdp.value.code == "invalid_request"
