"""Delivery end to end with SDK clients: live to the members online, stored for the offline and delivered
on reconnect (once, in order), receipts back to the sender, emergency acknowledgement, and two nodes."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp.test_utils import TestClient

from icp.app import create_app
from icp.client import Backoff, ConsoleClient, FieldUnitClient
from icp.config import Settings
from tests.icp.client.support import FlakyLink, eventually, unit_token, ws_url
from tests.icp.messaging.support import (
    incident_channel,
    messages_for,
    next_message,
    receipts_until,
    texts,
)
from tests.icp.test_dispatch_api import City

FAST = Backoff(initial=0.05, maximum=0.5)


async def test_messages_reach_every_member_online_in_order_and_nobody_else(city: City) -> None:
    url = ws_url(city.client)
    channel = await incident_channel(city, ["E1", "E2"])
    async with FieldUnitClient(url, await unit_token(city, "E1", "hki-fire")) as e1, \
            FieldUnitClient(url, await unit_token(city, "E2", "hki-fire")) as e2, \
            FieldUnitClient(url, await unit_token(city, "E3", "hki-fire")) as e3, \
            FieldUnitClient(url, await unit_token(city, "M1", "hki-ems")) as m1, \
            ConsoleClient(url, city.tokens["hki-fire"]) as fire, \
            ConsoleClient(url, city.tokens["hki-ems"]) as ems, \
            ConsoleClient(url, city.tokens["espoo-fire"]) as espoo:
        clients = (e1, e2, e3, m1, fire, ems, espoo)
        await asyncio.gather(*(c.wait_connected(5) for c in clients))
        sent = [f"update {i}" for i in range(5)]
        answers = [await e1.send_message(channel, text) for text in sent]
        seqs = [a["message"]["seq"] for a in answers]
        assert seqs == sorted(seqs) and len(set(seqs)) == 5 and not any(a["duplicate"] for a in answers)
        assert answers[0]["message"]["sender"]["member"] == "unit:E1"
        # Every member, the sender's own terminal included, gets all five, in order, once.
        for member in (e1, e2, fire, ems):
            got = [await next_message(member) for _ in sent]
            assert texts(got) == sent and [m.seq for m in got] == seqs and {m.channel for m in got} == {channel}
        # The others get none of it: a message of a channel they do belong to comes first.
        await fire.send_message("agency:hki-fire", "fire roll call")
        await ems.send_message("agency:hki-ems", "ems roll call")
        await city.call("POST", "/api/v1/channels/agency:espoo-fire/messages", city.tokens["espoo-fire"],
                        json={"text": "espoo roll call"})
        assert (await next_message(e3)).text == "fire roll call"
        assert (await next_message(m1)).text == "ems roll call"
        assert (await next_message(espoo)).text == "espoo roll call"
        # The channel's history has the five in order.
        history = await city.call("GET", f"/api/v1/channels/{channel}/messages", city.tokens["hki-fire"])
        assert texts_of(history["messages"]) == sent


def texts_of(views: list[dict[str, Any]]) -> list[str]:
    return [v["text"] for v in views]


async def test_an_offline_member_gets_what_it_missed_on_reconnect_once_and_in_order(city: City) -> None:
    url = ws_url(city.client)
    channel = await incident_channel(city, ["E1"])
    token = await unit_token(city, "E1", "hki-fire")
    async with ConsoleClient(url, city.tokens["hki-fire"]) as fire:
        async with FieldUnitClient(url, token) as e1:
            await e1.wait_connected(5)
            await fire.send_message(channel, "before the tunnel")
            assert (await next_message(e1)).text == "before the tunnel"
        # E1 is offline (its client closed, confirming what it handed out on the way).
        missed = [f"while offline {i}" for i in range(3)]
        for text in missed:
            await fire.send_message(channel, text)
        await fire.send_message("agency:hki-fire", "to the whole agency")
        async with FieldUnitClient(url, token) as e1:
            got = [await next_message(e1) for _ in range(4)]
            assert texts([m for m in got if m.channel == channel]) == missed, "only what it had not confirmed"
            assert [m.text for m in got if m.channel == "agency:hki-fire"] == ["to the whole agency"]
            assert [m.seq for m in got] == sorted(m.seq for m in got)
            await fire.send_message(channel, "live again")
            assert (await next_message(e1)).text == "live again"  # nothing was sent twice before it
        async with FieldUnitClient(url, token) as e1:
            assert not await messages_for(e1, 1.0), "everything was confirmed: nothing comes again"


async def test_a_dropped_link_loses_nothing_and_repeats_nothing(city: City, link: FlakyLink) -> None:
    url = ws_url(city.client)
    channel = await incident_channel(city, ["E1"])
    async with ConsoleClient(url, city.tokens["hki-fire"]) as fire, \
            FieldUnitClient(link.url, await unit_token(city, "E1", "hki-fire"), backoff=FAST) as e1:
        await e1.wait_connected(5)
        for round_ in range(3):
            link.down()  # these are sent while the unit cannot be reached
            missed = [f"missed {round_}.{i}" for i in range(3)]
            for text in missed:
                await fire.send_message(channel, text)
            link.up()
            await fire.send_message(channel, f"live {round_}")
            assert texts(await _take(e1, 4)) == [*missed, f"live {round_}"]
        assert not await messages_for(e1, 0.5), "nothing comes twice"
        assert e1.reconnects >= 3


async def _take(conn: FieldUnitClient, n: int) -> list[Any]:
    return [await next_message(conn) for _ in range(n)]


async def test_receipts_are_visible_to_the_sender(city: City) -> None:
    url = ws_url(city.client)
    channel = await incident_channel(city, ["E1", "E2"])
    e2_token = await unit_token(city, "E2", "hki-fire")
    async with ConsoleClient(url, city.tokens["hki-fire"]) as fire, \
            FieldUnitClient(url, await unit_token(city, "E1", "hki-fire")) as e1, \
            FieldUnitClient(url, e2_token) as e2:
        await asyncio.gather(fire.wait_connected(5), e1.wait_connected(5), e2.wait_connected(5))
        sent = (await fire.send_message(channel, "report your water supply"))["message"]
        seq = sent["seq"]
        for unit in (e1, e2):
            assert (await next_message(unit)).seq == seq
        delivered = await receipts_until(fire, lambda rs: {r.member for r in rs if r.delivered_at} >= {"unit:E1",
                                                                                                       "unit:E2"})
        assert all(r.seq == seq and r.channel == channel for r in delivered)
        e1.mark_read(channel, seq)
        await e1.confirm_receipts()
        read = await receipts_until(fire, lambda rs: any(r.read_at for r in rs))
        assert [(r.member, r.seq) for r in read if r.read_at] == [("unit:E1", seq)]
        # The full record over REST: for the sender ...
        record = await city.call("GET", f"/api/v1/channels/{channel}/messages/{seq}/receipts", city.tokens["hki-fire"])
        by_member = {r["member"]: r for r in record["receipts"]}
        assert by_member["unit:E1"]["delivered_at"] and by_member["unit:E1"]["read_at"]
        assert by_member["unit:E2"]["delivered_at"] and by_member["unit:E2"]["read_at"] is None
        assert "token:" not in "".join(by_member), "the sender does not receipt its own message"
        history = await city.call("GET", f"/api/v1/channels/{channel}/messages", city.tokens["hki-fire"])
        assert history["messages"][-1]["receipts"] == {"delivered": 2, "read": 1, "acked": 0}
        # ... and for nobody else but supervisors.
        response = await city.client.get(f"/api/v1/channels/{channel}/messages/{seq}/receipts",
                                         headers={"Authorization": f"Bearer {e2_token}"})
        assert response.status == 403


async def test_an_emergency_message_is_repeated_until_acknowledged(city: City, make_token: Any) -> None:
    url = ws_url(city.client)
    supervisor = await make_token("supervisor", agency="hki-fire")
    e1_token, e3_token = await unit_token(city, "E1", "hki-fire"), await unit_token(city, "E3", "hki-fire")
    async with ConsoleClient(url, supervisor) as chief:
        async with FieldUnitClient(url, e1_token) as e1:
            await asyncio.gather(chief.wait_connected(5), e1.wait_connected(5))
            sent = (await chief.send_message("broadcast:hki-fire", "Evacuate sector B now", priority="emergency"))
            seq = sent["message"]["seq"]
            first = await next_message(e1)
            assert first.seq == seq and first.ack_required and first.priority == "emergency" and not first.repeat
        async with FieldUnitClient(url, e1_token) as e1:  # delivered, not acknowledged: it comes again
            again = await next_message(e1)
            assert again.seq == seq and again.repeat and again.ack_required
            acked = await e1.ack_message("broadcast:hki-fire", seq)
            assert acked["acked_at"] and not acked["duplicate"]
            assert (await e1.ack_message("broadcast:hki-fire", seq))["acked_at"] == acked["acked_at"]
        receipts = await receipts_until(chief, lambda rs: any(r.acked_at for r in rs))
        assert [(r.member, r.seq) for r in receipts if r.acked_at] == [("unit:E1", seq)]
        async with FieldUnitClient(url, e1_token) as e1:
            assert not await messages_for(e1, 1.0), "acknowledged: not repeated"
        async with FieldUnitClient(url, e3_token) as e3:  # offline all along: gets it as a new message
            late = await next_message(e3)
            assert late.seq == seq and late.ack_required and not late.repeat
    record = await city.call("GET", f"/api/v1/channels/broadcast:hki-fire/messages/{seq}/receipts", supervisor)
    acks = {r["member"]: r["acked_at"] for r in record["receipts"]}
    assert acks["unit:E1"] and not acks.get("unit:E3")
    log = await city.call("GET", "/api/v1/events", params={"after": 0, "limit": 1000})
    assert [e["data"]["member"] for e in log["events"] if e["type"] == "message.acknowledged"] == ["unit:E1"]


async def test_two_nodes_deliver_each_others_messages_and_receipts(city: City, settings: Settings,
                                                                   aiohttp_client: Any) -> None:
    other: TestClient = await aiohttp_client(create_app(settings))  # a second node on the same database
    channel = await incident_channel(city, ["E1"])
    async with ConsoleClient(ws_url(city.client), city.tokens["hki-fire"]) as fire, \
            FieldUnitClient(ws_url(other), await unit_token(city, "E1", "hki-fire")) as e1:
        await asyncio.gather(fire.wait_connected(5), e1.wait_connected(5))
        seq = (await fire.send_message(channel, "across nodes"))["message"]["seq"]
        got = await next_message(e1)
        assert (got.text, got.seq) == ("across nodes", seq)
        reply = await e1.send_message(channel, "copy")
        assert (await next_message(fire, lambda m: m.text == "copy")).seq == reply["message"]["seq"]
        receipts = await receipts_until(fire, lambda rs: any(r.member == "unit:E1" and r.seq == seq for r in rs))
        assert receipts[-1].delivered_at


async def test_a_slow_consumer_catches_up_without_loss(city: City) -> None:
    url = ws_url(city.client)
    channel = await incident_channel(city, ["E1"])
    token = await unit_token(city, "E1", "hki-fire")
    async with ConsoleClient(url, city.tokens["hki-fire"]) as fire:
        for i in range(40):
            await fire.send_message(channel, f"m{i}")
        async with FieldUnitClient(url, token, max_messages=8, backoff=FAST) as e1:
            got = [await next_message(e1) for _ in range(40)]
            assert texts(got) == [f"m{i}" for i in range(40)]
            await eventually(_no_pending(e1))


def _no_pending(conn: FieldUnitClient) -> Any:
    async def check() -> bool:
        return not conn.pending
    return check


async def test_a_client_that_shows_no_messages_confirms_them_as_they_arrive(city: City) -> None:
    url = ws_url(city.client)
    channel = await incident_channel(city, ["E1"])
    token = await unit_token(city, "E1", "hki-fire")
    async with ConsoleClient(url, city.tokens["hki-fire"]) as fire:
        async with FieldUnitClient(url, token, take_messages=False) as e1:  # a simulated unit, say
            await asyncio.gather(fire.wait_connected(5), e1.wait_connected(5))
            seq = (await fire.send_message(channel, "noted, not shown"))["message"]["seq"]
            receipts = await receipts_until(fire, lambda rs: any(r.member == "unit:E1" for r in rs))
            assert receipts[-1].seq == seq and receipts[-1].delivered_at
        async with FieldUnitClient(url, token) as e1:
            assert not await messages_for(e1, 1.0), "confirmed: not sent again"
