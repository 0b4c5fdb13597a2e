"""Webhook deliveries end to end: the real app, real HTTP receivers on loopback verifying every
request with the `standardwebhooks` reference library, real PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from icp.app import create_app
from icp.config import Settings
from tests.helpers import bearer, problem
from tests.icp.webhooks.support import Receiver


@pytest.fixture(autouse=True)
def fast_webhooks(settings: Settings) -> Settings:
    # Loopback receivers are allowed here only; the schedule runs a thousand times faster.
    for name, value in (("webhook_allow", "loopback"), ("webhook_time_scale", 0.001), ("webhook_poll_s", 0.05),
                        ("webhook_timeout_s", 1.0), ("webhook_retry_schedule", "0,5s,30s,2m,10m")):
        object.__setattr__(settings, name, value)
    return settings


@pytest.fixture
async def receiver() -> Any:
    r = await Receiver().start()
    yield r
    await r.stop()


class Agencies:
    def __init__(self, client: TestClient, admin: str, tokens: dict[str, str]) -> None:
        self.client, self.admin, self.tokens = client, admin, tokens

    async def call(self, method: str, path: str, token: str | None = None, status: int | None = None,
                   **kwargs: Any) -> Any:
        response = await self.client.request(method, path, headers=bearer(token or self.admin), **kwargs)
        text = await response.text()
        if status is not None:
            assert response.status == status, f"{method} {path}: {response.status} {text}"
        else:
            assert response.status < 300, f"{method} {path}: {response.status} {text}"
        return await response.json() if text else None

    async def subscribe(self, agency: str, url: str, events: list[str] | None = None) -> dict[str, Any]:
        return await self.call("POST", f"/api/v1/agencies/{agency}/webhooks", self.tokens[f"{agency}:agency"],
                               json={"url": url, "events": events or ["incident.*"]})

    async def incident(self, agency: str = "hki-fire") -> dict[str, Any]:
        return await self.call("POST", "/api/v1/incidents", self.tokens[agency],
                               json={"type": "structure_fire", "priority": 2, "location": {"lat": 60.17, "lon": 24.94}})

    async def deliveries(self, agency: str, **query: str) -> list[dict[str, Any]]:
        return await self.call("GET", "/api/v1/webhooks/deliveries", self.tokens[f"{agency}:agency"], params=query)


@pytest.fixture
async def agencies(client: TestClient, make_token) -> Agencies:  # type: ignore[no-untyped-def]
    admin = await make_token("admin")
    city = Agencies(client, admin, {})
    for agency in ("hki-fire", "espoo-fire"):
        await city.call("POST", "/api/v1/agencies", json={"id": agency, "name": agency, "kind": "fire"})
        city.tokens[agency] = await make_token("dispatcher", agency=agency)
        city.tokens[f"{agency}:agency"] = await make_token("agency", agency=agency)
    return city


async def test_deliveries_are_signed_ordered_and_carry_an_eido_view(agencies: Agencies, receiver: Receiver) -> None:
    endpoint = await agencies.subscribe("hki-fire", receiver.url)
    assert endpoint["secret"].startswith("whsec_") and endpoint["status"] == "active"
    receiver.secrets = [endpoint["secret"]]
    listed = await agencies.call("GET", "/api/v1/agencies/hki-fire/webhooks", agencies.tokens["hki-fire:agency"])
    assert [e["id"] for e in listed] == [endpoint["id"]] and "secret" not in listed[0]  # shown once only
    made = [await agencies.incident() for _ in range(3)]
    await agencies.incident("espoo-fire")  # another agency's incident: not visible to hki-fire, not delivered
    got = await receiver.wait_for(lambda r: len(r) >= 3)
    await asyncio.sleep(0.3)
    assert len(receiver.received) == 3
    assert all(r.verified for r in got), "the reference library verifies every delivery unchanged"
    seqs = [r.body["seq"] for r in got]
    assert seqs == sorted(seqs)
    assert [r.body["data"]["incident_id"] for r in got] == [m["id"] for m in made]
    first = got[0]
    assert first.webhook_id == f"msg_{endpoint['id']}_{first.body['seq']}"
    assert set(first.body) == {"type", "seq", "timestamp", "data"} and first.body["type"] == "incident.created"
    eido = first.body["data"]["eido"]
    assert eido["eidoVersion"] and eido["incidentComponent"]
    assert abs(first.timestamp - time.time()) < 60


async def test_failures_follow_the_schedule_with_the_same_webhook_id_in_order(
        agencies: Agencies, receiver: Receiver) -> None:
    receiver.answers = [500, 503, ("sleep", 1.5)]  # two errors, then a timeout (1 s), then success
    endpoint = await agencies.subscribe("hki-fire", receiver.url)
    receiver.secrets = [endpoint["secret"]]
    await agencies.incident()
    await agencies.incident()
    got = await receiver.wait_for(lambda r: len(r) >= 2, timeout=15)
    assert [r.body["seq"] for r in got] == sorted(r.body["seq"] for r in got)  # FIFO held through the retries
    assert receiver.requests == 5  # 3 failures + 2 successes: nothing delivered twice after a success
    for _ in range(50):  # successes are recorded in batches, just after they happen
        deliveries = await agencies.deliveries("hki-fire", endpoint=endpoint["id"])
        if all(d["status"] == "delivered" for d in deliveries):
            break
        await asyncio.sleep(0.05)
    first = min(deliveries, key=lambda d: d["seq"])
    assert first["status"] == "delivered" and first["attempts"] == 4
    detail = await agencies.call("GET", f"/api/v1/webhooks/deliveries/{first['id']}",
                                 agencies.tokens["hki-fire:agency"])
    log = detail["attempt_log"]
    assert [a["status_code"] for a in log] == [500, 503, None, 200]
    assert "no answer within" in log[2]["error"]
    assert all(a["latency_ms"] >= 0 for a in log)
    assert got[0].webhook_id == detail["webhook_id"]


async def test_an_exhausted_schedule_dead_letters_and_a_manual_retry_delivers(
        agencies: Agencies, receiver: Receiver) -> None:
    receiver.default = 500
    endpoint = await agencies.subscribe("hki-fire", receiver.url)
    receiver.secrets = [endpoint["secret"]]
    await agencies.incident()
    for _ in range(200):  # five attempts, 0 + 5 + 30 + 120 + 600 s at 1/1000 speed: under a second
        dead = await agencies.deliveries("hki-fire", status="dead")
        if dead:
            break
        await asyncio.sleep(0.05)
    assert dead and dead[0]["attempts"] == 5 and dead[0]["last_status"] == 500
    events = await agencies.call("GET", "/api/v1/events", agencies.tokens["hki-fire"], params={"after": "0"})
    lettered = [e for e in events["events"] if e["type"] == "webhook.dead_lettered"]
    assert lettered and lettered[0]["data"]["delivery_id"] == dead[0]["id"]
    receiver.default = 200
    retried = await agencies.call("POST", f"/api/v1/webhooks/deliveries/{dead[0]['id']}/retry",
                                  agencies.tokens["hki-fire:agency"], status=202)
    assert retried["status"] == "pending"
    got = await receiver.wait_for(lambda r: len(r) >= 1)
    assert got[0].webhook_id == dead[0]["webhook_id"] and got[0].verified


async def test_gone_disables_the_endpoint_until_resumed(agencies: Agencies, receiver: Receiver) -> None:
    receiver.answers = [410]
    endpoint = await agencies.subscribe("hki-fire", receiver.url)
    receiver.secrets = [endpoint["secret"]]
    await agencies.incident()
    path = f"/api/v1/agencies/hki-fire/webhooks/{endpoint['id']}"
    for _ in range(100):
        now = await agencies.call("GET", path, agencies.tokens["hki-fire:agency"])
        if now["status"] == "disabled":
            break
        await asyncio.sleep(0.05)
    assert now["status"] == "disabled" and "410" in now["disabled_reason"]
    await agencies.incident()  # not even queued while disabled
    await asyncio.sleep(0.3)
    assert receiver.requests == 1
    await agencies.call("PATCH", path, agencies.tokens["hki-fire:agency"], json={"status": "active"})
    got = await receiver.wait_for(lambda r: len(r) >= 1)  # the first one, kept pending, goes out now
    assert got[0].verified and len(await agencies.deliveries("hki-fire")) == 1


async def test_one_dead_endpoint_does_not_delay_a_healthy_one(agencies: Agencies, receiver: Receiver) -> None:
    slow = await Receiver(default=("sleep", 3.0)).start()  # never answers within the 1 s timeout
    try:
        dead = await agencies.subscribe("hki-fire", slow.url)
        healthy = await agencies.subscribe("hki-fire", receiver.url)
        receiver.secrets = [healthy["secret"]]
        started = time.monotonic()
        for _ in range(5):
            await agencies.incident()
        got = await receiver.wait_for(lambda r: len(r) >= 5, timeout=10)
        assert got[-1].at - started < 1.0, "the healthy endpoint waited for the dead one"
        assert slow.requests >= 1 and dead["id"] != healthy["id"]
    finally:
        await slow.stop()


async def test_rotation_signs_with_both_secrets_during_the_overlap(agencies: Agencies, receiver: Receiver) -> None:
    endpoint = await agencies.subscribe("hki-fire", receiver.url)
    rotated = await agencies.call("POST", f"/api/v1/agencies/hki-fire/webhooks/{endpoint['id']}/rotate",
                                  agencies.tokens["hki-fire:agency"])
    assert rotated["secret"] != endpoint["secret"] and rotated["previous_secret_valid_until"]
    receiver.secrets = [endpoint["secret"], rotated["secret"]]
    await agencies.incident()
    (got,) = await receiver.wait_for(lambda r: len(r) >= 1)
    # Both a receiver not yet switched and one already switched verify the same delivery.
    assert got.verified_with == [endpoint["secret"], rotated["secret"]] and len(got.signatures.split()) == 2


async def test_ssrf_destinations_are_refused(agencies: Agencies) -> None:
    token = agencies.tokens["hki-fire:agency"]
    for url in ("http://169.254.169.254/latest/meta-data", "http://10.0.0.5/hook", "http://[fd00::1]/hook",
                "http://0x7f.1/hook", "http://192.168.1.1/", "ftp://example.org/x", "http://user:pw@example.org/"):
        body = await problem(await agencies.client.post("/api/v1/agencies/hki-fire/webhooks", headers=bearer(token),
                                                        json={"url": url, "events": ["*"]}), 422)
        assert body["errors"][0]["field"] == "url", url


async def test_loopback_is_refused_unless_allow_listed(settings: Settings, aiohttp_client, make_token,  # type: ignore[no-untyped-def]
                                                       receiver: Receiver) -> None:
    strict = await aiohttp_client(create_app(settings.replace(webhook_allow="")))
    admin, token = await make_token("admin"), await make_token("agency", agency="hki-fire")
    await strict.post("/api/v1/agencies", headers=bearer(admin), json={"id": "hki-fire", "name": "x", "kind": "fire"})
    for url in (receiver.url, receiver.url.replace("127.0.0.1", "localhost"), "http://[::1]:9/x"):
        body = await problem(await strict.post("/api/v1/agencies/hki-fire/webhooks", headers=bearer(token),
                                               json={"url": url, "events": ["*"]}), 422)
        assert body["errors"][0]["field"] == "url", url


async def test_without_endpoints_commits_do_not_fan_out_and_a_new_endpoint_is_served_at_once(  # type: ignore[no-untyped-def]
        settings: Settings, aiohttp_client, make_token, receiver: Receiver, db_url: str) -> None:
    # A poll far longer than the test: whatever is fanned out promptly was woken by a commit or a kick.
    client = await aiohttp_client(create_app(settings.replace(webhook_poll_s=60.0)))
    city = Agencies(client, await make_token("admin"), {})
    await city.call("POST", "/api/v1/agencies", json={"id": "hki-fire", "name": "hki-fire", "kind": "fire"})
    city.tokens["hki-fire"] = await make_token("dispatcher", agency="hki-fire")
    city.tokens["hki-fire:agency"] = await make_token("agency", agency="hki-fire")
    await city.incident()  # the first fan-out finds no endpoint
    conn = await asyncpg.connect(db_url)
    try:
        await asyncio.sleep(0.3)
        cursor = await conn.fetchval("SELECT last_seq FROM webhook_outbox")
        for _ in range(3):
            await city.incident()
        await asyncio.sleep(0.3)
        assert await conn.fetchval("SELECT last_seq FROM webhook_outbox") == cursor  # no transaction per commit
    finally:
        await conn.close()
    endpoint = await city.subscribe("hki-fire", receiver.url)
    receiver.secrets = [endpoint["secret"]]
    made = await city.incident()
    got = await receiver.wait_for(lambda r: len(r) >= 1, timeout=5)
    # Only what happened after the subscription is delivered, promptly.
    assert {r.body["data"]["incident_id"] for r in got} == {made["id"]}


async def test_authorization_and_validation(agencies: Agencies, receiver: Receiver, make_token) -> None:  # type: ignore[no-untyped-def]
    espoo = agencies.tokens["espoo-fire:agency"]
    await problem(await agencies.client.get("/api/v1/agencies/hki-fire/webhooks", headers=bearer(espoo)), 404)
    await problem(await agencies.client.get("/api/v1/agencies/hki-fire/webhooks",
                                            headers=bearer(agencies.tokens["hki-fire"])), 403)  # a dispatcher
    supervisor = await make_token("supervisor", agency="hki-fire")
    mine = await agencies.call("POST", "/api/v1/agencies/hki-fire/webhooks", supervisor,
                               json={"url": receiver.url, "events": ["assignment.dispatched"]})
    await problem(await agencies.client.get(f"/api/v1/webhooks/deliveries/{10**6}", headers=bearer(espoo)), 404)
    body = await problem(await agencies.client.post(
        "/api/v1/agencies/hki-fire/webhooks", headers=bearer(supervisor),
        json={"url": receiver.url, "events": ["no spaces allowed"]}), 422)
    assert body["errors"][0]["field"] == "events"
    body = await problem(await agencies.client.post(
        "/api/v1/agencies/hki-fire/webhooks", headers=bearer(supervisor),
        json={"url": receiver.url, "events": ["*"], "colour": "red"}), 422)
    assert body["errors"][0]["field"] == "colour"
    espoo_list = await agencies.call("GET", "/api/v1/webhooks/deliveries", espoo)
    assert all(d["endpoint_id"] != mine["id"] for d in espoo_list)


async def test_secrets_are_sealed_at_rest(agencies: Agencies, receiver: Receiver, db_url: str) -> None:
    endpoint = await agencies.subscribe("hki-fire", receiver.url)
    conn = await asyncpg.connect(db_url)
    try:
        stored = bytes(await conn.fetchval("SELECT secret FROM webhook_endpoints WHERE id = $1", endpoint["id"]))
    finally:
        await conn.close()
    key = endpoint["secret"].removeprefix("whsec_").encode()
    assert key not in stored and endpoint["secret"].encode() not in stored


async def test_a_refused_connection_is_retried_and_counted(agencies: Agencies, receiver: Receiver) -> None:
    closed = Receiver()  # a port nobody listens on: take one, then close it
    await closed.start()
    url = closed.url
    await closed.stop()
    endpoint = await agencies.subscribe("hki-fire", url)
    await agencies.incident()
    for _ in range(100):
        (delivery,) = await agencies.deliveries("hki-fire", endpoint=endpoint["id"]) or [None]
        if delivery is not None and delivery["attempts"] >= 2:
            break
        await asyncio.sleep(0.05)
    assert delivery is not None and delivery["attempts"] >= 2 and delivery["last_status"] is None
    assert "Connect" in delivery["last_error"] or "refused" in delivery["last_error"].lower()
    metrics = await (await agencies.client.get("/metrics")).text()
    failed = next(line for line in metrics.splitlines() if line.startswith('icp_webhook_attempts{outcome="failed"}'))
    assert float(failed.split()[-1]) >= 2


async def test_two_nodes_on_one_database_deliver_each_event_once(agencies: Agencies, receiver: Receiver,
                                                                 settings: Settings, aiohttp_client) -> None:  # type: ignore[no-untyped-def]
    second = await aiohttp_client(create_app(settings))  # another node: same database, its own engine
    endpoint = await agencies.subscribe("hki-fire", receiver.url)
    receiver.secrets = [endpoint["secret"]]
    for i in range(20):  # events committed through both nodes
        node = agencies.client if i % 2 else second
        response = await node.post("/api/v1/incidents", headers=bearer(agencies.tokens["hki-fire"]), json={
            "type": "structure_fire", "priority": 2, "location": {"lat": 60.17, "lon": 24.94}})
        assert response.status == 201, await response.text()
    got = await receiver.wait_for(lambda r: len(r) >= 20)
    await asyncio.sleep(0.5)  # time for a duplicate to show up, if one were coming
    seqs = [r.body["seq"] for r in receiver.received]
    assert len(seqs) == 20 and len(set(seqs)) == 20, "each event fanned out and delivered once"
    assert seqs == sorted(seqs) and all(r.verified for r in got)
