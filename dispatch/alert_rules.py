"""Alert rules: which incident type and priority an alert calls for, and whether to dispatch unasked.

Also the shared vocabulary of alerts: ICP's alert kinds and the CAP 1.2 severity, urgency and
certainty scales, so that intake (``icp/intake``) and correlation speak the same words. The
shipped defaults are data (``dispatch/alert_rules.toml``, documented in ``docs/intake.md``).
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cache, lru_cache
from importlib import resources
from typing import Any, TypeVar

from dispatch import _checks as check
from dispatch.errors import Invalid
from dispatch.incident import PRIORITY_HIGHEST, PRIORITY_LOWEST
from dispatch.response_plan import ResponsePlans, default_plans

MAX_RULES = 1_000
MAX_DECISIONS_KEPT = 4_096
MAX_NOTE_CHARS = 300


class AlertKind(StrEnum):
    """What a sensor or feed says is happening, in ICP's words (formats map onto these)."""

    SMOKE = "smoke"
    FIRE = "fire"
    ALARM = "alarm"  # an automatic fire alarm panel, kind of detector unknown
    GUNSHOT = "gunshot"
    FLOOD = "flood"
    MEDICAL = "medical"
    PANIC = "panic"
    COLLISION = "collision"
    GAS = "gas"
    WEATHER = "weather"
    UTILITY_OUTAGE = "utility_outage"
    INTRUSION = "intrusion"
    CAMERA = "camera"
    OTHER = "other"


class Severity(StrEnum):
    """CAP 1.2 ``severity``, spelled as CAP spells it."""

    EXTREME = "Extreme"
    SEVERE = "Severe"
    MODERATE = "Moderate"
    MINOR = "Minor"
    UNKNOWN = "Unknown"


class Urgency(StrEnum):
    """CAP 1.2 ``urgency``."""

    IMMEDIATE = "Immediate"
    EXPECTED = "Expected"
    FUTURE = "Future"
    PAST = "Past"
    UNKNOWN = "Unknown"


class Certainty(StrEnum):
    """CAP 1.2 ``certainty``."""

    OBSERVED = "Observed"
    LIKELY = "Likely"
    POSSIBLE = "Possible"
    UNLIKELY = "Unlikely"
    UNKNOWN = "Unknown"


E = TypeVar("E", bound=StrEnum)

# CAP 1.0 had "Very Likely"; CAP 1.2 says to read it as Likely, and old feeds still send it.
_ALIASES: Mapping[str, str] = {"verylikely": "likely"}


def _key(text: str) -> str:
    return "".join(text.split()).replace("_", "").lower()


@cache
def _spellings(enum: type[E]) -> Mapping[str, E]:
    return {_key(m.value): m for m in enum}


def normalise(enum: type[E], value: object) -> E | None:
    """``value`` as a member of ``enum`` whatever its case, spaces and underscores, or None."""
    if isinstance(value, enum):
        return value
    if not isinstance(value, str) or len(value) > 64:
        return None
    exact = _EXACT.get(enum)
    if exact is None:
        exact = _EXACT[enum] = {m.value: m for m in enum if _key(m.value) not in _ALIASES}
    member = exact.get(value)  # spelled as the member itself (most senders): no key to make
    return member if member is not None else _spelled(enum, value)


_EXACT: dict[type[Any], dict[str, Any]] = {}


@lru_cache(maxsize=4096)  # senders repeat a few spellings ("Likely", "smoke") on every alert
def _spelled(enum: type[E], value: str) -> E | None:
    key = _key(value)
    return _spellings(enum).get(_ALIASES.get(key, key))


def _members(values: object, enum: type[E], name: str) -> frozenset[E]:
    if values is None:
        return frozenset()
    if isinstance(values, str) or not isinstance(values, Iterable):
        raise Invalid(f"{name} must be a list of {enum.__name__} values", field=name)
    out = set()
    for value in values:
        member = normalise(enum, value)
        if member is None:
            allowed = ", ".join(m.value for m in enum)
            raise Invalid(f"{name} must list values of {allowed}; got {str(value)[:40]!r}", field=name)
        out.add(member)
    return frozenset(out)


def _listed(values: frozenset[E], enum: type[E]) -> list[str]:
    return [m.value for m in enum if m in values]  # enum order: stable output


@dataclass(frozen=True, slots=True)
class AlertRule:
    """One line of the rule table. Empty condition sets accept any value.

    ``incident_type`` None means the alert is recorded for the dispatchers and opens nothing.
    """

    kind: AlertKind
    incident_type: str | None
    priority: int = 3
    auto_dispatch: bool = False
    severity: frozenset[Severity] = frozenset()
    urgency: frozenset[Urgency] = frozenset()
    certainty: frozenset[Certainty] = frozenset()
    note: str = ""

    def __post_init__(self) -> None:
        check.set_field(self, "kind", check.member(self.kind, AlertKind, "kind"))
        if self.incident_type is not None:
            check.slug(self.incident_type, "incident_type")
        check.integer(self.priority, "priority", lo=PRIORITY_HIGHEST, hi=PRIORITY_LOWEST)
        if not isinstance(self.auto_dispatch, bool):
            raise Invalid("auto_dispatch must be true or false", field="auto_dispatch")
        if self.auto_dispatch and self.incident_type is None:
            raise Invalid("a rule that opens no incident cannot dispatch", field="auto_dispatch")
        check.set_field(self, "severity", _members(self.severity, Severity, "severity"))
        check.set_field(self, "urgency", _members(self.urgency, Urgency, "urgency"))
        check.set_field(self, "certainty", _members(self.certainty, Certainty, "certainty"))
        check.text(self.note, "note", max_len=MAX_NOTE_CHARS)

    @property
    def unconditional(self) -> bool:
        return not (self.severity or self.urgency or self.certainty)

    def matches(self, kind: AlertKind, severity: Severity, urgency: Urgency, certainty: Certainty) -> bool:
        return (
            kind is self.kind
            and (not self.severity or severity in self.severity)
            and (not self.urgency or urgency in self.urgency)
            and (not self.certainty or certainty in self.certainty)
        )

    def describe(self) -> str:
        """The rule's condition in words: ``gunshot with certainty Observed/Likely``."""
        parts = [
            f"{name} {'/'.join(_listed(values, enum))}"
            for name, values, enum in (
                ("severity", self.severity, Severity),
                ("urgency", self.urgency, Urgency),
                ("certainty", self.certainty, Certainty),
            )
            if values
        ]
        return f"{self.kind.value} with {' and '.join(parts)}" if parts else f"any {self.kind.value}"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind.value}
        for name, values, enum in (
            ("severity", self.severity, Severity),
            ("urgency", self.urgency, Urgency),
            ("certainty", self.certainty, Certainty),
        ):
            if values:
                out[name] = _listed(values, enum)
        out["incident_type"] = self.incident_type or ""
        out["priority"] = self.priority
        out["auto_dispatch"] = self.auto_dispatch
        if self.note:
            out["note"] = self.note
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AlertRule:
        if not isinstance(data, Mapping):
            raise Invalid("an alert rule must be an object")
        known = {"kind", "severity", "urgency", "certainty", "incident_type", "priority", "auto_dispatch", "note"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise Invalid(f"unknown field {unknown[0]!r}", field=unknown[0])
        if "kind" not in data or "incident_type" not in data:
            raise Invalid("an alert rule needs 'kind' and 'incident_type' ('' to open no incident)")
        incident_type = data["incident_type"]
        return cls(
            kind=data["kind"],
            incident_type=incident_type if incident_type != "" else None,
            priority=data.get("priority", 3),
            auto_dispatch=data.get("auto_dispatch", False),
            severity=data.get("severity"),  # type: ignore[arg-type]  # validated in __post_init__
            urgency=data.get("urgency"),  # type: ignore[arg-type]
            certainty=data.get("certainty"),  # type: ignore[arg-type]
            note=data.get("note", ""),
        )


@dataclass(frozen=True, slots=True)
class AlertDecision:
    """What one alert calls for, and the rule that said so (``reason`` quotes it)."""

    kind: AlertKind
    incident_type: str | None
    priority: int
    auto_dispatch: bool
    rule_index: int
    reason: str

    @property
    def opens_incident(self) -> bool:
        return self.incident_type is not None


@dataclass(frozen=True, slots=True)
class AlertRules:
    """An ordered rule table: the first rule that matches an alert decides for it."""

    rules: tuple[AlertRule, ...]
    # Decisions already made, by the arguments as given: a city's sensors repeat a handful of
    # combinations, and every alert asks (bounded: arbitrary CAP words could vary without end).
    _decided: dict[tuple[object, ...], AlertDecision] = field(default_factory=dict, init=False, repr=False,
                                                             compare=False, hash=False)

    def __post_init__(self) -> None:
        rules = check.tuple_of(self.rules, AlertRule, "rules", max_len=MAX_RULES)
        # Every kind needs a last, unconditional rule; otherwise some alert would have no answer
        # and the server would have to invent one.
        for kind in AlertKind:
            own = [r for r in rules if r.kind is kind]
            if not own or not own[-1].unconditional:
                raise Invalid(f"the rules for {kind.value!r} must end with a rule without conditions",
                              field="rules")
            shadowed = [i for i, r in enumerate(own[:-1]) if r.unconditional]
            if shadowed:
                raise Invalid(f"a rule for {kind.value!r} without conditions hides the rules after it",
                              field="rules")
        check.set_field(self, "rules", rules)

    @property
    def incident_types(self) -> frozenset[str]:
        return frozenset(r.incident_type for r in self.rules if r.incident_type is not None)

    def check_plans(self, plans: ResponsePlans) -> None:
        """Raise ``Invalid`` if a rule opens an incident type that has no response plan."""
        missing = sorted(self.incident_types - set(plans.incident_types))
        if missing:
            raise Invalid(f"alert rules open {missing[0]!r}, which has no response plan", field="rules")

    def decide(
        self,
        kind: AlertKind | str,
        severity: Severity | str = Severity.UNKNOWN,
        urgency: Urgency | str = Urgency.UNKNOWN,
        certainty: Certainty | str = Certainty.UNKNOWN,
    ) -> AlertDecision:
        """The decision of the first matching rule. Unrecognised CAP values count as Unknown."""
        key = (kind, severity, urgency, certainty)
        try:
            decided = self._decided.get(key)
        except TypeError:  # not hashable, so not a valid value either: let the checks say why
            return self._decide(kind, severity, urgency, certainty)
        if decided is None:
            decided = self._decide(kind, severity, urgency, certainty)
            if len(self._decided) >= MAX_DECISIONS_KEPT:
                self._decided.clear()
            self._decided[key] = decided
        return decided

    def _decide(self, kind: AlertKind | str, severity: Severity | str, urgency: Urgency | str,
                certainty: Certainty | str) -> AlertDecision:
        k = check.member(kind, AlertKind, "kind")
        sev = normalise(Severity, severity) or Severity.UNKNOWN
        urg = normalise(Urgency, urgency) or Urgency.UNKNOWN
        cer = normalise(Certainty, certainty) or Certainty.UNKNOWN
        for i, rule in enumerate(self.rules):
            if rule.matches(k, sev, urg, cer):
                return AlertDecision(
                    kind=k,
                    incident_type=rule.incident_type,
                    priority=rule.priority,
                    auto_dispatch=rule.auto_dispatch,
                    rule_index=i,
                    reason=_reason(i, rule, sev, urg, cer),
                )
        raise AssertionError("unreachable: every kind ends with an unconditional rule")

    def to_list(self) -> list[dict[str, Any]]:
        return [r.to_dict() for r in self.rules]

    @classmethod
    def from_list(cls, items: Iterable[Mapping[str, Any]]) -> AlertRules:
        out = []
        for i, item in enumerate(items):
            try:
                out.append(AlertRule.from_dict(item))
            except Invalid as exc:
                raise Invalid(f"rules[{i}]: {exc.message}", field=f"rules[{i}]") from None
        return cls(tuple(out))


def _reason(i: int, rule: AlertRule, sev: Severity, urg: Urgency, cer: Certainty) -> str:
    facts = f"{rule.kind.value} alert (severity {sev.value}, urgency {urg.value}, certainty {cer.value})"
    if rule.incident_type is None:
        outcome = "recorded for the dispatchers, no incident"
    else:
        how = "dispatched automatically" if rule.auto_dispatch else "queued for a dispatcher"
        outcome = f"{rule.incident_type} at priority {rule.priority}, {how}"
    why = f" ({rule.note})" if rule.note else ""
    return f"{facts}: rule {i + 1} ({rule.describe()}) → {outcome}{why}"


@cache
def shipped_settings() -> Mapping[str, Any]:
    """The parsed ``dispatch/alert_rules.toml`` (rules and correlation defaults)."""
    text = resources.files("dispatch").joinpath("alert_rules.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)


@cache
def default_alert_rules() -> AlertRules:
    """The rules shipped in ``dispatch/alert_rules.toml``, checked against the shipped plans."""
    rules = AlertRules.from_list(shipped_settings()["rules"])
    rules.check_plans(default_plans())
    return rules


def rules_markdown(rules: AlertRules) -> str:
    """The rule table as Markdown, as ``docs/intake.md`` shows it (a test keeps the two equal)."""
    lines = [
        "| # | Alert kind | When | Incident type | Priority | Dispatch | Why |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for i, rule in enumerate(rules.rules, start=1):
        when = rule.describe().removeprefix(f"{rule.kind.value} with ").removeprefix(f"any {rule.kind.value}")
        lines.append(
            f"| {i} | {rule.kind.value} | {when or 'always'} | {rule.incident_type or '(record only)'} | "
            f"{rule.priority} | {_dispatch_word(rule)} | {rule.note} |"
        )
    return "\n".join(lines) + "\n"


def _dispatch_word(rule: AlertRule) -> str:
    if rule.incident_type is None:
        return "—"
    return "automatic" if rule.auto_dispatch else "dispatcher"
