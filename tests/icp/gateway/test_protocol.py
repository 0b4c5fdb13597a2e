"""The sans-I/O WebSocket protocol: hello, ops and their fields, answers, abuse, heartbeats, bounds, fuzzing."""

from __future__ import annotations

import ast
import json
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispatch import _checks
from dispatch.errors import Invalid
from icp.gateway import protocol
from icp.gateway.protocol import (
    OPS,
    Action,
    Authenticate,
    Close,
    Execute,
    FieldError,
    Notify,
    Send,
    Session,
    State,
    error_frame,
    event_frame,
    message_frame,
    positions_frame,
    receipts_frame,
    resync_frame,
)

ROOT = Path(__file__).resolve().parents[3]
MISSING = object()
T0 = 1000.0  # sessions start at an arbitrary clock reading, as loop.time() does


def frame(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)


def hello(**extra: Any) -> str:
    return frame({"op": "hello", "token": "secret", **extra})


def opened(**options: Any) -> Session:
    s = Session(now=T0, **options)
    assert isinstance(s.receive_text(hello(), T0 + 0.1)[0], Authenticate)
    assert s.authenticated({"kind": "token", "role": "dispatcher"}, "sess-1", 41)[0].frame["op"] == "welcome"
    return s


def one(actions: list[Action]) -> Action:
    assert len(actions) == 1, actions
    return actions[0]


def sent(actions: list[Action]) -> dict[str, Any]:
    action = one(actions)
    assert isinstance(action, Send), action
    return action.frame


def op(s: Session, name: str, op_id: Any = "op-1", now: float = T0 + 1, **fields: Any) -> list[Action]:
    return s.receive_text(frame({"op": name, "id": op_id, **fields}), now)


# ---------------------------------------------------------------------------------------------
# The op table, written out independently of the implementation so that a change to either shows.

UNIT_OPS = {"position", "status", "ack", "decline", "en_route", "on_scene", "clear"}
CONSOLE_OPS = {"subscribe", "unsubscribe", "incident.create", "incident.dispatch", "incident.note",
               "incident.close", "incident.cancel", "recommend"}
# Messaging is for units and consoles alike; the handler decides membership.
MESSAGE_OPS = {"message.send", "message.receipt", "message.ack", "message.history", "channel.list"}
# Media signaling is for units and consoles alike; the media service decides room membership.
MEDIA_OPS = {"rtc.call", "rtc.accept", "rtc.decline", "rtc.join", "rtc.offer", "rtc.answer", "rtc.candidate",
             "rtc.hangup", "rtc.video", "ptt.request", "ptt.release"}
ANY_OPS = {"ping", "pong", *MESSAGE_OPS, *MEDIA_OPS}

POSITION = {"lat": 51.5, "lon": -0.12, "time": "2026-05-01T12:00:00Z"}
LONG = "x" * 129

# op → (minimal valid fields, [(field overrides, expected args)], [(field overrides, error field path)])
CASES: dict[str, tuple[dict[str, Any], list[tuple[dict[str, Any], dict[str, Any]]],
                       list[tuple[dict[str, Any], str]]]] = {
    "position": (POSITION, [
        ({}, {"lat": 51.5, "lon": -0.12, "time": datetime(2026, 5, 1, 12, tzinfo=UTC)}),
        ({"lat": -90, "lon": 180, "accuracy": 0, "heading": 360, "speed": 0, "time": "2026-05-01T14:30:00+02:00"},
         {"lat": -90.0, "lon": 180.0, "accuracy": 0.0, "heading": 360.0, "speed": 0.0,
          "time": datetime(2026, 5, 1, 12, 30, tzinfo=UTC)}),
        ({"lat": 90, "lon": -180, "accuracy": 12.5, "heading": 0, "speed": 33.3, "extra": "ignored"},
         {"lat": 90.0, "lon": -180.0, "accuracy": 12.5, "heading": 0.0, "speed": 33.3,
          "time": datetime(2026, 5, 1, 12, tzinfo=UTC)}),
        ({"accuracy": None, "heading": None, "speed": None},  # null = absent
         {"lat": 51.5, "lon": -0.12, "time": datetime(2026, 5, 1, 12, tzinfo=UTC)}),
    ], [
        ({"lat": MISSING}, "/lat"), ({"lat": 90.0001}, "/lat"), ({"lat": -91}, "/lat"), ({"lat": "51.5"}, "/lat"),
        ({"lat": True}, "/lat"), ({"lat": [51.5]}, "/lat"), ({"lat": 10**400}, "/lat"),
        ({"lon": MISSING}, "/lon"), ({"lon": 180.5}, "/lon"), ({"lon": -181}, "/lon"), ({"lon": None}, "/lon"),
        ({"accuracy": -1}, "/accuracy"), ({"accuracy": "5"}, "/accuracy"), ({"accuracy": 10**400}, "/accuracy"),
        ({"heading": -0.1}, "/heading"), ({"heading": 360.5}, "/heading"), ({"heading": False}, "/heading"),
        ({"speed": -0.5}, "/speed"), ({"speed": {}}, "/speed"),
        ({"time": MISSING}, "/time"), ({"time": "2026-05-01T12:00:00"}, "/time"), ({"time": "yesterday"}, "/time"),
        ({"time": 1777636800}, "/time"), ({"time": "2026-13-01T00:00:00Z"}, "/time"), ({"time": "2026-05-01"}, "/time"),
        ({"time": "0001-01-01T00:00:00+01:00"}, "/time"), ({"time": "2026-05-01T12:00:00Z" + " " * 60}, "/time"),
    ]),
    "status": ({"status": "available"}, [
        ({"status": s}, {"status": s}) for s in
        ("available", "out_of_service", "off_duty", "en_route", "on_scene", "transporting", "at_hospital")
    ], [
        ({"status": MISSING}, "/status"), ({"status": "dispatched"}, "/status"), ({"status": "AVAILABLE"}, "/status"),
        ({"status": 1}, "/status"), ({"status": ""}, "/status"),
    ]),
    **{name: ({"assignment": "2026-000123-A1"}, [({}, {"assignment": "2026-000123-A1"})], [
        ({"assignment": MISSING}, "/assignment"), ({"assignment": ""}, "/assignment"),
        ({"assignment": "has space"}, "/assignment"), ({"assignment": 7}, "/assignment"),
        ({"assignment": LONG}, "/assignment"), ({"assignment": "a/b"}, "/assignment"),
        ({"assignment": "-leading"}, "/assignment"),
    ]) for name in ("ack", "en_route", "on_scene", "clear")},
    "decline": ({"assignment": "I7-A1"}, [
        ({}, {"assignment": "I7-A1"}),
        ({"reason": "engine trouble"}, {"assignment": "I7-A1", "reason": "engine trouble"}),
        ({"reason": ""}, {"assignment": "I7-A1", "reason": ""}),
    ], [
        ({"assignment": MISSING}, "/assignment"), ({"reason": "r" * 501}, "/reason"), ({"reason": 5}, "/reason"),
        ({"reason": "nul\u0000"}, "/reason"),
    ]),
    "message.send": ({"channel": "incident:2026-000123", "text": "on our way"}, [
        ({}, {"channel": "incident:2026-000123", "text": "on our way"}),
        ({"text": "é" * 4000}, {"channel": "incident:2026-000123", "text": "é" * 4000}),
        ({"priority": "emergency", "attachment": "att_0f", "client_id": "E1:m-7"},
         {"channel": "incident:2026-000123", "text": "on our way", "priority": "emergency", "attachment": "att_0f",
          "client_id": "E1:m-7"}),
    ], [
        ({"channel": MISSING}, "/channel"), ({"channel": "two words"}, "/channel"), ({"text": MISSING}, "/text"),
        ({"text": ""}, "/text"), ({"text": "   "}, "/text"), ({"text": "t" * 4001}, "/text"),
        ({"text": "a\u0000b"}, "/text"), ({"text": "lone \ud800 surrogate"}, "/text"), ({"text": ["hi"]}, "/text"),
        ({"priority": "urgent"}, "/priority"), ({"attachment": "../etc/passwd"}, "/attachment"),
        ({"client_id": "c" * 101}, "/client_id"), ({"client_id": "with space"}, "/client_id"),
    ]),
    "message.receipt": ({"receipts": [{"channel": "agency:fire", "delivered": 7}]}, [
        ({}, {"receipts": [{"channel": "agency:fire", "delivered": 7}]}),
        ({"receipts": [{"channel": "agency:fire", "read": 9}, {"channel": "incident:I1", "delivered": 0, "read": 3}]},
         {"receipts": [{"channel": "agency:fire", "read": 9}, {"channel": "incident:I1", "delivered": 0, "read": 3}]}),
    ], [
        ({"receipts": MISSING}, "/receipts"), ({"receipts": []}, "/receipts"),
        ({"receipts": [{"channel": "agency:fire"}]}, "/receipts/0/delivered"),
        ({"receipts": [{"channel": "agency:fire", "delivered": -1}]}, "/receipts/0/delivered"),
        ({"receipts": [{"channel": "agency:fire", "read": 2**53}]}, "/receipts/0/read"),
        ({"receipts": [{"channel": "x y", "read": 1}]}, "/receipts/0/channel"),
        ({"receipts": [{"channel": "a:b", "read": 1}, {"channel": "a:b", "read": 2}]}, "/receipts/1"),
        ({"receipts": [{"channel": f"a:{i}", "read": 1} for i in range(101)]}, "/receipts"),
    ]),
    "message.ack": ({"channel": "incident:I1", "seq": 12}, [({}, {"channel": "incident:I1", "seq": 12})], [
        ({"seq": MISSING}, "/seq"), ({"seq": 0}, "/seq"), ({"seq": "12"}, "/seq"), ({"channel": MISSING}, "/channel"),
    ]),
    "message.history": ({"channel": "talkgroup:fire:ops"}, [
        ({}, {"channel": "talkgroup:fire:ops"}),
        ({"before": 90, "limit": 50}, {"channel": "talkgroup:fire:ops", "before": 90, "limit": 50}),
    ], [
        ({"limit": 51}, "/limit"), ({"limit": 0}, "/limit"), ({"before": 0}, "/before"), ({"before": 1.5}, "/before"),
    ]),
    "channel.list": ({}, [({}, {}), ({"extra": "ignored"}, {})], []),
    "rtc.call": ({"to": "unit:E1"}, [
        ({}, {"to": "unit:E1"}),
        ({"incident": "2026-000123", "video": True}, {"to": "unit:E1", "incident": "2026-000123", "video": True}),
    ], [
        ({"to": "E1"}, "/to"), ({"to": "group:x"}, "/to"), ({"video": "yes"}, "/video"),
        ({"incident": LONG}, "/incident"),
    ]),
    "rtc.accept": ({"call": "c1"}, [({}, {"call": "c1"})], [({"call": ""}, "/call"), ({"call": None}, "/call")]),
    "rtc.decline": ({"call": "c1"}, [({"reason": "busy"}, {"call": "c1", "reason": "busy"})],
                    [({"reason": "x" * 501}, "/reason")]),
    "rtc.join": ({"room": "conference:2026-000123"}, [
        ({}, {"room": "conference:2026-000123"}),
        ({"room": "talkgroup:fire:ops", "video": False}, {"room": "talkgroup:fire:ops", "video": False}),
        ({"room": "call:c1"}, {"room": "call:c1"}), ({"room": "incident:I1"}, {"room": "incident:I1"}),
    ], [({"room": "lobby:1"}, "/room"), ({"room": "call:"}, "/room"), ({"room": "direct:ab"}, "/room")]),
    "rtc.offer": ({"room": "call:c1", "sdp": "v=0"}, [({}, {"room": "call:c1", "sdp": "v=0"})],
                  [({"sdp": "x" * 32_001}, "/sdp"), ({"sdp": ""}, "/sdp"), ({"sdp": "v=0\x00"}, "/sdp")]),
    "rtc.answer": ({"room": "call:c1", "sdp": "v=0"}, [({}, {"room": "call:c1", "sdp": "v=0"})],
                   [({"sdp": None}, "/sdp")]),
    "rtc.candidate": ({"room": "call:c1", "candidate": ""}, [
        ({}, {"room": "call:c1", "candidate": ""}),
        ({"candidate": "candidate:1 1 udp 1 10.0.0.1 9 typ host", "sdpMid": "0", "sdpMLineIndex": 0},
         {"room": "call:c1", "candidate": "candidate:1 1 udp 1 10.0.0.1 9 typ host", "sdpMid": "0",
          "sdpMLineIndex": 0}),
    ], [({"candidate": "x" * 1001}, "/candidate"), ({"sdpMLineIndex": -1}, "/sdpMLineIndex")]),
    "rtc.hangup": ({"room": "call:c1"}, [({}, {"room": "call:c1"})], [({"room": 5}, "/room")]),
    "rtc.video": ({"room": "conference:I1", "source": "camera:k1"}, [
        ({}, {"room": "conference:I1", "source": "camera:k1"}),
        ({"source": ""}, {"room": "conference:I1", "source": ""}),
    ], [({"source": "x" * 201}, "/source")]),
    "ptt.request": ({"talkgroup": "talkgroup:fire:ops"}, [
        ({}, {"talkgroup": "talkgroup:fire:ops"}),
        ({"emergency": True}, {"talkgroup": "talkgroup:fire:ops", "emergency": True}),
    ], [({"talkgroup": "call:c1"}, "/talkgroup"), ({"emergency": 1}, "/emergency")]),
    "ptt.release": ({"talkgroup": "incident:I1"}, [({}, {"talkgroup": "incident:I1"})],
                    [({"talkgroup": None}, "/talkgroup")]),
    **{name: ({"topics": ["events"]}, [
        ({}, {"topics": ["events"]}),
        ({"topics": ["events", "positions", "incident:2026-000123", "events"]},
         {"topics": ["events", "positions", "incident:2026-000123"]}),
        ({"topics": [f"incident:I{i}" for i in range(100)]}, {"topics": [f"incident:I{i}" for i in range(100)]}),
    ], [
        ({"topics": MISSING}, "/topics"), ({"topics": []}, "/topics"), ({"topics": "events"}, "/topics"),
        ({"topics": ["weather"]}, "/topics/0"), ({"topics": ["events", "incident:"]}, "/topics/1"),
        ({"topics": ["incident:bad id"]}, "/topics/0"), ({"topics": [5]}, "/topics/0"),
        ({"topics": ["Events"]}, "/topics/0"), ({"topics": [f"incident:I{i}" for i in range(101)]}, "/topics"),
    ]) for name in ("subscribe", "unsubscribe")},
    "incident.create": ({"type": "structure_fire", "priority": 2, "location": {"lat": 48.85, "lon": 2.35}}, [
        ({}, {"type": "structure_fire", "priority": 2, "location": {"lat": 48.85, "lon": 2.35}}),
        ({"priority": 1, "location": MISSING, "address": "1 Main Street"},
         {"type": "structure_fire", "priority": 1, "address": "1 Main Street"}),
        ({"priority": 5, "address": "1 Main Street"},
         {"type": "structure_fire", "priority": 5, "location": {"lat": 48.85, "lon": 2.35},
          "address": "1 Main Street"}),
    ], [
        ({"type": MISSING}, "/type"), ({"type": "Structure Fire"}, "/type"), ({"type": ""}, "/type"),
        ({"type": "f" * 65}, "/type"), ({"priority": MISSING}, "/priority"), ({"priority": 0}, "/priority"),
        ({"priority": 6}, "/priority"), ({"priority": 2.5}, "/priority"), ({"priority": "1"}, "/priority"),
        ({"priority": True}, "/priority"), ({"location": {"lat": 91, "lon": 0}}, "/location/lat"),
        ({"location": {"lat": 1}}, "/location/lon"), ({"location": "here"}, "/location"),
        ({"location": [2.35, 48.85]}, "/location"), ({"location": MISSING}, "/location"),
        ({"location": MISSING, "address": ""}, "/address"), ({"location": MISSING, "address": "a" * 501}, "/address"),
    ]),
    "incident.dispatch": ({"incident": "2026-000123", "units": ["E1"]}, [
        ({}, {"incident": "2026-000123", "units": [{"unit_id": "E1"}]}),
        ({"units": ["E1", {"unit_id": "L7", "capability": "LADDER"}, {"unit_id": "M3"}]},
         {"incident": "2026-000123",
          "units": [{"unit_id": "E1"}, {"unit_id": "L7", "capability": "LADDER"}, {"unit_id": "M3"}]}),
        ({"units": [f"U{i}" for i in range(50)]},
         {"incident": "2026-000123", "units": [{"unit_id": f"U{i}"} for i in range(50)]}),
    ], [
        ({"incident": MISSING}, "/incident"), ({"incident": "no such id!"}, "/incident"),
        ({"units": MISSING}, "/units"), ({"units": []}, "/units"), ({"units": "E1"}, "/units"),
        ({"units": [f"U{i}" for i in range(51)]}, "/units"), ({"units": [5]}, "/units/0"),
        ({"units": ["E1", {"capability": "ENGINE"}]}, "/units/1/unit_id"),
        ({"units": [{"unit_id": "E1", "capability": "engine"}]}, "/units/0/capability"),
        ({"units": ["E1", {"unit_id": "E1", "capability": "ENGINE"}]}, "/units/1"),
        ({"units": ["bad id"]}, "/units/0/unit_id"),
    ]),
    "incident.note": ({"incident": "2026-000123", "text": "caller reports smoke"}, [
        ({}, {"incident": "2026-000123", "text": "caller reports smoke"}),
        ({"text": "n" * 10_000}, {"incident": "2026-000123", "text": "n" * 10_000}),
    ], [
        ({"incident": MISSING}, "/incident"), ({"text": MISSING}, "/text"), ({"text": " "}, "/text"),
        ({"text": "n" * 10_001}, "/text"),
    ]),
    "incident.close": ({"incident": "2026-000123"}, [
        ({}, {"incident": "2026-000123"}),
        ({"disposition": "extinguished"}, {"incident": "2026-000123", "disposition": "extinguished"}),
    ], [
        ({"incident": MISSING}, "/incident"), ({"disposition": "d" * 501}, "/disposition"),
        ({"disposition": 1}, "/disposition"),
    ]),
    "incident.cancel": ({"incident": "2026-000123"}, [
        ({}, {"incident": "2026-000123"}),
        ({"reason": "duplicate"}, {"incident": "2026-000123", "reason": "duplicate"}),
    ], [
        ({"incident": MISSING}, "/incident"), ({"reason": "r" * 501}, "/reason"), ({"incident": 123}, "/incident"),
    ]),
    "recommend": ({"incident": "2026-000123"}, [({}, {"incident": "2026-000123"})], [
        ({"incident": MISSING}, "/incident"), ({"incident": ""}, "/incident"),
    ]),
}


def patched(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overrides.items():
        if value is MISSING:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def test_the_op_table_names_every_op_of_v1_with_its_audience():
    assert set(OPS) == UNIT_OPS | CONSOLE_OPS | ANY_OPS
    assert set(CASES) == UNIT_OPS | CONSOLE_OPS | MESSAGE_OPS | MEDIA_OPS
    for names, audience in ((UNIT_OPS, "unit"), (CONSOLE_OPS, "console"), (ANY_OPS, "any")):
        assert {n for n in names if OPS[n].audience == audience} == names


VALID = [(name, overrides, args) for name, (_, valids, _) in CASES.items() for overrides, args in valids]
INVALID = [(name, overrides, path) for name, (_, _, invalids) in CASES.items() for overrides, path in invalids]


@pytest.mark.parametrize(("name", "overrides", "args"), VALID)
def test_a_valid_op_is_executed_with_normalised_args(name, overrides, args):
    s = opened()
    fields = patched(CASES[name][0], overrides)
    expected = Notify(name, args) if OPS[name].notify else Execute(name, "v-1", args)
    assert one(op(s, name, "v-1", **fields)) == expected


@pytest.mark.parametrize(("name", "overrides", "path"), INVALID)
def test_an_invalid_field_is_refused_with_its_path(name, overrides, path):
    s = opened()
    fields = patched(CASES[name][0], overrides)
    error = sent(op(s, name, 9, **fields))
    assert error["op"] == "error" and error["ref"] == 9 and error["code"] == "invalid_request"
    assert [e["field"] for e in error["errors"]] == [path]
    assert error["errors"][0]["message"].startswith(("must be", "is required", "give", "repeats"))


def test_every_invalid_field_is_listed_not_only_the_first():
    s = opened()
    error = sent(op(s, "position", "p", lat=91, lon="x", heading=400))
    assert [e["field"] for e in error["errors"]] == ["/lat", "/lon", "/heading", "/time"]
    assert error["errors"][3]["message"] == ("is required: an ISO 8601 date-time with a UTC offset, "
                                             "e.g. 2026-05-01T12:00:00Z")


def test_identifier_rules_agree_with_the_domain():
    for value in ("E1", "2026-000123-A1", "incident:7", "a" * 128, "a" * 129, "", "-x", "x y", "x/y", "é", "x\n"):
        try:
            _checks.ident(value, "id")
            domain = True
        except Invalid:
            domain = False
        assert (protocol._IDENT.fullmatch(value) is not None) == domain, value
    for value in ("fire", "structure_fire", "gas-leak", "Fire", "f" * 64, "f" * 65, "_x", ""):
        try:
            _checks.slug(value, "type")
            domain = True
        except Invalid:
            domain = False
        assert (protocol._SLUG.fullmatch(value) is not None) == domain, value


# ---------------------------------------------------------------------------------------------
# hello, authentication, protocol version

def test_hello_authenticate_welcome():
    s = Session(now=T0)
    assert s.state is State.AWAITING_HELLO
    action = one(s.receive_text(hello(resume_from=17, protocol=1, client={"app": "mdt", "version": "2.1"}), T0 + 1))
    assert action == Authenticate("secret", 17, {"app": "mdt", "version": "2.1"})
    assert s.state is State.AUTHENTICATING
    welcome = sent(s.authenticated({"kind": "token", "role": "unit", "unit": "E1"}, "s-9", 120))
    assert welcome == {"op": "welcome", "session": "s-9", "seq": 120, "protocol": 1,
                       "principal": {"kind": "token", "role": "unit", "unit": "E1"}, "heartbeat_s": 20}
    assert s.state is State.OPEN


def test_hello_without_resume_or_client():
    s = Session(now=T0)
    assert one(s.receive_text(hello(resume_from=None), T0)) == Authenticate("secret", None, {})


@pytest.mark.parametrize("first", [
    frame({"op": "ping", "id": 1}), frame({"op": "position", "id": 1, **POSITION}), "not json", "[]", "{}",
    frame({"token": "secret"}), frame({"op": "HELLO", "token": "secret"}), "x" * 70_000,
])
def test_anything_but_hello_first_is_refused(first):
    s = Session(now=T0)
    actions = s.receive_text(first, T0 + 1)
    assert actions == [Send(error_frame("hello_expected", 'the first frame must be {"op":"hello","token":…}')),
                       Close(4401, "hello expected")]
    assert s.state is State.CLOSED


def test_binary_first_is_refused():
    s = Session(now=T0)
    actions = s.receive_binary(b"\x00\x01", T0)
    assert actions[0].frame["code"] == "hello_expected" and actions[1] == Close(4401, "hello expected")


@pytest.mark.parametrize(("fields", "path"), [
    ({"token": 5}, "/token"), ({"token": ""}, "/token"),
    ({"token": "t" * 4097}, "/token"), ({"resume_from": -1}, "/resume_from"), ({"resume_from": "3"}, "/resume_from"),
    ({"resume_from": 2.0}, "/resume_from"), ({"resume_from": True}, "/resume_from"), ({"protocol": "1"}, "/protocol"),
    ({"client": []}, "/client"), ({"client": "mdt"}, "/client"), ({"client": {"name": "nul\u0000"}}, "/client"),
    ({"client": {"deep": [{"x": "\ud800"}]}}, "/client"),
])
def test_a_malformed_hello_is_refused_with_4400(fields, path):
    s = Session(now=T0)
    actions = s.receive_text(frame({"op": "hello", "token": "secret", **fields}), T0)
    assert len(actions) == 2 and actions[1] == Close(4400, "bad hello")
    error = actions[0].frame
    assert error["code"] == "invalid_request" and [e["field"] for e in error["errors"]] == [path]


def test_a_hello_without_a_token_asks_for_the_connection_s_session():
    actions = Session(now=T0).receive_text(frame({"op": "hello", "resume_from": 7}), T0)
    assert actions == [Authenticate(None, 7, {})]  # the handler decides: the console's session cookie, or 4401


@pytest.mark.parametrize("version", [0, 2, 99, -1])
def test_an_unsupported_protocol_is_refused_with_4400(version):
    s = Session(now=T0)
    actions = s.receive_text(hello(protocol=version), T0)
    assert actions[0].frame["code"] == "unsupported_protocol" and actions[0].frame["supported"] == [1]
    assert actions[1] == Close(4400, "unsupported protocol")


def test_hello_deadline():
    s = Session(now=T0)
    assert s.tick(T0 + 4.9) == []
    assert s.next_tick() == pytest.approx(T0 + 5)
    assert s.tick(T0 + 5.0) == []  # "within 5 s" includes the fifth second
    assert s.tick(T0 + 5.01) == [Close(4401, "hello expected within 5 s")]
    assert s.state is State.CLOSED and s.next_tick() is None


def test_a_late_hello_is_refused_even_between_ticks():
    s = Session(now=T0, hello_timeout_s=2.5)
    assert s.receive_text(hello(), T0 + 3) == [Close(4401, "hello expected within 2.5 s")]


def test_no_deadline_while_authenticating():
    s = Session(now=T0)
    s.receive_text(hello(), T0 + 1)
    assert s.tick(T0 + 100) == [] and s.next_tick() is None
    assert s.authenticated({}, "s", 0)[0].frame["op"] == "welcome"


def test_auth_failure_closes_4401():
    s = Session(now=T0)
    s.receive_text(hello(), T0)
    actions = s.auth_failed()
    assert actions[0] == Send({"op": "error", "ref": None, "code": "unauthorized",
                               "message": "the token is unknown, revoked or expired"})
    assert actions[1] == Close(4401, "unauthorized")
    assert s.state is State.CLOSED
    assert s.authenticated({}, "s", 0) == [] and s.auth_failed() == []


def test_authenticated_out_of_turn_is_a_handler_bug():
    with pytest.raises(ValueError):
        Session(now=T0).authenticated({}, "s", 0)
    with pytest.raises(ValueError):
        opened().auth_failed()


def test_frames_pipelined_behind_hello_run_after_the_welcome_in_order():
    s = Session(now=T0)
    s.receive_text(hello(), T0)
    assert op(s, "status", "a", status="available") == []
    assert s.receive_text(frame({"op": "ping", "id": "p"}), T0) == []
    assert s.receive_binary(b"x", T0) == []
    actions = s.authenticated({}, "s", 5)
    assert [a.frame["op"] if isinstance(a, Send) else a.op for a in actions] == ["welcome", "status", "pong", "error"]
    assert actions[1] == Execute("status", "a", {"status": "available"})
    assert actions[3].frame["code"] == "binary_unsupported"


def test_too_many_frames_before_the_welcome_is_abuse():
    s = Session(now=T0)
    s.receive_text(hello(), T0)
    for i in range(protocol.MAX_EARLY_FRAMES):
        assert op(s, "ping", i) == []
    assert op(s, "ping", "one too many") == [Close(1008, "too many frames before welcome")]
    assert s.authenticated({}, "s", 0) == []


def test_an_oversize_frame_held_before_the_welcome_is_still_refused_as_too_large():
    s = Session(now=T0)
    s.receive_text(hello(), T0)
    s.receive_text(frame({"op": "ping", "pad": "x" * 100_000}), T0)
    actions = s.authenticated({}, "s", 0)
    assert actions[1].frame["code"] == "too_large"
    assert len(s._early or []) == 0


# ---------------------------------------------------------------------------------------------
# Answers: ok, error, at most once, in progress

def test_ok_and_error_answers():
    s = opened()
    assert isinstance(one(op(s, "ack", "a1", assignment="I1-A1")), Execute)
    assert sent(s.op_ok("a1", {"assignment": {"id": "I1-A1", "status": "acknowledged"}})) == {
        "op": "ok", "ref": "a1", "assignment": {"id": "I1-A1", "status": "acknowledged"}}
    one(op(s, "ack", 2, assignment="I1-A2"))
    assert sent(s.op_error(2, "illegal_transition", "assignment I1-A2 is cleared",
                           [FieldError("/assignment", "is cleared")])) == {
        "op": "error", "ref": 2, "code": "illegal_transition", "message": "assignment I1-A2 is cleared",
        "errors": [{"field": "/assignment", "message": "is cleared"}]}


@pytest.mark.parametrize("result", [None, {}, {"incident": {"id": "I9"}}])
def test_a_repeated_id_is_answered_again_and_never_executed_twice(result):
    s = opened()
    execute = one(op(s, "incident.create", "c-1", type="fire", priority=1, address="1 Main St"))
    assert isinstance(execute, Execute)
    answer = sent(s.op_ok("c-1", result))
    for _ in range(3):
        assert sent(op(s, "incident.create", "c-1", type="fire", priority=1, address="1 Main St")) == answer


def test_equal_results_are_stored_once():
    s = opened()
    for i in range(3):
        one(op(s, "position", i, **POSITION))
        s.op_ok(i, {"accepted": True, "reason": "accepted"})
    one(op(s, "position", 3, **POSITION))
    s.op_ok(3, {"accepted": False, "reason": "more often than allowed"})
    stored = [s._answers[str(i)] for i in range(4)]
    assert stored[0] is stored[1] is stored[2] and stored[3] is not stored[2]
    assert sent(op(s, "position", 1, **POSITION)) == {"op": "ok", "ref": 1, "accepted": True, "reason": "accepted"}
    assert sent(op(s, "position", 3, **POSITION)) == {"op": "ok", "ref": 3, "accepted": False,
                                                      "reason": "more often than allowed"}


def test_a_repeated_id_gets_the_stored_error_too():
    s = opened()
    one(op(s, "ack", "a", assignment="X-1"))
    answer = sent(s.op_error("a", "not_found", "assignment X-1 was not found"))
    assert sent(op(s, "ack", "a", assignment="X-1")) == answer


@pytest.mark.parametrize("code", ["rate_limited", "internal_error"])
def test_a_retryable_error_is_not_remembered(code):
    s = opened()
    one(op(s, "ack", "a", assignment="X-1"))
    s.op_error("a", code, "try again")
    assert one(op(s, "ack", "a", assignment="X-1")) == Execute("ack", "a", {"assignment": "X-1"})


def test_an_integer_id_and_its_decimal_string_are_one_id():
    s = opened()
    one(op(s, "recommend", 7, incident="I1"))
    assert sent(op(s, "recommend", "7", incident="I1"))["code"] == "in_progress"
    s.op_ok("7", {"picks": []})  # the handler may key by text too
    assert sent(op(s, "recommend", "7", incident="I1")) == {"op": "ok", "ref": "7", "picks": []}
    assert sent(op(s, "recommend", 7, incident="I1")) == {"op": "ok", "ref": 7, "picks": []}


@pytest.mark.parametrize("code", ["overloaded", "database_unavailable"])
def test_an_answer_with_a_code_outside_the_table_is_not_remembered(code):
    s = opened()
    one(op(s, "ack", "a", assignment="X-1"))
    assert sent(s.op_error("a", code, "retry shortly"))["code"] == code
    assert isinstance(one(op(s, "ack", "a", assignment="X-1")), Execute)


def test_a_repeat_of_an_executing_op_is_in_progress():
    s = opened()
    one(op(s, "recommend", "r", incident="I1"))
    error = sent(op(s, "recommend", "r", incident="I1"))
    assert error["code"] == "in_progress" and error["ref"] == "r"
    s.op_ok("r", {"picks": []})
    assert sent(op(s, "recommend", "r", incident="I1")) == {"op": "ok", "ref": "r", "picks": []}


def test_answers_memory_is_bounded():
    s = opened(max_answers=3)
    for i in range(5):
        one(op(s, "status", i, status="available"))
        s.op_ok(i)
    assert len(s._answers) == 3
    assert isinstance(one(op(s, "status", 0, status="available")), Execute)  # forgotten: the handler's store decides
    assert sent(op(s, "status", 4, status="available")) == {"op": "ok", "ref": 4}


def test_default_answer_memory_keeps_the_last_thousand():
    s = opened()
    for i in range(1005):
        one(op(s, "status", i, status="available"))
        s.op_ok(i)
    assert len(s._answers) == 1000
    assert isinstance(one(op(s, "status", 4, status="available")), Execute)
    assert sent(op(s, "status", 5, status="available")) == {"op": "ok", "ref": 5}


def test_ops_in_flight_are_bounded():
    s = opened(max_in_flight=2)
    one(op(s, "status", "a", status="available"))
    one(op(s, "status", "b", status="available"))
    error = sent(op(s, "status", "c", status="available"))
    assert error["code"] == "rate_limited" and error["ref"] == "c"
    s.op_ok("a")
    assert isinstance(one(op(s, "status", "c", status="available")), Execute)


def test_answering_an_op_that_is_not_in_progress_is_a_handler_bug():
    s = opened()
    with pytest.raises(ValueError):
        s.op_ok("never-sent")
    one(op(s, "status", "a", status="available"))
    with pytest.raises(ValueError):
        s.op_ok("a", {"ref": "spoofed"})


@pytest.mark.parametrize(("op_id", "ok"), [
    ("x", True), ("x" * 100, True), (0, True), (-5, True), (10**99, True), ("", False), ("x" * 101, False),
    (10**100, False), (1.5, False), (True, False), ([1], False), ({"id": 1}, False), ("nul\u0000", False),
])
def test_op_ids(op_id, ok):
    s = opened()
    action = one(op(s, "status", op_id, status="available"))
    if ok:
        assert action == Execute("status", op_id, {"status": "available"})
    else:
        assert action.frame["code"] == "invalid_request" and action.frame["errors"][0]["field"] == "/id"
        assert action.frame["ref"] is None


def test_a_notification_needs_no_id_and_gets_no_answer():
    s = opened()
    receipts = [{"channel": "agency:fire", "delivered": 4}]
    assert s.receive_text(frame({"op": "message.receipt", "receipts": receipts}), T0 + 1) == [
        Notify("message.receipt", {"receipts": receipts})]
    assert s.receive_text(frame({"op": "message.receipt", "id": "n-1", "receipts": receipts}), T0 + 1) == [
        Notify("message.receipt", {"receipts": receipts})]  # an id changes nothing: still no answer
    error = sent(s.receive_text(frame({"op": "message.receipt", "receipts": []}), T0 + 1))
    assert error["code"] == "invalid_request" and error["ref"] is None


def test_an_op_without_an_id_is_refused():
    s = opened()
    error = sent(s.receive_text(frame({"op": "status", "status": "available"}), T0))
    assert error["code"] == "invalid_request" and error["errors"] == [
        {"field": "/id", "message": "is required: a string of 1 to 100 characters or an integer of at most 100 digits"}]


def test_ping_and_pong():
    s = opened()
    assert sent(op(s, "ping", "p-1")) == {"op": "pong", "ref": "p-1"}
    assert sent(s.receive_text('{"op":"ping"}', T0)) == {"op": "pong", "ref": None}
    assert sent(op(s, "ping", 1.5))["code"] == "invalid_request"
    assert s.receive_text(frame({"op": "pong", "t": 12.5}), T0) == []
    assert s.receive_text(frame({"op": "pong", "id": [1]}), T0) == []


def test_frame_errors():
    s = opened()
    assert sent(s.receive_text("{nope", T0)) == {"op": "error", "ref": None, "code": "invalid_json",
                                                 "message": "the frame is not JSON"}
    for text in ('{"op":"ping","x":NaN}', '{"op":"ping","x":Infinity}', '{"op":"ping","x":1e999}', "[" * 100_00):
        assert sent(s.receive_text(text, T0))["code"] == "invalid_json"
    for text in ("[]", "5", '"op"', "null"):
        assert sent(s.receive_text(text, T0))["code"] == "not_an_object"
    assert sent(s.receive_text('{"id":"z"}', T0)) == {
        "op": "error", "ref": "z", "code": "invalid_request", "message": "a frame needs an op",
        "errors": [{"field": "/op", "message": "is required: a string naming the operation"}]}
    assert sent(s.receive_text('{"op":"teleport","id":"t"}', T0)) == {
        "op": "error", "ref": "t", "code": "unknown_op", "message": "unknown operation 'teleport'"}
    assert sent(s.receive_text(hello(), T0))["code"] == "invalid_request"
    assert sent(s.receive_binary(b"{}", T0))["code"] == "binary_unsupported"


def test_frame_size_is_counted_in_utf8_bytes():
    s = opened()
    limit = protocol.MAX_FRAME_BYTES
    skeleton = frame({"op": "message.send", "id": "m", "channel": "c", "text": ""})
    exact = frame({"op": "message.send", "id": "m", "channel": "c", "text": "x" * (limit - len(skeleton))})
    assert len(exact.encode()) == limit
    assert sent(s.receive_text(exact, T0))["code"] == "invalid_request"  # parsed; the text is too long for a message
    assert sent(s.receive_text(exact + " ", T0))["code"] == "too_large"
    wide = frame({"op": "ping", "pad": "é" * (limit // 2)})  # fewer characters than the limit, more bytes
    assert len(wide) < limit < len(wide.encode())
    assert sent(s.receive_text(wide, T0)) == {"op": "error", "ref": None, "code": "too_large",
                                              "message": f"a frame is at most {limit} bytes"}


# ---------------------------------------------------------------------------------------------
# Abuse

ABUSIVE = {
    "invalid_json": lambda s, now: s.receive_text("{", now),
    "not_an_object": lambda s, now: s.receive_text("[1]", now),
    "unknown_op": lambda s, now: op(s, "nope", now=now),
    "invalid_request": lambda s, now: op(s, "status", now=now, status="flying"),
    "missing id": lambda s, now: s.receive_text('{"op":"recommend","incident":"I1"}', now),
    "too_large": lambda s, now: s.receive_text(" " * 70_000, now),
    "binary_unsupported": lambda s, now: s.receive_binary(b"\x00", now),
}


@pytest.mark.parametrize("kind", ABUSIVE)
def test_more_than_twenty_invalid_frames_a_minute_close_1008(kind):
    s = opened()
    for i in range(20):
        error = sent(ABUSIVE[kind](s, T0 + i))
        assert error["op"] == "error"
    actions = ABUSIVE[kind](s, T0 + 30)
    assert isinstance(actions[0], Send) and actions[0].frame["op"] == "error"
    assert actions[1:] == [Close(1008, "too many invalid frames")]
    assert s.state is State.CLOSED


def test_abuse_is_counted_in_a_sliding_minute():
    s = opened()
    for i in range(100):  # one every 3.5 s: at most 18 in any minute
        assert len(ABUSIVE["invalid_json"](s, T0 + i * 3.5)) == 1
    # At T0 + 347 the minute (T0 + 287, T0 + 347] holds the 17 frames sent from T0 + 290.5 on.
    for _ in range(3):
        assert len(ABUSIVE["invalid_json"](s, T0 + 347)) == 1
    assert ABUSIVE["invalid_json"](s, T0 + 347)[-1] == Close(1008, "too many invalid frames")


def test_mixed_invalid_frames_count_together_and_good_ones_do_not():
    s = opened()
    kinds = list(ABUSIVE.values())
    for i in range(20):
        kinds[i % len(kinds)](s, T0)
        op(s, "ping", i)
        op(s, "status", f"ok-{i}", status="available")
        op(s, "status", f"ok-{i}", status="available")  # in progress: not abuse
    assert s.state is State.OPEN
    assert ABUSIVE["unknown_op"](s, T0)[-1] == Close(1008, "too many invalid frames")


# ---------------------------------------------------------------------------------------------
# Heartbeat

def test_pings_every_heartbeat_and_closes_after_three_silent_intervals():
    s = opened()  # welcomed at T0 + 0.1
    assert s.tick(T0 + 10) == []
    assert s.next_tick() == pytest.approx(T0 + 20.1)
    assert sent(s.tick(T0 + 20.1)) == {"op": "ping", "t": T0 + 20.1}
    assert s.tick(T0 + 21) == []
    assert sent(s.tick(T0 + 40.2))["op"] == "ping"
    assert s.tick(T0 + 60.0) == []
    assert s.next_tick() == pytest.approx(T0 + 60.1)
    assert s.tick(T0 + 60.1) == [Close(4408, "heartbeat lost")]
    assert CLOSE_CODES_RESUMABLE[4408]


def test_any_frame_keeps_the_session_alive():
    s = opened(heartbeat_s=10)
    for t in (25, 50, 75, 100):
        s.tick(T0 + t)
        s.receive_text(frame({"op": "pong", "t": t}) if t % 50 else "garbage", T0 + t)
    s.heard(T0 + 125)  # a WebSocket-level ping the handler answered itself
    assert all(not isinstance(a, Close) for a in s.tick(T0 + 150))
    assert s.tick(T0 + 155.1) == [Close(4408, "heartbeat lost")]


def test_a_stalled_loop_sends_one_ping_not_a_burst():
    s = opened()
    s.receive_text("{}", T0 + 50)
    assert len(s.tick(T0 + 55)) == 1
    assert s.tick(T0 + 56) == []


def test_the_silence_clock_starts_at_the_welcome():
    s = Session(now=T0)
    s.receive_text(hello(), T0)
    s.tick(T0 + 50)  # a slow token check
    s.authenticated({}, "s", 0)
    assert s.tick(T0 + 61) == []
    assert s.tick(T0 + 110) == [Close(4408, "heartbeat lost")]


def test_custom_heartbeat_is_announced():
    s = Session(now=T0, heartbeat_s=7.5)
    s.receive_text(hello(), T0)
    assert sent(s.authenticated({}, "s", 0))["heartbeat_s"] == 7.5
    with pytest.raises(ValueError):
        Session(now=T0, heartbeat_s=0)


# ---------------------------------------------------------------------------------------------
# Closing

def test_nothing_is_accepted_after_close():
    s = opened()
    one(op(s, "status", "a", status="available"))
    assert s.close(1001, "server shutting down") == [Close(1001, "server shutting down")]
    assert s.state is State.CLOSED
    assert s.receive_text(frame({"op": "ping", "id": 1}), T0) == []
    assert s.receive_binary(b"", T0) == []
    assert s.tick(T0 + 1000) == [] and s.next_tick() is None
    assert s.op_ok("a") == [] and s.op_error("a", "internal_error", "x") == []
    assert s.close() == []
    s.heard(T0)


def test_close_actions_are_validated():
    assert Close(4008, "too slow; resume from your last seq").code == 4008
    for code in (999, 1005, 1006, 1015, 5000):
        with pytest.raises(ValueError):
            Close(code, "")
    with pytest.raises(ValueError):
        Close(1000, "é" * 62)


CLOSE_CODES_RESUMABLE = {1000: True, 1001: True, 1008: False, 1009: False, 4400: False, 4401: False, 4408: True,
                         4008: True}


def test_close_and_error_code_tables():
    assert (protocol.CLOSE_NORMAL, protocol.CLOSE_GOING_AWAY, protocol.CLOSE_POLICY, protocol.CLOSE_TOO_BIG,
            protocol.CLOSE_BAD_HELLO, protocol.CLOSE_UNAUTHORIZED, protocol.CLOSE_HEARTBEAT_LOST,
            protocol.CLOSE_TOO_SLOW) == (1000, 1001, 1008, 1009, 4400, 4401, 4408, 4008)
    assert {c: v.resumable for c, v in protocol.CLOSE_CODES.items()} == CLOSE_CODES_RESUMABLE
    assert set(protocol.ERROR_CODES) == {
        "hello_expected", "unauthorized", "unsupported_protocol", "invalid_json", "not_an_object", "too_large",
        "binary_unsupported", "unknown_op", "invalid_request", "in_progress", "forbidden", "not_found", "conflict",
        "unit_unavailable", "illegal_transition", "rate_limited", "unsupported", "internal_error",
        "room_elsewhere", "callee_unavailable", "room_full"}


# ---------------------------------------------------------------------------------------------
# Server frames

def test_server_frames():
    wire = {"seq": 7, "at": "2026-05-01T12:00:00.000000Z", "type": "incident.created", "subject": "incident:I1",
            "actor": {"kind": "system"}, "data": {"priority": 1}}
    assert event_frame(wire) == {"op": "event", **wire}
    with pytest.raises(ValueError):
        event_frame({"op": "ok"})
    assert positions_frame([{"unit_id": "E1", "lat": 1.0}]) == {"op": "positions", "units": [{"unit_id": "E1",
                                                                                             "lat": 1.0}]}
    assert resync_frame("resume_from is older than the retained log", 900) == {
        "op": "resync", "reason": "resume_from is older than the retained log", "seq": 900}
    assert error_frame("forbidden", "units only", "x") == {"op": "error", "ref": "x", "code": "forbidden",
                                                           "message": "units only"}
    view = {"channel": "incident:I1", "seq": 9, "text": "hi", "priority": "emergency"}
    assert message_frame(view) == {"op": "message", **view}
    assert message_frame(view, repeat=True) == {"op": "message", **view, "repeat": True}
    with pytest.raises(ValueError):
        message_frame({"op": "x"})
    assert receipts_frame([{"channel": "c:1", "seq": 9, "member": "unit:E1"}]) == {
        "op": "receipts", "receipts": [{"channel": "c:1", "seq": 9, "member": "unit:E1"}]}


# ---------------------------------------------------------------------------------------------
# The document and purity

def test_the_document_carries_the_generated_tables():
    doc = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")
    for render in (protocol.ops_markdown, protocol.close_codes_markdown, protocol.error_codes_markdown):
        assert render() in doc, f"update docs/protocol.md from icp.gateway.protocol.{render.__name__}()"


def _example_frames() -> list[tuple[str, dict[str, Any]]]:
    """The document's example frames as (direction, frame): one per line, `→` client, `←` server."""
    doc = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")
    out = []
    for block in re.findall(r"```json\n(.*?)```", doc, re.S):
        for line in block.splitlines():
            match = re.match(r"([→←]) (\{.*\})(\s+//.*)?$", line)
            if match:
                out.append((match[1], json.loads(match[2])))
            else:
                assert not line.strip() or line.strip().startswith("(close"), line
    return out


def test_the_document_examples_behave_as_shown():
    frames = _example_frames()
    assert len(frames) > 40
    session = opened()
    for i, (direction, example) in enumerate(frames):
        if direction == "←":
            assert example["op"] in {"welcome", "ok", "error", "event", "positions", "resync", "ping", "pong",
                                     "message", "receipts"}
            continue
        shown = frames[i + 1][1] if i + 1 < len(frames) and frames[i + 1][0] == "←" else None
        if example["op"] == "hello" or (shown and shown.get("code") == "hello_expected"):
            fresh = Session(now=T0)
            actions = fresh.receive_text(frame(example), T0)
            if shown and shown["op"] == "error" and shown["code"] != "unauthorized":
                assert actions[0] == Send(shown)
                continue
            assert actions == [Authenticate(example["token"], example.get("resume_from"), example.get("client", {}))]
            if shown and shown["op"] == "error":
                assert fresh.auth_failed()[0] == Send(shown)
            continue
        actions = session.receive_text(frame(example), T0 + 1)
        if shown and shown["op"] == "error" and protocol.ERROR_CODES[shown["code"]].origin == "session":
            assert actions == [Send(shown)]
        elif example["op"] in ("ping", "pong"):
            assert actions == ([Send(shown)] if shown else [])
        elif isinstance(one(actions), Notify):
            assert shown is None or shown["op"] != "ok", "a notification is not answered"
        elif isinstance(one(actions), Execute):
            if shown and shown["op"] == "error":
                assert session.op_error(example["id"], shown["code"], shown["message"]) == [Send(shown)]
            else:
                result = {k: v for k, v in (shown or {}).items() if k not in ("op", "ref")}
                assert session.op_ok(example["id"], result) == [Send({"op": "ok", "ref": example["id"], **result})]
        else:  # a repeat, answered from memory
            assert actions == [Send(shown)] and shown["op"] == "ok"


def test_the_protocol_module_does_no_io():
    tree = ast.parse((ROOT / "icp" / "gateway" / "protocol.py").read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    assert not names - set(sys.stdlib_module_names) - {"dispatch"}, names
    assert not names & {"asyncio", "socket", "time", "random", "threading", "select", "os", "io"}


# ---------------------------------------------------------------------------------------------
# Fuzzing: nothing a peer sends makes the session raise, and every action is well formed

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
field_names = st.sampled_from(sorted({f.name for spec in OPS.values() for f in spec.args.fields}
                                     | {"lat", "lon", "unit_id", "capability", "id", "op"}))
op_frames = st.builds(
    lambda name, op_id, fields: {**fields, "op": name, **({} if op_id is MISSING else {"id": op_id})},
    st.sampled_from([*OPS, "hello", "nope", ""]),
    st.one_of(st.just(MISSING), st.integers(), st.text(max_size=5), json_values),
    st.dictionaries(field_names, json_values, max_size=6),
)
any_text = st.one_of(st.text(), op_frames.map(frame), json_values.map(frame))


def well_formed(actions: list[Action], s: Session) -> None:
    assert isinstance(actions, list)
    for i, action in enumerate(actions):
        assert isinstance(action, Send | Close | Authenticate | Execute)
        if isinstance(action, Close):
            assert i == len(actions) - 1 and s.state is State.CLOSED
            assert action.code in protocol.CLOSE_CODES
        if isinstance(action, Send):
            assert isinstance(action.frame.get("op"), str)
            json.dumps(action.frame, allow_nan=False, ensure_ascii=False).encode("utf-8")  # sendable as is
            if action.frame["op"] == "error":
                assert action.frame["code"] in protocol.ERROR_CODES
                assert set(action.frame) <= {"op", "ref", "code", "message", "errors", "supported"}
        if isinstance(action, Execute):
            assert action.op in OPS and not OPS[action.op].local
            assert isinstance(action.args, dict)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(any_text, st.binary(max_size=8)), max_size=12), st.booleans())
def test_arbitrary_frames_never_raise(frames, say_hello):
    s = Session(now=T0)
    if say_hello:
        s.receive_text(hello(), T0)
        s.authenticated({}, "s", 0)
    now = T0
    for i, item in enumerate(frames):
        now += 0.5
        actions = s.receive_binary(item, now) if isinstance(item, bytes) else s.receive_text(item, now)
        well_formed(actions, s)
        for action in actions:
            if isinstance(action, Execute):  # the handler answers every other op
                well_formed(s.op_ok(action.id) if i % 2 else s.op_error(action.id, "conflict", "no"), s)
        well_formed(s.tick(now), s)
        if s.state is State.CLOSED:
            assert s.receive_text(frame({"op": "ping"}), now) == []


@settings(max_examples=200)
@given(lat=st.floats(-90, 90), lon=st.floats(-180, 180), accuracy=st.none() | st.floats(0, 1e6),
       heading=st.none() | st.floats(0, 360), speed=st.none() | st.floats(0, 500),
       when=st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2100, 1, 1),
                         timezones=st.timezones()),
       op_id=st.integers() | st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"),
                                     min_size=1, max_size=100))
def test_every_valid_position_is_executed(lat, lon, accuracy, heading, speed, when, op_id):
    s = opened()
    fields = {"lat": lat, "lon": lon, "accuracy": accuracy, "heading": heading, "speed": speed,
              "time": when.isoformat()}
    action = one(op(s, "position", op_id, **fields))
    assert isinstance(action, Execute) and action.id == op_id
    assert action.args == {k: v for k, v in fields.items() if v is not None and k != "time"} | {
        "time": when.astimezone(UTC)}
    assert action.args["time"].tzinfo is UTC
