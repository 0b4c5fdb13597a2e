"""The `/ws` endpoint: the protocol object (`protocol.Session`) wired to sockets, the log and the services.

The session decides what every frame means; this module only carries its actions out:
- every frame to the client goes through one bounded queue; a client that falls behind by more
  than ``SEND_QUEUE`` frames is closed with 4008 (resumable) instead of growing memory, and fan-out
  never waits on a client (it only enqueues);
- after authentication the connection subscribes to the node's event feed *before* reading the
  log, replays what the client missed from ``resume_from`` (or says ``resync`` when that is older
  than ``max_replay_events``), then goes live, dropping anything at or below the last seq sent;
- visibility: administrators see everything, agency principals their agencies' events, a field
  unit its own unit and the incidents it is or was assigned to;
- one feed subscription per node (`EventFanout`) hands each batch to the connections, without the
  messages: those go only to the members of their channel (`icp.messaging.hub`), which then catches
  the connection up on what its member missed;
- operations run in their own tasks (a slow one does not block the socket) through `ops.execute`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from aiohttp import WSMsgType, web

from icp import appkeys, jsontext
from icp.auth import credentials
from icp.auth.guard import principal_for_bearer
from icp.auth.principal import Principal, Role
from icp.dispatch_service import may_dispatch
from icp.errors import FieldError, Problem, to_problem
from icp.gateway import ops, protocol
from icp.media import MEDIA
from icp.messaging import MESSAGING
from icp.messaging.hub import MESSAGE_PREFIX, Subscriber
from icp.store import eventlog
from icp.store.eventlog import RecordedEvent
from icp.tasks import cancel_all

SEND_QUEUE = 2000
DIRECT_WRITE_BUFFER = 64 * 1024  # above this many unsent bytes, frames queue (and wait for the socket)
ENCODED_CACHE = 4096  # recent event frames, encoded once for every connection that sends them
# Per app: a seq names one event only within one log.
EVENT_TEXT = web.AppKey("event_text", dict)


def event_text(cache: dict[int, str], event: RecordedEvent) -> str:
    """An event's frame as JSON text, encoded once however many connections send it."""
    text = cache.get(event.seq)
    if text is None:
        if len(cache) >= ENCODED_CACHE:
            for seq in list(cache)[: ENCODED_CACHE // 2]:  # drop the older half (insertion order)
                del cache[seq]
        text = cache[event.seq] = _dumps(protocol.event_frame(event.to_wire()))
    return text


def _dumps(frame: dict[str, Any]) -> str:
    return jsontext.lenient(frame)
class EventFanout:
    """The node's one subscription to the event feed for every connection. Messages are left out:
    the messaging hub delivers them to their channel's members, and a batch with nothing else in
    it costs the connections nothing."""

    def __init__(self) -> None:
        self.connections: set[Connection] = set()
        self._subscribed = False

    def attach(self, app: web.Application, conn: Connection) -> Callable[[], None]:
        if not self._subscribed:  # the feed exists once the app has started
            app[appkeys.FEED].subscribe(self.on_events)
            self._subscribed = True
        self.connections.add(conn)
        return lambda: self.connections.discard(conn)

    def on_events(self, batch: list[RecordedEvent]) -> None:
        general = [e for e in batch if not e.type.startswith(MESSAGE_PREFIX)]
        if not general:
            return
        for conn in list(self.connections):
            try:
                conn._on_events(general)
            except Exception:
                log.exception("delivering events to a connection failed")


FANOUT = web.AppKey("event_fanout", EventFanout)


class Ticker:
    """The node's one clock for every connection's session (hello deadline, heartbeats): one task
    walks the connections every ``TICK_S`` instead of a sleeping task and timer per connection,
    which cost a unit's connection more than its position reports. The walk yields every
    ``STEP`` connections, so ten thousand of them do not stall the loop."""

    STEP = 500

    def __init__(self) -> None:
        self.connections: set[Connection] = set()
        self._task: asyncio.Task[None] | None = None

    def attach(self, conn: Connection) -> Callable[[], None]:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="icp-gateway-ticker")
        self.connections.add(conn)
        return lambda: self.connections.discard(conn)

    async def stop(self, _app: web.Application | None = None) -> None:
        await cancel_all([self._task])
        self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            for n, conn in enumerate(list(self.connections)):
                if n and n % self.STEP == 0:
                    await asyncio.sleep(0)
                if not conn.closed:
                    try:
                        conn.perform(conn.session.tick(time.monotonic()))
                    except Exception:
                        log.exception("a connection's tick failed")


TICKER = web.AppKey("gateway_ticker", Ticker)
MAX_REPLAY_EVENTS = 100_000
POSITIONS_EVERY_S = 0.25
TICK_S = 1.0
log = logging.getLogger(__name__)


class Connection:
    def __init__(self, app: web.Application, ws: web.WebSocketResponse, *,
                 session_principal: Principal | None = None) -> None:
        self.app = app
        self.ws = ws
        # The console's session (cookie on the upgrade request, same origin): used by a hello
        # without a token, since the page's script cannot read an HttpOnly cookie.
        self.session_principal = session_principal
        # 256 remembered answers bound a busy unit's session to ~35 KB; repeats beyond that are
        # still answered from the server's idempotency record.
        self.session = protocol.Session(now=time.monotonic(), max_answers=256)
        self.out: asyncio.Queue[dict[str, Any] | str | protocol.Close] = asyncio.Queue(SEND_QUEUE)
        self.who: Principal | None = None
        self.agencies: list[str] | None = None
        self.agency_set: frozenset[str] | None = None
        self.unit_incidents: set[str] = set()
        self.topics: set[str] = {"events"}
        self.last_seq = 0
        self.live_ready = False
        self.held: list[RecordedEvent] = []
        self.positions: dict[str, dict[str, Any]] = {}
        self.positions_on = False
        # Bounded by the session (at most MAX_IN_FLIGHT operations pending per connection).
        self.ops: asyncio.Queue[protocol.Execute] | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.cleanups: list[Callable[[], None]] = []
        self.subscriber: Subscriber | None = None  # message delivery, for principals that take part
        self.media: Any = None  # the connection's media side (icp.media.service.MediaLink), on first use
        self._room: asyncio.Event | None = None  # set by the sender once _room_wanted places are free
        self._room_wanted = 0
        self.closed = False
        self._sending = False  # the sender task is writing a frame (later frames must queue behind it)
        # Set when the socket may be written directly (`_write_now`): not with permessage-deflate.
        self.transport: asyncio.Transport | None = None

    # -- the loops ---------------------------------------------------------------------------------
    async def run(self) -> None:
        sender = asyncio.create_task(self._send_loop())
        self.cleanups.append(self.app[TICKER].attach(self))
        try:
            async for msg in self.ws:
                now = time.monotonic()
                if msg.type == WSMsgType.TEXT:
                    self.perform(self.session.receive_text(msg.data, now))
                elif msg.type == WSMsgType.BINARY:
                    self.perform(self.session.receive_binary(msg.data, now))
                elif msg.type == WSMsgType.PING:  # clients may keep alive with WebSocket pings
                    await self.ws.pong(msg.data)
                    self.session.heard(now)
                elif msg.type == WSMsgType.PONG:
                    self.session.heard(now)
                elif msg.type == WSMsgType.ERROR:
                    break
                if self.closed:
                    break
        finally:
            self.closed = True
            for cleanup in self.cleanups:
                cleanup()
            for task in self.tasks:
                task.cancel()
            with contextlib.suppress(asyncio.QueueFull):
                self.out.put_nowait(protocol.Close(protocol.CLOSE_NORMAL, ""))
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sender, 2)
            sender.cancel()

    async def _send_loop(self) -> None:
        while True:
            item = await self.out.get()
            if self._room_wanted and SEND_QUEUE - self.out.qsize() >= self._room_wanted and self._room is not None:
                self._room_wanted = 0
                self._room.set()
            if isinstance(item, protocol.Close):
                if not self.ws.closed:
                    await self.ws.close(code=item.code, message=item.reason.encode())
                return
            if self.ws.closed:
                return
            self._sending = True
            try:
                await self.ws.send_str(item if isinstance(item, str) else _dumps(item))
            finally:
                self._sending = False

    def _write_now(self, frame: dict[str, Any] | str) -> bool:
        """Write a text frame straight to the socket when nothing is queued before it and the
        socket takes it at once (no compression negotiated, send buffer below its bound): most
        frames — a unit's `ok` for each position — then skip the queue and the sender's task
        switch. Otherwise (False) the frame goes through the queue, which waits for the socket."""
        transport = self.transport
        if (transport is None or self._sending or not self.out.empty() or self.ws.closed
                or transport.is_closing() or transport.get_write_buffer_size() > DIRECT_WRITE_BUFFER):
            return False
        data = (frame if isinstance(frame, str) else _dumps(frame)).encode()
        n = len(data)
        # A server's frame is unmasked: FIN + text opcode, then the length (RFC 6455 §5.2).
        head = (bytes((0x81, n)) if n < 126 else
                bytes((0x81, 126)) + n.to_bytes(2, "big") if n < 65536 else
                bytes((0x81, 127)) + n.to_bytes(8, "big"))
        transport.write(head + data)
        return True

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # -- carrying out the session's actions ----------------------------------------------------------
    def perform(self, actions: list[protocol.Action]) -> None:
        for action in actions:
            if isinstance(action, protocol.Send):
                self.send(action.frame)
            elif isinstance(action, protocol.Close):
                self._close(action)
            elif isinstance(action, protocol.Authenticate):
                self._spawn(self._authenticate(action))
            elif isinstance(action, protocol.Execute) and action.op == "position":
                # Positions are handled synchronously and a fix does not depend on earlier ops:
                # skipping the worker's queue saves a task switch per fix (the busiest op by far).
                self._position(action)
            elif isinstance(action, protocol.Notify):
                self._notify(action)
            elif isinstance(action, protocol.Execute):
                # One worker per connection: a client's operations apply in the order it sent them.
                if self.ops is None:
                    self.ops = asyncio.Queue()
                    self._spawn(self._op_loop())
                self.ops.put_nowait(action)

    def send(self, frame: dict[str, Any] | str) -> None:
        if self.closed or self._write_now(frame):
            return
        try:
            self.out.put_nowait(frame)
        except asyncio.QueueFull:  # a consumer this far behind is cut off; it may resume
            self._close(protocol.Close(protocol.CLOSE_TOO_SLOW, "too slow; resume from your last seq"))

    def _close(self, action: protocol.Close) -> None:
        if self.closed:
            return
        self.closed = True
        try:  # after what is queued (an error frame that explains the close, say)…
            self.out.put_nowait(action)
        except asyncio.QueueFull:  # …unless the client is too far behind: then at once
            while not self.out.empty():
                self.out.get_nowait()
            self.out.put_nowait(action)

    # -- hello ---------------------------------------------------------------------------------------
    async def _authenticate(self, hello: protocol.Authenticate) -> None:
        try:
            await self._hello(hello)
        except Exception:  # the session must not wait forever for a verdict
            log.exception("websocket authentication failed")
            self.perform(self.session.close(1011, "internal error; reconnect"))

    async def _hello(self, hello: protocol.Authenticate) -> None:
        app = self.app
        who = (await principal_for_bearer(app, hello.token) if hello.token is not None
               else self.session_principal)
        if who is None:
            self.perform(self.session.auth_failed(
                "the token is unknown, revoked or expired" if hello.token is not None
                else "no token in the hello, and no console session with the connection"))
            return
        self.who, self.agencies = who, who.visible_agencies()
        self.agency_set = frozenset(self.agencies) if self.agencies is not None else None
        if who.role is Role.UNIT and who.unit:
            rows = await app[appkeys.POOL].fetch("SELECT DISTINCT incident_id FROM assignments WHERE unit_id = $1",
                                                 who.unit)
            self.unit_incidents = {r["incident_id"] for r in rows}
        feed = app[appkeys.FEED]
        self.cleanups.append(app[FANOUT].attach(app, self))
        messaging = app.get(MESSAGING)
        if messaging is not None:
            self.subscriber = messaging.subscriber(
                who, send=self.send, wait_room=self.wait_room, abort=self._abort,
                closed=lambda: self.closed)
            if self.subscriber is not None:  # held back until caught up, below
                self.cleanups.append(messaging.hub.attach(self.subscriber))
        head = feed.head
        self.perform(self.session.authenticated(who.to_json(), secrets.token_hex(8), head))
        self.last_seq = head
        if hello.resume_from is not None and hello.resume_from < head:
            if head - hello.resume_from > MAX_REPLAY_EVENTS:
                self.send(protocol.resync_frame("the gap since resume_from is too old to replay", head))
            else:
                await self._replay(hello.resume_from, head)
        self.live_ready = True
        held, self.held = self.held, []
        self._deliver(held)
        if messaging is not None and self.subscriber is not None:
            await messaging.catch_up(self.subscriber)

    async def wait_room(self, frames: int) -> None:
        """Until the send queue has room for ``frames`` more (or the connection is closing)."""
        while SEND_QUEUE - self.out.qsize() < frames and not self.closed:
            room = self._room = self._room or asyncio.Event()  # made on first use: most never wait
            self._room_wanted = frames
            room.clear()
            with contextlib.suppress(TimeoutError):  # the sender may have stopped: look again
                await asyncio.wait_for(room.wait(), 1.0)

    def _abort(self, code: int, reason: str) -> None:
        self.perform(self.session.close(code, reason))

    async def _replay(self, after: int, upto: int, page: int = 500) -> None:
        pool = self.app[appkeys.POOL]
        last = after
        while last < upto and not self.closed:
            rows = await eventlog.read_after(pool, last, page, self.agencies)
            for event in rows:
                if event.seq > upto:
                    break
                if self._visible(event):
                    self.send(event_text(self.app[EVENT_TEXT], event))
                last = event.seq
            if len(rows) < page or (rows and rows[-1].seq >= upto):
                break
        self.last_seq = max(self.last_seq, upto)

    # -- events and positions --------------------------------------------------------------------------
    def _on_events(self, batch: list[RecordedEvent]) -> None:
        if not self.live_ready:
            self.held.extend(batch)  # delivered after the replay, in order
            return
        self._deliver(batch)

    def _deliver(self, batch: list[RecordedEvent]) -> None:
        for event in batch:
            if event.seq <= self.last_seq:
                continue
            self.last_seq = event.seq
            if self._visible(event) and self._subscribed(event):
                self.send(event_text(self.app[EVENT_TEXT], event))

    def _visible(self, event: RecordedEvent) -> bool:
        who = self.who
        if who is None:
            return False
        if event.type.startswith(MESSAGE_PREFIX):  # messages go to their channel's members only
            return False
        allowed = self.agency_set
        if allowed is not None and eventlog.PUBLIC not in event.visibility and allowed.isdisjoint(event.visibility):
            return False
        if who.role is not Role.UNIT:
            return True
        # A field unit: its own unit, and the incidents it is (or was) assigned to.
        if event.subject == f"unit/{who.unit}":
            return True
        incident_id = event.data.get("incident_id") if isinstance(event.data, dict) else None
        if event.data.get("unit_id") == who.unit and incident_id:
            self.unit_incidents.add(incident_id)
        return incident_id in self.unit_incidents

    def _subscribed(self, event: RecordedEvent) -> bool:
        if "events" in self.topics:
            return True
        incident_id = event.data.get("incident_id") if isinstance(event.data, dict) else None
        return incident_id is not None and f"incident:{incident_id}" in self.topics

    def _on_positions(self, batch: list[dict[str, Any]]) -> None:
        live = self.app[appkeys.LIVE]
        who = self.who
        for fix in batch:
            unit = live.state.units.get(fix["unit"])
            if who is not None and unit is not None and may_dispatch(who, unit, live.state.agencies):
                self.positions[fix["unit"]] = fix  # the latest per unit; sent every 250 ms

    async def _positions_loop(self) -> None:
        while not self.closed:
            await asyncio.sleep(POSITIONS_EVERY_S)
            if self.positions:
                batch, self.positions = list(self.positions.values()), {}
                self.send(protocol.positions_frame(batch))

    # -- operations -------------------------------------------------------------------------------------
    async def _op_loop(self) -> None:
        assert self.ops is not None
        while True:
            await self._execute(await self.ops.get())

    def _notify(self, action: protocol.Notify) -> None:
        """A notification (receipts): carried out at once, from memory; nothing is answered but a
        refusal, as an error frame without a ref."""
        try:
            ops.notify(self.app, self.subscriber, action.op, action.args)
        except Exception as exc:
            problem = to_problem(exc)
            self.send(protocol.error_frame(problem.code, problem.detail))

    def _position(self, action: protocol.Execute) -> None:
        who = self.who
        assert who is not None
        try:
            ops.check_audience(who, action.op, protocol.OPS[action.op].audience.value)
            result = ops.position(self.app, who, action.args)
        except Exception as exc:
            self._op_failed(action, exc)
            return
        self.perform(self.session.op_ok(action.id, result))

    async def _execute(self, action: protocol.Execute) -> None:
        who = self.who
        assert who is not None
        op_id = str(action.id)
        try:
            audience = protocol.OPS[action.op].audience.value
            ops.check_audience(who, action.op, audience)
            if action.op in ("subscribe", "unsubscribe"):
                result = self._topics(action.op, action.args["topics"])
            elif action.op.startswith(("rtc.", "ptt.")):
                result = await self._media(action.op, action.args)
            else:
                result = await ops.execute(self.app, who, action.op, op_id, action.args)
        except Exception as exc:
            self._op_failed(action, exc)
            return
        self.perform(self.session.op_ok(action.id, result))

    async def _media(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        """Signaling for calls, conferences and push-to-talk (`icp.media`); leaving closes the rooms."""
        service = self.app.get(MEDIA)
        if service is None:
            raise Problem(501, "unsupported", "media is switched off on this server")
        if self.media is None:
            assert self.who is not None
            link = self.media = service.link(self.who, self.send)
            self.cleanups.append(lambda: service.unlink(link))
        result: dict[str, Any] = await service.execute(self.media, op, args)
        return result

    def _op_failed(self, action: protocol.Execute, exc: Exception) -> None:
        problem = to_problem(exc)
        # The protocol's own vocabulary on the wire: field paths as pointers, one validation code.
        code = "invalid_request" if problem.code in ("validation_failed", "invalid_event") else problem.code
        errors = tuple(FieldError(e.field if e.field.startswith("/") else "/" + e.field.replace(".", "/"),
                                  e.message) for e in problem.errors)
        self.perform(self.session.op_error(action.id, code, problem.detail, errors))

    def _topics(self, op: str, topics: list[str]) -> dict[str, Any]:
        if op == "subscribe":
            self.topics |= set(topics)
            if "positions" in topics and not self.positions_on:
                self.positions_on = True
                self.cleanups.append(self.app[appkeys.POSITIONS].subscribe(self._on_positions))
                self._spawn(self._positions_loop())
        else:
            self.topics -= set(topics)
        return {"topics": sorted(self.topics)}


async def websocket(request: web.Request) -> web.WebSocketResponse:
    # Heartbeats are the protocol's (ping/pong frames); aiohttp's own stay off so there is one clock.
    ws = web.WebSocketResponse(max_msg_size=protocol.MAX_FRAME_BYTES + 1024, heartbeat=None, autoping=False)
    session = await console_session(request)
    await ws.prepare(request)
    registry = request.app[appkeys.WEBSOCKETS]
    registry.add(ws)
    try:
        conn = Connection(request.app, ws, session_principal=session)
        if not ws.compress and isinstance(request.transport, asyncio.Transport):
            conn.transport = request.transport
        await conn.run()
    except Exception:
        log.exception("websocket connection failed")
    finally:
        registry.discard(ws)
    return ws


async def console_session(request: web.Request) -> Principal | None:
    """The principal of the session cookie sent with the upgrade, if any — only when the page that
    opens the socket is this server's own: browsers send cookies with cross-site WebSocket
    upgrades (SameSite does not cover every case), and a WebSocket is not bound by CORS, so the
    Origin header is the check (cross-site WebSocket hijacking)."""
    cookie = request.cookies.get(credentials.SESSION_COOKIE)
    origin = request.headers.get("Origin")
    if not cookie or not origin or urlsplit(origin).netloc != request.host:
        return None
    return await credentials.principal_for_session(request.app[appkeys.POOL], cookie)


def setup(app: web.Application) -> None:
    app[EVENT_TEXT] = {}
    app[FANOUT] = EventFanout()
    app[TICKER] = ticker = Ticker()
    app.on_cleanup.append(ticker.stop)
    app.router.add_get("/ws", websocket)
