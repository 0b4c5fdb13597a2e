"""Taking alerts in: durable before answered, never duplicated, correlated into incidents.

Each alert is one unit of work in the node's group commit (`GroupCommitter.submit`), so
concurrent alerts share transactions and fsyncs, and the 202 goes out only after COMMIT. Inside
its savepoint a unit: claims ``(source, identifier)`` (a repeat answers ``duplicate`` with the
original ids), stores the raw payload verbatim with the parsed report, follows CAP references
(Update joins the referenced alert's incident; Cancel stands it down), applies the alert rules
and correlation (join an open incident nearby, or open a new one) through the dispatch service,
and sets a durable timer when the rules ask to auto-dispatch. A failure rolls back that alert
alone; the sender may retry with the same identifier.

Correlation takes a transaction-level advisory lock, so two nodes never open two incidents for
two smoke detectors in one building at the same moment; it reads open incidents from the
database (within the batch's transaction), so alerts of one batch see each other's incidents.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import asyncpg

from dispatch import commands as cmd
from dispatch.alert_rules import AlertRules, default_alert_rules
from dispatch.correlation import AlertFacts, OpenIncident, OpenIncidents, correlate, default_policy
from dispatch.decide import decide
from dispatch.errors import DomainError
from dispatch.evolve import evolve_all
from dispatch.incident import Incident
from dispatch.lifecycle import OPEN_INCIDENT
from dispatch.state import DispatchState
from geo.coords import Point
from icp import dispatch_store as store
from icp.auth.principal import Principal
from icp.dispatch_service import EVERYONE, DispatchService
from icp.intake.report import AlertReport, MsgType
from icp.store.eventlog import NewEvent
from icp.store.group_commit import GroupCommitter, Staged

log = logging.getLogger(__name__)
CORRELATION_LOCK_KEY = 0x1C9_0003
AUTO_DISPATCH = "auto_dispatch"
ALERT_RECEIVED = "alert.received"


@dataclass(frozen=True, slots=True)
class AlertOutcome:
    alert_id: str
    incident_id: str | None
    outcome: str  # created | attached | duplicate | recorded
    reason: str = ""
    report: AlertReport | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"alert_id": self.alert_id, "incident_id": self.incident_id, "outcome": self.outcome}
        if self.reason:
            out["reason"] = self.reason
        if self.report is not None:
            if self.report.location_flags:
                out["location_flags"] = [f.value for f in self.report.location_flags]
            if self.report.findings:
                out["findings"] = [f.to_json() for f in self.report.findings]
        return out


@dataclass(frozen=True, slots=True)
class _Submission:
    report: AlertReport
    raw: bytes
    content_type: str
    who: Principal


class IntakeService:
    def __init__(self, committer: GroupCommitter, dispatch: DispatchService, *,
                 rules: AlertRules | None = None) -> None:
        self.committer = committer
        self.dispatch = dispatch
        self.rules = rules or default_alert_rules()
        self.policy = default_policy()

    async def accept(self, report: AlertReport, raw: bytes, content_type: str, who: Principal) -> AlertOutcome:
        """Record one alert; return once it is durable (or was already)."""
        result, _ = await self.committer.submit_batched(self._record_many, _Submission(report, raw, content_type, who))
        return result  # type: ignore[no-any-return]

    async def accept_all(self, items: list[tuple[AlertReport, bytes, str]], who: Principal) -> list[Any]:
        """Record many alerts in one go (they share a transaction): an outcome or an exception each."""
        subs = [_Submission(report, raw, content_type, who) for report, raw, content_type in items]
        results = await self.committer.submit_batched_all(self._record_many, subs)
        return [r[0] if isinstance(r, tuple) else r for r in results]

    # -- a batch of alerts, inside the shared transaction --------------------------------------------
    async def _record_many(self, conn: asyncpg.Connection, subs: list[_Submission]) -> list[Staged[AlertOutcome]]:
        """Claim every alert with one statement, route them in order (correlation in memory,
        against one read of the open incidents nearby), write what changed in a few pipelined
        statements, and stage each alert's events."""
        now = datetime.now(UTC)
        ids = ["AL-" + uuid.uuid4().hex[:20] for _ in subs]
        claimed = {r["id"] for r in await conn.fetch(
            "INSERT INTO alerts (id, source, identifier, kind, msg_type, status, sent, received_at, lat, lon,"
            " outcome, report, raw, content_type, principal)"
            " SELECT id, s, i, k, m, st, sent, $8, lat, lon, 'recorded', report, raw, ct, who"
            " FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],"
            " $7::timestamptz[], $9::float8[], $10::float8[], $11::jsonb[], $12::bytea[], $13::text[], $14::text[])"
            " AS u(id, s, i, k, m, st, sent, lat, lon, report, raw, ct, who)"
            " ON CONFLICT (source, identifier) DO NOTHING RETURNING id",
            ids, [x.report.source for x in subs], [x.report.identifier for x in subs],
            [x.report.kind.value for x in subs], [x.report.msg_type.value for x in subs],
            [x.report.status.value for x in subs], [x.report.sent for x in subs], now,
            [x.report.location.lat if x.report.location else None for x in subs],
            [x.report.location.lon if x.report.location else None for x in subs],
            [x.report.to_json() for x in subs], [x.raw for x in subs], [x.content_type for x in subs],
            [f"{x.who.kind}:{x.who.id}" for x in subs],
        )}
        batch = _Batch(self, conn, now, [x.report for n, x in enumerate(subs) if ids[n] in claimed])
        results: list[Staged[AlertOutcome] | None] = [None] * len(subs)
        first: dict[tuple[str, str], int] = {}
        for n, (alert_id, sub) in enumerate(zip(ids, subs, strict=True)):
            if alert_id not in claimed:
                continue
            first[sub.report.key] = n
            outcome, staged, agencies = await batch.route(alert_id, sub.report, sub.who)
            outcome = replace(outcome, report=sub.report)  # the 202 names its flags and findings
            results[n] = Staged(outcome, [self._received(alert_id, sub, outcome, agencies), *staged])
        await batch.flush()
        await self._duplicates(conn, ids, subs, results, first)
        return [r for r in results if r is not None]

    async def _duplicates(self, conn: asyncpg.Connection, ids: list[str], subs: list[_Submission],
                          results: list[Staged[AlertOutcome] | None], first: dict[tuple[str, str], int]) -> None:
        """A repeat answers with the original's ids (from this batch, or from the database)."""
        missing = [n for n, r in enumerate(results) if r is None and subs[n].report.key not in first]
        earlier: dict[tuple[str, str], tuple[str, str | None]] = {}
        if missing:
            rows = await conn.fetch(
                "SELECT a.source, a.identifier, a.id, a.incident_id FROM alerts a"
                " JOIN unnest($1::text[], $2::text[]) AS k(s, i) ON a.source = k.s AND a.identifier = k.i",
                [subs[n].report.source for n in missing], [subs[n].report.identifier for n in missing])
            earlier = {(r["source"], r["identifier"]): (r["id"], r["incident_id"]) for r in rows}
        for n, result in enumerate(results):
            if result is not None:
                continue
            key = subs[n].report.key
            original = results[first[key]] if key in first else None
            alert_id, incident_id = ((original.result.alert_id, original.result.incident_id)
                                     if original is not None else earlier[key])
            results[n] = Staged(AlertOutcome(alert_id, incident_id, "duplicate",
                                             "this (source, identifier) was received before"), [])

    def _received(self, alert_id: str, sub: _Submission, outcome: AlertOutcome, agencies: list[str]) -> NewEvent:
        report, loc = sub.report, sub.report.location
        return NewEvent(ALERT_RECEIVED, f"alert/{alert_id}", {
            "alert_id": alert_id, "source": report.source, "identifier": report.identifier,
            "kind": report.kind.value, "msg_type": report.msg_type.value, "severity": report.severity.value,
            "certainty": report.certainty.value, "headline": report.headline[:200],
            "location": loc.to_mapping() if loc else None,
            "location_flags": [f.value for f in report.location_flags],
            "incident_id": outcome.incident_id, "outcome": outcome.outcome, "reason": outcome.reason,
        }, actor=sub.who.actor(), visibility=tuple(agencies) or (EVERYONE,))

    async def _visibility(self, conn: asyncpg.Connection, incident_id: str | None) -> tuple[str, ...]:
        if incident_id is None:
            return (EVERYONE,)
        agencies = await conn.fetchval("SELECT agency_ids FROM incidents WHERE id = $1", incident_id)
        return tuple(agencies or (EVERYONE,))

    async def _run(self, conn: asyncpg.Connection, command: cmd.Command, who: Principal, now: datetime) -> Any:
        # Intake acts with the server's authority on the sensor's behalf; the sensor is the actor.
        return await self.dispatch.run(conn, command, who, now=now, log=False, authorize=False)

    async def _referenced_incidents(self, conn: asyncpg.Connection, report: AlertReport) -> list[str]:
        sources = [s for s, _ in report.references]
        identifiers = [i for _, i in report.references]
        rows = await conn.fetch(
            "SELECT DISTINCT a.incident_id FROM alerts a JOIN unnest($1::text[], $2::text[]) AS r(s, i)"
            " ON a.source = r.s AND a.identifier = r.i WHERE a.incident_id IS NOT NULL ORDER BY 1",
            sources, identifiers,
        )
        return [r["incident_id"] for r in rows]

    async def _update(self, conn: asyncpg.Connection, report: AlertReport, alert_id: str, now: datetime,
                      who: Principal) -> tuple[AlertOutcome, list[NewEvent]] | None:
        """An Update joins the incident its referenced alert caused, if that is still open."""
        for incident_id in await self._referenced_incidents(conn, report):
            status = await conn.fetchval("SELECT status FROM incidents WHERE id = $1", incident_id)
            if status in {s.value for s in OPEN_INCIDENT}:
                staged = (await self._run(conn, cmd.LinkAlert(incident_id=incident_id, alert_id=alert_id),
                                          who, now)).staged
                return AlertOutcome(alert_id, incident_id, "attached",
                                    "an update of an alert that opened this incident"), staged
        return None

    async def _cancel(self, conn: asyncpg.Connection, report: AlertReport, alert_id: str, now: datetime,
                      who: Principal) -> tuple[AlertOutcome, list[NewEvent]]:
        """A Cancel stands down what the referenced alerts caused: an open incident whose every
        alert is now cancelled is cancelled; one that other alerts still support gets a note."""
        staged: list[NewEvent] = []
        touched: str | None = None
        referenced = {(s, i) for s, i in report.references}
        for incident_id in await self._referenced_incidents(conn, report):
            touched = touched or incident_id
            status = await conn.fetchval("SELECT status FROM incidents WHERE id = $1", incident_id)
            if status not in {s.value for s in OPEN_INCIDENT}:
                continue
            supporters = await conn.fetch("SELECT source, identifier FROM alerts WHERE incident_id = $1", incident_id)
            still = [r for r in supporters if (r["source"], r["identifier"]) not in referenced]
            why = f"cancelled by {report.source} ({report.identifier})"
            note = cmd.AddNote(incident_id=incident_id, author="ICP intake",
                               text=f"An alert of this incident was {why}; {len(still)} other alert(s) remain.")
            if still:
                staged += (await self._run(conn, note, who, now)).staged
                continue
            try:
                cancel = cmd.CancelIncident(incident_id=incident_id, reason=f"every alert was {why}")
                staged += (await self._run(conn, cancel, who, now)).staged
            except DomainError:  # units already on scene: a person decides, with a note to go on
                staged += (await self._run(conn, cmd.AddNote(
                    incident_id=incident_id, author="ICP intake",
                    text=f"Every alert of this incident was {why}, but it can no longer be cancelled "
                         "automatically; please review."), who, now)).staged
        reason = "a Cancel: stood down what it referenced" if touched else "a Cancel of alerts ICP does not know"
        return AlertOutcome(alert_id, touched, "recorded", reason), staged


class _Batch:
    """One batch's routing. Correlation runs in memory over one read of the open incidents near
    the batch (kept current as alerts open and join incidents); an incident is locked and loaded
    the first time an alert joins it; the rows owed are written by `flush` in a few pipelined
    statements. CAP Update and Cancel take the per-alert path, after a flush."""

    def __init__(self, service: IntakeService, conn: asyncpg.Connection, now: datetime,
                 reports: list[AlertReport]) -> None:
        self.s, self.conn, self.now = service, conn, now
        self.reports = reports
        self.open: OpenIncidents | None = None
        self.incidents: dict[str, Incident] = {}
        self.agencies: dict[str, list[str]] = {}
        self.dirty: set[str] = set()
        self.alerts: list[tuple[str, str | None, str]] = []
        self.last_alert: dict[str, datetime] = {}
        self.timers: list[tuple[str, str, datetime]] = []
        self.correlating = False

    async def route(self, alert_id: str, report: AlertReport, who: Principal
                    ) -> tuple[AlertOutcome, list[NewEvent], list[str]]:
        """Where the alert goes: its outcome, the events that causes, and its incident's agencies."""
        s = self.s
        if report.msg_type is MsgType.CANCEL or (report.msg_type is MsgType.UPDATE and report.references):
            await self.flush()  # the per-alert paths read and write the database directly
            self.open, self.incidents, self.agencies = None, {}, {}
            handled = (await s._cancel(self.conn, report, alert_id, self.now, who)
                       if report.msg_type is MsgType.CANCEL else
                       await s._update(self.conn, report, alert_id, self.now, who))
            if handled is not None:
                outcome, staged = handled
                self.alerts.append((alert_id, outcome.incident_id, outcome.outcome))
                return outcome, staged, list(await s._visibility(self.conn, outcome.incident_id))
        if not report.actionable or report.location is None:
            why = ("no believable location" if report.location is None else
                   "not actionable (status, message type, threshold or location flags)")
            return self._recorded(alert_id, why)
        decision = s.rules.decide(report.kind, report.severity, report.urgency, report.certainty)
        if decision.incident_type is None:
            return self._recorded(alert_id, decision.reason)
        if not self.correlating:
            # One correlator at a time across nodes: otherwise two simultaneous detectors in one
            # building could each find no incident and open two.
            await self.conn.execute("SELECT pg_advisory_xact_lock($1)", CORRELATION_LOCK_KEY)
            self.correlating = True
        at = min(report.sent, self.now)
        facts = AlertFacts(alert_id=alert_id, kind=report.kind, location=report.location, at=at,
                           priority=decision.priority)
        open_now = await self._open_incidents()
        correlation = correlate(facts, open_now, s.policy, s.rules)
        if correlation.action == "attach" and correlation.incident_id is not None:
            incident_id = correlation.incident_id
            staged = await self._apply(incident_id, correlation.commands(), who)
            current = open_now.get(incident_id)
            if current is not None:
                self.open = open_now.with_incident(current.after(correlation, at))
            self._joined(alert_id, incident_id, "attached", at)
            attached = AlertOutcome(alert_id, incident_id, "attached", correlation.reason)
            return attached, staged, self.agencies[incident_id]
        agencies, zone = s.dispatch.placement(report.location, who)
        number = await store.next_incident_number(self.conn, self.now.year)
        incident_id = str(number)
        self.agencies[incident_id] = agencies
        staged = await self._apply(incident_id, [cmd.CreateIncident(
            incident_id=incident_id, number=number, incident_type=decision.incident_type,
            priority=decision.priority, location=report.location, address=report.headline[:200], zone=zone,
            alert_ids=(alert_id,))], who)
        self.open = open_now.with_incident(OpenIncident.from_incident(self.incidents[incident_id], at))
        if decision.auto_dispatch:
            self.timers.append((AUTO_DISPATCH, incident_id, self.now))
        self._joined(alert_id, incident_id, "created", at)
        return (AlertOutcome(alert_id, incident_id, "created", f"{correlation.reason}; {decision.reason}"),
                staged, agencies)

    def _recorded(self, alert_id: str, why: str) -> tuple[AlertOutcome, list[NewEvent], list[str]]:
        self.alerts.append((alert_id, None, "recorded"))
        return AlertOutcome(alert_id, None, "recorded", why), [], []

    def _joined(self, alert_id: str, incident_id: str, outcome: str, at: datetime) -> None:
        self.alerts.append((alert_id, incident_id, outcome))
        previous = self.last_alert.get(incident_id)
        self.last_alert[incident_id] = at if previous is None or at > previous else previous

    async def _apply(self, incident_id: str, commands: list[cmd.Command], who: Principal) -> list[NewEvent]:
        """Run incident-only commands on the batch's copy of the incident (pure core, no I/O)."""
        if incident_id not in self.incidents and not isinstance(commands[0], cmd.CreateIncident):
            row = await self.conn.fetchrow("SELECT agency_ids, doc FROM incidents WHERE id = $1 FOR UPDATE",
                                           incident_id)
            self.incidents[incident_id] = store.incident_from(row["doc"])
            self.agencies[incident_id] = list(row["agency_ids"])
        live = self.s.dispatch.live
        state = DispatchState(agencies=live.state.agencies, policy=live.policy,
                              incidents={incident_id: self.incidents[incident_id]} if incident_id in self.incidents
                              else {})
        staged: list[NewEvent] = []
        for command in commands:
            events = decide(state, command, self.now)
            state = evolve_all(state, events)
            staged += [DispatchService.log_event(ev, state, self.agencies, who) for ev in events]
        self.incidents[incident_id] = state.incidents[incident_id]
        self.dirty.add(incident_id)
        return staged

    async def _open_incidents(self) -> OpenIncidents:
        """The open incidents any alert of this batch could join, read once (summary columns)."""
        if self.open is None:
            located = [r.location for r in self.reports if r.location is not None]
            reach = max([self.s.policy.default.radius_m, *(r.radius_m for r in self.s.policy.reach.values())])
            lat_span = reach / 111_000 + 0.001
            lon_span = lat_span * 3  # generous up to ~70° latitude; correlation measures exactly
            rows = await self.conn.fetch(
                "SELECT id, incident_type, lat, lon, created_at, priority, alert_count, last_alert_at FROM incidents"
                " WHERE status NOT IN ('closed', 'cancelled') AND lat BETWEEN $1 AND $2 AND lon BETWEEN $3 AND $4",
                min(p.lat for p in located) - lat_span, max(p.lat for p in located) + lat_span,
                min(p.lon for p in located) - lon_span, max(p.lon for p in located) + lon_span,
            )
            self.open = OpenIncidents(
                OpenIncident(id=r["id"], incident_type=r["incident_type"], location=Point(lat=r["lat"], lon=r["lon"]),
                             created_at=r["created_at"], priority=r["priority"], alert_count=r["alert_count"],
                             last_alert_at=r["last_alert_at"])
                for r in rows
            )
        return self.open

    async def flush(self) -> None:
        conn = self.conn
        if self.dirty:
            await store.save_incidents(conn, [(self.incidents[i], self.agencies[i]) for i in sorted(self.dirty)])
        if self.alerts:
            await conn.executemany("UPDATE alerts SET incident_id = $2, outcome = $3 WHERE id = $1", self.alerts)
        if self.last_alert:
            await conn.executemany(
                "UPDATE incidents SET last_alert_at = greatest(last_alert_at, $2) WHERE id = $1",
                sorted(self.last_alert.items()))
        for kind, ref, due in self.timers:
            await store.set_timer(conn, kind, ref, due)
        self.dirty, self.alerts, self.last_alert, self.timers = set(), [], {}, []
