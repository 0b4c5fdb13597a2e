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

import asyncio
import logging
import math
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from dispatch import commands as cmd
from dispatch import events as dev
from dispatch._checks import derived
from dispatch.alert_rules import AlertKind, AlertRules, default_alert_rules
from dispatch.commands import MAX_ALERTS_PER_LINK
from dispatch.correlation import AlertFacts, OpenIncident, OpenIncidents, correlate, default_policy
from dispatch.decide import decide
from dispatch.errors import DomainError
from dispatch.evolve import evolve_all
from dispatch.incident import MAX_ALERTS, Incident, IncidentNumber
from dispatch.lifecycle import INCIDENT, OPEN_INCIDENT, IncidentStatus
from dispatch.state import DispatchState
from geo.coords import Point
from icp import dispatch_store as store
from icp.auth.principal import Principal
from icp.dispatch_service import EVERYONE, DispatchService
from icp.intake.report import AlertReport, MsgType
from icp.store import eventlog
from icp.store.eventlog import NewEvent, json_number, plain_float
from icp.store.group_commit import GroupCommitter, Staged

log = logging.getLogger(__name__)
CORRELATION_LOCK_KEY = 0x1C9_0003
AUTO_DISPATCH = "auto_dispatch"
ALERTS_RECEIVED = "alerts.received"
# Alerts summarised in one alerts.received event: a summary is at most ~3 KB (its texts are
# bounded), so an event stays well under the log's bound on one event (eventlog.MAX_EVENT_BYTES).
RECEIVED_PER_EVENT = 64
_YIELD_EVERY = 100  # alerts summarised between two chances for the batch's write to go on
COPY_AT_LEAST = 100  # routed alerts inserted together (at least) while the next ones are routed
_YIELD_ROUTING = 20  # alerts routed between two chances for an insert to start or go on
MAX_BOXES_PER_TYPES = 64  # beyond this many boxes for one set of incident types, one box holds them all


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
    raw: bytes  # the payload as received (an item of a native batch: the item's own JSON)
    content_type: str
    who: Principal
    report_json: bytes  # the report as stored, encoded once (UTF-8 JSON text)

    @classmethod
    def of(cls, report: AlertReport, raw: bytes, content_type: str, who: Principal) -> _Submission:
        # Plain values of the caller's (a checked report, the payload): made without __init__'s
        # field-by-field object.__setattr__, as each of a storm's alerts makes one.
        return derived(cls, report, raw, content_type, who, report.to_json_bytes())


class IntakeService:
    def __init__(self, committer: GroupCommitter, dispatch: DispatchService, *,
                 rules: AlertRules | None = None) -> None:
        self.committer = committer
        self.dispatch = dispatch
        self.rules = rules or default_alert_rules()
        self.policy = default_policy()
        self._open_seen: dict[str, tuple[tuple[Any, ...], OpenIncident]] = {}
        # The last batch's open incidents: the next batch's read finds mostly the same ones, and
        # takes over their place indexes with what they measured (`OpenIncidents(like=...)`).
        self.last_open: OpenIncidents | None = None
        self._reaches: dict[AlertKind, tuple[str, float]] = {}  # a kind's joinable types (joined by ",") and radius
        self._boxes_seen: dict[tuple[float, float, float], tuple[float, float, float, float]] = {}

    def open_incident(self, row: asyncpg.Record) -> OpenIncident:
        """An open incident's summary row as correlation sees it; the value made for the same row
        last time is reused (most open incidents do not change between two batches)."""
        key = (row["incident_type"], row["lat"], row["lon"], row["created_at"], row["priority"],
               row["alert_count"], row["last_alert_at"])
        seen = self._open_seen.get(row["id"])
        if seen is not None and seen[0] == key:
            return seen[1]
        if len(self._open_seen) >= 50_000:
            self._open_seen.clear()
        incident = OpenIncident(id=row["id"], incident_type=key[0], location=Point(lat=key[1], lon=key[2]),
                                created_at=key[3], priority=key[4], alert_count=key[5], last_alert_at=key[6])
        self._open_seen[row["id"]] = (key, incident)
        return incident

    def _boxes(self, reports: list[AlertReport]) -> list[list[Any]]:
        """Where correlation looks for the reports' open incidents, as the columns of
        icp_open_incidents_near: for each alert, a box as far around it as its kind reaches, with
        the types its kind joins (alerts of one place share a box; kinds that join nothing need
        none). A batch spread over a city with thousands of open incidents reads the few near its
        alerts, not all of them."""
        by_types: dict[str, set[tuple[float, float, float, float]]] = {}
        reaches, boxes_seen = self._reaches, self._boxes_seen
        if len(boxes_seen) >= 50_000:
            boxes_seen.clear()
        for r in reports:
            if r.location is None:
                continue
            reach = reaches.get(r.kind)
            if reach is None:
                types = ",".join(sorted(self.policy.compatible_types(r.kind, self.rules)))
                reach = reaches[r.kind] = (types, self.policy.reach_of(r.kind).radius_m)
            if reach[0]:
                # A detector reports from one place again and again: its box is made once.
                at = (r.location.lat, r.location.lon, reach[1])
                box = boxes_seen.get(at)
                if box is None:
                    box = boxes_seen[at] = _box(r.location, reach[1])
                by_types.setdefault(reach[0], set()).add(box)
        boxes: list[tuple[tuple[float, float, float, float], str]] = []
        for types, found in sorted(by_types.items()):
            if len(found) > MAX_BOXES_PER_TYPES:
                # A batch spread over a city: one box around all of its alerts is one index scan,
                # where hundreds of small ones cost PostgreSQL a scan each (a few more incidents
                # read cost correlation nothing: it measures).
                found = {(min(b[0] for b in found), max(b[1] for b in found),
                          min(b[2] for b in found), max(b[3] for b in found))}
            boxes += [(box, types) for box in sorted(found)]
        return [[b[0][0] for b in boxes], [b[0][1] for b in boxes], [b[0][2] for b in boxes],
                [b[0][3] for b in boxes], [b[1] for b in boxes]]

    async def accept(self, report: AlertReport, raw: bytes, content_type: str, who: Principal) -> AlertOutcome:
        """Record one alert; return once it is durable (or was already)."""
        result, _ = await self.committer.submit_batched(self._record_many,
                                                        _Submission.of(report, raw, content_type, who))
        return result  # type: ignore[no-any-return]

    async def accept_all(self, items: list[tuple[AlertReport, bytes, str]], who: Principal) -> list[Any]:
        """Record many alerts in one go (they share a transaction): an outcome or an exception each."""
        subs = [_Submission.of(report, raw, content_type, who) for report, raw, content_type in items]
        results = await self.committer.submit_batched_all(self._record_many, subs)
        return [r[0] if isinstance(r, tuple) else r for r in results]

    # -- a batch of alerts, inside the shared transaction --------------------------------------------
    async def _record_many(self, conn: asyncpg.Connection, subs: list[_Submission]) -> list[Staged[AlertOutcome]]:
        """Find the repeats with one statement, route the new alerts in order (correlation in
        memory, against one read of the open incidents nearby), write what they did in a few
        statements (each alert inserted once, with its outcome), and stage the events: what the
        alerts caused (incidents opened or changed; one `incident.alerts_linked` per incident for
        the alerts that joined it) and `alerts.received` summarising the alerts themselves.

        Every intake transaction holds the correlation lock from its start, so no other node
        inserts alerts meanwhile: what the first read did not find is new."""
        # The lock, then the reads after it of the repeats and of the open incidents the alerts
        # could join: one round trip (migration 0015).
        rows = await conn.fetch(
            f"SELECT * FROM icp_intake_read_locked($1, {_TEXTS.format(2)}, {_TEXTS.format(3)}, $4, $5, $6, $7, $8)",
            CORRELATION_LOCK_KEY, _texts([x.report.source for x in subs]),
            _texts([x.report.identifier for x in subs]), *self._boxes([x.report for x in subs]))
        now = datetime.now(UTC)
        earlier: dict[tuple[str, str], tuple[str, str | None]] = {
            (r["seen_source"], r["seen_identifier"]): (r["alert_id"], r["alert_incident"])
            for r in rows if r["seen_source"] is not None}
        first: dict[tuple[str, str], int] = {}
        fresh: list[int] = []
        for n, sub in enumerate(subs):
            key = sub.report.key
            if key not in earlier and key not in first:
                first[key] = n
                fresh.append(n)
        batch = _Batch(self, conn, now, [subs[n].report for n in fresh])
        batch.opened([r for r in rows if r["seen_source"] is None])
        results: list[Staged[AlertOutcome] | None] = [None] * len(subs)
        randomness = os.urandom(10 * len(fresh)).hex()  # one call for the batch's alert ids
        routed = []
        try:
            for k, n in enumerate(fresh):
                alert_id = "AL-" + randomness[20 * k: 20 * k + 20]
                routed.append((n, alert_id, batch.after_due(await batch.route(alert_id, subs[n]))))
                if k % _YIELD_ROUTING == _YIELD_ROUTING - 1:
                    batch.insert_routed(at_least=COPY_AT_LEAST)
                    if batch.inserting is not None:
                        await asyncio.sleep(0)  # lets the insert go on (routing itself seldom waits)
        except BaseException:
            await batch.settle(raising=False)  # the connection must be free again
            raise
        if batch.open is not None:
            self.last_open = batch.open
        links = batch.link_events()  # of the links the flush below writes
        # The batch's writes run in the database while its events are made and encoded here:
        # that work needs no connection, and a large batch's write takes as long again.
        write = asyncio.ensure_future(batch.flush())
        try:
            outcomes: list[AlertOutcome] = []
            encoded: list[list[eventlog.EncodedEvent]] = []
            received: dict[tuple[str, Principal, tuple[str, ...]], list[dict[str, Any]]] = {}
            unchecked: set[tuple[str, Principal, tuple[str, ...]]] = set()  # groups whose text is searched
            for k, (n, alert_id, (outcome, staged, agencies)) in enumerate(routed):
                if k % _YIELD_EVERY == 0:
                    await asyncio.sleep(0)  # lets the write send its next statement
                sub = subs[n]
                # The 202 names its flags and findings: routing gave most outcomes their report already.
                outcomes.append(outcome if outcome.report is sub.report else AlertOutcome(
                    outcome.alert_id, outcome.incident_id, outcome.outcome, outcome.reason, sub.report))
                encoded.append([eventlog.encode(e) for e in staged] if staged else [])
                group = (sub.report.source, sub.who, tuple(agencies) or (EVERYONE,))
                received.setdefault(group, []).append(_summary(alert_id, sub.report, outcome))
                if not _checked(sub.report, outcome):
                    unchecked.add(group)
            if routed:  # what was received comes first; the links the flush writes come last
                encoded[0][:0] = [eventlog.encode(e) for e in _received_events(received, unchecked)]
                encoded[-1] += [eventlog.encode(e) for e in links]
            for (n, _, _), outcome, events in zip(routed, outcomes, encoded, strict=True):
                results[n] = derived(Staged, outcome, events)
        except BaseException:
            await asyncio.gather(write, return_exceptions=True)  # the connection must be free again
            raise
        await write
        for n, sub in enumerate(subs):
            if results[n] is not None:
                continue
            key = sub.report.key
            original = results[first[key]] if key in first else None
            alert_id, incident_id = ((original.result.alert_id, original.result.incident_id)
                                     if original is not None else earlier[key])
            results[n] = Staged(AlertOutcome(alert_id, incident_id, "duplicate",
                                             "this (source, identifier) was received before"), [])
        return [r for r in results if r is not None]

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


def _summary(alert_id: str, report: AlertReport, outcome: AlertOutcome) -> dict[str, Any]:
    """An alert as `alerts.received` lists it. Plain data (strings, lists of strings, numbers in
    canonical form; the members of string enums are strings, and written as their values): the
    log need not walk it."""
    loc = report.location
    return {
        "alert_id": alert_id, "source": report.source, "identifier": report.identifier,
        "kind": report.kind, "msg_type": report.msg_type, "severity": report.severity,
        "certainty": report.certainty, "headline": report.headline[:200],
        "location": {"lat": json_number(loc.lat), "lon": json_number(loc.lon)} if loc else None,
        "location_flags": list(report.location_flags),
        "incident_id": outcome.incident_id, "outcome": outcome.outcome, "reason": outcome.reason[:500],
    }


def _checked(report: AlertReport, outcome: AlertOutcome) -> bool:
    """Whether an alert's summary holds no float under 1e-4 in magnitude and no NUL character
    (`NewEvent.checked`). Sources and identifiers hold no control characters (`check_ident`);
    ids and the enums' values are ICP's own; the headline and the reason are looked at."""
    loc = report.location
    return ((loc is None or (plain_float(loc.lat) and plain_float(loc.lon)))
            and "\x00" not in report.headline and "\x00" not in outcome.reason)


def _received_events(received: dict[tuple[str, Principal, tuple[str, ...]], list[dict[str, Any]]],
                     unchecked: set[tuple[str, Principal, tuple[str, ...]]]) -> list[NewEvent]:
    """One `alerts.received` per sender, principal and visibility (the agencies of the alerts'
    incidents), at most `RECEIVED_PER_EVENT` alerts each, in the order they were received. One
    event per alert cost a storm more than routing the alert did, and a console or webhook
    receiver follows a storm better in lots. ``unchecked``: groups with a summary `_checked`
    could not vouch for, whose text is searched as any event's."""
    out = []
    for group, summaries in received.items():
        source, who, visibility = group
        for start in range(0, len(summaries), RECEIVED_PER_EVENT):
            part = summaries[start:start + RECEIVED_PER_EVENT]
            out.append(NewEvent(ALERTS_RECEIVED, f"source/{source}"[:200], {"source": source, "alerts": part},
                                actor=who.actor(), visibility=visibility, plain=True,
                                checked=group not in unchecked))
    return out


# A list of texts as one parameter: asyncpg checks each element of an array against three
# abstract base classes, which cost as much as the rest of a lot's reads and writes on the node.
# Sources, identifiers and ids hold no control characters (`check_ident`, ICP's own ids), so the
# unit separator (0x1F) divides them; `_TEXTS.format(n)` is parameter n as text[] again.
_SEPARATOR = "\x1f"
_TEXTS = "string_to_array(${}, chr(31))"


def _texts(values: list[str]) -> str:
    return _SEPARATOR.join(values)


def _box(point: Point, reach_m: float) -> tuple[float, float, float, float]:
    """(lat0, lat1, lon0, lon1) holding everything within ``reach_m`` of ``point`` with room to
    spare (correlation measures exactly), rounded outward to 1e-4 degrees so that the alerts of
    one building share it."""
    lat_span = reach_m * 1.1 / 111_000 + 0.0002
    lon_span = lat_span / max(0.01, math.cos(math.radians(min(abs(point.lat) + lat_span, 89.9))))
    q = 10_000
    return (math.floor((point.lat - lat_span) * q) / q, math.ceil((point.lat + lat_span) * q) / q,
            math.floor((point.lon - lon_span) * q) / q, math.ceil((point.lon + lon_span) * q) / q)


class _Stale(RuntimeError):
    """An incident joined without its lock changed before the batch wrote (a dispatcher closed it
    or moved it to other agencies): the batch is rolled back and its alerts retried one by one."""


_OPEN_STATUSES = sorted(s.value for s in OPEN_INCIDENT)
# received_at is the column's default, the transaction's start (asyncpg's encoding of a time
# zone aware datetime cost about a third of each row's).
_ALERT_COLUMNS = ("id", "source", "identifier", "kind", "msg_type", "status", "sent", "lat", "lon",
                  "incident_id", "outcome", "report", "raw", "content_type", "principal")


class _Batch:
    """One batch's routing. Correlation runs in memory over one read of the open incidents near
    the batch (kept current as alerts open and join incidents).

    Joining an incident is usually a plain link, and that path stays light: the links are kept
    here, by incident; `flush` appends the batch's alert ids to each incident's alert list with
    one statement, without loading, decoding or re-encoding the incident (whose alert list grows
    with every detector that fires), and `link_events` makes one `incident.alerts_linked` per
    incident for them (the event `decide` gives for `LinkAlerts`; `flush` checks that the
    incident is still open, as `decide` would). An incident
    that this batch opens, or whose priority or type an alert raises, is locked and loaded whole
    and goes through the dispatch core. Each alert is inserted once, with where it went: in a
    large lot while later alerts are routed (`insert_routed`), the rest by `flush`. Incident
    numbers come from one locked read of the year's counter. CAP Update and Cancel
    take the per-alert path, after a flush."""

    def __init__(self, service: IntakeService, conn: asyncpg.Connection, now: datetime,
                 reports: list[AlertReport]) -> None:
        self.s, self.conn, self.now = service, conn, now
        self.reports = reports
        self.open: OpenIncidents | None = None
        self.incidents: dict[str, Incident] = {}  # loaded whole (opened here, or changed by an alert)
        self.agencies: dict[str, list[str]] = {}
        self.dirty: set[str] = set()
        # Light links not yet written, by incident: (alert id, who sent the alert), in order.
        self.linked: dict[str, list[tuple[str, Principal]]] = {}
        self.due: list[NewEvent] = []  # events of links written while routing an alert, staged with it
        self.rows: list[tuple[str, _Submission, str | None, str]] = []  # alerts to insert
        self.last_alert: dict[str, datetime] = {}
        self.timers: list[tuple[str, str, datetime]] = []
        self.last_number: int | None = None  # the year's counter, locked, as this batch has taken it
        self.numbers_taken = False
        self.inserted = 0  # how many of `rows` are inserted or being inserted
        self.inserting: asyncio.Future[None] | None = None  # a COPY of routed alerts on the connection

    def insert_routed(self, *, at_least: int = 1) -> None:
        """Start inserting the alerts routed so far (if ``at_least`` that many wait) while the
        next ones are routed (PostgreSQL's work then overlaps the node's), unless the previous
        insert is still running: the connection runs one statement at a time. Started as soon as
        the connection is free, each insert takes what was routed while the one before ran, so
        few alerts are left for the end of the lot, which the 202s wait for. An alert may go in
        before the incident it opened is saved (by the flush, in the same transaction): its
        incident is no foreign key (migration 0023)."""
        if self.inserting is not None and not self.inserting.done():
            return
        if len(self.rows) - self.inserted < at_least:
            return
        if self.inserting is not None and self.inserting.exception() is not None:
            return  # `settle` raises it
        rows, self.inserted = self.rows[self.inserted:], len(self.rows)
        self.inserting = asyncio.ensure_future(self._insert(rows))

    async def settle(self, *, raising: bool = True) -> None:
        """Wait for the insert under way, so the connection is free (its failure raised here)."""
        inserting, self.inserting = self.inserting, None
        if inserting is None:
            return
        if raising:
            await inserting
        else:
            await asyncio.gather(inserting, return_exceptions=True)

    async def _insert(self, rows: list[tuple[str, _Submission, str | None, str]]) -> None:
        """Each alert inserted once, with where it went, by COPY: the cheapest insert for both
        sides (an insert from a dozen parameter arrays cost the node a type check per element).
        An alert inserted meanwhile cannot be, while intake holds the correlation lock; if it
        were, the unique key refuses the COPY and the batch is run again alert by alert."""
        await self.conn.copy_records_to_table("alerts", columns=_ALERT_COLUMNS, records=[
            (alert_id, r.source, r.identifier, r.kind, r.msg_type, r.status, r.sent,  # enum members are text
             None if loc is None else loc.lat, None if loc is None else loc.lon, incident_id, outcome,
             sub.report_json, sub.raw, sub.content_type, f"{sub.who.kind}:{sub.who.id}")
            for alert_id, sub, incident_id, outcome in rows for r in (sub.report,) for loc in (r.location,)])

    def after_due(self, routed: tuple[AlertOutcome, list[NewEvent], list[str]]
                  ) -> tuple[AlertOutcome, list[NewEvent], list[str]]:
        """A routed alert's outcome, events and agencies, its events after those of links written
        while it was routed (a plain method: a coroutine around `route` cost one per alert)."""
        if not self.due:
            return routed
        outcome, staged, agencies = routed
        staged, self.due = [*self.due, *staged], []
        return outcome, staged, agencies

    async def route(self, alert_id: str, sub: _Submission) -> tuple[AlertOutcome, list[NewEvent], list[str]]:
        """Where the alert goes: its outcome, the events that causes, and its incident's agencies
        (`after_due` puts the events of links written meanwhile first)."""
        s, report, who = self.s, sub.report, sub.who
        if report.msg_type is MsgType.CANCEL or (report.msg_type is MsgType.UPDATE and report.references):
            self.due += self.link_events()
            await self.flush()  # the per-alert paths read and write the database directly
            self.open, self.incidents, self.agencies = None, {}, {}
            handled = (await s._cancel(self.conn, report, alert_id, self.now, who)
                       if report.msg_type is MsgType.CANCEL else
                       await s._update(self.conn, report, alert_id, self.now, who))
            if handled is not None:
                outcome, staged = handled
                self.rows.append((alert_id, sub, outcome.incident_id, outcome.outcome))
                return outcome, staged, list(await s._visibility(self.conn, outcome.incident_id))
        if not report.actionable or report.location is None:
            why = ("no believable location" if report.location is None else
                   "not actionable (status, message type, threshold or location flags)")
            return self._recorded(alert_id, sub, why)
        decision = s.rules.decide(report.kind, report.severity, report.urgency, report.certainty)
        if decision.incident_type is None:
            return self._recorded(alert_id, sub, decision.reason)
        at = min(report.sent, self.now)
        # Every value was checked as the report, the rules and the id were made.
        facts = derived(AlertFacts, alert_id, report.kind, report.location, at, decision.priority)
        open_now = self.open if self.open is not None else await self._open_incidents()  # (no coroutine per alert)
        correlation = correlate(facts, open_now, s.policy, s.rules)
        if correlation.action == "attach" and correlation.incident_id is not None:
            incident_id = correlation.incident_id
            current = open_now.get(incident_id)
            # Near the bound of an incident's alert list the whole aggregate checks it, as before.
            crowded = current is None or current.alert_count + 1 >= MAX_ALERTS
            if incident_id in self.incidents or correlation.changed or crowded:
                staged = await self._apply(incident_id, correlation.commands(), who)
            else:
                staged = []
                self.linked.setdefault(incident_id, []).append((alert_id, who))
            if current is not None:
                self.open = open_now.with_incident(current.after(correlation, at))
            self._joined(alert_id, sub, incident_id, "attached", at)
            attached = derived(AlertOutcome, alert_id, incident_id, "attached", correlation.reason, report)
            return attached, staged, self.agencies[incident_id]
        agencies, zone = s.dispatch.placement(report.location, who)
        # Dispatchers read an address in the queue; the alert's headline stays on the alert.
        address = s.dispatch.geography.offline_address(report.location) or report.headline
        number = await self._next_number()
        incident_id = str(number)
        self.agencies[incident_id] = agencies
        staged = await self._apply(incident_id, [cmd.CreateIncident(
            incident_id=incident_id, number=number, incident_type=decision.incident_type,
            priority=decision.priority, location=report.location, address=address[:200], zone=zone,
            alert_ids=(alert_id,))], who)
        self.open = open_now.with_incident(OpenIncident.from_incident(self.incidents[incident_id], at))
        if decision.auto_dispatch:
            self.timers.append((AUTO_DISPATCH, incident_id, self.now))
        self._joined(alert_id, sub, incident_id, "created", at)
        return (AlertOutcome(alert_id, incident_id, "created", f"{correlation.reason}; {decision.reason}", report),
                staged, agencies)

    def _recorded(self, alert_id: str, sub: _Submission, why: str) -> tuple[AlertOutcome, list[NewEvent], list[str]]:
        self.rows.append((alert_id, sub, None, "recorded"))
        return derived(AlertOutcome, alert_id, None, "recorded", why, sub.report), [], []

    def _joined(self, alert_id: str, sub: _Submission, incident_id: str, outcome: str, at: datetime) -> None:
        self.rows.append((alert_id, sub, incident_id, outcome))
        previous = self.last_alert.get(incident_id)
        self.last_alert[incident_id] = at if previous is None or at > previous else previous

    def _links(self, incident_id: str, pending: list[tuple[str, Principal]]
               ) -> list[tuple[dev.AlertsLinked, Principal]]:
        """The light links to one incident as the facts `decide` gives for `LinkAlerts` (the
        alert ids are new, so none is linked yet): one per run of alerts from the same sender,
        at most `MAX_ALERTS_PER_LINK` ids each, in order."""
        out: list[tuple[dev.AlertsLinked, Principal]] = []
        start = 0
        while start < len(pending):
            who, end = pending[start][1], start + 1
            while end < len(pending) and end - start < MAX_ALERTS_PER_LINK and pending[end][1] == who:
                end += 1
            # The time is the lot's, the incident one read under the lock, the ids ICP's own: a
            # lot's hundreds of these are made without checking each again.
            out.append((derived(dev.AlertsLinked, self.now, incident_id,
                                tuple([a for a, _ in pending[start:end]])), who))
            start = end
        return out

    def link_events(self) -> list[NewEvent]:
        """The events of the light links the next `flush` writes."""
        return self._logged([fact for incident_id, pending in self.linked.items()
                             for fact in self._links(incident_id, pending)])

    def _logged(self, facts: list[tuple[dev.AlertsLinked, Principal]]) -> list[NewEvent]:
        # Their data (ids, a time, agency ids) is plain: the log need not walk it.
        state, agencies = self.s.dispatch.live.state, self.agencies
        return [DispatchService.log_event(event, state, agencies, who, plain=True) for event, who in facts]

    async def _next_number(self) -> IncidentNumber:
        """The next incident number of the year. The counter row is read once and stays locked
        until the transaction ends (as `store.next_incident_number` keeps it), so numbers are
        taken in memory and `flush` writes the last one back."""
        year = self.now.year
        if self.last_number is None:
            await self.settle()
            self.last_number = int(await self.conn.fetchval(
                "INSERT INTO incident_numbers (year, last) VALUES ($1, 0)"
                " ON CONFLICT (year) DO UPDATE SET last = incident_numbers.last RETURNING last", year))
        self.last_number += 1
        self.numbers_taken = True
        return IncidentNumber(year=year, sequence=self.last_number)

    async def _apply(self, incident_id: str, commands: list[cmd.Command], who: Principal) -> list[NewEvent]:
        """Run incident-only commands on the batch's copy of the incident (pure core, no I/O)."""
        if incident_id not in self.incidents and not isinstance(commands[0], cmd.CreateIncident):
            await self.settle()
            row = await self.conn.fetchrow(
                f"SELECT agency_ids, {store.INCIDENT_DOC} FROM incidents WHERE id = $1 FOR UPDATE", incident_id)
            if row is None:
                raise _Stale(f"incident {incident_id} is gone")
            incident = store.incident_from(row["doc"])
            pending = self._links(incident_id, self.linked.pop(incident_id, []))
            if pending and list(row["agency_ids"]) != self.agencies[incident_id]:
                raise _Stale(f"incident {incident_id} changed agencies while alerts joined it")
            # Links this batch made before loading it are not in the document yet: they are
            # applied, and their events staged, before what this alert changes.
            self.incidents[incident_id] = evolve_all(DispatchState(incidents={incident_id: incident}),
                                                     [e for e, _ in pending]).incidents[incident_id]
            self.agencies[incident_id] = list(row["agency_ids"])
            self.due += self._logged(pending)
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

    def opened(self, rows: list[asyncpg.Record]) -> OpenIncidents:
        """The open incidents any alert of this batch could join (read with the lock)."""
        self.open = OpenIncidents((self.s.open_incident(r) for r in rows), like=self.s.last_open)
        for r in rows:
            self.agencies.setdefault(r["id"], list(r["agency_ids"]))
        return self.open

    async def _open_incidents(self) -> OpenIncidents:
        """The open incidents as this batch has left them; read again after a CAP Update or Cancel
        wrote through the per-alert path."""
        if self.open is not None:
            return self.open
        await self.settle()
        return self.opened(await self.conn.fetch("SELECT * FROM icp_open_incidents_near($1, $2, $3, $4, $5)",
                                                 *self.s._boxes(self.reports)))

    async def flush(self) -> None:
        conn = self.conn
        await self.settle()
        if self.dirty:
            await store.save_incidents(conn, [(self.incidents[i], self.agencies[i]) for i in sorted(self.dirty)])
        if self.last_alert or self.rows or self.numbers_taken:
            await self._write()
        for kind, ref, due in self.timers:
            await store.set_timer(conn, kind, ref, due)
        self.dirty, self.linked, self.rows, self.last_alert, self.timers = set(), {}, [], {}, []
        self.numbers_taken = False
        self.inserted = 0

    async def _write(self) -> None:
        """The alerts not inserted yet (`_insert`), then one statement (after the incidents this
        batch opened or changed are saved): the year's incident counter as far as the batch took
        it, every incident alerts joined (its last alert time and alert count), and the light
        links added to its alert list in order (rows of incident_alerts after those stored),
        with the checks that the incidents joined without their lock are still open and still
        belong to the same agencies."""
        rest = self.rows[self.inserted:]
        if rest:
            await self._insert(rest)
        self.inserted = len(self.rows)
        ids = sorted(self.last_alert)
        links = [(i, a) for i, pending in self.linked.items() for a, _ in pending]
        if ids or self.numbers_taken:
            result = await self.conn.fetch(
                "WITH num AS (UPDATE incident_numbers SET last = $6 WHERE year = $5 AND $6::integer IS NOT NULL),"
                f" l AS (SELECT inc, aid, n FROM unnest({_TEXTS.format(3)}, {_TEXTS.format(4)})"
                "   WITH ORDINALITY AS l(inc, aid, n)),"
                " c AS (SELECT inc, count(*)::integer AS c FROM l GROUP BY inc),"
                f" u AS (SELECT * FROM unnest({_TEXTS.format(1)}, $2::timestamptz[]) AS u(id, at)),"
                " t AS (UPDATE incidents i SET last_alert_at = greatest(i.last_alert_at, u.at),"
                "   alert_count = i.alert_count + coalesce(c.c, 0),"
                "   updated_at = CASE WHEN c.c IS NULL THEN i.updated_at ELSE now() END"
                "   FROM u LEFT JOIN c ON c.inc = u.id WHERE i.id = u.id"
                "   RETURNING i.id, i.status, i.agency_ids, i.alert_count - coalesce(c.c, 0) AS stored),"
                " a AS (INSERT INTO incident_alerts (incident_id, n, alert_id)"
                "   SELECT l.inc, t.stored + row_number() OVER (PARTITION BY l.inc ORDER BY l.n), l.aid"
                "   FROM l JOIN t ON t.id = l.inc)"
                " SELECT id, status, agency_ids FROM t",
                _texts(ids), [self.last_alert[i] for i in ids], _texts([i for i, _ in links]),
                _texts([a for _, a in links]),
                self.now.year, self.last_number if self.numbers_taken else None,
            )
            found = {r["id"]: r for r in result}
            for incident_id in self.linked:
                row = found.get(incident_id)
                if row is None or row["status"] not in _OPEN_STATUSES:
                    raise _Stale(f"incident {incident_id} closed while alerts joined it")
                INCIDENT.next(IncidentStatus(row["status"]), "link_alert", command="link_alert", subject=incident_id)
                if list(row["agency_ids"]) != self.agencies[incident_id]:
                    raise _Stale(f"incident {incident_id} changed agencies while alerts joined it")
