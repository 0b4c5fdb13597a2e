"""The WebSocket protocol v1 as a sans-I/O state machine: text frames and clock ticks in, actions out."""

from __future__ import annotations

import json
import math
import re
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum, StrEnum
from types import MappingProxyType
from typing import Any, ClassVar, Final, NoReturn, Protocol, TypeAlias

from dispatch.capability import Capability
from dispatch.commands import MAX_REASON_CHARS, MAX_UNITS_PER_DISPATCH
from dispatch.incident import MAX_NOTE_CHARS, PRIORITY_HIGHEST, PRIORITY_LOWEST
from dispatch.lifecycle import UnitStatus

__all__ = [
    "CLOSE_BAD_HELLO", "CLOSE_CODES", "CLOSE_GOING_AWAY", "CLOSE_HEARTBEAT_LOST", "CLOSE_NORMAL", "CLOSE_POLICY",
    "CLOSE_TOO_BIG", "CLOSE_TOO_SLOW", "CLOSE_UNAUTHORIZED", "ERROR_CODES", "HEARTBEAT_S", "HELLO_TIMEOUT_S",
    "MAX_FRAME_BYTES", "OPS", "PROTOCOL_VERSION", "SUPPORTED_PROTOCOLS",
    "Action", "Audience", "Authenticate", "Check", "Close", "CloseCode", "ErrorCode", "Execute", "Field", "FieldError",
    "FieldErrorLike", "Notify", "OpId", "OpSpec", "Origin", "Send", "Session", "State",
    "error_frame", "event_frame", "message_frame", "positions_frame", "receipts_frame", "resync_frame",
]

PROTOCOL_VERSION: Final = 1
SUPPORTED_PROTOCOLS: Final = (1,)

# Bounds, all stated in docs/protocol.md.
MAX_FRAME_BYTES: Final = 64 * 1024
HELLO_TIMEOUT_S: Final = 5.0
HEARTBEAT_S: Final = 20.0
HEARTBEAT_MISSES: Final = 3  # this many heartbeat intervals of silence close the socket (4408)
ABUSE_LIMIT: Final = 20  # more invalid frames than this ...
ABUSE_WINDOW_S: Final = 60.0  # ... within this many seconds close the socket (1008)
MAX_ANSWERS: Final = 1000  # answers remembered per session for repeated op ids
MAX_IN_FLIGHT: Final = 100  # operations executing at once per session
MAX_EARLY_FRAMES: Final = 16  # frames a client may pipeline behind its hello, held until welcome
MAX_ID_CHARS: Final = 100
MAX_TOKEN_CHARS: Final = 4096
MAX_TOPICS: Final = 100
MAX_MESSAGE_CHARS: Final = 4000
MAX_HISTORY: Final = 50  # messages per message.history answer
MAX_RECEIPTS: Final = 100  # channels per message.receipt
MAX_SEQ: Final = 2**53 - 1  # the largest integer every JSON reader holds exactly
MAX_ADDRESS_CHARS: Final = 500
MAX_SDP_CHARS: Final = 32_000  # an SDP offer or answer (audio and video, every candidate)
MAX_CANDIDATE_CHARS: Final = 1000
_MAX_REASON_BYTES: Final = 123  # RFC 6455: a close frame's payload is at most 125 bytes, 2 of them the code


# ---------------------------------------------------------------------------------------------
# Close and error codes: the tables docs/protocol.md is generated from.

CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001
CLOSE_POLICY: Final = 1008
CLOSE_TOO_BIG: Final = 1009
CLOSE_TOO_SLOW: Final = 4008
CLOSE_BAD_HELLO: Final = 4400
CLOSE_UNAUTHORIZED: Final = 4401
CLOSE_HEARTBEAT_LOST: Final = 4408


@dataclass(frozen=True, slots=True)
class CloseCode:
    code: int
    name: str
    meaning: str
    # Reconnecting at once with resume_from = the last seq received is the right response; for the
    # others the same client would be closed again (its hello, token or frames are at fault).
    resumable: bool


CLOSE_CODES: Mapping[int, CloseCode] = MappingProxyType({c.code: c for c in (
    CloseCode(CLOSE_NORMAL, "normal", "the session ended normally (either side closed it)", True),
    CloseCode(CLOSE_GOING_AWAY, "going away", "the server is shutting down; reconnect, possibly to another node", True),
    CloseCode(CLOSE_POLICY, "policy", "too many invalid frames (abuse); fix the client before reconnecting", False),
    CloseCode(CLOSE_TOO_BIG, "too big", "a frame exceeded the transport limit (enforced by the WebSocket layer)",
              False),
    CloseCode(CLOSE_TOO_SLOW, "too slow", "the client fell behind and its send queue filled up", True),
    CloseCode(CLOSE_BAD_HELLO, "bad hello", "the hello was malformed or asked for an unsupported protocol", False),
    CloseCode(CLOSE_UNAUTHORIZED, "unauthorized", "no hello within the deadline, or the token was refused", False),
    CloseCode(CLOSE_HEARTBEAT_LOST, "heartbeat lost", "nothing arrived from the client for 3 heartbeat intervals",
              True),
)})


class Origin(StrEnum):
    SESSION = "session"  # this module, about a frame
    HANDLER = "handler"  # the gateway handler, about an op it executed (or refused to)


@dataclass(frozen=True, slots=True)
class ErrorCode:
    code: str
    origin: Origin
    meaning: str
    # Answers with a retryable code are not remembered: the same op id may be sent again later,
    # and then it is executed (nothing was applied the first time, or the handler's store knows).
    retryable: bool = False
    on_repeat: str = ""  # what a repeat of the op id gets, when the general rule does not say it


_S, _H = Origin.SESSION, Origin.HANDLER
ERROR_CODES: Mapping[str, ErrorCode] = MappingProxyType({e.code: e for e in (
    ErrorCode("hello_expected", _S, "the first frame was not a hello; the socket closes with 4401"),
    ErrorCode("unauthorized", _S, "the token is unknown, revoked or expired; the socket closes with 4401"),
    ErrorCode("unsupported_protocol", _S, "the hello asked for a protocol version the server does not speak "
              "(`supported` lists those it does); the socket closes with 4400"),
    ErrorCode("invalid_json", _S, "the frame is not JSON (NaN and infinities are not JSON)"),
    ErrorCode("not_an_object", _S, "the frame is JSON but not an object"),
    ErrorCode("too_large", _S, f"the frame is larger than {MAX_FRAME_BYTES // 1024} KiB"),
    ErrorCode("binary_unsupported", _S, "a binary frame arrived; the protocol uses text frames only"),
    ErrorCode("unknown_op", _S, "the op is not one the server knows"),
    ErrorCode("invalid_request", _S, "a field is missing or invalid; `errors` lists each as `{field, message}` "
              "(the handler sends it too, for a rule only it can check)",
              on_repeat="is checked afresh if the session refused it; gets this error again if the handler did"),
    ErrorCode("in_progress", _S, "an op with this id is still executing; its answer will follow",
              on_repeat="gets `in_progress` until the answer is sent, then the answer"),
    ErrorCode("forbidden", _H, "the principal may not use this op, or not on this subject"),
    ErrorCode("not_found", _H, "the incident, assignment, unit or channel does not exist (or is not visible)"),
    ErrorCode("conflict", _H, "the op conflicts with the current state (e.g. it changed meanwhile)"),
    ErrorCode("unit_unavailable", _H, "a unit to dispatch is no longer available"),
    ErrorCode("illegal_transition", _H, "the lifecycle does not allow this step from the current state"),
    ErrorCode("rate_limited", _H, "too many ops (or positions) too fast; retry later with the same id "
              "(also sent by the session when too many ops are in progress)", retryable=True),
    ErrorCode("unsupported", _H, "the op is defined but not available on this server yet"),
    ErrorCode("internal_error", _H, "the server failed; retry later with the same id (never applied twice)",
              retryable=True),
    ErrorCode("room_elsewhere", _H, "the media room lives on another node (the message names its address); "
              "connect there to join it"),
    ErrorCode("callee_unavailable", _H, "the member called has no connection on this node; try again later",
              retryable=True),
    ErrorCode("room_full", _H, "the media room has as many participants as it may"),
)})


# ---------------------------------------------------------------------------------------------
# Actions: what the handler must do. Validated at construction, like h11's events.

OpId: TypeAlias = str | int


@dataclass(frozen=True, slots=True)
class Send:
    """Send one JSON text frame."""

    frame: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Close:
    """Close the socket with this code and reason; the session accepts nothing more."""

    code: int
    reason: str

    def __post_init__(self) -> None:
        # 1005, 1006 and 1015 are reserved for reporting and must never be sent (RFC 6455 §7.4.1).
        if not (1000 <= self.code <= 4999) or self.code in (1004, 1005, 1006, 1015):
            raise ValueError(f"{self.code} is not a close code that may be sent")
        if len(self.reason.encode("utf-8")) > _MAX_REASON_BYTES:
            raise ValueError(f"a close reason is at most {_MAX_REASON_BYTES} bytes")


@dataclass(frozen=True, slots=True)
class Authenticate:
    """Check the token (None: the console's session cookie sent with the upgrade request); then
    call `Session.authenticated` or `Session.auth_failed`."""

    token: str | None
    resume_from: int | None
    client: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Execute:
    """Carry out a validated op; then call `Session.op_ok` or `Session.op_error` with its id."""

    op: str
    id: OpId
    args: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Notify:
    """Carry out a validated notification (an op that takes no id and gets no answer)."""

    op: str
    args: dict[str, Any]


Action: TypeAlias = Send | Close | Authenticate | Execute | Notify


# ---------------------------------------------------------------------------------------------
# Field checks: each validates and normalises one value and describes itself for the docs.

@dataclass(frozen=True, slots=True)
class FieldError:
    field: str  # a JSON pointer into the frame, e.g. /location/lat
    message: str


class FieldErrorLike(Protocol):
    @property
    def field(self) -> str: ...
    @property
    def message(self) -> str: ...


class _Invalid(Exception):
    def __init__(self, errors: tuple[FieldError, ...]) -> None:
        super().__init__(errors)
        self.errors = errors


class Check:
    """A rule for one JSON value: `check(value, path)` returns it normalised or raises `_Invalid`."""

    __slots__ = ()

    def __call__(self, value: Any, path: str) -> Any:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def fail(self, path: str) -> NoReturn:
        raise _Invalid((FieldError(path, f"must be {self.describe()}"),))


# NUL and lone surrogates cannot be stored in PostgreSQL text or encoded as UTF-8; refusing them at
# the edge keeps them out of the log, the database and every other client's frames.
_UNSAFE = re.compile("[\x00\ud800-\udfff]")
# The domain's rules for ids and vocabulary keys (dispatch/_checks.py), applied here too so a bad
# value is refused with its field path before any I/O; a test keeps the two in agreement.
_IDENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_SLUG = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


@dataclass(frozen=True, slots=True)
class Number(Check):
    lo: float | None = None
    hi: float | None = None
    unit: str = ""

    def __call__(self, value: Any, path: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(path)
        try:
            number = float(value)
        except OverflowError:  # an integer beyond a double's range
            self.fail(path)
        if not math.isfinite(number) or (self.lo is not None and number < self.lo) or (
                self.hi is not None and number > self.hi):
            self.fail(path)
        return number

    def describe(self) -> str:
        unit = f" ({self.unit})" if self.unit else ""
        if self.lo is not None and self.hi is not None:
            return f"a number from {self.lo:g} to {self.hi:g}{unit}"
        if self.lo is not None:
            return f"a number >= {self.lo:g}{unit}"
        return f"a number{unit}"


@dataclass(frozen=True, slots=True)
class Integer(Check):
    lo: int | None = None
    hi: int | None = None

    def __call__(self, value: Any, path: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or (self.lo is not None and value < self.lo) or (
                self.hi is not None and value > self.hi):
            self.fail(path)
        return value

    def describe(self) -> str:
        if self.lo is not None and self.hi is not None:
            return f"an integer from {self.lo} to {self.hi}"
        if self.lo is not None:
            return f"an integer >= {self.lo}"
        return "an integer"


@dataclass(frozen=True, slots=True)
class Text(Check):
    max_chars: int
    blank: bool = False  # may be empty or only whitespace

    def __call__(self, value: Any, path: str) -> str:
        if not isinstance(value, str) or len(value) > self.max_chars or _UNSAFE.search(value) or (
                not self.blank and not value.strip()):
            self.fail(path)
        return value

    def describe(self) -> str:
        kind = "a string" if self.blank else "a non-blank string"
        return f"{kind} of at most {self.max_chars} characters"


@dataclass(frozen=True, slots=True)
class Pattern(Check):
    pattern: re.Pattern[str]
    what: str

    def __call__(self, value: Any, path: str) -> str:
        if not isinstance(value, str) or not self.pattern.fullmatch(value):
            self.fail(path)
        return value

    def describe(self) -> str:
        return self.what


@dataclass(frozen=True, slots=True)
class Choice(Check):
    values: tuple[str, ...]

    def __call__(self, value: Any, path: str) -> str:
        if not isinstance(value, str) or value not in self.values:
            self.fail(path)
        return value

    def describe(self) -> str:
        return "one of " + ", ".join(self.values)


@dataclass(frozen=True, slots=True)
class Timestamp(Check):
    """An ISO 8601 date-time with a UTC offset, normalised to an aware `datetime` in UTC."""

    def __call__(self, value: Any, path: str) -> datetime:
        if not isinstance(value, str) or len(value) > 64:
            self.fail(path)
        try:
            parsed = datetime.fromisoformat(value)
            # A naive time is ambiguous across nodes and DST changes: never guess a zone.
            if parsed.utcoffset() is None:
                self.fail(path)
            return parsed.astimezone(UTC)
        except (ValueError, OverflowError):  # OverflowError: the year leaves 1..9999 in UTC
            self.fail(path)

    def describe(self) -> str:
        return "an ISO 8601 date-time with a UTC offset, e.g. 2026-05-01T12:00:00Z"


@dataclass(frozen=True, slots=True)
class OpIdCheck(Check):
    def __call__(self, value: Any, path: str) -> OpId:
        if isinstance(value, str):
            if 0 < len(value) <= MAX_ID_CHARS and not _UNSAFE.search(value):
                return value
        elif isinstance(value, int) and not isinstance(value, bool) and len(str(value)) <= MAX_ID_CHARS:
            return value
        self.fail(path)

    def describe(self) -> str:
        return f"a string of 1 to {MAX_ID_CHARS} characters or an integer of at most {MAX_ID_CHARS} digits"


@dataclass(frozen=True, slots=True)
class Flag(Check):
    def __call__(self, value: Any, path: str) -> bool:
        if not isinstance(value, bool):
            self.fail(path)
        return value

    def describe(self) -> str:
        return "true or false"


@dataclass(frozen=True, slots=True)
class FreeObject(Check):
    """Any JSON object, passed on as is once no string in it (keys included) is unsafe."""

    what: str

    def __call__(self, value: Any, path: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(path)
        # Iterative, so a deeply nested object cannot exhaust the interpreter's stack.
        stack: list[Any] = [value]
        while stack:
            item = stack.pop()
            if isinstance(item, dict):
                if any(_UNSAFE.search(k) for k in item):
                    self.fail(path)
                stack.extend(item.values())
            elif isinstance(item, list):
                stack.extend(item)
            elif isinstance(item, str) and _UNSAFE.search(item):
                self.fail(path)
        return value

    def describe(self) -> str:
        return self.what


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    check: Check
    required: bool = True


@dataclass(frozen=True, slots=True)
class Record(Check):
    """An object with named fields; unknown fields are ignored so newer clients can talk to this server."""

    fields: tuple[Field, ...]
    at_least_one: tuple[str, ...] = ()  # of these optional fields, at least one must be given

    def __call__(self, value: Any, path: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(path)
        out: dict[str, Any] = {}
        errors: list[FieldError] = []
        for f in self.fields:
            raw = value.get(f.name)
            # null means absent, as most JSON encoders write an unset optional field.
            if raw is None:
                if f.required:
                    errors.append(FieldError(f"{path}/{f.name}", f"is required: {f.check.describe()}"))
                continue
            try:
                out[f.name] = f.check(raw, f"{path}/{f.name}")
            except _Invalid as exc:
                errors.extend(exc.errors)
        if not errors and self.at_least_one and not any(name in out for name in self.at_least_one):
            errors.append(FieldError(f"{path}/{self.at_least_one[0]}",
                                     "give " + " or ".join(self.at_least_one)))
        if errors:
            raise _Invalid(tuple(errors))
        return out

    def describe(self) -> str:
        return "an object {" + ", ".join(f.name + ("" if f.required else "?") for f in self.fields) + "}"


@dataclass(frozen=True, slots=True)
class ListOf(Check):
    item: Check
    max_items: int
    noun: str
    key: Callable[[Any], Hashable] | None = None  # entries with equal keys ...
    drop_repeats: bool = False  # ... are dropped (set semantics) rather than refused

    def __call__(self, value: Any, path: str) -> list[Any]:
        if not isinstance(value, list) or not 0 < len(value) <= self.max_items:
            self.fail(path)
        out: list[Any] = []
        seen: set[Hashable] = set()
        errors: list[FieldError] = []
        for i, raw in enumerate(value):
            try:
                item = self.item(raw, f"{path}/{i}")
            except _Invalid as exc:
                errors.extend(exc.errors)
                continue
            key = self.key(item) if self.key is not None else item
            if key in seen:
                if not self.drop_repeats:
                    errors.append(FieldError(f"{path}/{i}", f"repeats an earlier entry ({str(key)[:40]})"))
                continue
            seen.add(key)
            out.append(item)
        if errors:
            raise _Invalid(tuple(errors))
        return out

    def describe(self) -> str:
        return f"a list of 1 to {self.max_items} {self.noun}"


@dataclass(frozen=True, slots=True)
class UnitRef(Check):
    """A unit to dispatch: its id, or {unit_id, capability?} naming the requirement it fills."""

    ref: Record

    def __call__(self, value: Any, path: str) -> dict[str, Any]:
        if isinstance(value, str):
            return self.ref({"unit_id": value}, path)
        if isinstance(value, dict):
            return self.ref(value, path)
        self.fail(path)

    def describe(self) -> str:
        return "a unit id or " + self.ref.describe()


IDENT = Pattern(_IDENT, "an id: 1 to 128 letters, digits, '.', '_', ':' or '-'")
TOPIC = Pattern(re.compile(rf"events|positions|incident:{_IDENT.pattern}"),
                'a topic: "events", "positions" or "incident:<incident id>"')
REASON = Text(MAX_REASON_CHARS, blank=True)
# What a unit may report itself; `dispatched` is only ever set by a dispatcher's command.
UNIT_REPORTED_STATUSES: Final = tuple(s.value for s in (
    UnitStatus.AVAILABLE, UnitStatus.OUT_OF_SERVICE, UnitStatus.OFF_DUTY, UnitStatus.EN_ROUTE,
    UnitStatus.ON_SCENE, UnitStatus.TRANSPORTING, UnitStatus.AT_HOSPITAL))
_LAT = Field("lat", Number(-90, 90))
_LON = Field("lon", Number(-180, 180))
_ASSIGNMENT = Field("assignment", IDENT)
_INCIDENT = Field("incident", IDENT)
_CHANNEL = Field("channel", IDENT)
_TOPICS = Field("topics", ListOf(TOPIC, MAX_TOPICS, "topics", drop_repeats=True))
# Media rooms: a call, an incident's conference, or a channel's push-to-talk talkgroup (its channel id).
_ROOM = Field("room", Pattern(re.compile(rf"(call|conference):{_IDENT.pattern}|(talkgroup|incident|agency):"
                                         rf"{_IDENT.pattern}"),
                              "a room: call:<call id>, conference:<incident id>, or a talkgroup's channel id "
                              "(talkgroup:<agency>:<name>, incident:<id>, agency:<id>)"))
_SDP = Field("sdp", Text(MAX_SDP_CHARS))
_MEMBER_KEY = Pattern(re.compile(rf"(unit|user|token):{_IDENT.pattern}"),
                      "a member: unit:<id>, user:<id> or token:<id>")
_TALKGROUP = Field("talkgroup", Pattern(re.compile(rf"(talkgroup|incident|agency):{_IDENT.pattern}"),
                                        "a talkgroup's channel id: talkgroup:<agency>:<name>, incident:<id> or "
                                        "agency:<id>"))

HELLO: Final = Record((
    Field("token", Text(MAX_TOKEN_CHARS), required=False),  # absent: the session cookie of the upgrade
    Field("resume_from", Integer(0), required=False),
    Field("protocol", Integer(), required=False),
    Field("client", FreeObject("an object describing the client (app, version, device), free-form"),
          required=False),
))


# ---------------------------------------------------------------------------------------------
# The operation table.

class Audience(StrEnum):
    """Which kind of principal an op is meant for; the handler maps roles onto these."""

    UNIT = "unit"
    CONSOLE = "console"
    ANY = "any"


@dataclass(frozen=True, slots=True)
class OpSpec:
    name: str
    audience: Audience
    args: Record
    summary: str
    # Answered by the session itself (ping, pong): no id needed, no Execute.
    local: bool = False
    # A notification: no id needed, never answered; what it says is cumulative, so a lost or
    # repeated one does no harm (receipts). The handler gets a `Notify` action.
    notify: bool = False


OPS: Mapping[str, OpSpec] = MappingProxyType({spec.name: spec for spec in (
    OpSpec("position", Audience.UNIT, Record((
        _LAT, _LON,
        Field("accuracy", Number(0, None, "m"), required=False),
        Field("heading", Number(0, 360, "degrees clockwise from north"), required=False),
        Field("speed", Number(0, None, "m/s"), required=False),
        Field("time", Timestamp()),
    )), "report the unit's position (`time` becomes an aware UTC datetime in `args`)"),
    OpSpec("status", Audience.UNIT, Record((Field("status", Choice(UNIT_REPORTED_STATUSES)),)),
           "report the unit's status"),
    OpSpec("ack", Audience.UNIT, Record((_ASSIGNMENT,)), "acknowledge an assignment"),
    OpSpec("decline", Audience.UNIT, Record((_ASSIGNMENT, Field("reason", REASON, required=False))),
           "decline an assignment"),
    OpSpec("en_route", Audience.UNIT, Record((_ASSIGNMENT,)), "the unit is on its way"),
    OpSpec("on_scene", Audience.UNIT, Record((_ASSIGNMENT,)), "the unit has arrived"),
    OpSpec("clear", Audience.UNIT, Record((_ASSIGNMENT,)), "the unit is done with the assignment"),
    OpSpec("subscribe", Audience.CONSOLE, Record((_TOPICS,)),
           "receive `event` frames (`events`, `incident:<id>`) or `positions` frames; repeats are merged"),
    OpSpec("unsubscribe", Audience.CONSOLE, Record((_TOPICS,)), "stop receiving those topics"),
    OpSpec("incident.create", Audience.CONSOLE, Record((
        Field("type", Pattern(_SLUG, "an incident type: 1 to 64 lowercase letters, digits, '_' or '-'")),
        Field("priority", Integer(PRIORITY_HIGHEST, PRIORITY_LOWEST)),
        Field("location", Record((_LAT, _LON)), required=False),
        Field("address", Text(MAX_ADDRESS_CHARS), required=False),
    ), at_least_one=("location", "address")), "open an incident at a location or an address"),
    OpSpec("incident.dispatch", Audience.CONSOLE, Record((
        _INCIDENT,
        Field("units", ListOf(UnitRef(Record((
            Field("unit_id", IDENT),
            Field("capability", Choice(tuple(c.value for c in Capability)), required=False),
        ))), MAX_UNITS_PER_DISPATCH, "units", key=lambda ref: ref["unit_id"])),
    )), "dispatch units, all or none (a unit id alone becomes `{unit_id}` in `args`)"),
    OpSpec("incident.note", Audience.CONSOLE, Record((_INCIDENT, Field("text", Text(MAX_NOTE_CHARS)))),
           "add a note to the incident"),
    OpSpec("incident.close", Audience.CONSOLE, Record((_INCIDENT, Field("disposition", REASON, required=False))),
           "close the incident"),
    OpSpec("incident.cancel", Audience.CONSOLE, Record((_INCIDENT, Field("reason", REASON, required=False))),
           "cancel the incident"),
    OpSpec("recommend", Audience.CONSOLE, Record((_INCIDENT,)), "rank units for the incident's response plan"),
    OpSpec("message.send", Audience.ANY, Record((
        _CHANNEL, Field("text", Text(MAX_MESSAGE_CHARS)),
        Field("priority", Choice(("normal", "emergency")), required=False),
        Field("attachment", IDENT, required=False),
        Field("client_id", Pattern(re.compile(r"[A-Za-z0-9._:-]{1,100}"),
                                   "1 to 100 letters, digits, '.', '_', ':' or '-'"), required=False),
    )), "post a message to a channel (members only); `client_id` (default: the op id) makes a resend "
        "return the first message"),
    OpSpec("message.receipt", Audience.ANY, Record((
        Field("receipts", ListOf(Record((
            _CHANNEL, Field("delivered", Integer(0, MAX_SEQ), required=False),
            Field("read", Integer(0, MAX_SEQ), required=False),
        ), at_least_one=("delivered", "read")), MAX_RECEIPTS, "receipts {channel, delivered?, read?}",
            key=lambda r: r["channel"])),
    )), "confirm, per channel, the last message received (`delivered`) and read (`read`): cumulative; "
        "a notification: no `id` needed, no answer", notify=True),
    OpSpec("message.ack", Audience.ANY, Record((_CHANNEL, Field("seq", Integer(1, MAX_SEQ)))),
           "acknowledge a message (emergency messages ask every member to)"),
    OpSpec("message.history", Audience.ANY, Record((
        _CHANNEL, Field("before", Integer(1, MAX_SEQ), required=False),
        Field("limit", Integer(1, MAX_HISTORY), required=False),
    )), "a channel's messages before `before` (default: the newest), oldest first"),
    OpSpec("channel.list", Audience.ANY, Record(()), "the channels this principal is a member of"),
    OpSpec("rtc.call", Audience.ANY, Record((
        Field("to", _MEMBER_KEY), Field("incident", IDENT, required=False),
        Field("video", Flag(), required=False),
    )), "ring another member (`rtc.ring` to them); answered with the `call` (id, room, state `ringing`)"),
    OpSpec("rtc.accept", Audience.ANY, Record((Field("call", IDENT),)),
           "accept a call that rings for you; then both parties `rtc.offer` into its room"),
    OpSpec("rtc.decline", Audience.ANY, Record((Field("call", IDENT), Field("reason", REASON, required=False))),
           "decline a call that rings for you (the caller gets `rtc.ended`, reason `declined`)"),
    OpSpec("rtc.join", Audience.ANY, Record((_ROOM, Field("video", Flag(), required=False))),
           "join a room with a server offer: answered with `sdp` (an offer); reply with `rtc.answer`"),
    OpSpec("rtc.offer", Audience.ANY, Record((_ROOM, _SDP)),
           "join a room (or renegotiate) with an SDP offer; answered with the server's SDP answer (`sdp`)"),
    OpSpec("rtc.answer", Audience.ANY, Record((_ROOM, _SDP)), "the SDP answer to the server's offer"),
    OpSpec("rtc.candidate", Audience.ANY, Record((
        _ROOM, Field("candidate", Text(MAX_CANDIDATE_CHARS, blank=True)),
        Field("sdpMid", Text(64), required=False), Field("sdpMLineIndex", Integer(0, 64), required=False),
    )), "a trickled ICE candidate for the room's connection (an empty `candidate` ends them)"),
    OpSpec("rtc.hangup", Audience.ANY, Record((_ROOM,)),
           "leave a room; hangs up a call (or withdraws one still ringing)"),
    OpSpec("rtc.video", Audience.ANY, Record((_ROOM, Field("source", Text(200, blank=True)))),
           "choose the video a conference shows: a participant's member key or `camera:<id>` (the bare id from "
           "`rtc.room`'s `cameras` is taken too); empty: none "
           "(dispatchers)"),
    OpSpec("ptt.request", Audience.ANY, Record((_TALKGROUP, Field("emergency", Flag(), required=False))),
           "ask for a talkgroup's floor: answered with `outcome` granted, queued or denied (and the matching "
           "`ptt.*` frame)"),
    OpSpec("ptt.release", Audience.ANY, Record((_TALKGROUP,)),
           "let go of the floor (or withdraw a queued request)"),
    OpSpec("ping", Audience.ANY, Record(()), "answered at once by `pong` with `ref` = the id, if any",
           local=True),
    OpSpec("pong", Audience.ANY, Record(()), "answers a server `ping` (may echo its `t`); no answer",
           local=True),
)})
_ID = OpIdCheck()


# ---------------------------------------------------------------------------------------------
# Server → client frames the handler builds.

def error_frame(code: str, message: str, ref: OpId | None = None,
                errors: Iterable[FieldErrorLike] = ()) -> dict[str, Any]:
    frame: dict[str, Any] = {"op": "error", "ref": ref, "code": code, "message": message}
    listed = [{"field": e.field, "message": e.message} for e in errors]
    if listed:
        frame["errors"] = listed
    return frame


def event_frame(wire_event: Mapping[str, Any]) -> dict[str, Any]:
    """An `event` frame from an event's wire form (seq, at, type, subject, actor, data)."""
    if "op" in wire_event:
        raise ValueError("a wire event has no 'op' key")
    return {"op": "event", **wire_event}


def positions_frame(batch: list[dict[str, Any]]) -> dict[str, Any]:
    return {"op": "positions", "units": batch}


def message_frame(view: Mapping[str, Any], *, repeat: bool = False) -> dict[str, Any]:
    """A `message` frame from a message's view (channel, seq, at, sender, text, priority, …);
    ``repeat`` marks an emergency message sent again because it is not acknowledged yet."""
    if "op" in view:
        raise ValueError("a message view has no 'op' key")
    frame = {"op": "message", **view}
    if repeat:
        frame["repeat"] = True
    return frame


def receipts_frame(receipts: list[dict[str, Any]]) -> dict[str, Any]:
    """Receipts for a sender: {channel, seq, member, delivered_at?, read_at?, acked_at?} each."""
    return {"op": "receipts", "receipts": receipts}


def resync_frame(reason: str, head_seq: int) -> dict[str, Any]:
    """Tell the client its resume point is too old: refetch state over REST, then resume from `seq`."""
    return {"op": "resync", "reason": reason, "seq": head_seq}


# ---------------------------------------------------------------------------------------------
# The session.

class State(Enum):
    AWAITING_HELLO = "awaiting_hello"
    AUTHENTICATING = "authenticating"
    OPEN = "open"
    CLOSED = "closed"


def _decode(text: str, max_frame: int) -> dict[str, Any] | tuple[str, str]:
    """The frame as an object, or the (code, message) of the error frame that refuses it."""
    # Every character takes at least one UTF-8 byte and at most four, so most frames are sized
    # without encoding them.
    if len(text) > max_frame or (len(text) * 4 > max_frame
                                 and len(text.encode("utf-8", "surrogatepass")) > max_frame):
        return "too_large", f"a frame is at most {max_frame} bytes"
    try:
        frame = _decode_json(text)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser's stack
        return "invalid_json", "the frame is not JSON"
    if not isinstance(frame, dict):
        return "not_an_object", "a frame must be a JSON object"
    return frame


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):  # 1e999 parses as infinity
        raise ValueError("a number out of range")
    return number


# Made once: `json.loads` with options builds a new decoder for every frame.
_decode_json = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float).decode


_Early: TypeAlias = tuple[str | None, float]  # a held text frame (None: a binary one) and when it came


class Session:
    """One client's protocol state: feed it frames, ticks and the handler's results; do what it returns.

    Nothing here raises because of what a peer sent: every bad frame becomes an error frame, and
    the ones that end the session a `Close`. Misuse by the handler (answering an op that is not in
    progress, say) raises `ValueError`.
    """

    __slots__ = ("_abuse", "_answers", "_early", "_heard", "_hello_deadline", "_last_result", "_next_ping", "_now",
                 "_pending", "heartbeat_s", "hello_timeout_s", "max_answers", "max_frame", "max_in_flight", "state")

    def __init__(self, *, now: float, heartbeat_s: float = HEARTBEAT_S, hello_timeout_s: float = HELLO_TIMEOUT_S,
                 max_frame: int = MAX_FRAME_BYTES, max_answers: int = MAX_ANSWERS,
                 max_in_flight: int = MAX_IN_FLIGHT) -> None:
        if not (heartbeat_s > 0 and hello_timeout_s > 0 and max_frame > 0 and max_answers >= 0
                and max_in_flight > 0):
            raise ValueError("heartbeat, hello timeout, frame size and in-flight limit must be positive")
        self.state = State.AWAITING_HELLO
        self.heartbeat_s = heartbeat_s
        self.hello_timeout_s = hello_timeout_s
        self.max_frame = max_frame
        self.max_answers = max_answers
        self.max_in_flight = max_in_flight
        self._now = now
        self._hello_deadline = now + hello_timeout_s
        self._heard = now
        self._next_ping = math.inf
        # Keyed by the id as text: 7 and "7" are one id, as in the handler's persistent store. A plain
        # dict in insertion order, not an OrderedDict: a third of the memory for a thousand answers.
        # Each answer is stored as None (a bare ok), an ok's result, or a whole error frame.
        self._answers: dict[str, dict[str, Any] | None] = {}
        self._last_result: dict[str, Any] | None = None
        self._pending: set[str] = set()
        # Created on first use: most sessions never see an invalid or an early frame, and
        # ten thousand idle connections should not each carry an empty deque.
        self._abuse: deque[float] | None = None
        self._early: list[_Early] | None = None

    # --- input from the peer -----------------------------------------------------------------

    def receive_text(self, text: str, now: float) -> list[Action]:
        """A text frame arrived."""
        if self.state is State.CLOSED:
            return []
        self._hear(now)
        return self._RECEIVE[self.state](self, text, now)

    def receive_binary(self, data: bytes, now: float) -> list[Action]:
        """A binary frame arrived (the protocol has none)."""
        if self.state is State.CLOSED:
            return []
        self._hear(now)
        return self._RECEIVE[self.state](self, None, now)

    def heard(self, now: float) -> None:
        """Something arrived that the handler dealt with itself (a WebSocket ping or pong): the peer lives."""
        if self.state is not State.CLOSED:
            self._hear(now)

    # --- input from the handler --------------------------------------------------------------

    def authenticated(self, principal: dict[str, Any], session_id: str, head_seq: int) -> list[Action]:
        """The token of the `Authenticate` action was accepted: welcome the client."""
        if self.state is State.CLOSED:
            return []
        if self.state is not State.AUTHENTICATING:
            raise ValueError(f"authenticated() in state {self.state.name}")
        self.state = State.OPEN
        # The client was waiting for us; its silence is counted from the welcome.
        self._heard = self._now
        self._next_ping = self._now + self.heartbeat_s
        heartbeat = int(self.heartbeat_s) if float(self.heartbeat_s).is_integer() else self.heartbeat_s
        actions: list[Action] = [Send({"op": "welcome", "session": session_id, "seq": head_seq,
                                       "protocol": PROTOCOL_VERSION, "principal": principal,
                                       "heartbeat_s": heartbeat})]
        early, self._early = self._early or [], None
        for text, at in early:
            if self.state is State.CLOSED:
                break
            actions += self._operate(text, at)
        return actions

    def auth_failed(self, message: str = "the token is unknown, revoked or expired") -> list[Action]:
        """The token of the `Authenticate` action was refused."""
        if self.state is State.CLOSED:
            return []
        if self.state is not State.AUTHENTICATING:
            raise ValueError(f"auth_failed() in state {self.state.name}")
        self._early = None
        return [Send(error_frame("unauthorized", message)), *self.close(CLOSE_UNAUTHORIZED, "unauthorized")]

    def op_ok(self, op_id: OpId, result: Mapping[str, Any] | None = None) -> list[Action]:
        """The op executed: answer `ok` with the result's fields."""
        if self.state is State.CLOSED:
            return []
        if result and ("op" in result or "ref" in result):
            raise ValueError("a result may not set 'op' or 'ref'")
        self._finish(op_id)
        frame: dict[str, Any] = {"op": "ok", "ref": op_id, **(result or {})}
        if not result:
            self._remember(op_id, None)
        else:
            # A unit's stream of position answers is mostly one result over and over: equal
            # consecutive results share one stored dict instead of a thousand copies.
            if result != self._last_result:
                self._last_result = dict(result)
            self._remember(op_id, self._last_result)
        return [Send(frame)]

    def op_error(self, op_id: OpId, code: str, message: str,
                 errors: Iterable[FieldErrorLike] = ()) -> list[Action]:
        """The op failed: answer `error` with a stable code (see ERROR_CODES) and a message for people."""
        if self.state is State.CLOSED:
            return []
        self._finish(op_id)
        frame = error_frame(code, message, op_id, errors)
        known = ERROR_CODES.get(code)
        # A code outside the table (a transient store failure, say) is treated as retryable:
        # forgetting an answer only costs a re-execution the handler's store still guards.
        if known is not None and not known.retryable:
            self._remember(op_id, frame)
        return [Send(frame)]

    def tick(self, now: float) -> list[Action]:
        """Time passed: close a silent client, or send a heartbeat when one is due."""
        self._now = max(self._now, now)
        if self.state is State.AWAITING_HELLO and now > self._hello_deadline:
            return self.close(CLOSE_UNAUTHORIZED, f"hello expected within {self.hello_timeout_s:g} s")
        if self.state is not State.OPEN:
            return []
        if now >= self._heard + HEARTBEAT_MISSES * self.heartbeat_s:
            return self.close(CLOSE_HEARTBEAT_LOST, "heartbeat lost")
        if now >= self._next_ping:
            # From now, not from the missed due time: a stalled loop must not send a burst of pings.
            self._next_ping = now + self.heartbeat_s
            return [Send({"op": "ping", "t": now})]
        return []

    def next_tick(self) -> float | None:
        """When `tick` next has something to do (None: never, the session is closed or waiting on auth)."""
        if self.state is State.AWAITING_HELLO:
            return math.nextafter(self._hello_deadline, math.inf)
        if self.state is State.OPEN:
            return min(self._next_ping, self._heard + HEARTBEAT_MISSES * self.heartbeat_s)
        return None

    def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> list[Action]:
        """End the session (server shutdown: 1001; a slow consumer: 4008)."""
        if self.state is State.CLOSED:
            return []
        close = Close(code, reason)
        self.state = State.CLOSED
        self._early = None
        return [close]

    # --- per state ---------------------------------------------------------------------------

    def _hello(self, text: str | None, now: float) -> list[Action]:
        if now > self._hello_deadline:
            return self.close(CLOSE_UNAUTHORIZED, f"hello expected within {self.hello_timeout_s:g} s")
        frame = _decode(text, self.max_frame) if text is not None else None
        if not isinstance(frame, dict) or frame.get("op") != "hello":
            return [Send(error_frame("hello_expected", 'the first frame must be {"op":"hello","token":…}')),
                    *self.close(CLOSE_UNAUTHORIZED, "hello expected")]
        version = frame.get("protocol")
        if isinstance(version, int) and not isinstance(version, bool) and version not in SUPPORTED_PROTOCOLS:
            error = error_frame("unsupported_protocol", f"this server speaks protocol {PROTOCOL_VERSION}")
            error["supported"] = list(SUPPORTED_PROTOCOLS)
            return [Send(error), *self.close(CLOSE_BAD_HELLO, "unsupported protocol")]
        try:
            args = HELLO(frame, "")
        except _Invalid as exc:
            return [Send(error_frame("invalid_request", "the hello has invalid fields", None, exc.errors)),
                    *self.close(CLOSE_BAD_HELLO, "bad hello")]
        self.state = State.AUTHENTICATING
        return [Authenticate(args.get("token"), args.get("resume_from"), args.get("client", {}))]

    def _hold(self, text: str | None, now: float) -> list[Action]:
        # Frames pipelined behind the hello run once the welcome is sent, in order.
        early = self._early if self._early is not None else []
        if len(early) >= MAX_EARLY_FRAMES:
            return self.close(CLOSE_POLICY, "too many frames before welcome")
        # An oversize frame is held cut to just over the limit: enough to be refused as too large.
        early.append((text[: self.max_frame + 1] if text is not None else None, now))
        self._early = early
        return []

    def _operate(self, text: str | None, now: float) -> list[Action]:
        if text is None:
            return self._invalid(now, "binary_unsupported", "binary frames are not supported; send JSON text")
        frame = _decode(text, self.max_frame)
        if not isinstance(frame, dict):
            return self._invalid(now, *frame)
        raw_id = frame.get("id")
        op_id = _optional_id(raw_id)
        op = frame.get("op")
        spec = OPS.get(op) if isinstance(op, str) else None
        if spec is None:
            if not isinstance(op, str):
                return self._invalid(now, "invalid_request", "a frame needs an op", op_id,
                                     [FieldError("/op", "is required: a string naming the operation")])
            if op == "hello":
                return self._invalid(now, "invalid_request", "the hello was already accepted", op_id,
                                     [FieldError("/op", "hello is only the first frame")])
            return self._invalid(now, "unknown_op", f"unknown operation {op[:40]!r}", op_id)
        if spec.local:
            return self._LOCAL[spec.name](self, frame, now)
        if spec.notify:
            try:
                return [Notify(spec.name, spec.args(frame, ""))]
            except _Invalid as exc:
                return self._invalid(now, "invalid_request", f"{spec.name} has invalid fields", op_id, exc.errors)
        if raw_id is not None and op_id is None:
            return self._bad_id(now)
        if op_id is None:
            return self._invalid(now, "invalid_request", f"{spec.name} needs an id", None,
                                 [FieldError("/id", f"is required: {_ID.describe()}")])
        key = _key(op_id)
        if key in self._answers:
            # At most once: a repeat is answered again, never executed again.
            answer = self._answers[key] = self._answers.pop(key)  # now the most recent
            return [Send(_answer_again(op_id, answer))]
        if key in self._pending:
            return [Send(error_frame("in_progress", "an op with this id is executing; its answer will follow",
                                     op_id))]
        if len(self._pending) >= self.max_in_flight:
            return [Send(error_frame("rate_limited", f"at most {self.max_in_flight} ops may be in progress",
                                     op_id))]
        try:
            args = spec.args(frame, "")
        except _Invalid as exc:
            return self._invalid(now, "invalid_request", f"{spec.name} has invalid fields", op_id, exc.errors)
        self._pending.add(key)
        return [Execute(spec.name, op_id, args)]

    def _closed(self, text: str | None, now: float) -> list[Action]:
        return []

    _RECEIVE: ClassVar[Mapping[State, Callable[[Session, str | None, float], list[Action]]]] = {
        State.AWAITING_HELLO: _hello,
        State.AUTHENTICATING: _hold,
        State.OPEN: _operate,
        State.CLOSED: _closed,
    }

    # --- ops the session answers itself ------------------------------------------------------

    def _ping(self, frame: dict[str, Any], now: float) -> list[Action]:
        raw_id = frame.get("id")
        op_id = _optional_id(raw_id)
        if raw_id is not None and op_id is None:
            return self._bad_id(now)
        return [Send({"op": "pong", "ref": op_id})]

    def _pong(self, frame: dict[str, Any], now: float) -> list[Action]:
        return []  # hearing from the client was the point

    _LOCAL: ClassVar[Mapping[str, Callable[[Session, dict[str, Any], float], list[Action]]]] = {
        "ping": _ping,
        "pong": _pong,
    }

    # --- helpers -----------------------------------------------------------------------------

    def _hear(self, now: float) -> None:
        self._now = max(self._now, now)
        self._heard = max(self._heard, now)

    def _invalid(self, now: float, code: str, message: str, ref: OpId | None = None,
                 errors: Iterable[FieldErrorLike] = ()) -> list[Action]:
        actions: list[Action] = [Send(error_frame(code, message, ref, errors))]
        window = self._abuse if self._abuse is not None else deque(maxlen=ABUSE_LIMIT + 1)
        self._abuse = window
        window.append(now)
        while window[0] <= now - ABUSE_WINDOW_S:
            window.popleft()
        if len(window) > ABUSE_LIMIT:
            actions += self.close(CLOSE_POLICY, "too many invalid frames")
        return actions

    def _bad_id(self, now: float) -> list[Action]:
        return self._invalid(now, "invalid_request", "the op id is invalid", None,
                             [FieldError("/id", f"must be {_ID.describe()}")])

    def _finish(self, op_id: OpId) -> None:
        key = _key(op_id)
        if key not in self._pending:
            raise ValueError(f"op {op_id!r} is not in progress")
        self._pending.discard(key)

    def _remember(self, op_id: OpId, answer: dict[str, Any] | None) -> None:
        if self.max_answers == 0:
            return
        self._answers[_key(op_id)] = answer
        if len(self._answers) > self.max_answers:
            del self._answers[next(iter(self._answers))]


def _answer_again(op_id: OpId, stored: dict[str, Any] | None) -> dict[str, Any]:
    if stored is None:
        return {"op": "ok", "ref": op_id}
    if "op" in stored:  # an error frame (an ok's result never has an "op")
        return {**stored, "ref": op_id}
    return {"op": "ok", "ref": op_id, **stored}


def _key(op_id: OpId) -> str:
    return op_id if isinstance(op_id, str) else str(op_id)


def _optional_id(value: Any) -> OpId | None:
    try:
        return None if value is None else _ID(value, "/id")
    except _Invalid:
        return None


# ---------------------------------------------------------------------------------------------
# Tables for docs/protocol.md (a test keeps the committed document equal to these).

def ops_markdown() -> str:
    lines = ["| op | for | fields (`?` = optional) | what it does |", "| --- | --- | --- | --- |"]
    for spec in OPS.values():
        fields = "<br>".join(f"`{f.name}`{'' if f.required else '?'}: {f.check.describe()}"
                             for f in spec.args.fields)
        if spec.args.at_least_one:
            fields += "<br>(at least one of " + ", ".join(f"`{n}`" for n in spec.args.at_least_one) + ")"
        if spec.name == "ping":
            fields = f"`id`?: {_ID.describe()}"
        lines.append(f"| `{spec.name}` | {spec.audience.value} | {fields or '—'} | {spec.summary} |")
    return "\n".join(lines) + "\n"


def close_codes_markdown() -> str:
    lines = ["| code | name | meaning | reconnect with `resume_from`? |", "| --- | --- | --- | --- |"]
    lines += [f"| {c.code} | {c.name} | {c.meaning} | {'yes, at once' if c.resumable else 'after fixing the cause'} |"
              for c in CLOSE_CODES.values()]
    return "\n".join(lines) + "\n"


def error_codes_markdown() -> str:
    def repeat(e: ErrorCode) -> str:
        if e.on_repeat:
            return e.on_repeat
        if e.origin is Origin.SESSION:
            return "—" if e.code in _HELLO_CODES else "is checked afresh (nothing was executed)"
        return "is executed again" if e.retryable else "gets this error again"

    lines = ["| code | sent by | meaning | a repeat of the op id … |", "| --- | --- | --- | --- |"]
    lines += [f"| `{e.code}` | {e.origin.value} | {e.meaning} | {repeat(e)} |" for e in ERROR_CODES.values()]
    return "\n".join(lines) + "\n"


_HELLO_CODES: Final = ("hello_expected", "unauthorized", "unsupported_protocol")
