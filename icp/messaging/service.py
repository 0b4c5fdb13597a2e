"""The messaging service of a node: what the REST API and the gateway call, and its wiring (a cleanup context).

Every decision about access is made against the database (the truth: who is assigned now, which
talkgroup lists whom) with the rules of `icp.messaging.channels`; live delivery makes the same
decision against the node's live picture (`icp.messaging.hub`). A channel that is none of the
caller's business does not exist for it (404); one it knows of but may not use is refused (403).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp import web
from prometheus_client import Counter

from icp import appkeys
from icp.auth.principal import Principal, Role
from icp.config import Settings
from icp.dispatch_service import partners_lending_to, sees_incident
from icp.errors import FieldError, Problem, forbidden, not_found, validation
from icp.gateway.protocol import message_frame
from icp.live import LivePicture
from icp.messaging import MESSAGING, attachments, store
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
    parse_channel_id,
    talkgroup_id,
    valid_member_key,
)
from icp.messaging.hub import MessageHub, Subscriber, dumps
from icp.messaging.receipts import ReceiptBook
from icp.messaging.writer import MessageWriter, Outgoing
from icp.ratelimit import RateLimiter
from icp.store.eventlog import NewEvent, format_at
from icp.store.feed import EventFeed
from icp.store.group_commit import GroupCommitter, Staged

log = logging.getLogger(__name__)

PRIORITIES = ("normal", "emergency")
HISTORY_MAX = 100  # messages per history page (REST); the WebSocket op allows 50
CATCH_UP_PAGE = 200
MAX_REPEATS = 100  # unacknowledged emergency messages repeated to a member on connect
MAX_TALKGROUP_AGENCIES = 50
MAX_TALKGROUP_UNITS = 500
MAX_UPLOADS_AT_ONCE = 8
ORPHAN_AFTER_S = 24 * 3600.0  # attachments never sent are removed after this
_UNSAFE = re.compile("[\x00\ud800-\udfff]")
_CLIENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,100}")


def fingerprint(channel_id: str, text: str, priority: str, attachment_id: str | None) -> bytes:
    """What a client id stands for: a resend must carry the same message."""
    return hashlib.sha256(json.dumps([channel_id, text, priority, attachment_id]).encode()).digest()


@dataclass(frozen=True, slots=True)
class Peer:
    """The other side of a direct channel, as the database knows it."""

    key: str
    name: str
    role: Role
    agency: str | None
    unrestricted: bool


class MessagingService:
    def __init__(self, *, pool: asyncpg.Pool, committer: GroupCommitter, feed: EventFeed, live: LivePicture,
                 settings: Settings, writer: MessageWriter, hub: MessageHub, receipts: ReceiptBook,
                 sent: Counter | None = None) -> None:
        self.pool, self.committer, self.feed, self.live = pool, committer, feed, live
        self.settings, self.writer, self.hub, self.receipts = settings, writer, hub, receipts
        self.files = settings.data_dir / "attachments"
        self.allowed_types = frozenset(t.strip().lower() for t in settings.attachment_types.split(",") if t.strip())
        self.limiter = RateLimiter(settings.message_rate_per_s, settings.message_burst)
        self._uploads = asyncio.Semaphore(MAX_UPLOADS_AT_ONCE)
        self._sent = sent

    # -- who and which channel ------------------------------------------------------------------------
    def member(self, who: Principal) -> Member:
        member = self.hub.member(who)
        if not member.messaging:
            raise forbidden("messaging is for units, dispatchers, supervisors and administrators")
        return member

    async def load(self, conn: asyncpg.Connection | asyncpg.Pool, channel_id: str) -> tuple[Channel, list[str]]:
        """The channel as the database says it is now, and the agencies that know of it (for
        403 rather than 404); `not_found` when there is no such channel."""
        try:
            kind, rest = parse_channel_id(channel_id)
        except ChannelIdError:
            raise not_found(f"channel {channel_id[:130]!r}") from None
        if kind is ChannelKind.INCIDENT:
            known = await store.incident_agency_ids(conn, rest)
            if known is None:
                raise not_found(f"channel {channel_id}")
            home = self.hub.homes.get(rest)
            if home is None:
                home = (await store.home_agencies(conn, [rest])).get(rest, tuple(known))
                self.hub.remember_homes({rest: home})
            active = (await store.active_assignments(conn, [rest]))[rest]
            return incident_channel(rest, home, active), known
        if kind in (ChannelKind.AGENCY, ChannelKind.BROADCAST):
            agency = self.live.state.agencies.get(rest)
            if agency is None:
                raise not_found(f"channel {channel_id}")
            return agency_channel(kind, rest, agency.name), [rest]
        channel = await store.defined_channel(conn, channel_id)
        if channel is None or channel.kind is not kind:
            raise not_found(f"channel {channel_id}")
        return channel, ([channel.agency_id, *channel.agencies] if channel.agency_id else [])

    def require(self, channel: Channel, known: Sequence[str], who: Principal, member: Member, *,
                write: bool = False) -> None:
        if (can_write if write else can_read)(channel, member):
            return
        if write and can_read(channel, member):
            raise forbidden(f"only supervisors write to {channel.id}")
        if channel.kind is not ChannelKind.DIRECT and sees_incident(who, known):
            raise forbidden(f"you are not a member of {channel.id}")
        raise not_found(f"channel {channel.id}")  # another agency's channel does not exist for you

    async def channel_for(self, who: Principal, channel_id: str, *, write: bool = False) -> tuple[Channel, Member]:
        member = self.member(who)
        channel, known = await self.load(self.pool, channel_id)
        self.require(channel, known, who, member, write=write)
        return channel, member

    # -- sending --------------------------------------------------------------------------------------
    def check_text(self, text: Any) -> str:
        limit = self.settings.message_max_chars
        if not isinstance(text, str) or not text.strip() or len(text) > limit or _UNSAFE.search(text):
            raise validation([FieldError("text", f"must be a non-blank string of at most {limit} characters")])
        return text

    async def send(self, who: Principal, channel_id: str, text: Any, *, priority: Any = "normal",
                   attachment_id: Any = None, client_id: Any = None) -> dict[str, Any]:
        """Post a message; answered once it is durable. A repeat of ``client_id`` by the same sender
        gets the first message back (``duplicate``), never a second one."""
        text = self.check_text(text)
        errors = []
        if priority not in PRIORITIES:
            errors.append(FieldError("priority", "must be normal or emergency"))
        if attachment_id is not None and not isinstance(attachment_id, str):
            errors.append(FieldError("attachment", "must be an attachment id"))
        if client_id is not None and (not isinstance(client_id, str) or not _CLIENT_ID.fullmatch(client_id)):
            errors.append(FieldError("client_id", "must be 1 to 100 letters, digits, '.', '_', ':' or '-'"))
        if errors:
            raise validation(errors)
        member = self.member(who)
        wait = self.limiter.take(member.key)
        if wait > 0:
            raise Problem(429, "rate_limited", "too many messages; retry shortly",
                          headers={"Retry-After": str(max(1, round(wait)))})
        # The node's live picture (which follows the log within milliseconds) answers the common
        # case without a database read; when it does not know the channel or says no, the database
        # decides (it may hold an assignment the picture has not seen yet) and names the refusal.
        channel = self.hub.channel_now(channel_id)
        if channel is None or not can_write(channel, member):
            channel, known = await self.load(self.pool, channel_id)
            self.require(channel, known, who, member, write=True)
        data: dict[str, Any] = {"channel": channel.id, "sender": member.key, "text": text, "priority": priority,
                                "client_id": client_id or uuid.uuid4().hex}
        if channel.kind is ChannelKind.INCIDENT:
            data["incident_id"] = channel.incident_id
            data["home_agencies"] = sorted(self.hub.homes.get(channel.incident_id or "", ()))
        if attachment_id is not None:
            row = await store.attachment(self.pool, attachment_id)
            if row is None or row["channel_id"] != channel.id or row["uploader"] != member.key:
                raise validation([FieldError("attachment", "no attachment of yours to this channel has this id")])
            data["attachment"] = {"id": row["id"], "name": row["name"], "content_type": row["content_type"],
                                  "size": row["size"]}
        written = await self.writer.write(Outgoing(
            channel.id, member.key, data["client_id"], fingerprint(channel.id, text, priority, attachment_id),
            priority, attachment_id, NewEvent(store.SENT, channel.subject, data, actor=who.actor(), visibility=())))
        if not written.duplicate:
            self.feed.poke()
            if self._sent is not None:
                self._sent.inc()
        return {"message": store.message_view(written.seq, written.at, who.actor(), data),
                "duplicate": written.duplicate}

    # -- reading --------------------------------------------------------------------------------------
    async def history(self, who: Principal, channel_id: str, before: int | None, limit: int) -> dict[str, Any]:
        channel, member = await self.channel_for(who, channel_id)
        async with self.pool.acquire() as conn:
            messages = await store.history(conn, channel.id, before, limit)
            mine = [m["seq"] for m in messages if m["sender"]["member"] == member.key]
            counts = await store.receipt_counts(conn, mine) if mine else {}
            urgent = [m["seq"] for m in messages if m.get("ack_required") and m["seq"] not in mine]
            own = await store.own_receipts(conn, member.key, urgent) if urgent else {}
        for m in messages:
            if m["seq"] in counts or m["sender"]["member"] == member.key:
                m["receipts"] = counts.get(m["seq"], {"delivered": 0, "read": 0, "acked": 0})
            elif m.get("ack_required"):
                acked = own.get(m["seq"])
                m["acked_at"] = format_at(acked["acked_at"]) if acked and acked["acked_at"] else None
        return {"channel": channel.id, "messages": messages,
                "next_before": messages[0]["seq"] if len(messages) == limit and messages else None}

    async def receipts_of(self, who: Principal, channel_id: str, seq: int) -> dict[str, Any]:
        """Who received, read and acknowledged a message: for its sender, and supervisors."""
        channel, member = await self.channel_for(who, channel_id)
        row = await store.message_row(self.pool, seq)
        if row is None or row["channel_id"] != channel.id:
            raise not_found(f"message {seq} in {channel.id}")
        if row["sender"] != member.key and not member.supervises:
            raise forbidden("receipts are shown to the sender of the message and to supervisors")
        return {"channel": channel.id, "seq": seq, "receipts": await store.receipts_of(self.pool, seq)}

    async def channels_of(self, conn: asyncpg.Connection | asyncpg.Pool, who: Principal, member: Member
                          ) -> list[Channel]:
        """Every channel the member belongs to now (incident channels: open incidents, and those that
        ended less than ``message_recent_incident_s`` ago)."""
        out: list[Channel] = []
        agencies = self.live.state.agencies
        for agency_id in (sorted(agencies) if member.unrestricted else [member.agency] if member.agency else []):
            if agency_id in agencies:
                name = agencies[agency_id].name
                out += [agency_channel(ChannelKind.AGENCY, agency_id, name),
                        agency_channel(ChannelKind.BROADCAST, agency_id, name)]
        if member.role is Role.UNIT and member.unit:
            incident_ids = await store.incidents_of_unit(conn, member.unit)
        elif member.unrestricted or member.agency:
            incident_ids = await store.incidents_of_agency(conn, None if member.unrestricted else member.agency,
                                                          self.settings.message_recent_incident_s)
        else:
            incident_ids = []
        if incident_ids:
            homes = await store.home_agencies(conn, incident_ids)
            active = await store.active_assignments(conn, incident_ids)
            self.hub.remember_homes(homes)
            out += [incident_channel(i, homes[i], active.get(i, [])) for i in incident_ids if i in homes]
        out += await store.talkgroups_and_directs_of(conn, member.key, member.agency, member.unit,
                                                     everything=member.unrestricted)
        return [c for c in out if can_read(c, member)]

    async def list_channels(self, who: Principal) -> list[dict[str, Any]]:
        member = self.member(who)
        async with self.pool.acquire() as conn:
            channels = await self.channels_of(conn, who, member)
            ids = [c.id for c in channels]
            last = await store.last_messages(conn, ids)
            cursors = await store.cursors(conn, member.key, ids)
        out = []
        for c in channels:
            view = c.to_json()
            seq_at = last.get(c.id)
            delivered, read = cursors.get(c.id, (0, 0))
            view.update(writable=can_write(c, member), last_seq=seq_at[0] if seq_at else None,
                        last_at=format_at(seq_at[1]) if seq_at else None, delivered=delivered, read=read)
            out.append(view)
        return out

    async def channel_view(self, who: Principal, channel_id: str) -> dict[str, Any]:
        channel, member = await self.channel_for(who, channel_id)
        view = channel.to_json()
        cursors = await store.cursors(self.pool, member.key, [channel.id])
        delivered, read = cursors.get(channel.id, (0, 0))
        view.update(writable=can_write(channel, member), manageable=can_manage(channel, member),
                    delivered=delivered, read=read)
        return view

    # -- delivery to a connection ---------------------------------------------------------------------
    def subscriber(self, who: Principal, *, send: Callable[[str], None],
                   wait_room: Callable[[int], Awaitable[None]], abort: Callable[[int, str], None],
                   closed: Callable[[], bool]) -> Subscriber | None:
        member = self.hub.member(who)
        if not member.messaging:
            return None
        return Subscriber(who, member, send, wait_room, abort, closed)

    async def catch_up(self, sub: Subscriber) -> None:
        """Send a connection what its member has not confirmed (oldest first, per channel from its
        delivery cursor; a channel new to it: its newest ``message_backlog`` messages), repeat the
        emergency messages it has not acknowledged, then let live messages through."""
        settings, key = self.settings, sub.member.key
        try:
            async with self.pool.acquire() as conn:
                channels = await self.channels_of(conn, sub.who, sub.member)
                ids = [c.id for c in channels]
                # Confirmed here a moment ago and not written yet — looked at before the read as
                # well as after it: a flush that commits while the cursors are being read has left
                # the unwritten set by the time the read returns, and is not in what it saw.
                unwritten = {c: self.receipts.unwritten(key, c) for c in ids}
                after = await store.starts(conn, key, ids, settings.message_backlog)
                for channel_id in after:
                    after[channel_id] = max(after[channel_id], unwritten.get(channel_id, 0),
                                            self.receipts.unwritten(key, channel_id))
                repeats = await store.unacknowledged(conn, key, ids, settings.message_emergency_repeat_s,
                                                     MAX_REPEATS)
                again = [s for s, c in repeats if s <= after.get(c, 0)]
                for view in await store.messages_by_seq(conn, again) if again else []:
                    sub.send(dumps(message_frame(view, repeat=True)))
            while not sub.closed():
                page = await store.pending_after(self.pool, after, CATCH_UP_PAGE)
                for view in await store.messages_by_seq(self.pool, [s for s, _ in page]) if page else []:
                    sub.put(view["channel"], view["seq"], dumps(message_frame(view)))
                    after[view["channel"]] = view["seq"]
                if len(page) < CATCH_UP_PAGE:
                    break
                await sub.wait_room(CATCH_UP_PAGE)  # let the socket drain first
        except Exception:
            log.exception("catching a connection up on its messages failed")
            sub.abort_failed()
            return
        sub.go_live()

    def confirm(self, sub: Subscriber, receipts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """A client's delivered/read cursors (from the gateway; no database on this path). Cursors of
        a channel the member belongs to are noted; of one it has left (or this node does not know),
        only as far as this connection was sent messages in it; the rest are ignored."""
        confirmed, ignored = 0, []
        head = self.feed.head
        for entry in receipts:
            channel_id = entry["channel"]
            # Nothing beyond what this node has handed out can have been received: what its feed
            # has delivered, or what this connection's catch-up sent (read from the database, it
            # can be ahead of the feed for a moment).
            limit = max(head, sub.seen.get(channel_id, 0))
            delivered, read = min(entry.get("delivered", 0), limit), min(entry.get("read", 0), limit)
            channel = self.hub.channel_now(channel_id)
            if channel is None or not can_read(channel, sub.member):
                seen = sub.seen.get(channel_id)
                if seen is None:
                    ignored.append(channel_id)
                    continue
                delivered, read = min(delivered, seen), min(read, seen)
            self.receipts.confirm(sub.member.key, channel_id, delivered, read)
            confirmed += 1
        return {"confirmed": confirmed, "ignored": ignored}

    async def confirm_checked(self, who: Principal, channel_id: str, delivered: int, read: int) -> dict[str, Any]:
        """The same over REST, checked against the database."""
        channel, member = await self.channel_for(who, channel_id)
        head = self.feed.head
        self.receipts.confirm(member.key, channel.id, min(delivered, head), min(read, head))
        return {"confirmed": 1}

    async def acknowledge(self, who: Principal, channel_id: str, seq: int) -> dict[str, Any]:
        """Acknowledge a message (what an emergency message asks of every member)."""
        channel, member = await self.channel_for(who, channel_id)
        row = await store.message_row(self.pool, seq)
        if row is None or row["channel_id"] != channel.id:
            raise not_found(f"message {seq} in {channel.id}")

        async def work(conn: asyncpg.Connection) -> Staged[dict[str, Any]]:
            acked_at, fresh = await store.acknowledge(conn, seq, member.key)
            events = [NewEvent(store.ACKNOWLEDGED, channel.subject, {
                "channel": channel.id, "seq": seq, "member": member.key, "sender": row["sender"],
                "priority": row["priority"]}, actor=who.actor(), visibility=())] if fresh else []
            return Staged({"channel": channel.id, "seq": seq, "acked_at": format_at(acked_at),
                           "duplicate": not fresh}, events)

        result, recorded = await self.committer.submit(work)
        if recorded:
            self.feed.poke()
        return result

    # -- channels that are defined --------------------------------------------------------------------
    async def create_channel(self, who: Principal, body: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
        kind = body.get("kind")
        if kind == ChannelKind.DIRECT.value:
            return await self._open_direct(who, body.get("with"))
        if kind == ChannelKind.TALKGROUP.value:
            return await self._save_talkgroup(who, None, body), True
        raise validation([FieldError("kind", "talkgroup or direct (incident, agency and broadcast channels "
                                             "exist by themselves)")])

    async def update_channel(self, who: Principal, channel_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
        channel, member = await self.channel_for(who, channel_id)
        if not can_manage(channel, member):
            raise forbidden("talkgroups are changed by their agency's supervisors")
        return await self._save_talkgroup(who, channel, body)

    async def _save_talkgroup(self, who: Principal, existing: Channel | None, body: Mapping[str, Any]
                              ) -> dict[str, Any]:
        member = self.member(who)
        if not member.supervises:
            raise forbidden("talkgroups are created by supervisors and administrators")
        allowed = {"kind", "id", "name", "title", "agencies", "units", "agency_id"}
        unknown = sorted(set(body) - allowed)
        errors = [FieldError(n, "unknown field") for n in unknown]
        owner = existing.agency_id if existing else (body.get("agency_id") if member.unrestricted else member.agency)
        if not isinstance(owner, str) or owner not in self.live.state.agencies:
            errors.append(FieldError("agency_id", "the owning agency: an existing agency id"))
        title = body.get("title", existing.name if existing else body.get("name"))
        if not isinstance(title, str) or not title.strip() or len(title) > 200 or _UNSAFE.search(title):
            errors.append(FieldError("title", "a non-blank string of at most 200 characters"))
        agencies = body.get("agencies", sorted(existing.agencies) if existing else [owner])
        units = body.get("units", sorted(existing.units) if existing else [])
        if not _ids(agencies, MAX_TALKGROUP_AGENCIES):
            errors.append(FieldError("agencies", f"a list of at most {MAX_TALKGROUP_AGENCIES} agency ids"))
        if not _ids(units, MAX_TALKGROUP_UNITS):
            errors.append(FieldError("units", f"a list of at most {MAX_TALKGROUP_UNITS} unit ids"))
        if errors:
            raise validation(errors)
        assert isinstance(owner, str)
        if existing is None:
            try:
                name = body.get("name")
                channel_id = talkgroup_id(owner, name if isinstance(name, str) else "")
            except ChannelIdError as exc:
                raise validation([FieldError("name", str(exc))]) from None
        else:
            channel_id = existing.id
        reach = {owner} | partners_lending_to(self.live.state.agencies, owner) | {
            a.id for a in self.live.state.agencies.values() if owner in partners_lending_to(self.live.state.agencies,
                                                                                          a.id)}
        state = self.live.state
        for i, agency_id in enumerate(agencies):
            if agency_id not in state.agencies or (not member.unrestricted and agency_id not in reach):
                errors.append(FieldError(f"agencies/{i}", f"{agency_id} is not this agency or one of its partners"))
        for i, unit_id in enumerate(units):
            unit = state.units.get(unit_id)
            if unit is None or (not member.unrestricted and unit.agency_id not in reach):
                errors.append(FieldError(f"units/{i}", f"{unit_id} is not a unit of this agency or its partners"))
        if errors:
            raise validation(errors)
        channel = Channel(channel_id, ChannelKind.TALKGROUP, title.strip(), agency_id=owner,
                          agencies=frozenset(agencies), units=frozenset(units))
        await self._save(who, channel, must_be_new=existing is None,
                         visibility=tuple(sorted({owner, *channel.agencies})))
        return channel.to_json()

    async def _open_direct(self, who: Principal, peer_key: Any) -> tuple[dict[str, Any], bool]:
        member = self.member(who)
        if not isinstance(peer_key, str) or not valid_member_key(peer_key):
            raise validation([FieldError("with", "the other member: unit:<unit id>, user:<id> or token:<id>")])
        if peer_key == member.key:
            raise validation([FieldError("with", "a direct channel joins two different members")])
        peer = await self.peer(peer_key)
        if peer is None or not self.may_talk(member, peer):
            raise not_found(f"member {peer_key}")
        channel_id = direct_id(member.key, peer.key)
        existing = await store.defined_channel(self.pool, channel_id)
        if existing is not None:
            return existing.to_json(), False
        names = {member.key: who.name, peer.key: peer.name}
        keys = tuple(sorted((member.key, peer.key)))
        channel = Channel(channel_id, ChannelKind.DIRECT, " ↔ ".join(names[k] for k in keys), members=keys)
        created = await self._save(who, channel, must_be_new=False, visibility=())
        return channel.to_json(), created

    async def peer(self, key: str) -> Peer | None:
        """The member a key names (``unit:``, ``user:``, ``token:``), if it exists and takes part in
        messaging; None otherwise."""
        if not valid_member_key(key):
            return None
        kind, _, ident = key.partition(":")
        if kind == "unit":
            unit = self.live.state.units.get(ident)
            return Peer(key, unit.call_sign or unit.id, Role.UNIT, unit.agency_id, False) if unit else None
        if kind == "user":
            if not ident.isdigit() or len(ident) > 18:
                return None
            row = await self.pool.fetchrow("SELECT username, role, agency_id FROM users WHERE id = $1 AND NOT disabled",
                                           int(ident))
            name = row["username"] if row else ""
        else:
            if not ident.isdigit() or len(ident) > 18:
                return None
            row = await self.pool.fetchrow(
                "SELECT name, role, agency_id FROM api_tokens WHERE id = $1 AND revoked_at IS NULL"
                " AND (expires_at IS NULL OR expires_at > now()) AND role <> 'unit'", int(ident))
            name = (row["name"] or f"token {ident}") if row else ""
        if row is None:
            return None
        role = Role(row["role"])
        if role in (Role.AGENCY, Role.SENSOR, Role.UNIT):
            return None
        agency = row["agency_id"]
        return Peer(key, name, role, agency, role is Role.ADMIN or (agency is None and role is Role.SUPERVISOR))

    _peer = peer  # the names media (issue 11) first used

    def may_talk(self, member: Member, peer: Peer) -> bool:
        """Agency isolation: the same agency, agencies in a mutual-aid relation, or an administrator."""
        if member.unrestricted or peer.unrestricted:
            return True
        if member.agency is None or peer.agency is None:
            return False
        agencies = self.live.state.agencies
        return (member.agency == peer.agency or peer.agency in partners_lending_to(agencies, member.agency)
                or member.agency in partners_lending_to(agencies, peer.agency))

    _may_talk = may_talk

    async def _save(self, who: Principal, channel: Channel, *, must_be_new: bool, visibility: tuple[str, ...]
                    ) -> bool:
        async def work(conn: asyncpg.Connection) -> Staged[bool]:
            if must_be_new and await store.defined_channel(conn, channel.id) is not None:
                raise Problem(409, "conflict", f"{channel.id} exists already")
            created = await store.save_channel(conn, channel, who.actor())
            return Staged(created, [NewEvent(store.CHANNEL_SAVED, f"channel/{channel.id}",
                                             {"channel": store.channel_doc(channel), "created": created},
                                             actor=who.actor(), visibility=visibility)])

        created, recorded = await self.committer.submit(work)
        self.hub.define(channel)  # this node at once; the others from the log
        if recorded:
            self.feed.poke()
        return created

    # -- attachments ----------------------------------------------------------------------------------
    async def upload(self, channel: Channel, member: Member, content: bytes, declared: str | None,
                     name: str) -> dict[str, Any]:
        """Keep a file uploaded to ``channel`` (whose membership the caller checked)."""
        try:
            content_type = attachments.check_type(content, declared, self.allowed_types)
        except attachments.AttachmentRefused as exc:
            raise Problem(415, "unsupported_media_type", str(exc)) from None
        attachment_id = attachments.new_id()
        async with self._uploads:
            digest = await asyncio.to_thread(attachments.store_file, self.files, attachment_id, content)
        await store.insert_attachment(self.pool, attachment_id=attachment_id, channel_id=channel.id,
                                      uploader=member.key, name=name, content_type=content_type, size=len(content),
                                      sha256=digest)
        return {"id": attachment_id, "channel": channel.id, "name": name, "content_type": content_type,
                "size": len(content), "sha256": digest.hex()}

    async def attachment_file(self, who: Principal, attachment_id: str) -> tuple[asyncpg.Record, Path]:
        """An attachment's row and file, for a current member of the channel it was uploaded to."""
        member = self.member(who)
        try:
            path = attachments.path_of(self.files, attachment_id)
        except ValueError:
            raise not_found(f"attachment {attachment_id[:80]!r}") from None
        row = await store.attachment(self.pool, attachment_id)
        if row is None:
            raise not_found(f"attachment {attachment_id}")
        channel, known = await self.load(self.pool, row["channel_id"])
        try:
            self.require(channel, known, who, member)
        except Problem:
            raise not_found(f"attachment {attachment_id}") from None
        return row, path

    async def remove_orphans(self) -> int:
        removed = 0
        for attachment_id in await store.orphan_attachments(self.pool, ORPHAN_AFTER_S):
            await asyncio.to_thread(attachments.remove_file, self.files, attachment_id)
            await self.pool.execute("DELETE FROM attachments WHERE id = $1", attachment_id)
            removed += 1
        return removed


def _ids(value: Any, most: int) -> bool:
    return isinstance(value, list) and len(value) <= most and all(
        isinstance(v, str) and 0 < len(v) <= 128 and not _UNSAFE.search(v) for v in value) and len(set(value)) == len(
        value)


async def messaging_context(app: web.Application) -> AsyncIterator[None]:
    """The node's messaging: the hub on the event feed, the message writer, receipts, orphan clean-up."""
    settings = app[appkeys.SETTINGS]
    pool, feed, live = app[appkeys.POOL], app[appkeys.FEED], app[appkeys.LIVE]
    registry = app[appkeys.METRICS].registry
    hub = MessageHub(live, deliveries=Counter("icp_message_deliveries", "Messages handed to connections",
                                              registry=registry))
    unsubscribe = feed.subscribe(hub.on_events)  # after the live picture's: membership follows the same batch
    hub.defined = {c.id: c for c in await store.all_defined(pool)}
    if live.state.incidents:
        hub.remember_homes(await store.home_agencies(pool, sorted(live.state.incidents)))
    writer = MessageWriter(pool, max_batch=settings.message_writer_max_batch,
                           max_queue=settings.message_writer_max_queue)
    writer.start()
    receipts = ReceiptBook(pool, app[appkeys.DB_URL], hub.receipt_for, wanted=hub.by_member.__contains__,
                           flush_s=settings.message_receipt_flush_s)
    await receipts.start()
    hub.start()
    app[MESSAGING] = service = MessagingService(
        pool=pool, committer=app[appkeys.COMMITTER], feed=feed, live=live, settings=settings, writer=writer,
        hub=hub, receipts=receipts, sent=Counter("icp_messages_sent", "Messages written", registry=registry))
    janitor = asyncio.create_task(_janitor(service), name="icp-attachments-janitor")
    try:
        yield
    finally:
        janitor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await janitor
        await hub.stop()
        await receipts.stop()
        await writer.stop()
        unsubscribe()


async def _janitor(service: MessagingService) -> None:
    while True:
        await asyncio.sleep(3600)
        try:
            removed = await service.remove_orphans()
            if removed:
                log.info("removed %d attachments that were never sent", removed)
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("attachment clean-up failed: %s", exc)
