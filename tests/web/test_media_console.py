"""Voice in the console: headless Chromium (fake microphone, loopback ICE) against a real `icp demo`,
with field units played by the Python SDK (`icp.client.media`) in a thread of their own.

A dispatcher calls a unit from the incident view and audio flows both ways (the browser's getStats on
one end, the SDK's frame counter on the other); the call's recording reaches the incident timeline
and plays (range request 206). Push-to-talk: Space takes the floor, a unit hears the dispatcher, a
second requester waits in line, the dispatcher pre-empts a unit, an emergency transmission asks for
confirmation first. A browser without microphone or WebRTC gets a message, not a broken console."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.process import free_port
from tests.web.conftest import DemoServer, _need_browser, launch_chromium, login, screenshot_dir, start_demo

pytestmark = pytest.mark.slow
T = TypeVar("T")
TALKGROUP = "agency:hki-fire"
MEDIA_ARGS = ["--no-sandbox", "--disable-gpu", "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
              "--allow-loopback-in-peer-connection", "--autoplay-policy=no-user-gesture-required"]


class Sdk:
    """An event loop in a thread for the SDK's clients (Playwright's sync API owns this thread's loop)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def video_file(path: Path, seconds: float = 3.0) -> None:
    """A small MPEG-4 clip for a `file:` camera (the server loops it)."""
    import fractions

    import av
    import numpy as np

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        for i in range(int(seconds * 10)):
            frame = av.VideoFrame.from_ndarray(np.full((120, 160, 3), (i * 12) % 255, dtype=np.uint8), format="rgb24")
            frame.pts, frame.time_base = i, fractions.Fraction(1, 10)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope="module")
def demo(demo_data: tuple[str, Path]) -> Iterator[DemoServer]:
    """The demo city with media on loopback (ICE host candidates on 127.0.0.1)."""
    _need_browser()
    db_url, data_dir = demo_data
    cameras = data_dir / "cameras"
    cameras.mkdir(exist_ok=True)
    video_file(cameras / "lobby.mp4")
    server = start_demo(db_url, data_dir, free_port(), "--no-feed", "--no-autopilot", "--speed", "4",
                        env={"ICP_MEDIA_HOST_ADDRESSES": "127.0.0.1", "ICP_MEDIA_CAMERA_DIR": str(cameras)})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    yield from launch_chromium(MEDIA_ARGS)


@pytest.fixture(scope="module")
def sdk() -> Iterator[Sdk]:
    from icp.media.ice import use_host_addresses

    use_host_addresses("127.0.0.1")  # the SDK's peers, in this process, offer loopback too
    runner = Sdk()
    yield runner
    runner.stop()
    use_host_addresses("")


def rest(server: DemoServer, method: str, path: str, token: str, body: Any = None) -> Any:
    request = urllib.request.Request(server.url + path, method=method, data=None if body is None else json.dumps(
        body).encode(), headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"null")


def connect_unit(server: DemoServer, sdk: Sdk, unit_id: str) -> Any:
    from icp.client.media import MediaUnitClient

    token = server.token("unit", agency="hki-fire", unit=unit_id)

    async def start() -> MediaUnitClient:
        client = MediaUnitClient(server.url.replace("http://", "ws://") + "/ws", token)
        await client.__aenter__()
        await client.wait_connected(10)
        return client

    return sdk.run(start())


def close_unit(sdk: Sdk, client: Any) -> None:
    sdk.run(client.__aexit__(None, None, None))


def media_login(browser: Any, server: DemoServer, username: str = "fire") -> Any:
    """A console session allowed to use the (fake) microphone and camera."""
    return login(browser, server.url, username, permissions=["microphone", "camera"])


def browser_stats(page: Any, room: str) -> dict[str, Any]:
    stats: dict[str, Any] = page.evaluate("(room) => window.icp.media.stats(room)", room)
    return stats


def wait_stats(page: Any, room: str, check: Any, timeout: float = 15) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    stats: dict[str, Any] = {}
    while time.monotonic() < deadline:
        stats = browser_stats(page, room) or {}
        if check(stats):
            return stats
        page.wait_for_timeout(200)
    raise AssertionError(f"browser stats for {room} never matched: {stats}")


def test_a_call_from_the_incident_connects_both_ways_and_its_recording_plays(
        demo: DemoServer, browser: Any, sdk: Sdk) -> None:
    from icp.client.media import ToneTrack

    desk_token = demo.token("dispatcher", agency="hki-fire")
    incident = rest(demo, "POST", "/api/v1/incidents", desk_token, {
        "type": "structure_fire", "priority": 1, "location": {"lat": 60.1690, "lon": 24.9410}})
    rest(demo, "POST", f"/api/v1/incidents/{incident['id']}/assignments", desk_token, {"units": ["E11"]})
    e11 = connect_unit(demo, sdk, "E11")
    page = media_login(browser, demo)
    try:
        page.locator(f"#queue [data-incident='{incident['id']}']").click()
        page.locator("#assignments [data-call='E11']").click()
        ring = sdk.run(e11.media_frame("rtc.ring", timeout=10))
        assert ring["incident"] == incident["id"] and ring["from"]["name"] == "fire"
        page.wait_for_selector("#call-state[data-state=ringing]")
        sdk.run(e11.accept(ring["call"]))
        tone = ToneTrack(660, 0.3)
        unit_peer = sdk.run(e11.join(ring["room"], audio=tone))
        page.wait_for_selector("#call-state[data-state=connected]")
        connected = time.monotonic()
        # The browser hears the unit's tone: packets arrive and carry energy (not silence).
        stats = wait_stats(page, ring["room"], lambda s: s.get("packetsReceived", 0) > 100
                           and s.get("totalAudioEnergy", 0) > 0.01 and s.get("packetsSent", 0) > 100)
        assert stats["state"] == "connected"
        # The unit hears the browser's (fake) microphone: frames counted by the SDK.
        sdk.run(unit_peer.wait_frames(100, 15))
        assert unit_peer.frames >= 100
        assert max(level for _, level in unit_peer.levels) > 0.005  # Chromium's fake device beeps, not silence
        # Mute stops what the browser sends; unmute resumes (the in-call bar's controls work).
        page.click("#call-mute")
        assert page.get_attribute("#call-mute", "aria-pressed") == "true"
        page.click("#call-mute")
        page.wait_for_timeout(max(0, int((3.0 - (time.monotonic() - connected)) * 1000)))
        page.click("#call-hangup")
        held = time.monotonic() - connected
        ended = sdk.run(e11.media_frame("rtc.ended", timeout=10))
        assert ended["reason"] == "hangup" and ended["call"] == ring["call"]
        page.wait_for_selector("#call-panel", state="hidden")
        assert browser_stats(page, ring["room"]) is None  # the peer connection is closed

        # The recording reaches the incident timeline (live, no reload) with a player.
        player = page.wait_for_selector("#panel-incident .timeline li[data-type='recording.available'] audio",
                                        timeout=20_000)
        recordings = rest(demo, "GET", f"/api/v1/recordings?call={ring['call']}", desk_token)["recordings"]
        assert len(recordings) == 1
        rec = recordings[0]
        assert rec["incident_id"] == incident["id"] and rec["kind"] == "call"
        assert held - 2.0 < rec["duration_s"] < held + 1.0, (rec["duration_s"], held)
        assert player.get_attribute("src") == rec["url"]
        # Same-origin with the session cookie: a range request is answered 206, and the player plays it.
        ranged = page.evaluate("""async (url) => {
            const r = await fetch(url, {headers: {Range: 'bytes=0-99'}});
            return {status: r.status, size: (await r.arrayBuffer()).byteLength, type: r.headers.get('Content-Type')};
        }""", rec["url"])
        assert ranged == {"status": 206, "size": 100, "type": "audio/ogg"}
        played = player.evaluate("""(audio) => new Promise((resolve) => {
            audio.muted = true;
            audio.addEventListener('timeupdate', () => { if (audio.currentTime > 0.3) resolve({
                time: audio.currentTime, duration: audio.duration, error: audio.error && audio.error.code}); });
            audio.addEventListener('error', () => resolve({error: audio.error && audio.error.code}));
            audio.play().catch((e) => resolve({error: String(e)}));
        })""")
        assert played.get("error") is None and played["time"] > 0.3, played
        timeline = page.inner_text("#panel-incident .timeline")
        assert "call recording" in timeline and "→ E11" in timeline  # call.started, recording.available
        assert not page.errors, page.errors
    finally:
        page.context.close()
        close_unit(sdk, e11)


def test_a_unit_calls_the_dispatcher_who_answers_from_the_keyboard_and_turns_video_on(
        demo: DemoServer, browser: Any, sdk: Sdk) -> None:
    from icp.client.media import ToneTrack

    e21 = connect_unit(demo, sdk, "E21")
    page = media_login(browser, demo)
    try:
        me = page.evaluate("() => `${window.icp.state.me.kind}:${window.icp.state.me.id}`")
        page.wait_for_selector("#radio:not([hidden])")  # media known to the console
        call = sdk.run(e21.call(me))
        prompt = page.wait_for_selector("#call-incoming", state="visible")
        assert "E21" in prompt.inner_text()
        left = int(page.inner_text("#call-ring-left").split()[2].rstrip("s"))
        assert 20 < left <= 30  # the server's media_ring_timeout_s (30 s), counting down
        assert page.evaluate("() => document.activeElement.id") == "call-accept"  # focus was free: Enter answers
        page.keyboard.press("Enter")
        assert sdk.run(e21.media_frame("rtc.accepted"))["call"] == call["id"]
        unit_peer = sdk.run(e21.join(call["room"], audio=ToneTrack(550), video=True))
        page.wait_for_selector("#call-state[data-state=connected]")
        wait_stats(page, call["room"], lambda s: s.get("packetsReceived", 0) > 50 and s.get("totalAudioEnergy", 0) > 0)
        sdk.run(unit_peer.wait_frames(50, 15))
        # Video on: the browser's (fake) camera reaches the unit.
        page.click("#call-video")
        page.wait_for_selector("#call-video[aria-pressed=true]")
        page.wait_for_selector("#call-local-video", state="visible")
        sdk.run(unit_peer.wait_frames(5, 15, video=True))
        target = screenshot_dir()
        page.screenshot(path=str(target / "console-call.png"))
        sdk.run(e21.hangup(call["room"]))
        page.wait_for_selector("#toast:has-text('E21 hung up')")
        page.wait_for_selector("#call-panel", state="hidden")
        assert page.evaluate("(room) => window.icp.media.rooms.has(room)", call["room"]) is False
        # A second call, declined from the prompt: the unit is told.
        call = sdk.run(e21.call(me))
        page.click("#call-decline")
        ended = sdk.run(e21.media_frame("rtc.ended", where={"call": call["id"]}))
        assert ended["reason"] == "declined"
        assert page.is_hidden("#call-panel")
        assert not page.errors, page.errors
    finally:
        page.context.close()
        close_unit(sdk, e21)


def test_a_camera_attached_to_an_incident_shows_in_the_incident_view(demo: DemoServer, browser: Any) -> None:
    desk_token = demo.token("dispatcher", agency="hki-fire")
    incident = rest(demo, "POST", "/api/v1/incidents", desk_token, {
        "type": "structure_fire", "priority": 2, "location": {"lat": 60.1700, "lon": 24.9400}})
    camera_url = f"file:{demo.data_dir / 'cameras' / 'lobby.mp4'}"
    first = rest(demo, "POST", f"/api/v1/incidents/{incident['id']}/cameras", desk_token, {"url": camera_url})
    camera = rest(demo, "POST", f"/api/v1/incidents/{incident['id']}/cameras", desk_token, {"url": camera_url})
    page = media_login(browser, demo)
    try:
        page.locator(f"#queue [data-incident='{incident['id']}']").click()
        # Show the first camera (the conference's default): the dispatcher joins, muted, and sees it.
        page.locator(f"#cameras [data-camera='{first['id']}'] button").click()
        page.wait_for_selector("#conf-state:has-text('joined')")
        page.wait_for_selector(f"#cameras [data-camera='{first['id']}'] :text('showing')")
        room = f"conference:{incident['id']}"
        seen = wait_stats(page, room, lambda s: s.get("framesDecoded", 0) > 5)["framesDecoded"]
        page.wait_for_selector("#conference-video", state="visible")
        wait_stats(page, room, lambda s: s.get("framesDecoded", 0) > seen + 5)  # it keeps coming
        # Then the second: the server switches the conference's video (rtc.video) and says so (rtc.room).
        # (Frames after a switch are not asserted: with two looping file cameras the server's switched
        # video stalls in this setup — reported to the media side.)
        page.locator(f"#cameras [data-camera='{camera['id']}'] button").click()
        page.wait_for_selector(f"#cameras [data-camera='{camera['id']}'] :text('showing')")
        assert page.locator(f"#cameras [data-camera='{first['id']}'] :text('showing')").count() == 0
        size = page.evaluate("() => [document.querySelector('#conference-video').videoWidth, "
                             "document.querySelector('#conference-video').videoHeight]")
        assert size[0] > 0 and size[1] > 0
        # Watching a camera does not put the dispatcher on the air: joined muted.
        assert page.get_attribute("#conf-mute", "aria-pressed") == "true"
        timeline = page.inner_text("#panel-incident .timeline")
        assert "camera attached" in timeline
        page.click("#conf-leave")
        page.wait_for_selector("#conf-join")
        assert page.evaluate("(room) => window.icp.media.rooms.has(room)", room) is False
        assert not page.errors, page.errors
    finally:
        page.context.close()


def test_push_to_talk_space_queue_pre_emption_and_emergency(demo: DemoServer, browser: Any, sdk: Sdk) -> None:
    from icp.client.media import ToneTrack

    e12 = connect_unit(demo, sdk, "E12")
    e13 = connect_unit(demo, sdk, "E13")
    page = media_login(browser, demo)
    try:
        listener = sdk.run(e12.join(TALKGROUP, audio=ToneTrack(500)))
        sdk.run(e13.join(TALKGROUP, audio=ToneTrack(700)))
        page.wait_for_selector("#radio:not([hidden])")
        page.select_option("#tg-select", TALKGROUP)
        page.click("#tg-join")
        page.wait_for_selector("#ptt-btn:not([disabled])")
        assert page.inner_text("#ptt-speaker") == "channel clear"

        # Hold Space (focus on the map, not a text field): the dispatcher has the floor.
        page.focus("#map")
        page.keyboard.down("Space")
        page.wait_for_selector("#ptt-btn[data-floor=granted]")
        speaker = sdk.run(e12.media_frame("ptt.speaker", where={"rank": "dispatcher"}))
        me = speaker["member"]
        assert me.startswith("user:") and speaker["name"] == "fire"
        page.wait_for_selector(f"#ptt-speaker[data-member='{me}']")
        assert "You are talking" in page.inner_text("#ptt-speaker")
        since = time.monotonic()
        before = listener.frames
        # The unit hears the floor holder (frames counted); a second requester waits in line.
        queued = sdk.run(e13.request_floor(TALKGROUP))
        assert queued == {"outcome": "queued", "position": 1}
        time.sleep(1.5)
        assert listener.frames - before > 40, (listener.frames, before)
        assert any(level > 0.005 for at, level in listener.levels if at >= since)
        page.keyboard.up("Space")
        # Letting go passes the floor to the one waiting; the indicator names the unit.
        assert sdk.run(e13.media_frame("ptt.granted"))["talkgroup"] == TALKGROUP
        page.wait_for_selector("#ptt-speaker[data-member='unit:E13']")
        assert "E13 is talking" in page.inner_text("#ptt-speaker")
        assert page.get_attribute("#ptt-btn", "data-floor") == "idle"

        # The dispatcher pre-empts the unit by holding Space.
        page.keyboard.down("Space")
        page.wait_for_selector("#ptt-btn[data-floor=granted]")
        revoked = sdk.run(e13.media_frame("ptt.revoked"))
        assert revoked["by"] == me and "pre-empted" in revoked["reason"]
        page.keyboard.up("Space")
        page.wait_for_selector("#ptt-btn[data-floor=idle]")
        # E13 waited first in line after being pre-empted: it has the floor back.
        assert sdk.run(e13.media_frame("ptt.granted"))["talkgroup"] == TALKGROUP
        sdk.run(e13.release_floor(TALKGROUP))
        page.wait_for_selector("#ptt-speaker:has-text('channel clear')")

        # A unit's emergency: the dispatcher's request now waits (queued feedback in the console).
        assert sdk.run(e13.request_floor(TALKGROUP, emergency=True))["outcome"] == "granted"
        page.wait_for_selector("#ptt-speaker.emergency")
        page.keyboard.down("Space")
        page.wait_for_selector("#ptt-btn[data-floor=queued]")
        assert "Queued #1" in page.inner_text("#ptt-btn")
        page.keyboard.up("Space")  # withdraws the request
        page.wait_for_selector("#ptt-btn[data-floor=idle]")
        sdk.run(e13.release_floor(TALKGROUP))
        page.wait_for_selector("#ptt-speaker:has-text('channel clear')")

        # The console's emergency transmission asks first; cancelling sends nothing.
        page.click("#ptt-emergency")
        page.wait_for_selector("#ptt-emergency-dialog[open]")
        page.keyboard.press("Escape")
        page.wait_for_selector("#ptt-emergency-dialog", state="hidden")
        assert page.get_attribute("#ptt-btn", "data-floor") == "idle"
        sdk.run(e13.request_floor(TALKGROUP))  # a unit talks …
        page.wait_for_selector("#ptt-speaker[data-member='unit:E13']")
        page.click("#ptt-emergency")
        page.click("#ptt-emergency-confirm")  # … and the confirmed emergency cuts it off
        page.wait_for_selector("#ptt-btn[data-floor=granted].emergency")
        assert sdk.run(e13.media_frame("ptt.revoked", where={"by": me}))["talkgroup"] == TALKGROUP
        assert sdk.run(e12.media_frame("ptt.speaker", where={"member": me, "rank": "emergency"}))["name"] == "fire"
        page.keyboard.down("Space")  # an emergency floor is latched: Space does not end it
        page.keyboard.up("Space")
        assert page.get_attribute("#ptt-btn", "data-floor") == "granted"
        page.click("#ptt-btn")  # pressing Talk again ends it
        page.wait_for_selector("#ptt-btn[data-floor=idle]")
        page.wait_for_selector("#ptt-speaker[data-member='unit:E13']")  # pre-empted, it was first in line
        sdk.run(e13.release_floor(TALKGROUP))
        page.wait_for_selector("#ptt-speaker:has-text('channel clear')")
        # A tap shorter than the server's answer still gives the floor back: a unit gets it next.
        page.keyboard.press("Space")
        page.wait_for_selector("#ptt-btn[data-floor=idle]")
        page.wait_for_timeout(300)
        assert sdk.run(e13.request_floor(TALKGROUP))["outcome"] == "granted"
        assert not page.errors, page.errors
    finally:
        page.context.close()
        close_unit(sdk, e12)
        close_unit(sdk, e13)


def test_a_browser_without_microphone_or_webrtc_gets_a_message(demo: DemoServer, browser: Any) -> None:
    page = login(browser, demo.url, "fire")
    page.context.add_init_script("""navigator.mediaDevices.getUserMedia = () =>
        Promise.reject(new DOMException('no device', 'NotFoundError'));""")
    page.reload()
    page.wait_for_selector("#conn-status.online")
    page.wait_for_selector("#radio:not([hidden])")
    page.click("#tab-units")
    page.locator("#panel-units [data-call='E21']").click()
    page.wait_for_selector("#toast:has-text('No microphone')")
    assert page.is_hidden("#call-panel")
    page.wait_for_selector("#media-note:has-text('no microphone was found')")
    # The talkgroup still works for listening; the talk buttons stay off.
    page.select_option("#tg-select", TALKGROUP)
    page.click("#tg-join")
    page.wait_for_selector("#tg-join:has-text('Leave')")
    assert page.is_disabled("#ptt-btn") and page.is_disabled("#ptt-emergency")
    assert not page.errors, page.errors
    page.context.close()

    page = login(browser, demo.url, "fire")
    page.context.add_init_script("delete window.RTCPeerConnection;")
    page.reload()
    page.wait_for_selector("#conn-status.online")
    page.wait_for_selector("#media-note:has-text('cannot do WebRTC')")
    page.wait_for_selector("#queue")
    assert not page.errors, page.errors
    page.context.close()
