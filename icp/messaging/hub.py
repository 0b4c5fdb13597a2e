"""Live delivery on one node: which connected member receives which message, and receipts for senders.

The hub follows the event log (the node's `EventFeed`). For each `message.sent` it works out the
channel's audience *now* — from the live picture for incident channels (a unit whose assignment
ended is no longer in it), from the agency for agency and broadcast channels, from its definition
for talkgroups and direct channels — looks up the connected members in its indexes (by agency, by
unit, by member key) and hands each the frame, encoded once. Nothing here touches the database or
waits: routing a message costs a few set unions, whatever the number of connections.

Each connection is a `Subscriber` that holds live messages back while the connection catches up
on what it missed, and drops anything at or below the last seq it was sent in that channel, so a
message is sent once per connection, in seq order per channel.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

from prometheus_client import Counter

from icp import jsontext
from icp.auth.principal import Principal, Role
from icp.gateway.protocol import message_frame, receipts_frame
from icp.live import LivePicture
from icp.messaging import store
from icp.messaging.channels import (
    EVERYONE,
    Channel,
    ChannelIdError,
    ChannelKind,
    Member,
    agency_channel,
    can_read,
    incident_channel,
    parse_channel_id,
)
from icp.store.eventlog import RecordedEvent, format_at
from icp.tasks import cancel_all

log = logging.getLogger(__name__)

MESSAGE_PREFIX = "message."
HOMES_CACHE = 50_000  # incidents whose home agencies a node remembers
RECEIPTS_EVERY_S = 0.25  # a sender gets at most one receipts frame per this interval
MAX_RECEIPTS_PER_FRAME = 500
MAX_HELD = 10_000  # live messages held for one connection while it catches up


def dumps(frame: Mapping[str, Any]) -> str:
    return jsontext.compact(frame)


class Subscriber:
    """One connection's side of message delivery."""

    __slots__ = ("abort", "closed", "held", "member", "ready", "receipts", "seen", "send", "wait_room", "who")

    def __init__(self, who: Principal, member: Member, send: Callable[[str], None],
                 wait_room: Callable[[int], Awaitable[None]], abort: Callable[[int, str], None],
                 closed: Callable[[], bool]) -> None:
        self.who = who
        self.member = member
        self.send = send  # queue a frame (text) on the connection; never waits
        self.wait_room = wait_room  # until its send queue takes this many more frames (or it closed)
        self.abort = abort  # close the connection with (code, reason)
        self.closed = closed
        self.seen: dict[str, int] = {}  # channel → last seq sent on this connection
        self.ready = False  # caught up: live messages go out directly
        self.held: list[tuple[str, int, str]] | None = []
        self.receipts: list[dict[str, Any]] = []

    def offer(self, channel_id: str, seq: int, text: str) -> bool:
        """A live message; held until the catch-up is over. True when sent now."""
        if not self.ready:
            held = self.held
            if held is not None:
                if len(held) >= MAX_HELD:
                    self.held = None
                    self.overflow()
                else:
                    held.append((channel_id, seq, text))
            return False
        return self.put(channel_id, seq, text)

    def overflow(self) -> None:
        self.abort(4008, "too slow; resume")  # resumable: the messages are waiting in the database

    def abort_failed(self) -> None:
        self.abort(1011, "internal error; reconnect")

    def put(self, channel_id: str, seq: int, text: str) -> bool:
        if seq <= self.seen.get(channel_id, 0):
            return False
        self.seen[channel_id] = seq
        self.send(text)
        return True

    def go_live(self) -> None:
        held, self.held = self.held or [], None
        self.ready = True
        for channel_id, seq, text in sorted(held, key=lambda h: h[1]):
            self.put(channel_id, seq, text)


class MessageHub:
    def __init__(self, live: LivePicture, deliveries: Counter | None = None) -> None:
        self.live = live
        self._deliveries = deliveries
        self.consoles: dict[str, set[Subscriber]] = {}  # agency → its dispatchers' and supervisors' connections
        self.unit_agencies: dict[str, set[Subscriber]] = {}  # agency → its units' connections
        self.units: dict[str, set[Subscriber]] = {}  # unit → its connections
        self.by_member: dict[str, set[Subscriber]] = {}
        self.unrestricted: set[Subscriber] = set()
        self.defined: dict[str, Channel] = {}  # talkgroups and direct channels
        self.homes: dict[str, tuple[str, ...]] = {}  # incident → home agencies
        # Channels as last worked out: forgotten whenever anything but a message passes in the log
        # (an assignment, an agency, a talkgroup may have changed) and every RECEIPTS_EVERY_S.
        self._now: dict[str, Channel] = {}
        self.deliveries = 0
        self._receipting: set[Subscriber] = set()
        self._task: asyncio.Task[None] | None = None

    # -- connections ------------------------------------------------------------------------------
    def member(self, who: Principal) -> Member:
        unit = self.live.state.units.get(who.unit) if who.role is Role.UNIT and who.unit else None
        return Member.of(who, unit.agency_id if unit is not None else None)

    def attach(self, sub: Subscriber) -> Callable[[], None]:
        m = sub.member
        for index, key in self._indexes(m):
            index.setdefault(key, set()).add(sub)
        if m.unrestricted:
            self.unrestricted.add(sub)

        def detach() -> None:
            for index, key in self._indexes(m):
                subs = index.get(key)
                if subs is not None:
                    subs.discard(sub)
                    if not subs:
                        del index[key]
            self.unrestricted.discard(sub)
            self._receipting.discard(sub)

        return detach

    def _indexes(self, m: Member) -> list[tuple[dict[str, set[Subscriber]], str]]:
        out = [(self.by_member, m.key)]
        if m.role is Role.UNIT:
            if m.unit:
                out.append((self.units, m.unit))
            if m.agency:
                out.append((self.unit_agencies, m.agency))
        elif m.agency and m.messaging:
            out.append((self.consoles, m.agency))
        return out

    @property
    def connected(self) -> int:
        return sum(len(s) for s in self.by_member.values())

    # -- channels as they are now -------------------------------------------------------------------
    def define(self, channel: Channel) -> None:
        """A talkgroup or direct channel as saved (on this node at once, on the others from the log)."""
        self.defined[channel.id] = channel
        self._now.clear()

    def remember_homes(self, homes: Mapping[str, Sequence[str]]) -> None:
        if len(self.homes) + len(homes) > HOMES_CACHE:
            for key in list(self.homes)[: HOMES_CACHE // 2]:  # the older half (insertion order)
                del self.homes[key]
        for incident_id, agencies in homes.items():
            self.homes[incident_id] = tuple(agencies)
        self._now.clear()

    def channel_now(self, channel_id: str, home: Sequence[str] | None = None) -> Channel | None:
        """The channel's audience from this node's memory, or None when it does not know it."""
        known = self._now.get(channel_id)
        if known is not None:
            return known
        channel = self._work_out(channel_id, home)
        if channel is not None:
            if len(self._now) >= HOMES_CACHE:
                self._now.clear()
            self._now[channel_id] = channel
        return channel

    def _work_out(self, channel_id: str, home: Sequence[str] | None) -> Channel | None:
        try:
            kind, rest = parse_channel_id(channel_id)
        except ChannelIdError:
            return None
        if kind is ChannelKind.INCIDENT:
            known = self.homes.get(rest) if home is None else tuple(home)
            if known is None:
                return None
            state = self.live.state
            incident = state.incidents.get(rest)
            active: list[tuple[str, str]] = []
            if incident is not None:
                for assignment in state.active_assignments_of(incident):
                    unit = state.units.get(assignment.unit_id)
                    if unit is not None:
                        active.append((unit.id, unit.agency_id))
            return incident_channel(rest, known, active)
        if kind in (ChannelKind.AGENCY, ChannelKind.BROADCAST):
            agency = self.live.state.agencies.get(rest)
            return agency_channel(kind, rest, agency.name) if agency is not None else None
        return self.defined.get(channel_id)

    def recipients(self, channel: Channel) -> set[Subscriber]:
        out: set[Subscriber] = set()
        if channel.kind is ChannelKind.DIRECT:
            for key in channel.members:
                out |= self.by_member.get(key, set())
        else:
            out |= self.unrestricted
            if channel.kind is ChannelKind.INCIDENT:
                agencies: Iterable[str] = self.consoles if EVERYONE in channel.agencies else channel.agencies
                for agency in agencies:
                    out |= self.consoles.get(agency, set())
                for unit in channel.units:
                    out |= self.units.get(unit, set())
            elif channel.kind in (ChannelKind.AGENCY, ChannelKind.BROADCAST):
                assert channel.agency_id is not None
                out |= self.consoles.get(channel.agency_id, set())
                out |= self.unit_agencies.get(channel.agency_id, set())
            else:  # a talkgroup
                for agency in {channel.agency_id or "", *channel.agencies}:
                    out |= self.consoles.get(agency, set())
                for agency in channel.agencies:
                    out |= self.unit_agencies.get(agency, set())
                for unit in channel.units:
                    out |= self.units.get(unit, set())
        # The indexes narrow the search; the rules decide.
        return {s for s in out if can_read(channel, s.member)}

    # -- following the log ----------------------------------------------------------------------------
    def on_events(self, batch: list[RecordedEvent]) -> None:
        """Feed subscriber (after the live picture's, so membership reflects the same batch)."""
        if any(not e.type.startswith(MESSAGE_PREFIX) for e in batch):
            self._now.clear()  # membership may have changed with it
        for event in batch:
            kind = event.type
            if kind == store.SENT:
                self._route(event)
            elif kind == store.ACKNOWLEDGED:
                data = event.data
                self.receipt_for(str(data["sender"]), {
                    "channel": data["channel"], "seq": data["seq"], "member": data["member"],
                    "acked_at": format_at(event.at)})
            elif kind == store.CHANNEL_SAVED:
                self.define(store.channel_from_doc(event.data["channel"]))
            elif kind == "incident.created":
                incident_id = event.data.get("incident_id")
                if isinstance(incident_id, str):
                    self.remember_homes({incident_id: list(event.data.get("agency_ids") or ())})

    def _route(self, event: RecordedEvent) -> None:
        data = event.data
        channel_id = data.get("channel")
        if not isinstance(channel_id, str):
            return
        channel = self.channel_now(channel_id, data.get("home_agencies"))
        if channel is None:
            return
        subs = self.recipients(channel)
        if not subs:
            return
        text = dumps(message_frame(store.message_view(event.seq, event.at, event.actor, data)))
        sent = 0
        for sub in subs:
            if sub.offer(channel_id, event.seq, text):
                sent += 1
        self.deliveries += sent
        if self._deliveries is not None and sent:
            self._deliveries.inc(sent)

    # -- receipts to senders --------------------------------------------------------------------------
    def receipt_for(self, sender: str, receipt: dict[str, Any]) -> None:
        for sub in self.by_member.get(sender, ()):
            if len(sub.receipts) < 10 * MAX_RECEIPTS_PER_FRAME:  # beyond that the REST API has them
                sub.receipts.append(receipt)
                self._receipting.add(sub)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._send_receipts(), name="icp-message-receipts")

    async def stop(self) -> None:
        await cancel_all([self._task])
        self._task = None

    async def _send_receipts(self) -> None:
        while True:
            await asyncio.sleep(RECEIPTS_EVERY_S)
            self._now.clear()  # bounds how long a rebuilt live picture can go unnoticed
            subs, self._receipting = self._receipting, set()
            for sub in subs:
                batch, sub.receipts = sub.receipts, []
                for i in range(0, len(batch), MAX_RECEIPTS_PER_FRAME):
                    sub.send(dumps(receipts_frame(batch[i:i + MAX_RECEIPTS_PER_FRAME])))
