"""The console's files and settings over HTTP: security headers, caching, no data without a session."""

from __future__ import annotations

import re
from pathlib import Path

from aiohttp.test_utils import TestClient

from icp.resources import resource_dir
from tests.helpers import bearer

WEB = resource_dir("web")


async def test_the_shell_is_served_with_a_strict_policy_and_revalidation(client: TestClient) -> None:
    root = await client.get("/", allow_redirects=False)
    assert root.status == 302 and root.headers["Location"] == "/console/"
    page = await client.get("/console/")
    assert page.status == 200 and page.content_type == "text/html"
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert page.headers["X-Content-Type-Options"] == "nosniff" and page.headers["Cache-Control"] == "no-cache"
    again = await client.get("/console/", headers={"If-None-Match": page.headers["ETag"]})
    assert again.status == 304
    script = await client.get("/console/js/app.js")
    assert script.status == 200 and script.content_type == "text/javascript"


async def test_no_inline_script_or_handler_and_nothing_from_elsewhere() -> None:
    html = (WEB / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)", html), "an inline script"
    assert not re.search(r"\son[a-z]+\s*=", html), "an inline event handler"
    assert not re.search(r"\sstyle\s*=", html), "an inline style"
    for path in Path(WEB).rglob("*"):
        if path.suffix in (".html", ".js", ".css"):
            text = path.read_text()
            assert not re.search(r"(src|href)=\"https?://", text), f"{path.name} loads from elsewhere"
            assert ".innerHTML" not in text and "insertAdjacentHTML" not in text, f"{path.name} parses markup"


async def test_files_outside_the_console_and_data_without_a_session_are_refused(client: TestClient) -> None:
    for path in ("/console/../pyproject.toml", "/console/%2e%2e/README.md", "/console/.hidden",
                 "/console/js/../../icp/config.py", "/console/nothing.js"):
        response = await client.get(path)
        assert response.status == 404, path
    assert (await client.get("/api/v1/console/config")).status == 401
    assert (await client.post("/api/v1/console/ticket")).status == 401
    assert (await client.get("/api/v1/incidents")).status == 401


async def test_settings_and_a_short_lived_gateway_ticket_for_the_session(client: TestClient, make_token) -> None:  # type: ignore[no-untyped-def]
    token = await make_token("dispatcher", agency="hki-fire")
    config = await (await client.get("/api/v1/console/config", headers=bearer(token))).json()
    assert config["principal"]["role"] == "dispatcher" and config["timers"]["pending_red_s"] == 90
    issued = await client.post("/api/v1/console/ticket", headers=bearer(token))
    assert issued.status == 201 and issued.headers["Cache-Control"] == "no-store"
    ticket = (await issued.json())["token"]
    who = await (await client.get("/api/v1/session", headers=bearer(ticket))).json()
    assert who["role"] == "dispatcher" and who["agency"] == "hki-fire"  # same role and agency, nothing more
    sensor = await make_token("sensor")
    assert (await client.post("/api/v1/console/ticket", headers=bearer(sensor))).status == 403
