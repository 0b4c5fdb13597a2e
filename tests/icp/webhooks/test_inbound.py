"""Signed inbound requests from agencies (signed here with the `standardwebhooks` reference library),
and the full mutual-aid round trip: request out by webhook, answer back by signed request."""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from standardwebhooks.webhooks import Webhook

from icp.config import Settings
from tests.helpers import bearer, problem
from tests.icp.test_dispatch_api import City, build_city
from tests.icp.webhooks.support import Receiver


@pytest.fixture(autouse=True)
def fast_webhooks(settings: Settings) -> Settings:
    for name, value in (("webhook_allow", "loopback"), ("webhook_time_scale", 0.001), ("webhook_poll_s", 0.05)):
        object.__setattr__(settings, name, value)
    return settings


@pytest.fixture
async def city(with_roads, client: TestClient, make_token) -> City:  # type: ignore[no-untyped-def]
    city = await build_city(client, make_token)
    city.tokens["espoo-fire:agency"] = await make_token("agency", agency="espoo-fire")
    return city


def signed(secret: str, body: dict[str, Any] | bytes, *, msg_id: str | None = None,
           at: datetime | None = None) -> tuple[bytes, dict[str, str]]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    msg_id = msg_id or f"msg_{secrets.token_hex(8)}"
    at = at or datetime.now(UTC)
    signature = Webhook(secret).sign(msg_id, at, raw.decode())
    return raw, {"webhook-id": msg_id, "webhook-timestamp": str(int(at.timestamp())),
                 "webhook-signature": signature, "content-type": "application/json"}


async def _secret(city: City, agency: str = "espoo-fire") -> str:
    made = await city.call("POST", f"/api/v1/agencies/{agency}/inbound-secret", city.tokens[f"{agency}:agency"])
    assert made["secret"].startswith("whsec_")
    return str(made["secret"])


async def _post(city: City, raw: bytes, headers: dict[str, str], agency: str = "espoo-fire") -> Any:
    return await city.client.post(f"/api/v1/agencies/{agency}/inbound", data=raw, headers=headers)


async def test_a_good_signature_applies_and_bad_ones_apply_nothing(city: City) -> None:
    secret = await _secret(city)
    status = {"type": "unit.status", "data": {"unit": "ES-E1", "status": "out_of_service"}}
    # Wrong secret, tampered body, stale and future timestamps: 401, and the unit is untouched.
    other = "whsec_" + "A" * 43 + "="
    for raw, headers in (
        signed(other, status),
        (json.dumps({**status, "data": {"unit": "ES-E1", "status": "off_duty"}}).encode(), signed(secret, status)[1]),
        signed(secret, status, at=datetime.now(UTC) - timedelta(minutes=10)),
        signed(secret, status, at=datetime.now(UTC) + timedelta(minutes=10)),
    ):
        body = await problem(await _post(city, raw, headers), 401)
        assert body["title"] and "signature" in body["detail"]
    await problem(await _post(city, b"{}", {}), 401)  # unsigned
    assert (await city.call("GET", "/api/v1/units/ES-E1"))["status"] == "available"
    raw, headers = signed(secret, status)
    ok = await _post(city, raw, headers)
    assert ok.status == 200, await ok.text()
    assert (await ok.json())["webhook_id"] == headers["webhook-id"]
    assert (await city.call("GET", "/api/v1/units/ES-E1"))["status"] == "out_of_service"
    # The same message again is a replay: refused, even though the signature is good.
    body = await problem(await _post(city, raw, headers), 401)
    assert "replay" in body["detail"]


async def test_an_agency_acts_only_on_its_own(city: City) -> None:
    secret = await _secret(city)
    raw, headers = signed(secret, {"type": "unit.status", "data": {"unit": "E1", "status": "off_duty"}})
    await problem(await _post(city, raw, headers), 404)  # E1 is Helsinki's: not espoo-fire's to command
    # Espoo's secret does not sign for Helsinki, and an agency without a secret accepts nothing.
    raw, headers = signed(secret, {"type": "unit.status", "data": {"unit": "E1", "status": "off_duty"}})
    await problem(await _post(city, raw, headers, agency="hki-fire"), 401)
    await problem(await _post(city, raw, headers, agency="no-such-agency"), 401)
    assert (await city.call("GET", "/api/v1/units/E1"))["status"] == "available"


async def test_malformed_and_oversize_requests(city: City, settings: Settings) -> None:
    secret = await _secret(city)
    for body, field in (({"type": "launch.missiles", "data": {}}, "type"),
                        ({"type": "unit.status", "data": {"unit": "ES-E1"}}, "data.status"),
                        ({"type": "unit.status", "data": {"unit": "ES-E1", "status": "flying"}}, "status"),
                        (b"not json", "")):
        raw, headers = signed(secret, body)
        answer = await problem(await _post(city, raw, headers), 422)
        assert answer["errors"][0]["field"] == field, body
    raw, headers = signed(secret, {"type": "incident.note", "data": {"incident": "x", "text": "y" * 70_000}})
    await problem(await _post(city, raw, headers), 413)
    raw, headers = signed(secret, {"type": "mutual_aid.accept", "data": {"assignment": "nope"}})
    await problem(await _post(city, raw, headers), 409)


async def test_mutual_aid_round_trip_over_webhooks_and_signed_answers(city: City) -> None:
    receiver = await Receiver().start()
    try:
        hook = await city.call("POST", "/api/v1/agencies/espoo-fire/webhooks", city.tokens["espoo-fire:agency"],
                               json={"url": receiver.url, "events": ["assignment.*", "incident.*"]})
        receiver.secrets = [hook["secret"]]
        secret = await _secret(city)
        incident = await city.incident("vehicle_fire", priority=3, token=city.tokens["hki-fire"])
        iid = incident["id"]
        await city.call("POST", f"/api/v1/incidents/{iid}/assignments", city.tokens["hki-fire"],
                        json={"units": [{"unit_id": "ES-E1", "capability": "ENGINE"}]})
        got = await receiver.wait_for(lambda r: any(x.body["type"] == "assignment.mutual_aid_requested" for x in r))
        request = next(x for x in got if x.body["type"] == "assignment.mutual_aid_requested")
        assert request.verified and request.body["data"]["agency_id"] == "espoo-fire"
        assert request.body["data"]["eido"]["incidentComponent"]
        # The incident was created before Espoo was involved: it never saw incident.created.
        assert "incident.created" not in receiver.types()
        raw, headers = signed(secret, {"type": "mutual_aid.accept",
                                       "data": {"assignment": request.body["data"]["assignment_id"]}})
        answer = await _post(city, raw, headers)
        assert answer.status == 200, await answer.text()
        assert (await city.call("GET", "/api/v1/units/ES-E1"))["status"] == "dispatched"
        await receiver.wait_for(lambda r: "assignment.dispatched" in [x.body["type"] for x in r])
        raw, headers = signed(secret, {"type": "incident.note", "data": {"incident": iid, "text": "ES-E1 rolling"}})
        assert (await _post(city, raw, headers)).status == 200
        timeline = (await city.call("GET", f"/api/v1/incidents/{iid}/timeline"))["events"]
        types = [e["type"] for e in timeline]
        assert types.index("assignment.mutual_aid_requested") < types.index("assignment.mutual_aid_accepted") \
            < types.index("assignment.dispatched") < types.index("incident.note_added")
        accepted = next(e for e in timeline if e["type"] == "assignment.mutual_aid_accepted")
        assert accepted["actor"]["role"] == "agency" and accepted["actor"]["agency"] == "espoo-fire"
    finally:
        await receiver.stop()


async def test_a_declined_request_over_inbound_moves_to_the_next_candidate(city: City) -> None:
    secret = await _secret(city)
    incident = await city.incident("vehicle_fire", priority=3, token=city.tokens["hki-fire"])
    after = await city.call("POST", f"/api/v1/incidents/{incident['id']}/assignments", city.tokens["hki-fire"],
                            json={"units": [{"unit_id": "ES-E1", "capability": "ENGINE"}]})
    raw, headers = signed(secret, {"type": "mutual_aid.decline",
                                   "data": {"assignment": after["assignments"][0]["id"], "reason": "busy"}})
    assert (await _post(city, raw, headers)).status == 200
    now = await city.call("GET", f"/api/v1/incidents/{incident['id']}")
    by_unit = {a["unit_id"]: a["status"] for a in now["assignments"]}
    assert by_unit["ES-E1"] == "declined" and "recommended" in by_unit.values()
    await problem(await city.client.get("/api/v1/agencies/espoo-fire/webhooks",
                                        headers=bearer(city.tokens["hki-fire"])), 403)
