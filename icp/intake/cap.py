"""CAP 1.2 alerts (``POST /api/v1/alerts/cap``): safe XML parsing, tolerant or strict, to a report.

Safety first: the body is bounded (256 KiB by default) and parsed by defusedxml with DTDs
forbidden, so external entities (XXE) and entity-expansion bombs are refused before any entity is
read. Bytes go to the parser as they came, so an encoding declared in the XML header
(ISO-8859-1, windows-1252, UTF-16, and multi-byte ones such as Shift_JIS through Python's codecs)
is honoured. Namespace prefixes are resolved by the parser (``<cap:alert>`` is ``<alert>``).

Tolerant mode (the default) reads what it can and records `Finding`s: missing required
elements, values outside CAP's vocabularies, unparseable or out-of-range areas, elements that
differ from the standard only in case (read, but their coordinates trusted only where the service
area confirms them). Strict mode first validates against the official OASIS XSD (shipped in
``icp/intake/schema/``) and refuses an invalid document with the XSD's message and path.

Areas: ``polygon`` and ``circle`` are CAP ``lat,lon`` (radius in km) and become lon/lat shapely
shapes through `geo.geojson`; ``geocode``-only areas are looked up in the configured table. The
point dispatched to is the centroid of all of an info's areas (a lone circle's centre), checked
against the service area by `report.place` (axis-swap and outside flags).
"""

from __future__ import annotations

import codecs
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from importlib import resources
from typing import Any

import defusedxml.ElementTree as SafeET  # type: ignore[import-untyped]  # no stubs published
import shapely
from defusedxml import DefusedXmlException
from shapely.geometry import Point as ShapelyPoint
from shapely.geometry.base import BaseGeometry

from dispatch.alert_rules import AlertKind, Certainty, Severity, Urgency, normalise
from geo.coords import CoordinateError, Point
from geo.distance import local_disc
from geo.geojson import Circle, GeometryError, parse_cap_circle, parse_cap_polygon, require_valid
from icp.intake.report import (
    DEFAULT_CONFIG,
    MAX_DESCRIPTION_CHARS,
    MAX_HEADLINE_CHARS,
    MAX_INFOS,
    MAX_LANGUAGE_CHARS,
    MAX_REFERENCES,
    AlertReport,
    Finding,
    InfoSummary,
    IntakeConfig,
    IntakeError,
    LocationFlag,
    MsgType,
    Problems,
    Status,
    check_ident,
    clean_text,
    parse_time,
    place,
)

CAP12 = "urn:oasis:names:tc:emergency:cap:1.2"
# Older versions are read in tolerant mode (with a finding): their elements are a subset of 1.2's.
CAP_VERSIONS: Mapping[str, str] = {
    CAP12: "1.2",
    "urn:oasis:names:tc:emergency:cap:1.1": "1.1",
    "http://www.incident.com/cap/1.0": "1.0",
}

ALERT_CHILDREN = (
    "identifier", "sender", "sent", "status", "msgType", "source", "scope", "restriction",
    "addresses", "code", "note", "references", "incidents", "info",
)
INFO_CHILDREN = (
    "language", "category", "event", "responseType", "urgency", "severity", "certainty", "audience",
    "eventCode", "effective", "onset", "expires", "senderName", "headline", "description",
    "instruction", "web", "contact", "parameter", "resource", "area",
)
AREA_CHILDREN = ("areaDesc", "polygon", "circle", "geocode", "altitude", "ceiling")
VALUE_CHILDREN = ("valueName", "value")
REPEATABLE = frozenset(
    {"code", "info", "category", "responseType", "eventCode", "parameter", "resource", "area", "polygon",
     "circle", "geocode"}
)
CATEGORIES = ("Geo", "Met", "Safety", "Security", "Rescue", "Fire", "Health", "Env", "Transport", "Infra",
              "CBRNE", "Other")
SCOPES = ("Public", "Restricted", "Private")

MAX_PARAMETERS = 100
MAX_VALUE_CHARS = 1_000
MAX_SCHEMA_ERRORS = 20

# CAP's own date-time pattern (the XSD's): seconds, and an explicit offset ("-00:00" for UTC).
_CAP_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[-+]\d\d:\d\d\Z")
_DECLARED_ENCODING = re.compile(rb"""^\s*<\?xml[^>]*?encoding\s*=\s*["']([A-Za-z0-9._-]{1,40})["']""")
_PAIR_COMMA = re.compile(r"\s*,\s*")
_NAMESPACE = re.compile(r"\{[^}]*\}")
_XSD_STEP = re.compile(r"(?:\{[^}]*\})?([A-Za-z_][\w.-]*)(?:\[(\d+)\])?")


# --- event and category → ICP alert kind ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CapKindRule:
    """Maps an info block to an ICP kind when any of its criteria holds.

    ``event_codes``: ``(valueName, value)`` pairs (e.g. ``("SAME", "FFW")``, case-insensitive);
    ``words``: a regular expression searched case-insensitively in ``event`` and ``headline``;
    ``categories``: CAP categories. Rules are tried in order; the first that matches wins.
    """

    kind: AlertKind
    event_codes: frozenset[tuple[str, str]] = frozenset()
    words: str = ""
    categories: frozenset[str] = frozenset()
    _pattern: re.Pattern[str] | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", AlertKind(self.kind))
        codes = frozenset((n.strip().upper(), v.strip().upper()) for n, v in self.event_codes)
        object.__setattr__(self, "event_codes", codes)
        object.__setattr__(self, "categories", frozenset(c.lower() for c in self.categories))
        object.__setattr__(self, "_pattern", re.compile(self.words, re.IGNORECASE) if self.words else None)

    def matches(self, event_codes: Iterable[tuple[str, str]], text: str, categories: Iterable[str]) -> bool:
        if self.event_codes and any((n.upper(), v.upper()) in self.event_codes for n, v in event_codes):
            return True
        if self._pattern is not None and self._pattern.search(text):
            return True
        return bool(self.categories) and any(c.lower() in self.categories for c in categories)


def _same(kind: AlertKind, codes: str) -> CapKindRule:
    return CapKindRule(kind, event_codes=frozenset(("SAME", c) for c in codes.split()))


DEFAULT_KIND_RULES: tuple[CapKindRule, ...] = (
    # US/Canada SAME event codes are the least ambiguous signal, so they go first.
    _same(AlertKind.FLOOD, "FFW FFS FFA FLW FLS FLA CFW CFA TSW TSA"),
    _same(AlertKind.FIRE, "FRW"),
    _same(AlertKind.GAS, "HMW NUW RHW"),
    _same(AlertKind.UTILITY_OUTAGE, "POS"),
    _same(AlertKind.WEATHER, "SVR SVS SVA TOR TOA TRW TRA HUW HUA HLS WSW WSA BZW HWW HWA EWW DSW SMW SQW SSW SSA"),
    _same(AlertKind.OTHER, "CAE EQW CEM LEW SPW CDW EVI ADR AVW AVA VOW BLU"),
    CapKindRule(AlertKind.WEATHER, words=r"\bfire weather\b|\bred flag\b"),
    CapKindRule(AlertKind.SMOKE, words=r"\bsmoke\b"),
    CapKindRule(AlertKind.GUNSHOT, words=r"\bgun ?shots?\b|\bshots? fired\b|\bshooting\b|\bshooter\b"),
    CapKindRule(AlertKind.ALARM, words=r"\bfire alarm\b"),
    CapKindRule(AlertKind.FIRE, words=r"\bfires?\b|\bwildfires?\b|\bbushfires?\b"),
    CapKindRule(AlertKind.FLOOD, words=r"\bflood|\btsunami\b|\bstorm surge\b|\bhigh water\b"),
    CapKindRule(AlertKind.GAS, words=r"\bgas leak\b|\bhazmat\b|\bhazardous materials?\b|\bchemical\b|\btoxic\b"
                                     r"|\bradiolog|\bnuclear\b|\bcbrne?\b"),
    CapKindRule(AlertKind.UTILITY_OUTAGE, words=r"\boutage\b|\bblackout\b|\bwater main\b"),
    CapKindRule(AlertKind.COLLISION, words=r"\bcollision\b|\bcrash\b|\btraffic accident\b|\bderail"),
    CapKindRule(AlertKind.PANIC, words=r"\bpanic\b|\bduress\b"),
    CapKindRule(AlertKind.MEDICAL, words=r"\bmedical\b|\bambulance\b|\bcardiac\b"),
    CapKindRule(AlertKind.INTRUSION, words=r"\bintrusion\b|\bburglar|\bintruder\b|\bbreak-in\b"),
    CapKindRule(AlertKind.WEATHER, words=r"storm|hurricane|typhoon|cyclone|tornado|\bwind|\bgale\b|\bsnow|blizzard"
                                         r"|\bice\b|freez|frost|\bheat\b|\bcold\b|\bfog\b|\bhail|\brain|thunder"
                                         r"|weather"),
    CapKindRule(AlertKind.WEATHER, categories=frozenset({"Met"})),
    CapKindRule(AlertKind.FIRE, categories=frozenset({"Fire"})),
    CapKindRule(AlertKind.MEDICAL, categories=frozenset({"Health"})),
    CapKindRule(AlertKind.GAS, categories=frozenset({"CBRNE"})),
    CapKindRule(AlertKind.UTILITY_OUTAGE, categories=frozenset({"Infra"})),
)


def kind_of(
    event_codes: Iterable[tuple[str, str]], text: str, categories: Iterable[str],
    rules: Sequence[CapKindRule] = DEFAULT_KIND_RULES,
) -> AlertKind:
    """The ICP kind of an info block by the first matching rule (``other`` if none)."""
    codes, cats = tuple(event_codes), tuple(categories)
    for rule in rules:
        if rule.matches(codes, text, cats):
            return rule.kind
    return AlertKind.OTHER


# --- info selection ----------------------------------------------------------------------------


def select_info(languages: Sequence[str], preferences: Sequence[str]) -> int:
    """Index of the info block to use: for each preference in order, an exact tag (case-insensitive)
    or else the same primary language (``en-US`` takes ``en-CA``); with no match, the first block."""
    tags = [t.strip().lower() for t in languages]
    for pref in preferences:
        wanted = pref.strip().lower()
        if wanted in tags:
            return tags.index(wanted)
        primary = wanted.split("-")[0]
        for i, tag in enumerate(tags):
            if tag.split("-")[0] == primary:
                return i
    return 0


# --- safe XML ------------------------------------------------------------------------------------


def _safe_parse(source: bytes | str) -> ET.Element:
    try:
        root: ET.Element = SafeET.fromstring(source, forbid_dtd=True, forbid_entities=True, forbid_external=True)
        return root
    except DefusedXmlException:
        raise IntakeError(
            "xml_forbidden",
            "document type declarations are not accepted: CAP needs none, and they carry external "
            "entities (XXE) and entity-expansion bombs",
        ) from None
    except ET.ParseError as exc:
        raise IntakeError("malformed_xml", f"not well-formed XML: {exc}") from None
    except LookupError as exc:
        raise IntakeError("unsupported_encoding", f"the declared encoding is not supported: {exc}") from None


def read_xml(body: bytes | bytearray | memoryview | str, *, max_bytes: int) -> ET.Element:
    """The root element of a bounded, entity-free XML document (encoding per its declaration)."""
    raw = body.encode("utf-8") if isinstance(body, str) else bytes(body)
    if len(raw) > max_bytes:
        raise IntakeError("too_large", f"the document is {len(raw)} bytes; at most {max_bytes} are accepted")
    if isinstance(body, str):
        return _safe_parse(body)  # text is already decoded: the parser ignores the declaration
    try:
        return _safe_parse(raw)
    except ValueError as exc:
        if "multi-byte encodings" not in str(exc):
            raise
    # Expat reads only single-byte encodings and UTF-8/16 itself; Python's codecs read the rest.
    match = _DECLARED_ENCODING.match(raw[:300])
    if match is None:
        raise IntakeError("unsupported_encoding", "the declared encoding is not supported")
    name = match.group(1).decode("ascii")
    try:
        text = raw.decode(codecs.lookup(name).name)
    except (LookupError, UnicodeDecodeError) as exc:
        raise IntakeError("unsupported_encoding", f"cannot decode the document as {name}: {exc}") from None
    return _safe_parse(text)


# --- strict mode ---------------------------------------------------------------------------------


@cache
def cap_schema() -> Any:
    """The OASIS CAP 1.2 XSD, loaded once (xmlschema is imported only when strict mode is used).

    ``use_fallback=False``: the XSD lets an ``xmldsig`` Signature follow the infos with lax
    processing; xmlschema would otherwise bring its own copy of the signature schema and judge
    the signature too (real NAADS signatures carry ``Id="NAADS Signature"``, not an xs:ID). Signing
    is a separate question from CAP conformance, so only the CAP schema decides here.
    """
    import xmlschema

    path = resources.files("icp.intake").joinpath("schema", "CAP-v1.2.xsd")
    with resources.as_file(path) as file:
        return xmlschema.XMLSchema(str(file), use_fallback=False, allow="local")


def _pointer(xsd_path: str | None) -> str:
    """``/{ns}alert/{ns}info[2]/{ns}area`` (XPath-like, 1-based) as ``/info/1/area/0``."""
    if not xsd_path:
        return ""
    out = []
    for step in xsd_path.strip("/").split("/")[1:]:
        m = _XSD_STEP.fullmatch(step)
        if m is None:
            out.append(_NAMESPACE.sub("", step))
            continue
        name, index = m.group(1), m.group(2)
        out.append(name)
        if index is not None:
            out.append(str(int(index) - 1))
        elif name in REPEATABLE:
            out.append("0")
    return "/" + "/".join(out) if out else ""


def validate_cap_xsd(root: ET.Element) -> None:
    """Raise ``schema_invalid`` with the XSD's messages and paths unless ``root`` is valid CAP 1.2."""
    schema = cap_schema()
    details = []
    try:
        for error in schema.iter_errors(root):
            reason = _NAMESPACE.sub("", str(error.reason or error.message))[:300]
            if isinstance(error.obj, str) and error.obj.strip():
                reason += f" (got {error.obj.strip()[:40]!r})"
            details.append(Finding("schema_invalid", _pointer(error.path), reason))
            if len(details) >= MAX_SCHEMA_ERRORS:
                break
    except RecursionError:
        raise IntakeError("schema_invalid", "the document is nested too deeply to validate") from None
    if details:
        first = details[0]
        more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
        raise IntakeError(
            "schema_invalid", f"not valid CAP 1.2 (XSD): {first.field or '/'}: {first.message}{more}",
            first.field, details=details,
        )


# --- reading a document --------------------------------------------------------------------------


@dataclass(slots=True)
class _Info:
    index: int
    element: ET.Element
    children: dict[str, list[ET.Element]]
    summary: InfoSummary
    description: str
    extra: dict[str, Any]


@dataclass(slots=True)
class _Areas:
    shape: BaseGeometry | None = None
    center: Point | None = None
    trusted: bool = True
    flags: list[LocationFlag] = field(default_factory=list)
    geocodes_used: list[list[str]] = field(default_factory=list)


class _Reader:
    """One document's parse; carries its namespace, mode and the findings collected so far."""

    def __init__(self, root: ET.Element, ns: str, config: IntakeConfig, rules: Sequence[CapKindRule]) -> None:
        self.root = root
        self.ns = ns
        self.config = config
        self.rules = rules
        self.problems = Problems()
        self.nonconforming: set[int] = set()  # ids of elements read under a corrected name
        self._groups: dict[int, dict[str, list[ET.Element]]] = {}

    # -- small helpers ---------------------------------------------------------------------
    def note(self, code: str, where: str, message: str) -> None:
        self.problems.add(code, where, message)

    def area_problem(self, code: str, where: str, message: str) -> None:
        if self.config.strict:
            raise IntakeError("invalid_area", message, where)
        self.note(code, where, message)

    def children(self, element: ET.Element, known: tuple[str, ...], where: str) -> dict[str, list[ET.Element]]:
        """An element's CAP children by name (read once per element, so findings are not repeated)."""
        cached = self._groups.get(id(element))
        if cached is not None:
            return cached
        out: dict[str, list[ET.Element]] = {}
        self._groups[id(element)] = out
        for child in element:
            if not isinstance(child.tag, str):
                continue
            ns, name = _split(child.tag)
            if ns != self.ns:
                continue  # other vocabularies (an xmldsig Signature) are not CAP's to judge
            if name not in known:
                fixed = _case_insensitive(known).get(name.lower())
                shown = name[:40]  # a tag name is the sender's text: quote a bounded part
                if fixed is None:
                    self.note("unknown_element", f"{where}/{shown}", f"<{shown}> is not a CAP element; ignored")
                    continue
                self.note("nonconforming_element", f"{where}/{shown}",
                          f"<{shown}> read as <{fixed}> (CAP is case-sensitive)")
                self.nonconforming.add(id(child))
                name = fixed
            out.setdefault(name, []).append(child)
        return out

    def text(self, group: Mapping[str, list[ET.Element]], name: str, where: str, *, required: bool = False) -> str:
        elements = group.get(name)
        if not elements:
            if required:
                self.note("missing_element", f"{where}/{name}", f"<{name}> is required")
            return ""
        if len(elements) > 1 and name not in REPEATABLE:
            self.note("repeated_element", f"{where}/{name}",
                      f"<{name}> appears {len(elements)} times; the first is used")
        return _text(elements[0])

    def vocab(self, value: str, allowed: Sequence[str], where: str, name: str) -> str | None:
        """``value`` spelled as CAP spells it, or None (with a finding) if it is not in ``allowed``."""
        if value in allowed:
            return value
        for item in allowed:
            if item.lower() == value.lower():
                self.note("nonconforming_value", where, f"{name} {value!r} read as {item!r}")
                return item
        if value:
            self.note("invalid_value", where, f"{name} {value[:40]!r} is not one of {', '.join(allowed)}")
        return None

    def cap_enum(self, enum: Any, value: str, where: str, name: str, required: bool = True) -> Any:
        if not value:
            if required:
                self.note("missing_element", where, f"<{name}> is required; Unknown assumed")
            return enum.UNKNOWN
        member = normalise(enum, value)
        if member is None:
            self.note("invalid_value", where, f"{name} {value[:40]!r} is not one of {', '.join(m.value for m in enum)}")
            return enum.UNKNOWN
        if member.value != value:
            self.note("nonconforming_value", where, f"{name} {value!r} read as {member.value!r}")
        return member

    def time(self, value: str, where: str, name: str) -> datetime | None:
        if not value:
            return None
        try:
            parsed = parse_time(value, where)
        except IntakeError as exc:
            self.note("invalid_time", where, f"{name}: {exc.message}")
            return None
        if not _CAP_TIME.match(value):
            self.note("nonconforming_time", where, f"{name} {value[:40]!r} is not CAP's form 2003-06-17T14:57:00-07:00")
        return parsed

    # -- the alert ------------------------------------------------------------------------
    def report(self, received_at: datetime | None, now: datetime | None) -> AlertReport:
        version = CAP_VERSIONS.get(self.ns)
        if version is None:
            self.note("no_namespace", "", f"<alert> is not in the CAP namespace {CAP12}; read as CAP 1.2")
        elif version != "1.2":
            self.note("cap_version", "", f"a CAP {version} document; read as CAP 1.2")
        g = self.children(self.root, ALERT_CHILDREN, "")
        identifier = self.text(g, "identifier", "")
        sender = self.text(g, "sender", "")
        for name, value in (("identifier", identifier), ("sender", sender)):
            if not value:
                # Without them the alert has no idempotency key, and no later Update or Cancel can
                # name it: refuse rather than store something nobody can ever refer to.
                raise IntakeError("invalid_alert", f"<{name}> is required", f"/{name}")
            check_ident(value, f"/{name}")
        sent_text = self.text(g, "sent", "", required=True)
        sent = self.time(sent_text, "/sent", "sent")
        if sent is None:
            if received_at is None:
                raise IntakeError("invalid_alert", "<sent> is missing or unreadable", "/sent")
            self.note("sent_replaced", "/sent", "the time of receipt is used for the unreadable <sent>")
            sent = received_at
        if self.config.too_far_ahead(sent, now):
            self.note("time_in_future", "/sent", f"{sent_text} is ahead of the server's clock")
        status_text = self.vocab(self.text(g, "status", "", required=True), [s.title() for s in _STATUSES],
                                 "/status", "status")
        status = Status(status_text.lower()) if status_text else Status.UNKNOWN
        msg_text = self.text(g, "msgType", "")
        msg_type = normalise(MsgType, msg_text)
        if msg_type is None:
            # What an Update or Cancel does to earlier incidents depends on it: never guess.
            raise IntakeError("invalid_alert", "<msgType> must be Alert, Update, Cancel, Ack or Error; "
                              f"got {msg_text[:40]!r}", "/msgType")
        if msg_type.value.title() != msg_text:
            self.note("nonconforming_value", "/msgType", f"msgType {msg_text!r} read as {msg_type.value.title()!r}")
        scope = self.vocab(self.text(g, "scope", "", required=True), SCOPES, "/scope", "scope")
        triples = self.references(self.text(g, "references", ""))
        if msg_type in (MsgType.UPDATE, MsgType.CANCEL, MsgType.ACK, MsgType.ERROR) and not triples:
            self.note("missing_element", "/references", f"a {msg_text} names the alerts it refers to in <references>")

        info_elements = g.get("info", [])
        if len(info_elements) > MAX_INFOS:
            self.note("too_many", "/info", f"{len(info_elements)} info blocks; the first {MAX_INFOS} are read")
        infos = [self.info(el, i) for i, el in enumerate(info_elements[:MAX_INFOS])]
        chosen = infos[select_info([i.summary.language for i in infos], self.config.languages)] if infos else None
        kind = AlertKind.OTHER
        if chosen is not None:
            # The chosen language's words may match no rule where another language's do.
            kind = next((i.summary.kind for i in [chosen, *infos] if i.summary.kind is not AlertKind.OTHER), kind)
        areas = self.areas(chosen, infos)
        placement = place(areas.shape, self.config, center=areas.center, trusted=areas.trusted)
        flags = [*placement.flags]
        for flag in areas.flags:
            if flag not in flags:
                flags.insert(0, flag)

        cap: dict[str, Any] = {
            "version": version or "none",
            "status": self.text(g, "status", ""),
            "scope": scope or "",
            "references": [list(t) for t in triples],
        }
        for name in ("source", "restriction", "addresses", "note", "incidents"):
            value = self.text(g, name, "")
            if value:
                cap[name] = value[:MAX_VALUE_CHARS]
        codes = [_text(c)[:MAX_VALUE_CHARS] for c in g.get("code", [])[:MAX_PARAMETERS]]
        if codes:
            cap["codes"] = codes
        if chosen is not None:
            cap.update(chosen.extra)
        if areas.geocodes_used:
            cap["geocodes_used"] = areas.geocodes_used
        data: dict[str, Any] = {"cap": cap}
        if placement.data:
            data["placement"] = dict(placement.data)

        summary = chosen.summary if chosen is not None else None
        return AlertReport(
            source=sender,
            identifier=identifier,
            kind=kind,
            sent=sent,
            raw_format="cap",
            msg_type=msg_type,
            status=status,
            references=tuple((s, i) for s, i, _ in triples),
            severity=summary.severity if summary else Severity.UNKNOWN,
            urgency=summary.urgency if summary else Urgency.UNKNOWN,
            certainty=summary.certainty if summary else Certainty.UNKNOWN,
            headline=summary.headline if summary else "",
            description=chosen.description if chosen else "",
            language=summary.language if summary else "",
            location=placement.location,
            area=placement.area,
            location_flags=tuple(flags),
            findings=tuple(self.problems.items),
            infos=tuple(i.summary for i in infos),
            selected_info=chosen.index if chosen is not None else None,
            data=data,
        )

    def references(self, text: str) -> list[tuple[str, str, str]]:
        """CAP ``references``: whitespace-separated ``sender,identifier,sent`` triples."""
        out: list[tuple[str, str, str]] = []
        for n, token in enumerate(text.split()):
            parts = token.split(",")
            if len(parts) not in (2, 3) or not all(parts[:2]) or len(parts[0]) > 200 or len(parts[1]) > 200:
                self.note("invalid_reference", f"/references/{n}",
                          f"{token[:60]!r} is not sender,identifier,sent; ignored")
                continue
            if len(parts) == 2:
                self.note("nonconforming_reference", f"/references/{n}", f"{token[:60]!r} has no sent time")
            if len(out) >= MAX_REFERENCES:
                self.note("too_many", "/references", f"more than {MAX_REFERENCES} references; the rest ignored")
                break
            out.append((parts[0], parts[1], parts[2] if len(parts) == 3 else ""))
        return out

    # -- info blocks ----------------------------------------------------------------------
    def info(self, element: ET.Element, i: int) -> _Info:
        where = f"/info/{i}"
        g = self.children(element, INFO_CHILDREN, where)
        language = self.text(g, "language", where) or "en-US"  # CAP's stated default
        language = language[:MAX_LANGUAGE_CHARS]
        categories = []
        for k, el in enumerate(g.get("category", [])):
            cat = self.vocab(_text(el), CATEGORIES, f"{where}/category/{k}", "category")
            if cat:
                categories.append(cat)
        if not g.get("category"):
            self.note("missing_element", f"{where}/category", "<category> is required")
        event = self.text(g, "event", where, required=True)
        urgency = self.cap_enum(Urgency, self.text(g, "urgency", where), f"{where}/urgency", "urgency")
        severity = self.cap_enum(Severity, self.text(g, "severity", where), f"{where}/severity", "severity")
        certainty = self.cap_enum(Certainty, self.text(g, "certainty", where), f"{where}/certainty", "certainty")
        event_codes = self.pairs(g.get("eventCode", []), f"{where}/eventCode")
        headline = clean_text(self.text(g, "headline", where), f"{where}/headline",
                              max_chars=MAX_HEADLINE_CHARS, problems=self.problems)
        description = clean_text(self.text(g, "description", where), f"{where}/description",
                                 max_chars=MAX_DESCRIPTION_CHARS, problems=self.problems)
        area_descs = []
        for j, area in enumerate(g.get("area", [])):
            ag = self.children(area, AREA_CHILDREN, f"{where}/area/{j}")
            area_descs.append(self.text(ag, "areaDesc", f"{where}/area/{j}", required=True)[:MAX_VALUE_CHARS])
        kind = kind_of(event_codes, f"{event}\n{headline}", categories, self.rules)
        summary = InfoSummary(
            language=language,
            kind=kind,
            event=event[:MAX_VALUE_CHARS],
            categories=tuple(categories),
            urgency=urgency,
            severity=severity,
            certainty=certainty,
            headline=headline,
            sender_name=self.text(g, "senderName", where)[:MAX_VALUE_CHARS],
            effective=self.time(self.text(g, "effective", where), f"{where}/effective", "effective"),
            onset=self.time(self.text(g, "onset", where), f"{where}/onset", "onset"),
            expires=self.time(self.text(g, "expires", where), f"{where}/expires", "expires"),
            event_codes=tuple(event_codes),
            area_descs=tuple(area_descs),
        )
        extra: dict[str, Any] = {
            "event": summary.event,
            "categories": list(categories),
            "response_types": [_text(r)[:MAX_VALUE_CHARS] for r in g.get("responseType", [])[:MAX_PARAMETERS]],
        }
        for name in ("instruction", "web", "contact", "audience"):
            value = self.text(g, name, where)
            if value:
                extra[name] = value[:MAX_DESCRIPTION_CHARS if name == "instruction" else MAX_VALUE_CHARS]
        parameters = self.pairs(g.get("parameter", []), f"{where}/parameter")
        if parameters:
            extra["parameters"] = [list(p) for p in parameters]
        return _Info(i, element, g, summary, description, extra)

    def pairs(self, elements: Sequence[ET.Element], where: str) -> list[tuple[str, str]]:
        """``valueName``/``value`` pairs (eventCode, parameter, geocode)."""
        out = []
        for k, el in enumerate(elements[:MAX_PARAMETERS]):
            g = self.children(el, VALUE_CHILDREN, f"{where}/{k}")
            name = self.text(g, "valueName", f"{where}/{k}", required=True)
            value = self.text(g, "value", f"{where}/{k}", required=True)
            out.append((name[:MAX_VALUE_CHARS], value[:MAX_VALUE_CHARS]))
        return out

    # -- areas ------------------------------------------------------------------------------
    def areas(self, chosen: _Info | None, infos: Sequence[_Info]) -> _Areas:
        """The shape of the chosen info's areas (or, if it has none, of the first info that has)."""
        if chosen is None:
            return _Areas()
        source = next((i for i in [chosen, *infos] if i.children.get("area")), chosen)
        shapes: list[BaseGeometry] = []
        centers: list[Point] = []
        out = _Areas()
        unresolved = False
        for j, area in enumerate(source.children.get("area", [])):
            where = f"/info/{source.index}/area/{j}"
            g = self.children(area, AREA_CHILDREN, where)
            own = len(shapes)
            for k, el in enumerate(g.get("polygon", [])):
                shape = self.polygon(el, f"{where}/polygon/{k}")
                if shape is not None:
                    shapes.append(shape)
                    out.trusted &= id(el) not in self.nonconforming and not isinstance(shape, ShapelyPoint)
            for k, el in enumerate(g.get("circle", [])):
                circle = self.circle(el, f"{where}/circle/{k}")
                if circle is not None:
                    shapes.append(circle[0])
                    centers.append(circle[1])
                    out.trusted &= id(el) not in self.nonconforming
            if len(shapes) == own and g.get("geocode"):
                # Only areas without coordinates are placed by geocode: a polygon is more exact
                # than the county it lies in.
                found = False
                for name, value in self.pairs(g["geocode"], f"{where}/geocode"):
                    resolved = self.config.geocode(name, value)
                    if resolved is not None:
                        shapes.append(resolved)
                        out.geocodes_used.append([name, value])
                        found = True
                unresolved |= not found
        if out.geocodes_used:
            out.flags.append(LocationFlag.GEOCODE_RESOLVED)
        if not shapes:
            if unresolved:
                out.flags.append(LocationFlag.GEOCODE_ONLY_UNRESOLVED)
            return out
        out.shape = shapes[0] if len(shapes) == 1 else shapely.union_all(shapes)
        if len(shapes) == 1 and len(centers) == 1:
            out.center = centers[0]
        return out

    def polygon(self, element: ET.Element, where: str) -> BaseGeometry | None:
        text = _text(element)
        pairs = _PAIR_COMMA.sub(",", text).split()
        if len(pairs) == 1:
            # One pair is a point, not a polygon; seen in nonconforming national feeds. Its axis
            # order is a guess, so `areas` marks it untrusted.
            self.area_problem("polygon_is_point", where,
                              f"a polygon of one pair {text.strip()[:60]!r}; read as a point")
            try:
                point = Point.from_latlon_text(pairs[0])
            except ValueError as exc:
                self.area_problem("invalid_polygon", where, str(exc))
                return None
            return ShapelyPoint(point.lon, point.lat)
        try:
            polygon = parse_cap_polygon(text)
        except GeometryError as exc:
            self.area_problem("invalid_polygon", where, f"{exc}; this polygon is ignored")
            return None
        try:
            fixed, warning = require_valid(polygon, repair=True, where="polygon")
        except GeometryError as exc:
            self.area_problem("invalid_polygon", where, f"{exc}; this polygon is ignored")
            return None
        if warning:
            self.area_problem("repaired_polygon", where, warning)
        return fixed

    def circle(self, element: ET.Element, where: str) -> tuple[BaseGeometry, Point] | None:
        try:
            circle = parse_cap_circle(_text(element))
        except GeometryError as exc:
            self.area_problem("invalid_circle", where, f"{exc}; this circle is ignored")
            return None
        try:
            return _disc(circle), circle.center
        except GeometryError as exc:
            self.area_problem("invalid_circle", where, f"{exc}; only its centre is used")
            return ShapelyPoint(circle.center.lon, circle.center.lat), circle.center


_STATUSES = ("actual", "exercise", "system", "test", "draft")
# Circles up to this radius are drawn in a local metric frame (about 0.15 ms) rather than by 64
# geodesic destinations (about 2 ms): sensor feeds send small circles by the thousand, and the
# two outlines differ by 0.6 % of the area, the haversine tolerance used for ranking anyway.
LOCAL_DISC_MAX_M = 10_000.0


def _disc(circle: Circle) -> BaseGeometry:
    """A CAP circle as a lon/lat shape: its centre for radius 0, else an outline of 32 or 64
    vertices (within a metre of the circle for small ones, `geo.distance.disc_segments`)."""
    if circle.radius_m == 0:
        return ShapelyPoint(circle.center.lon, circle.center.lat)
    if circle.radius_m > LOCAL_DISC_MAX_M:
        return circle.to_polygon()
    try:
        return local_disc(circle.center, circle.radius_m)
    except CoordinateError:  # within 10 km of a pole: the exact construction says why not
        return circle.to_polygon()


@cache
def _case_insensitive(known: tuple[str, ...]) -> Mapping[str, str]:
    return {name.lower(): name for name in known}


def _split(tag: str) -> tuple[str, str]:
    if tag.startswith("{"):
        ns, _, name = tag[1:].partition("}")
        return ns, name
    return "", tag


def _text(element: ET.Element) -> str:
    if len(element) == 0:
        return (element.text or "").strip()
    return "".join(element.itertext()).strip()


def parse_cap(
    body: bytes | bytearray | memoryview | str,
    config: IntakeConfig = DEFAULT_CONFIG,
    *,
    received_at: datetime | None = None,
    now: datetime | None = None,
    kind_rules: Sequence[CapKindRule] = DEFAULT_KIND_RULES,
) -> AlertReport:
    """A CAP document (bytes as received) as a report, or `IntakeError`.

    ``received_at`` stands in for an unreadable ``sent`` in tolerant mode (with a finding);
    ``now`` flags times from the future. ``config.strict`` validates against the XSD first.
    """
    root = read_xml(body, max_bytes=config.max_cap_bytes)
    ns, name = _split(root.tag)
    if name != "alert" or not (ns in CAP_VERSIONS or ns == ""):
        where = f" in namespace {ns}" if ns else ""
        raise IntakeError("not_cap", f"the root element is <{name[:40]}>{where[:80]}; CAP is <alert> in {CAP12}")
    if config.strict:
        if ns != CAP12:
            raise IntakeError("schema_invalid", f"strict mode reads CAP 1.2 only (namespace {CAP12})")
        validate_cap_xsd(root)
    return _Reader(root, ns, config, kind_rules).report(received_at, now)
