"""The pure parts of messaging: channel ids, membership rules, content sniffing, receipt payloads."""

from __future__ import annotations

import asyncio
import json

import asyncpg
import pytest

from icp.auth.principal import Principal, Role
from icp.messaging import store
from icp.messaging.attachments import AttachmentRefused, check_type, path_of, sniff
from icp.messaging.channels import (
    Channel,
    ChannelIdError,
    ChannelKind,
    Member,
    agency_channel,
    can_manage,
    can_read,
    can_write,
    direct_id,
    incident_channel,
    member_key,
    parse_channel_id,
    talkgroup_id,
)
from icp.messaging.receipts import MAX_PAYLOAD, RECEIPTS_CHANNEL, decode_payload

FIRE_DISPATCHER = Member("token:1", Role.DISPATCHER, "fire")
FIRE_SUPERVISOR = Member("user:2", Role.SUPERVISOR, "fire")
EMS_DISPATCHER = Member("token:3", Role.DISPATCHER, "ems")
PARTNER = Member("token:4", Role.DISPATCHER, "espoo")
ADMIN = Member("user:9", Role.ADMIN, None, unrestricted=True)
E1 = Member("unit:E1", Role.UNIT, "fire", "E1")
E2 = Member("unit:E2", Role.UNIT, "fire", "E2")
ES1 = Member("unit:ES1", Role.UNIT, "espoo", "ES1")
SENSOR = Member("token:5", Role.SENSOR, "fire")
AGENCY = Member("token:6", Role.AGENCY, "fire")


def test_channel_ids() -> None:
    assert parse_channel_id("incident:2026-000123") == (ChannelKind.INCIDENT, "2026-000123")
    assert parse_channel_id("talkgroup:fire:ops-1") == (ChannelKind.TALKGROUP, "fire:ops-1")
    assert parse_channel_id(talkgroup_id("fire", "ops_2"))[0] is ChannelKind.TALKGROUP
    for bad in ("incident:", "lobby:x", "incident", "talkgroup:fire", "talkgroup:fire:Ops", "talkgroup:a:b:c",
                "agency:has space", "x" * 129, "", ":x"):
        with pytest.raises(ChannelIdError):
            parse_channel_id(bad)
    with pytest.raises(ChannelIdError):
        talkgroup_id("fire", "Not A Name")
    assert direct_id("unit:E1", "token:1") == direct_id("token:1", "unit:E1") != direct_id("unit:E1", "token:2")
    assert parse_channel_id(direct_id("a", "b"))[0] is ChannelKind.DIRECT


def test_member_keys() -> None:
    unit = Principal(kind="token", id="17", name="E1 terminal", role=Role.UNIT, agency="fire", unit="E1")
    assert member_key(unit) == "unit:E1"  # every terminal of a unit is the unit
    assert member_key(Principal(kind="user", id="4", name="d", role=Role.DISPATCHER, agency="fire")) == "user:4"
    moved = Member.of(unit, unit_agency="espoo")  # the unit's agency now, not the token's
    assert moved.agency == "espoo" and moved.unit == "E1"
    assert not Member.of(Principal(kind="token", id="1", name="", role=Role.UNIT)).messaging  # no unit bound


def test_incident_channel_membership_follows_active_assignments() -> None:
    before = incident_channel("I1", ["fire", "ems"], [])
    after = incident_channel("I1", ["fire", "ems"], [("E1", "fire"), ("ES1", "espoo")])
    assert can_read(before, FIRE_DISPATCHER) and can_read(before, EMS_DISPATCHER)
    assert not can_read(before, E1) and not can_read(before, PARTNER) and not can_read(before, ES1)
    assert can_write(after, E1) and can_write(after, ES1) and can_read(after, PARTNER)
    assert not can_read(after, E2), "a unit of a member agency is not a member by that alone"
    everyone = incident_channel("I2", ["*"], [])
    assert can_read(everyone, PARTNER) and not can_read(everyone, E1)
    for nobody in (SENSOR, AGENCY):
        assert not can_read(after, nobody)
    assert can_read(after, ADMIN)


def test_agency_broadcast_talkgroup_and_direct_rules() -> None:
    agency = agency_channel(ChannelKind.AGENCY, "fire")
    broadcast = agency_channel(ChannelKind.BROADCAST, "fire")
    assert can_write(agency, E1) and can_write(agency, FIRE_DISPATCHER) and not can_read(agency, EMS_DISPATCHER)
    assert can_read(broadcast, E1) and not can_write(broadcast, E1) and not can_write(broadcast, FIRE_DISPATCHER)
    assert can_write(broadcast, FIRE_SUPERVISOR) and can_write(broadcast, ADMIN) and not can_read(broadcast, ES1)
    talkgroup = Channel("talkgroup:fire:ops", ChannelKind.TALKGROUP, "Ops", agency_id="fire",
                        agencies=frozenset({"ems"}), units=frozenset({"ES1"}))
    assert can_read(talkgroup, FIRE_DISPATCHER), "the owner's dispatchers are members"
    assert not can_read(talkgroup, E1), "the owner's units only when listed (or their agency is)"
    assert can_read(talkgroup, EMS_DISPATCHER) and can_read(talkgroup, ES1) and not can_read(talkgroup, PARTNER)
    assert can_manage(talkgroup, FIRE_SUPERVISOR) and not can_manage(talkgroup, FIRE_DISPATCHER)
    assert can_manage(talkgroup, ADMIN) and not can_manage(agency, FIRE_SUPERVISOR)
    direct = Channel(direct_id("unit:E1", "token:1"), ChannelKind.DIRECT, members=("token:1", "unit:E1"))
    assert can_read(direct, E1) and can_write(direct, FIRE_DISPATCHER)
    assert not can_read(direct, E2) and not can_read(direct, ADMIN), "not even administrators read others' direct"


def test_content_is_sniffed_not_trusted() -> None:
    allowed = frozenset({"image/png", "image/jpeg", "application/pdf"})
    png = b"\x89PNG\r\n\x1a\n" + bytes(20)
    assert sniff(png) == "image/png" and sniff(b"\xff\xd8\xff\xe0") == "image/jpeg"
    assert sniff(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "image/webp" and sniff(b"<svg") is None
    assert check_type(png, "image/png; charset=binary", allowed) == "image/png"
    assert check_type(b"\xff\xd8\xff\xdb" + bytes(10), "image/jpg", allowed) == "image/jpeg"  # an alias
    assert check_type(b"%PDF-1.4", None, allowed) == "application/pdf"
    for content, declared in ((png, "application/pdf"), (b"<html>", "image/png"), (b"GIF89a", "image/gif"),
                              (b"", "image/png")):
        with pytest.raises(AttachmentRefused):
            check_type(content, declared, allowed)
    with pytest.raises(ValueError):
        path_of(__import__("pathlib").Path("/x"), "att_../../etc")


async def test_receipts_are_published_in_payloads_notify_accepts(conn: asyncpg.Connection) -> None:
    """The flush builds its NOTIFY payloads in SQL: each must stay under PostgreSQL's 8000 bytes,
    and together they must carry every receipt, once."""
    sender, channel = "user:" + "7" * 18, "talkgroup:" + "a" * 60 + ":" + "b" * 40
    await conn.execute(
        "INSERT INTO messages (seq, channel_id, sender, client_id, request_hash, priority, at)"
        " SELECT s, $1, $2, 'c' || s, '\\x00', 'normal', now() FROM generate_series(1, 300) s", channel, sender)
    heard: list[str] = []
    await conn.add_listener(RECEIPTS_CHANNEL, lambda *args: heard.append(str(args[3])))
    members = [f"unit:U{i:03d}-" + "x" * 100 for i in range(40)]
    async with conn.transaction():
        recorded = await store.flush_cursors(conn, [(m, channel, 300, 150) for m in members],
                                             notify=RECEIPTS_CHANNEL, payload_bytes=MAX_PAYLOAD)
    assert recorded == 300 * 40
    await asyncio.sleep(0.2)
    assert len(heard) > 1 and all(len(p.encode()) < 8000 for p in heard)
    receipts = [pair for p in heard for pair in decode_payload(p)]
    assert len(receipts) == 300 * 40 and {s for s, _ in receipts} == {sender}
    assert len({(r["seq"], r["member"]) for _, r in receipts}) == 300 * 40
    first = next(r for _, r in receipts if r["seq"] == 1)
    assert first["delivered_at"].endswith("Z") and first["read_at"] == first["delivered_at"]
    assert "read_at" not in next(r for _, r in receipts if r["seq"] == 151)
    # Confirming again changes nothing and tells nobody.
    heard.clear()
    async with conn.transaction():
        assert await store.flush_cursors(conn, [(m, channel, 300, 150) for m in members],
                                         notify=RECEIPTS_CHANNEL, payload_bytes=MAX_PAYLOAD) == 0
    await asyncio.sleep(0.2)
    assert heard == []
    cursors = await conn.fetch("SELECT delivered, read FROM channel_cursors WHERE channel_id = $1", channel)
    assert {(c["delivered"], c["read"]) for c in cursors} == {(300, 150)} and len(cursors) == 40
    local = decode_payload(json.dumps([[sender, channel, 1, "unit:U1", None, None], ["user:1", channel, 2, "x", None,
                                                                                     None]]), {sender}.__contains__)
    assert [(s, r["seq"]) for s, r in local] == [(sender, 1)]
    assert decode_payload("not json") == [] and decode_payload(json.dumps([[1, 2], "x"])) == []
