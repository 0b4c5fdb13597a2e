"""Health, readiness, metrics, OpenAPI and the problem+json error mapping over real HTTP."""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp.test_utils import TestClient

from icp.app import create_app
from icp.config import Settings
from icp.store.embedded import EmbeddedCluster
from tests.helpers import problem


async def test_healthz(client: TestClient) -> None:
    response = await client.get("/healthz")
    assert response.status == 200
    assert await response.json() == {"status": "ok"}


async def test_readyz_when_database_answers_and_schema_is_current(client: TestClient) -> None:
    response = await client.get("/readyz")
    assert response.status == 200, await response.text()


async def test_readyz_reports_pending_migrations(client: TestClient, db_url: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute("DELETE FROM schema_migrations")
    finally:
        await conn.close()
    response = await client.get("/readyz")
    assert response.status == 503
    assert "pending migrations" in (await response.json())["reason"]


async def test_metrics_are_prometheus_text(client: TestClient) -> None:
    await client.get("/healthz")
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.content_type == "text/plain"
    text = await response.text()
    assert 'icp_http_requests_total{method="GET",route="/healthz",status="200"}' in text
    assert "icp_db_pool_connections" in text


async def test_openapi_document_lists_the_api(client: TestClient) -> None:
    response = await client.get("/api/v1/openapi.json")
    assert response.status == 200
    doc = await response.json()
    assert doc["openapi"].startswith("3.1")
    for path in ("/healthz", "/readyz", "/metrics", "/api/v1/session", "/api/v1/events"):
        assert path in doc["paths"], path
    events = doc["paths"]["/api/v1/events"]["get"]
    assert events["security"] and "401" in events["responses"]
    assert doc["paths"]["/api/v1/session"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "Problem" in doc["components"]["schemas"]


async def test_unknown_path_and_method_are_problems(client: TestClient) -> None:
    await problem(await client.get("/no/such/thing"), 404)
    body = await problem(await client.put("/healthz"), 405)
    assert body["code"] == "method_not_allowed"


async def test_body_size_limit(client: TestClient, settings: Settings) -> None:
    too_big = b"{" + b" " * settings.max_body_bytes + b"}"
    response = await client.post("/api/v1/session", data=too_big, headers={"Content-Type": "application/json"})
    body = await problem(response, 413)
    assert body["code"] in ("body_too_large",)


async def test_readyz_fails_while_the_database_is_down_and_recovers(aiohttp_client, cluster_dir: Path) -> None:  # type: ignore[no-untyped-def]
    # A cluster of its own: this test stops and restarts it.
    cluster = EmbeddedCluster(cluster_dir / "pg")
    await asyncio.to_thread(cluster.hold)
    try:
        settings = Settings(database_url=cluster.url(), data_dir=cluster_dir, pool_min=1, pool_max=4,
                            db_timeout_s=1.0)
        client = await aiohttp_client(create_app(settings))
        assert (await client.get("/readyz")).status == 200
        await asyncio.to_thread(cluster.stop)
        down = await client.get("/readyz")
        assert down.status == 503
        assert (await down.json())["reason"] == "the database does not answer"
        assert (await client.get("/healthz")).status == 200  # the process itself is fine
        await asyncio.to_thread(cluster._start)
        for _ in range(50):
            if (await client.get("/readyz")).status == 200:
                break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError("readyz did not recover after the database came back")
    finally:
        await asyncio.to_thread(cluster.release)
