"""Authentication and authorization over real HTTP: tokens, sessions, roles, hashing at rest."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from icp.auth import credentials
from icp.auth.guard import TokenCache, principal, require
from icp.auth.principal import Principal, Role
from icp.httpapi import json_response
from tests.helpers import bearer, problem

SECRET_PASSWORD = "correct horse battery"


@pytest.fixture
async def user(db_url: str) -> str:
    conn = await asyncpg.connect(db_url)
    try:
        await credentials.create_user(conn, "alice", SECRET_PASSWORD, "dispatcher", agency="hki-fire")
    finally:
        await conn.close()
    return "alice"


async def test_missing_token_is_401_problem(client: TestClient) -> None:
    body = await problem(await client.get("/api/v1/events"), 401)
    assert body["code"] == "unauthorized"


@pytest.mark.parametrize("header", ["Bearer nonsense", "Bearer icp_unknown", "Basic dXNlcjpwYXNz", "Bearer ", "Bearer"])
async def test_wrong_or_malformed_token_is_401(client: TestClient, header: str) -> None:
    response = await client.get("/api/v1/events", headers={"Authorization": header})
    await problem(response, 401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_expired_token_is_401(client: TestClient, db_url: str) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        issued = await credentials.create_token(conn, "dispatcher", expires_in=timedelta(seconds=1))
        await conn.execute("UPDATE api_tokens SET expires_at = now() - interval '1 second' WHERE id = $1", issued.id)
    finally:
        await conn.close()
    body = await problem(await client.get("/api/v1/events", headers=bearer(issued.secret)), 401)
    assert "expired" in body["detail"]


async def test_revoked_token_is_401_within_the_cache_time(client: TestClient, db_url: str,
                                                          settings) -> None:  # type: ignore[no-untyped-def]
    conn = await asyncpg.connect(db_url)
    try:
        issued = await credentials.create_token(conn, "admin")
        assert (await client.get("/api/v1/events", headers=bearer(issued.secret))).status == 200
        assert await credentials.revoke_token(conn, issued.id)
    finally:
        await conn.close()
    await asyncio.sleep(settings.token_cache_ttl_s + 0.05)
    await problem(await client.get("/api/v1/events", headers=bearer(issued.secret)), 401)


async def test_tokens_and_passwords_are_stored_hashed(db_url: str, make_token, user: str) -> None:  # type: ignore[no-untyped-def]
    token = await make_token("sensor", name="flood gauges")
    conn = await asyncpg.connect(db_url)
    try:
        stored = await conn.fetchrow("SELECT * FROM api_tokens")
        hashed_user = await conn.fetchrow("SELECT password_hash FROM users WHERE username = 'alice'")
    finally:
        await conn.close()
    assert token.encode() not in bytes(stored["token_hash"])
    assert bytes(stored["token_hash"]) == credentials.hash_secret(token)
    assert hashed_user["password_hash"].startswith("$argon2id$")
    assert SECRET_PASSWORD not in hashed_user["password_hash"]


def _guarded_app_routes(app: web.Application) -> None:
    @require(Role.SUPERVISOR)
    async def supervisors_only(request: web.Request) -> web.Response:
        return json_response({"who": principal(request).name})

    @require(Role.SENSOR)
    async def sensors_only(request: web.Request) -> web.Response:
        return json_response({"ok": True})

    @require(Role.DISPATCHER)
    async def dispatch_write(request: web.Request) -> web.Response:
        return json_response({"ok": True})

    app.router.add_get("/test/supervisor", supervisors_only)
    app.router.add_post("/test/dispatch", dispatch_write)
    app.router.add_get("/test/sensor", sensors_only)


@pytest.fixture
async def guarded_client(aiohttp_client, settings):  # type: ignore[no-untyped-def]
    from icp.app import create_app

    app = create_app(settings)
    _guarded_app_routes(app)
    return await aiohttp_client(app)


@pytest.mark.parametrize(
    "role, path, status",
    [
        ("dispatcher", "/test/supervisor", 403),
        ("supervisor", "/test/supervisor", 200),
        ("admin", "/test/supervisor", 200),
        ("unit", "/test/supervisor", 403),
        ("sensor", "/test/sensor", 200),
        ("dispatcher", "/test/sensor", 403),
        ("admin", "/test/sensor", 200),
        ("agency", "/test/sensor", 403),
    ],
)
async def test_require_enforces_roles_and_implications(
    guarded_client: TestClient, make_token, role: str, path: str, status: int  # type: ignore[no-untyped-def]
) -> None:
    response = await guarded_client.get(path, headers=bearer(await make_token(role)))
    if status == 403:
        body = await problem(response, 403)
        assert role in body["detail"]
    else:
        assert response.status == 200


async def test_session_login_sets_a_safe_cookie_and_records_the_login(
    client: TestClient, user: str, make_token  # type: ignore[no-untyped-def]
) -> None:
    response = await client.post("/api/v1/session", json={"username": "alice", "password": SECRET_PASSWORD})
    assert response.status == 200, await response.text()
    body = await response.json()
    assert body["principal"] == {"kind": "user", "id": body["principal"]["id"], "name": "alice",
                                 "role": "dispatcher", "agency": "hki-fire"}
    cookie = response.headers["Set-Cookie"]
    assert "icp_session=" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    me = await client.get("/api/v1/session")  # the cookie jar sends the cookie
    assert me.status == 200 and (await me.json())["name"] == "alice"

    # The login is an event, with the acting principal recorded; auditors see it, others not.
    audit = await (await client.get("/api/v1/events", headers=bearer(await make_token("admin")))).json()
    created = [e for e in audit["events"] if e["type"] == "session.created"]
    assert created and created[0]["actor"]["name"] == "alice" and created[0]["actor"]["kind"] == "user"
    own = await (await client.get("/api/v1/events")).json()
    assert [e for e in own["events"] if e["type"] == "session.created"] == []

    out = await client.delete("/api/v1/session")
    assert out.status == 204
    await problem(await client.get("/api/v1/session"), 401)


async def test_wrong_password_and_unknown_user_are_the_same_401(client: TestClient, user: str) -> None:
    attempt = {"password": "nope-nope"}
    wrong = await problem(await client.post("/api/v1/session", json={"username": "alice", **attempt}), 401)
    unknown = await problem(await client.post("/api/v1/session", json={"username": "bob", **attempt}), 401)
    assert wrong["detail"] == unknown["detail"]


async def test_login_validation(client: TestClient) -> None:
    body = await problem(await client.post("/api/v1/session", json={"username": "alice"}), 422)
    assert body["errors"] == [{"field": "password", "message": "required, a string"}]
    not_json = await client.post("/api/v1/session", data=b"{not json", headers={"Content-Type": "application/json"})
    await problem(not_json, 400)
    await problem(await client.post("/api/v1/session", json=["a", "list"]), 400)


async def test_cookie_sessions_refuse_cross_origin_writes(guarded_client: TestClient, user: str) -> None:
    login = await guarded_client.post("/api/v1/session", json={"username": "alice", "password": SECRET_PASSWORD})
    assert login.status == 200
    same = await guarded_client.post("/test/dispatch", headers={"Origin": str(guarded_client.make_url("/"))[:-1]})
    assert same.status == 200
    body = await problem(await guarded_client.post("/test/dispatch", headers={"Origin": "https://evil.example"}), 403)
    assert "cross-origin" in body["detail"]
    # Without an Origin header (same-site form posts are stopped by SameSite=Strict) it passes.
    assert (await guarded_client.post("/test/dispatch")).status == 200


async def test_administrators_issue_tokens_over_http(client: TestClient, make_token, db_url: str) -> None:  # type: ignore[no-untyped-def]
    admin = await make_token("admin")
    response = await client.post("/api/v1/tokens", headers=bearer(admin),
                                 json={"role": "unit", "agency": "hki-fire", "unit": "E1", "name": "sim E1"})
    assert response.status == 201, await response.text()
    issued = await response.json()
    me = await (await client.get("/api/v1/session", headers=bearer(issued["token"]))).json()
    assert (me["role"], me["agency"], me["unit"]) == ("unit", "hki-fire", "E1")
    body = await problem(await client.post("/api/v1/tokens", headers=bearer(admin), json={"role": "king"}), 422)
    assert "unknown role" in body["detail"] or "unknown role" in body["errors"][0]["message"]
    dispatcher = await make_token("dispatcher")
    await problem(await client.post("/api/v1/tokens", headers=bearer(dispatcher), json={"role": "admin"}), 403)
    conn = await asyncpg.connect(db_url)
    try:
        assert issued["token"].encode() not in b"".join(bytes(r["token_hash"]) for r in await conn.fetch(
            "SELECT token_hash FROM api_tokens"))
    finally:
        await conn.close()


async def test_requests_with_an_uncached_token_share_one_look_up() -> None:
    # When a busy key's cache entry runs out, the requests then in flight wait for one look-up
    # instead of each reading (and stamping) the token row; a failed look-up is not cached.
    cache = TokenCache(ttl_s=60)
    who = Principal(kind="token", id="7", name="detectors", role=Role.SENSOR)
    looked_up = 0
    release = asyncio.Event()

    async def fetch() -> Principal | None:
        nonlocal looked_up
        looked_up += 1
        await release.wait()
        return who if looked_up == 1 else None

    waiting = [asyncio.create_task(cache.load(b"key", fetch)) for _ in range(20)]
    waiting[0].cancel()  # a caller that goes away does not take the look-up with it
    await asyncio.sleep(0.01)
    release.set()
    results = await asyncio.gather(*waiting[1:])
    assert results == [who] * 19 and looked_up == 1
    assert await cache.load(b"key", fetch) == who and looked_up == 1  # cached now

    async def unknown() -> Principal | None:
        nonlocal looked_up
        looked_up += 1
        return None

    assert [await cache.load(b"other", unknown) for _ in range(2)] == [None, None] and looked_up == 3
