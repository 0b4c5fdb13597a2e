"""The console in a real browser against a real `icp demo`: login, live queue and map, dispatch and
acknowledgement, mutual aid, chat between two sessions, 1366×768 layout and screenshots."""

from __future__ import annotations

import json
import urllib.request
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.web.conftest import PASSWORD, VIEWPORT, DemoServer, login, screenshot_dir

pytestmark = pytest.mark.slow


def post(server: DemoServer, path: str, token: str, body: Any) -> Any:
    request = urllib.request.Request(server.url + path, data=json.dumps(body).encode(), method="POST", headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"null")


def collision(server: DemoServer, ident: str, lat: float = 60.16890, lon: float = 24.94600) -> dict[str, Any]:
    """A traffic camera's collision alert through the intake: a P2 traffic collision nobody dispatches yet."""
    return post(server, "/api/v1/alerts", server.token("sensor"), {
        "source": "test-cameras", "id": ident, "kind": "collision", "severity": "Moderate", "certainty": "Likely",
        "time": datetime.now(UTC).isoformat(), "location": {"lat": lat, "lon": lon},
        "headline": f"Collision {ident}"})


def test_login_refuses_a_wrong_password_and_admits_a_dispatcher(demo: DemoServer, browser: Any) -> None:
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.goto(demo.url + "/")
    assert page.is_visible("#login-form") and not page.is_visible("#app-view")
    page.fill("#login-username", "dispatcher")
    page.fill("#login-password", "not the password")
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("#login-error:has-text('Wrong username or password')")
    page.fill("#login-password", PASSWORD)
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("#conn-status.online")
    assert "dispatcher" in page.inner_text("#who")
    cookie = next(c for c in context.cookies() if c["name"] == "icp_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert page.evaluate("() => document.cookie").find("icp_session") < 0  # not readable by scripts
    context.close()


def test_an_alert_appears_on_queue_and_map_then_dispatch_and_acknowledgement(demo: DemoServer, browser: Any) -> None:
    page = login(browser, demo.url)
    outcome = collision(demo, "cam-1/first")
    assert outcome["outcome"] == "created"
    incident_id = outcome["incident_id"]
    item = page.wait_for_selector(f"#queue [data-incident='{incident_id}']")  # no reload
    assert "traffic collision" in item.inner_text()
    assert "new" in (item.get_attribute("class") or "")  # pending, nobody assigned: it pulses
    on_map = page.evaluate(f"""() => {{
        const m = window.icp.map;
        const i = m.incidents.find((x) => x.id === {json.dumps(incident_id)});
        if (!i) return null;
        const [x, y] = m.toScreen(i.lon, i.lat);
        const r = m.ratio;
        const px = m.ctx.getImageData(Math.round((x - 5) * r), Math.round(y * r), 1, 1).data;
        const inside = x > 0 && y > 0 && x < m.width && y < m.height;
        return {{pulsing: i.pulsing, priority: i.priority, pixel: Array.from(px), inside}};
    }}""")
    assert on_map is not None and on_map["pulsing"] and on_map["priority"] == 2 and on_map["inside"]
    red, green, blue, _ = on_map["pixel"]
    assert red > 200 and 70 < green < 150 and blue < 60, on_map  # the P2 orange disc is drawn there

    page.locator(f"#queue [data-incident='{incident_id}']").click()
    page.wait_for_selector("#incident-title:has-text('traffic collision')")
    page.wait_for_selector("#rec-picks input[name=pick]")
    picks = page.eval_on_selector_all("#rec-picks input[name=pick]", "els => els.map(e => e.value)")
    assert picks, "the recommendation names units"
    page.keyboard.press("Escape")
    page.click("#dispatch-rec")
    # The simulated crews acknowledge within seconds; the assignment's state follows without reload.
    status = page.wait_for_selector(
        "#assignments [data-role=assignment-status]:text-matches('acknowledged|en route|on scene')", timeout=30_000)
    assert status.is_visible()
    unit = status.evaluate("el => el.closest('li').dataset.unit")
    assert unit in picks
    page.click("#tab-units")
    page.wait_for_selector(f"#status-{unit} >> xpath=..")
    page.wait_for_function(f"() => ['en_route', 'on_scene'].includes(document.querySelector('#status-{unit}').value)",
                           timeout=30_000)
    item = page.wait_for_selector(f"#queue [data-incident='{incident_id}']")
    assert "new" not in (item.get_attribute("class") or "")
    assert not page.errors
    page.context.close()


def test_mutual_aid_request_is_answered_by_the_partner_dispatcher(demo: DemoServer, browser: Any) -> None:
    incident = post(demo, "/api/v1/incidents", demo.token("dispatcher", agency="hki-fire"), {
        "type": "vehicle_fire", "priority": 3, "location": {"lat": 60.1660, "lon": 24.9480}})
    post(demo, f"/api/v1/incidents/{incident['id']}/assignments", demo.token("admin"), {"units": ["ES-E2"]})
    page = login(browser, demo.url, "espoo")
    request = page.wait_for_selector("#aid-requests .aid-item")
    assert "ES-E2" in request.inner_text()
    page.locator("#aid-requests button:has-text('Accept')").click()
    page.wait_for_selector("#aid-requests", state="hidden")
    page.locator(f"#queue [data-incident='{incident['id']}']").click()
    page.wait_for_selector("#assignments [data-unit='ES-E2'] [data-role=assignment-status]:text-matches('dispatched|"
                           "acknowledged|en route|on scene')")
    page.context.close()


def test_chat_reaches_a_second_browser_session(demo: DemoServer, browser: Any) -> None:
    sender = login(browser, demo.url, "dispatcher")
    reader = login(browser, demo.url, "fire")
    sender.keyboard.press("c")  # the chat shortcut
    sender.locator("#panel-chat [data-channel='agency:hki-fire']").click()
    text = "Crews to staging at Rautatientori, over"
    sender.fill("#chat-input", text)
    sender.press("#chat-input", "Enter")
    sender.wait_for_selector(f"#chat-messages li:has-text('{text}')")
    badge = reader.wait_for_selector("#chat-unread:not([hidden])")
    assert int(badge.inner_text()) >= 1
    reader.click("#tab-chat")
    reader.locator("#panel-chat [data-channel='agency:hki-fire']").click()
    line = reader.wait_for_selector(f"#chat-messages li:has-text('{text}')")
    assert "dispatcher" in line.inner_text()
    reader.wait_for_selector("#chat-unread", state="hidden")
    sender.context.close()
    reader.context.close()


def test_keyboard_new_incident_with_geocoding_suggestions(demo: DemoServer, browser: Any) -> None:
    page = login(browser, demo.url)
    page.keyboard.press("n")
    page.wait_for_selector("#create-dialog[open]")
    page.select_option("#create-type", "medical_emergency")
    page.select_option("#create-priority", "2")
    page.fill("#create-address", "Mannerheimintie 5")
    page.locator("#create-suggest-list button:has-text('Mannerheimintie 5')").first.click()
    assert page.inner_text("#create-location").startswith("60.1")
    page.click("#create-submit")
    page.wait_for_selector("#create-dialog", state="hidden")
    page.wait_for_selector("#incident-title:has-text('medical emergency')")
    assert "Mannerheimintie 5" in page.inner_text("#panel-incident")
    page.context.close()


def test_the_layout_fits_1366_by_768_and_screenshots(demo: DemoServer, browser: Any) -> None:
    for n in range(3):
        collision(demo, f"cam-2/{n}", lat=60.1665 + n * 0.002, lon=24.9400 + n * 0.003)
    page = login(browser, demo.url)
    page.wait_for_selector("#queue .qitem")
    overflow = page.evaluate("() => [document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
    assert overflow[0] <= VIEWPORT["width"] and overflow[1] <= VIEWPORT["height"], overflow
    labels = page.evaluate("""() => [...document.querySelectorAll('input, select, textarea, button')]
        .filter((el) => el.offsetParent !== null)
        .filter((el) => !(el.labels?.length || el.getAttribute('aria-label') || el.textContent.trim() || el.title))
        .map((el) => el.outerHTML.slice(0, 80))""")
    assert labels == [], labels  # every visible control has an accessible name
    page.click("#queue .qitem")
    page.wait_for_selector("#rec-picks")
    target = screenshot_dir()
    page.screenshot(path=str(target / "console-incident.png"))
    page.click("#tab-units")
    page.screenshot(path=str(target / "console-units.png"))
    from struct import unpack

    for name in ("console-incident.png", "console-units.png"):
        header = (target / name).read_bytes()[:24]
        assert unpack(">II", header[16:24]) == (1366, 768)
    page.context.close()
