"""The server offers (rtc.join → rtc.answer) on an incident's talkgroup, a trickled candidate is taken,
units of the incident hear the floor holder, and only dispatchers choose a conference's video."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from icp.client import OpError
from icp.client.media import RoomPeer, ToneTrack
from tests.icp.media.support import dispatcher, unit
from tests.icp.test_dispatch_api import City

pytestmark = pytest.mark.slow


async def fire_with_e1(city: City) -> dict[str, Any]:
    """A priority-1 structure fire with E1 dispatched to it."""
    incident = await city.incident("structure_fire", priority=1)
    await city.call("POST", f"/api/v1/incidents/{incident['id']}/assignments", city.tokens["hki-fire"],
                    json={"units": ["E1"]})
    return incident


async def test_a_unit_answers_the_servers_offer_and_hears_its_incidents_talkgroup(city: City) -> None:
    incident = await fire_with_e1(city)
    room = f"incident:{incident['id']}"
    async with unit(city, "E1") as e1, dispatcher(city) as desk:
        offered = await e1.request("rtc.join", room=room)
        assert offered["type"] == "offer" and "m=audio" in offered["sdp"]
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        listener = RoomPeer(room, pc, None)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offered["sdp"], type="offer"))
            await pc.setLocalDescription(await pc.createAnswer())
            assert await e1.request("rtc.answer", room=room, sdp=pc.localDescription.sdp) == {}
            assert await e1.request("rtc.candidate", room=room, candidate="") == {}  # end of candidates
            with pytest.raises(OpError) as twice:
                await e1.request("rtc.answer", room=room, sdp=pc.localDescription.sdp)
            assert twice.value.code == "invalid_request"
            await desk.join(room, audio=ToneTrack(600))
            assert (await desk.request_floor(room))["outcome"] == "granted"
            since = time.monotonic()
            await listener.wait_frames(25, 15)
            await asyncio.sleep(0.5)
            assert listener.heard_since(since) > 10
        finally:
            await listener.close()
        # A unit of another incident is not a member of this one's talkgroup.
        async with unit(city, "E2") as e2:
            with pytest.raises(OpError) as outsider:
                await e2.request("rtc.join", room=room)
            assert outsider.value.code in ("forbidden", "not_found")


async def test_only_dispatchers_choose_a_conferences_video(city: City) -> None:
    incident = await fire_with_e1(city)
    room = f"conference:{incident['id']}"
    async with unit(city, "E1") as e1, dispatcher(city) as desk:
        await asyncio.gather(e1.join(room, audio=ToneTrack()), desk.join(room, audio=ToneTrack(), video=True))
        with pytest.raises(OpError) as refused:
            await e1.choose_video(room, "unit:E1")
        assert refused.value.code == "forbidden"
        chosen = await desk.choose_video(room, "unit:E1")
        assert chosen["video"] == "unit:E1"
        with pytest.raises(OpError) as unknown:
            await desk.choose_video(room, "camera:nope")
        assert unknown.value.code == "not_found"
        assert (await desk.choose_video(room, None))["video"] is None
