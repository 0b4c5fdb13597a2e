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
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from dispatch import commands as cmd
from dispatch.alert_rules import AlertRules, default_alert_rules
from dispatch.correlation import AlertFacts, OpenIncident, OpenIncidents, correlate, default_policy
from dispatch.errors import DomainError
from dispatch.lifecycle import OPEN_INCIDENT
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


class IntakeService:
    def __init__(self, committer: GroupCommitter, dispatch: DispatchService, *,
                 rules: AlertRules | None = None) -> None:
        self.committer = committer
        self.dispatch = dispatch
        self.rules = rules or default_alert_rules()
        self.policy = default_policy()

    async def accept(self, report: AlertReport, raw: bytes, content_type: str, who: Principal) -> AlertOutcome:
        """Record one alert; return once it is durable (or was already)."""
        result, _ = await self.committer.submit(lambda conn: self._record(conn, report, raw, content_type, who))
        return result

    # -- one alert, inside the shared transaction ---------------------------------------------------
    async def _record(self, conn: asyncpg.Connection, report: AlertReport, raw: bytes, content_type: str,
                      who: Principal) -> Staged[AlertOutcome]:
        alert_id = "AL-" + uuid.uuid4().hex[:20]
        now = datetime.now(UTC)
        loc = report.location
        claimed = await conn.fetchval(
            "INSERT INTO alerts (id, source, identifier, kind, msg_type, status, sent, received_at, lat, lon,"
            " outcome, report, raw, content_type, principal)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'recorded', $11, $12, $13, $14)"
            " ON CONFLICT (source, identifier) DO NOTHING RETURNING true",
            alert_id, report.source, report.identifier, report.kind.value, report.msg_type.value,
            report.status.value, report.sent, now, loc.lat if loc else None, loc.lon if loc else None,
            report.to_json(), raw, content_type, f"{who.kind}:{who.id}",
        )
        if not claimed:
            row = await conn.fetchrow("SELECT id, incident_id FROM alerts WHERE source = $1 AND identifier = $2",
                                      report.source, report.identifier)
            return Staged(AlertOutcome(row["id"], row["incident_id"], "duplicate",
                                       "this (source, identifier) was received before"), [])
        outcome, staged = await self._route(conn, report, alert_id, now, who)
        await conn.execute("UPDATE alerts SET incident_id = $2, outcome = $3 WHERE id = $1",
                           alert_id, outcome.incident_id, outcome.outcome)
        visibility = await self._visibility(conn, outcome.incident_id)
        received = NewEvent(ALERT_RECEIVED, f"alert/{alert_id}", {
            "alert_id": alert_id, "source": report.source, "identifier": report.identifier,
            "kind": report.kind.value, "msg_type": report.msg_type.value, "severity": report.severity.value,
            "certainty": report.certainty.value, "headline": report.headline[:200],
            "location": loc.to_mapping() if loc else None,
            "location_flags": [f.value for f in report.location_flags],
            "incident_id": outcome.incident_id, "outcome": outcome.outcome, "reason": outcome.reason,
        }, actor=who.actor(), visibility=visibility)
        return Staged(AlertOutcome(alert_id, outcome.incident_id, outcome.outcome, outcome.reason, report),
                      [received, *staged])

    async def _visibility(self, conn: asyncpg.Connection, incident_id: str | None) -> tuple[str, ...]:
        if incident_id is None:
            return (EVERYONE,)
        agencies = await conn.fetchval("SELECT agency_ids FROM incidents WHERE id = $1", incident_id)
        return tuple(agencies or (EVERYONE,))

    async def _route(self, conn: asyncpg.Connection, report: AlertReport, alert_id: str, now: datetime,
                     who: Principal) -> tuple[AlertOutcome, list[NewEvent]]:
        if report.msg_type is MsgType.CANCEL:
            return await self._cancel(conn, report, alert_id, now, who)
        if report.msg_type is MsgType.UPDATE and report.references:
            joined = await self._update(conn, report, alert_id, now, who)
            if joined is not None:
                return joined
        if not report.actionable or report.location is None:
            why = ("no believable location" if report.location is None else
                   "not actionable (status, message type, threshold or location flags)")
            return AlertOutcome(alert_id, None, "recorded", why), []
        decision = self.rules.decide(report.kind, report.severity, report.urgency, report.certainty)
        if decision.incident_type is None:
            return AlertOutcome(alert_id, None, "recorded", decision.reason), []
        # One correlator at a time across nodes: otherwise two simultaneous detectors in one
        # building could each find no incident and open two.
        await conn.execute("SELECT pg_advisory_xact_lock($1)", CORRELATION_LOCK_KEY)
        at = min(report.sent, now)
        facts = AlertFacts(alert_id=alert_id, kind=report.kind, location=report.location, at=at,
                           priority=decision.priority)
        correlation = correlate(facts, await self._open_incidents(conn, report, at), self.policy, self.rules)
        if correlation.action == "attach" and correlation.incident_id is not None:
            staged: list[NewEvent] = []
            for command in correlation.commands():
                staged += (await self._run(conn, command, who, now)).staged
            return AlertOutcome(alert_id, correlation.incident_id, "attached", correlation.reason), staged
        created = await self.dispatch.create_incident(
            conn, who, incident_type=decision.incident_type, priority=decision.priority, location=report.location,
            address=report.headline[:200], alert_ids=(alert_id,), now=now, log=False, authorize=False,
        )
        incident_id = created.events[0].incident_id  # type: ignore[attr-defined]
        if decision.auto_dispatch:
            await store.set_timer(conn, AUTO_DISPATCH, incident_id, now)
        return AlertOutcome(alert_id, incident_id, "created", f"{correlation.reason}; {decision.reason}"), \
            created.staged

    async def _run(self, conn: asyncpg.Connection, command: cmd.Command, who: Principal, now: datetime) -> Any:
        # Intake acts with the server's authority on the sensor's behalf; the sensor is the actor.
        return await self.dispatch.run(conn, command, who, now=now, log=False, authorize=False)

    async def _open_incidents(self, conn: asyncpg.Connection, report: AlertReport, at: datetime) -> OpenIncidents:
        assert report.location is not None
        types = sorted(self.policy.compatible_types(report.kind, self.rules))
        reach = self.policy.reach_of(report.kind)
        lat_span = reach.radius_m / 111_000 + 0.001
        lon_span = lat_span * 3  # generous: up to ~70° latitude; correlation measures exactly
        rows = await conn.fetch(
            "SELECT i.doc, (SELECT max(a.sent) FROM alerts a WHERE a.incident_id = i.id) AS last_alert"
            " FROM incidents i WHERE i.status = ANY($1) AND i.incident_type = ANY($2)"
            " AND i.lat BETWEEN $3 AND $4 AND i.lon BETWEEN $5 AND $6",
            sorted(s.value for s in OPEN_INCIDENT), types,
            report.location.lat - lat_span, report.location.lat + lat_span,
            report.location.lon - lon_span, report.location.lon + lon_span,
        )
        return OpenIncidents(OpenIncident.from_incident(store.incident_from(r["doc"]), r["last_alert"]) for r in rows)

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
