"""Who belongs to which channel, end to end: incident channels follow assignments (and mutual aid),
agency, broadcast, talkgroup and direct channels, and every way of being refused."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from icp.client import ConsoleClient, FieldUnitClient, OpError
from tests.helpers import bearer, problem
from tests.icp.client.support import unit_token, ws_url
from tests.icp.messaging.support import dispatch, incident_channel, next_message
from tests.icp.test_dispatch_api import City


async def _assignment(city: City, channel: str, unit: str) -> dict[str, Any]:
    incident = await city.call("GET", f"/api/v1/incidents/{channel.removeprefix('incident:')}")
    return next(a for a in incident["assignments"] if a["unit_id"] == unit)  # type: ignore[no-any-return]


async def test_a_unit_belongs_to_an_incident_channel_while_assigned_and_not_after(city: City) -> None:
    url = ws_url(city.client)
    channel = await incident_channel(city)
    token = await unit_token(city, "E1", "hki-fire")
    async with FieldUnitClient(url, token) as e1, ConsoleClient(url, city.tokens["hki-fire"]) as fire:
        await asyncio.gather(e1.wait_connected(5), fire.wait_connected(5))
        assert channel not in [c["id"] for c in await e1.channels()]
        with pytest.raises(OpError) as refused:
            await e1.send_message(channel, "can I help?")
        assert refused.value.code == "forbidden"
        await fire.send_message(channel, "before E1 is assigned")
        await dispatch(city, channel.removeprefix("incident:"), ["E1"])  # joins
        assert channel in [c["id"] for c in await e1.channels()]
        await fire.send_message(channel, "E1, you are assigned")
        assert (await next_message(e1)).text == "E1, you are assigned"  # the one before was not for it
        sent = await e1.send_message(channel, "en route")
        assert sent["message"]["sender"]["member"] == "unit:E1"
        assert (await next_message(e1)).seq == sent["message"]["seq"]  # its own message comes back too
        history = await e1.history(channel)
        assert [m["text"] for m in history["messages"]] == ["before E1 is assigned", "E1, you are assigned", "en route"]
        # The assignment ends: the unit leaves the channel at once.
        assignment = await _assignment(city, channel, "E1")
        await city.call("POST", f"/api/v1/assignments/{assignment['id']}/cancel", city.tokens["hki-fire"],
                        json={"reason": "not needed"})
        await fire.send_message(channel, "after E1 left")
        await fire.send_message("agency:hki-fire", "agency update")
        assert (await next_message(e1)).text == "agency update"
        for attempt in (e1.send_message(channel, "still here?"), e1.history(channel)):
            with pytest.raises(OpError) as refused:
                await attempt
            assert refused.value.code == "forbidden"
        await problem(await city.client.get(f"/api/v1/channels/{channel}/messages", headers=bearer(token)), 403)
        assert channel not in [c["id"] for c in await e1.channels()]


async def test_mutual_aid_makes_the_partner_a_member_only_once_accepted(city: City) -> None:
    url = ws_url(city.client)
    channel = await incident_channel(city)
    incident_id = channel.removeprefix("incident:")
    requested = await dispatch(city, incident_id, ["ES-E1"])  # hki-fire asks espoo-fire for an engine
    (request,) = [a for a in requested["assignments"] if a["unit_id"] == "ES-E1"]
    assert request["status"] == "requested"
    espoo = city.tokens["espoo-fire"]
    async with FieldUnitClient(url, await unit_token(city, "ES-E1", "espoo-fire")) as es_e1, \
            ConsoleClient(url, espoo) as partner, ConsoleClient(url, city.tokens["hki-fire"]) as fire:
        await asyncio.gather(es_e1.wait_connected(5), partner.wait_connected(5), fire.wait_connected(5))
        # Asked, not yet lending: the partner sees the incident but not its channel, nor does the unit.
        await problem(await city.client.get(f"/api/v1/channels/{channel}/messages", headers=bearer(espoo)), 403)
        with pytest.raises(OpError) as refused:
            await es_e1.send_message(channel, "waiting for orders")
        assert refused.value.code == "forbidden"
        await fire.send_message(channel, "while the request is open")
        await city.call("POST", f"/api/v1/assignments/{request['id']}/accept", espoo)
        await fire.send_message(channel, "welcome, Espoo")
        assert (await next_message(partner)).text == "welcome, Espoo"  # the earlier one did not reach them
        assert (await next_message(es_e1)).text == "welcome, Espoo"
        reply = await partner.send_message(channel, "ES-E1 on its way")
        assert (await next_message(fire, lambda m: m.seq == reply["message"]["seq"])).text == "ES-E1 on its way"
        assert channel in [c["id"] for c in await partner.channels()]


async def test_isolation_between_agencies_and_roles(city: City, make_token: Any) -> None:
    channel = await incident_channel(city, ["E1"])
    client = city.client
    police, espoo = city.tokens["hki-police"], city.tokens["espoo-fire"]
    # Another agency's incident, agency and broadcast channels do not exist for it.
    for path in (f"/api/v1/channels/{channel}/messages", "/api/v1/channels/agency:hki-fire",
                 "/api/v1/channels/broadcast:hki-fire/messages"):
        await problem(await client.get(path, headers=bearer(espoo)), 404)
    await problem(await client.post(f"/api/v1/channels/{channel}/messages", headers=bearer(espoo),
                                    json={"text": "hello?"}), 404)
    # Home agencies of the incident are members (police dispatchers included); unknown channels are 404.
    assert (await city.call("POST", f"/api/v1/channels/{channel}/messages", police, json={"text": "cordon set"}))
    for unknown in ("incident:1999-999999", "agency:nobody", "talkgroup:hki-fire:none", "direct:00", "lobby:x",
                    "not a channel"):
        await problem(await client.get(f"/api/v1/channels/{unknown}/messages", headers=bearer(police)), 404)
    # Machines of other roles take no part.
    for role, extra in (("sensor", {}), ("agency", {"agency": "hki-fire"})):
        token = await make_token(role, **extra)
        await problem(await client.get("/api/v1/channels", headers=bearer(token)), 403)
        await problem(await client.post(f"/api/v1/channels/{channel}/messages", headers=bearer(token),
                                        json={"text": "x"}), 403)
    await problem(await client.get("/api/v1/channels"), 401)
    # A broadcast channel: units read it, only supervisors write it.
    unit = await unit_token(city, "E2", "hki-fire")
    supervisor = await make_token("supervisor", agency="hki-fire")
    for token in (unit, city.tokens["hki-fire"]):
        body = await problem(await client.post("/api/v1/channels/broadcast:hki-fire/messages", headers=bearer(token),
                                               json={"text": "all units"}), 403)
        assert "supervisors" in body["detail"]
    await city.call("POST", "/api/v1/channels/broadcast:hki-fire/messages", supervisor, json={"text": "all units"})
    assert [m["text"] for m in (await city.call("GET", "/api/v1/channels/broadcast:hki-fire/messages",
                                                unit))["messages"]] == ["all units"]
    # Over the socket the same denials carry the protocol's codes.
    async with FieldUnitClient(ws_url(client), unit) as e2:
        for target, code in ((channel, "forbidden"), ("agency:hki-ems", "not_found"),
                             ("broadcast:hki-fire", "forbidden"), ("nonsense:x", "not_found")):
            with pytest.raises(OpError) as refused:
                await e2.send_message(target, "test")
            assert refused.value.code == code, target


async def test_direct_channels_join_two_members_only(city: City, make_token: Any) -> None:
    url = ws_url(city.client)
    e1_token = await unit_token(city, "E1", "hki-fire")
    opened = await city.client.post("/api/v1/channels", headers=bearer(city.tokens["hki-fire"]),
                                    json={"kind": "direct", "with": "unit:E1"})
    assert opened.status == 201
    direct = await opened.json()
    dispatcher = next(k for k in direct["members"] if k != "unit:E1")
    again = await city.call("POST", "/api/v1/channels", e1_token, json={"kind": "direct", "with": dispatcher})
    assert again["id"] == direct["id"], "one channel between two members, whoever opens it"
    async with FieldUnitClient(url, e1_token) as e1, \
            FieldUnitClient(url, await unit_token(city, "E2", "hki-fire")) as e2, \
            ConsoleClient(url, await make_token("dispatcher", agency="hki-fire")) as colleague:
        await asyncio.gather(e1.wait_connected(5), e2.wait_connected(5), colleague.wait_connected(5))
        await city.call("POST", f"/api/v1/channels/{direct['id']}/messages", city.tokens["hki-fire"],
                        json={"text": "E1, call me on the phone"})
        assert (await next_message(e1)).text == "E1, call me on the phone"
        await city.call("POST", "/api/v1/channels/agency:hki-fire/messages", city.tokens["hki-fire"],
                        json={"text": "to everyone"})
        for bystander in (e2, colleague):  # same agency, not in the conversation
            assert (await next_message(bystander)).text == "to everyone"
            with pytest.raises(OpError) as refused:
                await bystander.history(direct["id"])
            assert refused.value.code == "not_found"
    # Agency isolation: police and an Espoo unit have nothing to say to each other directly.
    body = await problem(await city.client.post("/api/v1/channels", headers=bearer(city.tokens["hki-police"]),
                                                json={"kind": "direct", "with": "unit:ES-E1"}), 404)
    assert "unit:ES-E1" in body["detail"]
    await problem(await city.client.post("/api/v1/channels", headers=bearer(e1_token),
                                         json={"kind": "direct", "with": "user:abc"}), 404)
    for bad in ("unit:E1 ", "agency:x", "unit:" + "u" * 200, 7, None):
        await problem(await city.client.post("/api/v1/channels", headers=bearer(e1_token),
                                             json={"kind": "direct", "with": bad}), 422)
    await problem(await city.client.post("/api/v1/channels", headers=bearer(e1_token),
                                         json={"kind": "direct", "with": "unit:E1"}), 422)  # oneself


async def test_talkgroups_are_made_by_supervisors_and_follow_their_lists(city: City, make_token: Any) -> None:
    url = ws_url(city.client)
    supervisor = await make_token("supervisor", agency="hki-fire")
    client = city.client
    await problem(await client.post("/api/v1/channels", headers=bearer(city.tokens["hki-fire"]),
                                    json={"kind": "talkgroup", "name": "ops1", "title": "Ops 1"}), 403)
    body = await problem(await client.post("/api/v1/channels", headers=bearer(supervisor), json={
        "kind": "talkgroup", "name": "ops1", "title": "Ops 1", "agencies": [], "units": ["E1", "M1"]}), 422)
    assert [e["field"] for e in body["errors"]] == ["units/1"]  # an EMS unit: not this agency nor a partner
    body = await problem(await client.post("/api/v1/channels", headers=bearer(supervisor), json={
        "kind": "talkgroup", "name": "Ops One!", "title": "Ops 1"}), 422)
    assert body["errors"][0]["field"] == "name"
    created = await city.call("POST", "/api/v1/channels", supervisor, json={
        "kind": "talkgroup", "name": "ops1", "title": "Ops 1", "agencies": [], "units": ["E1", "ES-L1"]})
    assert created["id"] == "talkgroup:hki-fire:ops1" and created["units"] == ["E1", "ES-L1"]
    await problem(await client.post("/api/v1/channels", headers=bearer(supervisor), json={
        "kind": "talkgroup", "name": "ops1", "title": "again"}), 409)
    tg = created["id"]
    async with FieldUnitClient(url, await unit_token(city, "E1", "hki-fire")) as e1, \
            FieldUnitClient(url, await unit_token(city, "E2", "hki-fire")) as e2, \
            FieldUnitClient(url, await unit_token(city, "ES-L1", "espoo-fire")) as es_l1:
        await asyncio.gather(e1.wait_connected(5), e2.wait_connected(5), es_l1.wait_connected(5))
        await city.call("POST", f"/api/v1/channels/{tg}/messages", city.tokens["hki-fire"], json={"text": "check 1"})
        assert (await next_message(e1)).text == "check 1"
        assert (await next_message(es_l1)).text == "check 1"  # a partner's unit, listed
        # E2 is added: it hears what follows.
        await problem(await client.patch(f"/api/v1/channels/{tg}", headers=bearer(city.tokens["hki-fire"]),
                                         json={"units": ["E1", "E2"]}), 403)
        changed = await city.call("PATCH", f"/api/v1/channels/{tg}", supervisor, json={"units": ["E1", "E2"]})
        assert changed["units"] == ["E1", "E2"]
        await es_l1.send_message("agency:espoo-fire", "espoo only")  # ES-L1 was removed: this comes first
        await city.call("POST", f"/api/v1/channels/{tg}/messages", supervisor, json={"text": "check 2"})
        assert (await next_message(e2)).text == "check 2"
        assert (await next_message(es_l1)).text == "espoo only"
        with pytest.raises(OpError) as refused:
            await es_l1.send_message(tg, "still listening?")
        assert refused.value.code == "not_found"
    listed = [c["id"] for c in (await city.call("GET", "/api/v1/channels", city.tokens["hki-fire"]))["channels"]]
    assert tg in listed and "agency:hki-fire" in listed and "broadcast:hki-fire" in listed


async def test_a_unit_dispatched_while_offline_finds_the_incident_thread_when_it_connects(city: City) -> None:
    channel = await incident_channel(city)
    fire = city.tokens["hki-fire"]
    for text in ("caller trapped on 3rd floor", "smoke from the roof"):
        await city.call("POST", f"/api/v1/channels/{channel}/messages", fire, json={"text": text})
    await dispatch(city, channel.removeprefix("incident:"), ["E2"])
    await city.call("POST", f"/api/v1/channels/{channel}/messages", fire, json={"text": "E2, use the east stairs"})
    async with FieldUnitClient(ws_url(city.client), await unit_token(city, "E2", "hki-fire")) as e2:
        got = [await next_message(e2) for _ in range(3)]
    assert [m.text for m in got] == ["caller trapped on 3rd floor", "smoke from the roof", "E2, use the east stairs"]
    assert {m.channel for m in got} == {channel}
