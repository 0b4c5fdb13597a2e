"""The console's files and settings over HTTP: security headers, caching, no data without a session."""

from __future__ import annotations

import re
from pathlib import Path

import asyncpg
from aiohttp.test_utils import TestClient

from icp.auth import credentials
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
    assert (await client.get("/api/v1/incidents")).status == 401


async def test_settings_for_the_session(client: TestClient, make_token) -> None:  # type: ignore[no-untyped-def]
    token = await make_token("dispatcher", agency="hki-fire")
    config = await (await client.get("/api/v1/console/config", headers=bearer(token))).json()
    assert config["principal"]["role"] == "dispatcher" and config["timers"]["pending_red_s"] == 90
    assert (await client.post("/api/v1/console/ticket", headers=bearer(token))).status in (404, 405)  # no tickets


async def _hello(client: TestClient, origin: str | None) -> dict:  # type: ignore[type-arg]
    headers = {"Origin": origin} if origin else {}
    async with client.ws_connect("/ws", headers=headers) as ws:
        await ws.send_json({"op": "hello", "protocol": 1})  # no token: the session cookie, if any
        return await ws.receive_json(timeout=5)  # type: ignore[no-any-return]


async def test_the_gateway_takes_the_console_session_from_its_own_origin_only(client: TestClient,
                                                                              db_url: str) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        await credentials.create_user(conn, "dana", "a long enough password", "dispatcher", agency="hki-fire")
    finally:
        await conn.close()
    own = f"http://{client.server.host}:{client.server.port}"
    assert (await _hello(client, own))["code"] == "unauthorized"  # no session yet
    login = await client.post("/api/v1/session", json={"username": "dana", "password": "a long enough password"})
    assert login.status == 200, await login.text()
    welcome = await _hello(client, own)
    assert welcome["op"] == "welcome" and welcome["principal"]["name"] == "dana"
    # Another site's page cannot ride the cookie (cross-site WebSocket hijacking), nor can a page
    # that sends no Origin.
    assert (await _hello(client, "https://evil.example"))["code"] == "unauthorized"
    assert (await _hello(client, None))["code"] == "unauthorized"
