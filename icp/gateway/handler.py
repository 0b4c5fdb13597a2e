"""The WebSocket endpoint (`/ws`): authenticate with `hello`, replay from a seq, then go live.

Replay and live delivery meet without a gap or a duplicate: the connection subscribes to the
node's event feed *before* reading the log, buffers what arrives meanwhile, and drops anything at
or below the last seq it has sent. Each connection has a bounded queue; a client that falls too
far behind is closed with a resumable code rather than growing memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from typing import Any

from aiohttp import WSMsgType, web

from icp import appkeys
from icp.auth import credentials
from icp.auth.principal import Principal
from icp.errors import Problem
from icp.store import eventlog
from icp.store.eventlog import RecordedEvent

HELLO_TIMEOUT_S = 5.0
MAX_FRAME_BYTES = 64 * 1024
SEND_QUEUE = 2000
CLOSE_UNAUTHORIZED = 4401
CLOSE_TOO_SLOW = 4008  # resumable: reconnect with resume_from = last seq received
PING_INTERVAL_S = 20.0


def _visible(event: RecordedEvent, agencies: list[str] | None) -> bool:
    if agencies is None:
        return True
    return any(v == eventlog.PUBLIC or v in agencies for v in event.visibility)


async def websocket(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(heartbeat=PING_INTERVAL_S, max_msg_size=MAX_FRAME_BYTES)
    await ws.prepare(request)
    app = request.app
    app[appkeys.WEBSOCKETS].add(ws)
    try:
        who, resume_from = await _hello(app, ws)
        if who is not None:
            await _serve(app, ws, who, resume_from)
    finally:
        app[appkeys.WEBSOCKETS].discard(ws)
    return ws


async def _hello(app: web.Application, ws: web.WebSocketResponse) -> tuple[Principal | None, int | None]:
    try:
        msg = await ws.receive(timeout=HELLO_TIMEOUT_S)
    except TimeoutError:
        await ws.close(code=CLOSE_UNAUTHORIZED, message=b"hello expected within 5 s")
        return None, None
    try:
        frame = json.loads(msg.data) if msg.type == WSMsgType.TEXT else None
    except json.JSONDecodeError:
        frame = None
    if not isinstance(frame, dict) or frame.get("op") != "hello" or not isinstance(frame.get("token"), str):
        await ws.send_json(Problem(400, "hello_expected", "the first frame must be "
                                   '{"op":"hello","token":…}').ws_frame(None))
        await ws.close(code=CLOSE_UNAUTHORIZED, message=b"hello expected")
        return None, None
    who = await credentials.principal_for_token(app[appkeys.POOL], frame["token"])
    if who is None:
        await ws.send_json(Problem(401, "unauthorized", "the token is unknown, revoked or expired").ws_frame(None))
        await ws.close(code=CLOSE_UNAUTHORIZED, message=b"unauthorized")
        return None, None
    resume = frame.get("resume_from")
    if resume is not None and (not isinstance(resume, int) or isinstance(resume, bool) or resume < 0):
        await ws.send_json(Problem(400, "invalid_request", "resume_from must be a seq (integer ≥ 0)").ws_frame(None))
        await ws.close(code=CLOSE_UNAUTHORIZED, message=b"bad hello")
        return None, None
    return who, resume


async def _serve(app: web.Application, ws: web.WebSocketResponse, who: Principal, resume_from: int | None) -> None:
    feed = app[appkeys.FEED]
    agencies = who.visible_agencies()
    queue: asyncio.Queue[RecordedEvent] = asyncio.Queue(SEND_QUEUE)
    overflow = asyncio.Event()

    def on_batch(batch: list[RecordedEvent]) -> None:
        for event in batch:
            if not _visible(event, agencies):
                continue
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                overflow.set()
                return

    unsubscribe = feed.subscribe(on_batch)
    sender: asyncio.Task[None] | None = None
    try:
        head = feed.head
        await ws.send_json({"op": "welcome", "session": secrets.token_hex(8), "seq": head})
        last = head
        if resume_from is not None:
            last = await _replay(app, ws, agencies, after=resume_from, upto=head)
        sender = asyncio.create_task(_send_live(ws, queue, overflow, last))
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await _client_frame(ws, msg.data)
            elif msg.type == WSMsgType.ERROR:
                break
    finally:
        unsubscribe()
        if sender is not None:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender


async def _replay(app: web.Application, ws: web.WebSocketResponse, agencies: list[str] | None,
                  *, after: int, upto: int, page: int = 500) -> int:
    """Send the visible events in (after, upto] from the log; return the last seq covered."""
    pool = app[appkeys.POOL]
    last = after
    while last < upto:
        rows = await eventlog.read_after(pool, last, page, agencies)
        wanted = [e for e in rows if e.seq <= upto]
        for event in wanted:
            await ws.send_json({"op": "event", **event.to_wire()})
            last = event.seq
        if len(wanted) < len(rows) or len(rows) < page:
            break
    return max(last, upto)


async def _send_live(ws: web.WebSocketResponse, queue: asyncio.Queue[RecordedEvent],
                     overflow: asyncio.Event, last: int) -> None:
    while not ws.closed:
        if overflow.is_set():
            await ws.close(code=CLOSE_TOO_SLOW, message=b"too slow; resume from your last seq")
            return
        get = asyncio.ensure_future(queue.get())
        over = asyncio.ensure_future(overflow.wait())
        done, _ = await asyncio.wait({get, over}, return_when=asyncio.FIRST_COMPLETED)
        over.cancel()
        if get not in done:
            get.cancel()
            continue
        event = get.result()
        if event.seq <= last:
            continue  # already replayed
        await ws.send_json({"op": "event", **event.to_wire()})
        last = event.seq


async def _client_frame(ws: web.WebSocketResponse, data: str) -> None:
    try:
        frame: Any = json.loads(data)
    except json.JSONDecodeError:
        await ws.send_json(Problem(400, "invalid_json", "the frame is not JSON").ws_frame(None))
        return
    if not isinstance(frame, dict):
        await ws.send_json(Problem(400, "invalid_request", "a frame must be a JSON object").ws_frame(None))
        return
    op, ref = frame.get("op"), frame.get("id")
    if op == "pong":
        return
    if op == "ping":
        await ws.send_json({"op": "pong", "ref": ref})
        return
    await ws.send_json(Problem(400, "unknown_op", f"unknown operation {str(op)[:40]!r}").ws_frame(ref))


def setup(app: web.Application) -> None:
    app.router.add_get("/ws", websocket)
