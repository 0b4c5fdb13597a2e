"""Sending end to end: idempotent resends (socket and REST), attachments (accepted, oversize, disguised),
bounded and validated input, history pages, the incident timeline, and the sending rate."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from icp.client import Backoff, ConsoleClient, FieldUnitClient, OpError
from icp.config import Settings
from icp.messaging import MESSAGING
from tests.helpers import bearer, problem
from tests.icp.client.support import FlakyLink, eventually, unit_token, ws_url
from tests.icp.messaging.support import incident_channel, next_message
from tests.icp.test_dispatch_api import City

FAST = Backoff(initial=0.05, maximum=0.5)
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(range(256)) * 4
PDF = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


async def _history(city: City, channel: str, token: str | None = None, **params: Any) -> dict[str, Any]:
    body: dict[str, Any] = await city.call("GET", f"/api/v1/channels/{channel}/messages", token or
                                           city.tokens["hki-fire"], params=params)
    return body


async def test_a_resend_after_a_lost_answer_posts_nothing_twice(city: City, link: FlakyLink) -> None:
    channel = await incident_channel(city, ["E1"])
    async with FieldUnitClient(link.url, await unit_token(city, "E1", "hki-fire"), backoff=FAST) as e1:
        await e1.wait_connected(5)
        link.swallowing = True  # the server receives the message; its answer is lost on the way back
        sending = asyncio.create_task(e1.send_message(channel, "water supply secured", op_id="E1-msg-1"))

        async def stored() -> bool:
            return len((await _history(city, channel))["messages"]) == 1

        await eventually(stored)
        link.swallowing = False
        link.cut()  # the client reconnects and sends the same op again
        async with asyncio.timeout(10):
            answer = await sending
        assert answer["duplicate"] and answer["message"]["client_id"] == "E1-msg-1"
        messages = (await _history(city, channel))["messages"]
        assert [(m["seq"], m["text"]) for m in messages] == [(answer["message"]["seq"], "water supply secured")]
        # A client id names one message: the same id for another text is refused.
        again = await e1.send_message(channel, "water supply secured", client_id="E1-msg-1")
        assert again["duplicate"] and again["message"]["seq"] == answer["message"]["seq"]
        with pytest.raises(OpError) as refused:
            await e1.send_message(channel, "something else", client_id="E1-msg-1")
        assert refused.value.code == "conflict"
    assert len((await _history(city, channel))["messages"]) == 1


async def test_rest_sends_are_idempotent_by_key_or_client_id(city: City) -> None:
    channel = await incident_channel(city)
    path, headers = f"/api/v1/channels/{channel}/messages", bearer(city.tokens["hki-fire"])
    first = await city.client.post(path, headers={**headers, "Idempotency-Key": "k-1"}, json={"text": "one"})
    again = await city.client.post(path, headers={**headers, "Idempotency-Key": "k-1"}, json={"text": "one"})
    assert first.status == again.status == 201
    assert "Idempotent-Replayed" not in first.headers and again.headers["Idempotent-Replayed"] == "true"
    assert (await first.json())["message"]["seq"] == (await again.json())["message"]["seq"]
    body = await problem(await city.client.post(path, headers={**headers, "Idempotency-Key": "k-1"},
                                                json={"text": "two"}), 409)
    assert body["code"] == "conflict"
    by_id = [await city.call("POST", path, city.tokens["hki-fire"], json={"text": "three", "client_id": "c-3"})
             for _ in range(3)]
    assert len({b["message"]["seq"] for b in by_id}) == 1 and [b["duplicate"] for b in by_id] == [False, True, True]
    await problem(await city.client.post(path, headers={**headers, "Idempotency-Key": "has space"},
                                         json={"text": "x"}), 400)
    assert [m["text"] for m in (await _history(city, channel))["messages"]] == ["one", "three"]


async def test_an_attachment_is_uploaded_sent_and_served_to_members_only(city: City) -> None:
    channel = await incident_channel(city, ["E1"])
    fire = city.tokens["hki-fire"]
    e1_token = await unit_token(city, "E1", "hki-fire")
    uploaded = await city.client.post(f"/api/v1/channels/{channel}/attachments", params={"name": "rear door.png"},
                                      headers={**bearer(fire), "Content-Type": "image/png"}, data=PNG)
    assert uploaded.status == 201, await uploaded.text()
    attachment = await uploaded.json()
    assert attachment["content_type"] == "image/png" and attachment["size"] == len(PNG)
    async with FieldUnitClient(ws_url(city.client), e1_token) as e1:
        await e1.wait_connected(5)
        sent = await city.call("POST", f"/api/v1/channels/{channel}/messages", fire,
                               json={"text": "the rear door", "attachment": attachment["id"]})
        got = await next_message(e1)
        assert got.seq == sent["message"]["seq"] and got.attachment == {
            "id": attachment["id"], "name": "rear door.png", "content_type": "image/png", "size": len(PNG)}
        # The unit's own upload, through the SDK: a PDF floor plan.
        plan = await e1.upload_attachment(channel, PDF, "application/pdf", "plan.pdf")
        assert plan["content_type"] == "application/pdf"
        await e1.send_message(channel, "floor plan", attachment=plan["id"])
    served = await city.client.get(f"/api/v1/attachments/{attachment['id']}", headers=bearer(e1_token))
    assert served.status == 200 and await served.read() == PNG
    assert served.headers["Content-Type"] == "image/png" and served.headers["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in served.headers["Content-Security-Policy"]
    pdf = await city.client.get(f"/api/v1/attachments/{plan['id']}", headers=bearer(fire))
    assert await pdf.read() == PDF and pdf.headers["Content-Disposition"].startswith("attachment;")
    # Not members: another unit of the agency, another agency; unknown ids.
    for token in (await unit_token(city, "E3", "hki-fire"), city.tokens["espoo-fire"]):
        await problem(await city.client.get(f"/api/v1/attachments/{attachment['id']}", headers=bearer(token)), 404)
    for unknown in ("att_" + "0" * 32, "../../etc/passwd", "att_zz"):
        await problem(await city.client.get(f"/api/v1/attachments/{unknown}", headers=bearer(fire)), 404)
    # An attachment is sent in the channel it was uploaded to, by its uploader.
    other = await incident_channel(city)
    body = await problem(await city.client.post(f"/api/v1/channels/{other}/messages", headers=bearer(fire),
                                                json={"text": "wrong channel", "attachment": attachment["id"]}), 422)
    assert body["errors"][0]["field"] == "attachment"
    body = await problem(await city.client.post(f"/api/v1/channels/{channel}/messages", headers=bearer(e1_token),
                                                json={"text": "not mine", "attachment": attachment["id"]}), 422)
    assert body["errors"][0]["field"] == "attachment"


async def test_attachments_never_sent_are_removed_after_a_day(city: City, db_url: str) -> None:
    channel = await incident_channel(city)
    fire = city.tokens["hki-fire"]

    async def upload() -> str:
        response = await city.client.post(f"/api/v1/channels/{channel}/attachments", data=PNG,
                                          headers={**bearer(fire), "Content-Type": "image/png"})
        return str((await response.json())["id"])

    sent, unsent, recent = await upload(), await upload(), await upload()
    await city.call("POST", f"/api/v1/channels/{channel}/messages", fire, json={"text": "x", "attachment": sent})
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute("UPDATE attachments SET created_at = now() - interval '2 days' WHERE id = ANY($1)",
                           [sent, unsent])
    finally:
        await conn.close()
    service = city.client.app[MESSAGING]
    assert await service.remove_orphans() == 1
    for attachment_id, status in ((sent, 200), (unsent, 404), (recent, 200)):
        response = await city.client.get(f"/api/v1/attachments/{attachment_id}", headers=bearer(fire))
        assert response.status == status, attachment_id
    assert not (service.files / unsent[4:6] / unsent).exists()


@pytest.fixture
def small_attachments(settings: Settings) -> Settings:
    object.__setattr__(settings, "attachment_max_bytes", 4096)
    return settings


async def test_oversize_and_disguised_attachments_are_refused(small_attachments: Settings, city: City) -> None:
    channel = await incident_channel(city)
    path, token = f"/api/v1/channels/{channel}/attachments", city.tokens["hki-fire"]

    async def upload(data: Any, content_type: str, who: str = token) -> Any:
        return await city.client.post(path, headers={**bearer(who), "Content-Type": content_type}, data=data)

    body = await problem(await upload(PNG + bytes(4096), "image/png"), 413)
    assert body["code"] == "body_too_large"

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        for _ in range(10):
            yield PNG[:1000]

    await problem(await upload(chunks(), "image/png"), 413)
    disguised = [
        (b"<html><script>alert(document.cookie)</script></html>", "image/png"),  # a page called a picture
        (b"MZ\x90\x00\x03\x00\x00\x00" + bytes(100), "application/pdf"),  # a program called a document
        (PNG, "application/pdf"),  # a real picture, but not what it claims
        (PDF, "image/jpeg"),
        (b"GIF89a" + bytes(50), "image/png"),
    ]
    for content, claimed in disguised:
        body = await problem(await upload(content, claimed), 415)
        assert body["code"] == "unsupported_media_type"
    await problem(await upload(b"", "image/png"), 422)
    body = await problem(await upload(PNG, "image/png", await unit_token(city, "E2", "hki-fire")), 403)
    assert "member" in body["detail"]  # refused before the body is read
    assert (await upload(PNG, "application/octet-stream")).status == 201  # undeclared: the content decides
    bad_name = await city.client.post(path, params={"name": "../x"},
                                      headers={**bearer(token), "Content-Type": "image/png"}, data=PNG)
    await problem(bad_name, 422)


@pytest.fixture
def short_messages(settings: Settings) -> Settings:
    object.__setattr__(settings, "message_max_chars", 100)
    return settings


async def test_bad_input_is_refused_with_its_field(short_messages: Settings, city: City) -> None:
    channel = await incident_channel(city, ["E1"])
    path, headers = f"/api/v1/channels/{channel}/messages", bearer(city.tokens["hki-fire"])
    for body, field in (({"text": "x" * 101}, "text"), ({"text": "  "}, "text"), ({}, "text"),
                        ({"text": "a\u0000b"}, "text"), ({"text": "ok", "priority": "urgent"}, "priority"),
                        ({"text": "ok", "colour": "red"}, "colour"), ({"text": "ok", "client_id": "a b"}, "client_id"),
                        ({"text": "ok", "attachment": 5}, "attachment")):
        problem_body = await problem(await city.client.post(path, headers=headers, json=body), 422)
        assert [e["field"] for e in problem_body["errors"]] == [field], body
    await problem(await city.client.post(path, headers={**headers, "Content-Type": "application/json"},
                                         data=b"{not json"), 400)
    await problem(await city.client.post(path, headers=headers, json=["text"]), 400)
    await problem(await city.client.post(path, headers=headers, json={"text": "x" * 70_000}), 413)
    for params in ({"before": "abc"}, {"limit": "1000"}, {"limit": "0"}):
        await problem(await city.client.get(path, headers=headers, params=params), 400)
    async with FieldUnitClient(ws_url(city.client), await unit_token(city, "E1", "hki-fire")) as e1:
        with pytest.raises(OpError) as refused:  # within the protocol's bound, beyond this server's
            await e1.send_message(channel, "y" * 101)
        assert refused.value.code == "invalid_request" and refused.value.errors[0]["field"] == "/text"
        with pytest.raises(OpError) as refused:  # beyond the protocol's bound: refused by the session
            await e1.send_message(channel, "y" * 4001)
        assert refused.value.code == "invalid_request" and refused.value.errors[0]["field"] == "/text"
        with pytest.raises(OpError) as refused:
            await e1.request("message.receipt", receipts=[{"channel": channel}])
        assert refused.value.errors[0]["field"] == "/receipts/0/delivered"
    assert (await _history(city, channel))["messages"] == []


async def test_history_pages_and_the_incident_timeline(city: City) -> None:
    channel = await incident_channel(city, ["E1"])
    incident_id = channel.removeprefix("incident:")
    fire = city.tokens["hki-fire"]
    sent = [await city.call("POST", f"/api/v1/channels/{channel}/messages", fire, json={"text": f"m{i}"})
            for i in range(7)]
    pages, before = [], None
    while True:
        page = await _history(city, channel, limit=3, **({"before": before} if before else {}))
        pages.append([m["text"] for m in page["messages"]])
        before = page["next_before"]
        if before is None:
            break
    assert pages == [["m4", "m5", "m6"], ["m1", "m2", "m3"], ["m0"]]
    async with ConsoleClient(ws_url(city.client), fire) as console:
        page = await console.history(channel, before=sent[4]["message"]["seq"], limit=2)
        assert [m["text"] for m in page["messages"]] == ["m2", "m3"]
        assert page["next_before"] == sent[2]["message"]["seq"]
    timeline = (await city.call("GET", f"/api/v1/incidents/{incident_id}/timeline", fire))["events"]
    assert [e["data"]["text"] for e in timeline if e["type"] == "message.sent"] == [f"m{i}" for i in range(7)]
    assert timeline.index(next(e for e in timeline if e["type"] == "assignment.dispatched")) < \
        timeline.index(next(e for e in timeline if e["type"] == "message.sent"))
    # The event log keeps messages from everyone but auditors.
    visible = (await city.call("GET", "/api/v1/events", fire, params={"after": 0, "limit": 1000}))["events"]
    assert not [e for e in visible if e["type"].startswith("message.")]
    audited = (await city.call("GET", "/api/v1/events", params={"after": 0, "limit": 1000}))["events"]
    assert len([e for e in audited if e["type"] == "message.sent"]) == 7


@pytest.fixture
def slow_senders(settings: Settings) -> Settings:
    object.__setattr__(settings, "message_rate_per_s", 0.5)
    object.__setattr__(settings, "message_burst", 2)
    return settings


async def test_sending_is_rate_limited_per_member(slow_senders: Settings, city: City) -> None:
    channel = await incident_channel(city, ["E1"])
    path, headers = f"/api/v1/channels/{channel}/messages", bearer(city.tokens["hki-fire"])
    for i in range(2):
        assert (await city.client.post(path, headers=headers, json={"text": f"burst {i}"})).status == 201
    refused = await city.client.post(path, headers=headers, json={"text": "one too many"})
    body = await problem(refused, 429)
    assert body["code"] == "rate_limited" and int(refused.headers["Retry-After"]) >= 1
    async with FieldUnitClient(ws_url(city.client), await unit_token(city, "E1", "hki-fire")) as e1:
        for i in range(2):
            await e1.send_message(channel, f"unit {i}")  # another member: its own allowance
        with pytest.raises(OpError) as limited:
            await e1.send_message(channel, "unit 2")
        assert limited.value.code == "rate_limited" and limited.value.retryable
