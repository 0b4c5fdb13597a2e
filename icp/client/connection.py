"""A resumable WebSocket link to ICP: events after the last seq, at-most-once operations, an offline queue.

One background task owns the socket. It connects, says ``hello`` with ``resume_from`` = the last seq
it delivered, re-sends every unanswered operation with its original id (the server answers a repeat
and never applies it twice), then reads frames until the link drops, and starts over after a capped,
jittered backoff. Only an authentication failure (close code 4401, HTTP 401/403) ends it for good.

Every buffer is bounded. Events wait for the consumer in a buffer of ``max_events``; when it is full
the reader keeps reading (so answers and pings still flow) but drops further events without moving
``last_seq``, and once the consumer has drained half of it the client relinks and resumes from
there, so a slow consumer costs a replay, never an event.

Messages (``message`` frames) work the same way in their own buffer, with one difference: the
server resumes them from what this client *confirmed*. Each message `messages` hands out is
confirmed as delivered (per channel, cumulatively) by a ``message.receipt`` notification sent every
``receipt_interval`` (and all cursors again at the start of every link, since a notification gets
no answer); `mark_read` confirms reading. A message the client dropped or never handed out is not
confirmed, so the server sends it again on the next link.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import uuid
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, Self, TypeVar
from urllib.parse import urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.protocol import State

from icp.client.errors import ClientClosed, ClientError, OpError, OpTimeout, QueueFull, Unauthorized

log = logging.getLogger("icp.client")

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_TOO_SLOW = 4008
CLOSE_BAD_HELLO = 4400
CLOSE_UNAUTHORIZED = 4401
CLOSE_HEARTBEAT_LOST = 4408

DEFAULT_TIMEOUT_S = 30.0
MAX_PENDING = 10_000  # unanswered operations, queued or in flight
MAX_EVENTS = 1_000  # events (and resyncs) waiting for the consumer
MAX_POSITIONS = 64  # position batches waiting for the consumer; the oldest is dropped first
MAX_MESSAGES = 1_000  # messages waiting for the consumer
MAX_RECEIPTS = 1_000  # receipt batches waiting for the consumer; the oldest is dropped first
RECEIPT_INTERVAL_S = 1.0  # how often delivered/read confirmations go out (cumulative, per channel)
MAX_RECEIPTS_PER_OP = 100  # the server's bound on channels per message.receipt
MAX_FRAME = 1 << 20  # largest frame accepted from the server
MAX_OP_BYTES = 64 * 1024  # the server's frame limit: a larger op would be refused on every resend
PROTOCOL_VERSION = 1
IN_PROGRESS = "in_progress"  # an error code that is not an answer


@dataclass(frozen=True, slots=True)
class Event:
    """One entry of the server's event log, as delivered over ``/ws``."""

    seq: int
    type: str
    subject: str
    at: str
    actor: Mapping[str, Any]
    data: Mapping[str, Any]

    @classmethod
    def from_frame(cls, frame: Mapping[str, Any]) -> Event:
        return cls(seq=frame["seq"], type=str(frame.get("type", "")), subject=str(frame.get("subject", "")),
                   at=str(frame.get("at", "")), actor=frame.get("actor") or {}, data=frame.get("data") or {})


@dataclass(frozen=True, slots=True)
class Resync:
    """The server could not replay the gap (it is too old): refetch state over REST; the stream
    continues with the events after ``seq``."""

    reason: str
    seq: int


Item = Event | Resync


@dataclass(frozen=True, slots=True)
class Message:
    """A message of a channel this client's principal is a member of. ``seq`` is its id and its
    place in the channel; ``repeat`` marks an emergency message sent again because this member has
    not acknowledged it (`Connection.ack_message`)."""

    channel: str
    seq: int
    at: str
    sender: Mapping[str, Any]
    text: str
    priority: str = "normal"
    client_id: str | None = None
    attachment: Mapping[str, Any] | None = None
    ack_required: bool = False
    repeat: bool = False

    @classmethod
    def from_frame(cls, frame: Mapping[str, Any]) -> Message:
        attachment = frame.get("attachment")
        return cls(channel=str(frame["channel"]), seq=frame["seq"], at=str(frame.get("at", "")),
                   sender=frame.get("sender") or {}, text=str(frame.get("text", "")),
                   priority=str(frame.get("priority", "normal")), client_id=frame.get("client_id"),
                   attachment=attachment if isinstance(attachment, Mapping) else None,
                   ack_required=bool(frame.get("ack_required")), repeat=bool(frame.get("repeat")))


@dataclass(frozen=True, slots=True)
class Receipt:
    """News about a message this client's member sent: ``member`` received, read or acknowledged it."""

    channel: str
    seq: int
    member: str
    delivered_at: str | None = None
    read_at: str | None = None
    acked_at: str | None = None

    @classmethod
    def from_entry(cls, entry: Mapping[str, Any]) -> Receipt:
        return cls(channel=str(entry["channel"]), seq=entry["seq"], member=str(entry["member"]),
                   delivered_at=entry.get("delivered_at"), read_at=entry.get("read_at"),
                   acked_at=entry.get("acked_at"))


@dataclass(frozen=True, slots=True)
class Backoff:
    """Reconnect delays: ``initial`` doubling up to ``maximum``, each drawn from [½·d, d] so a fleet
    that lost the server at once does not come back in lockstep."""

    initial: float = 0.2
    maximum: float = 10.0
    factor: float = 2.0

    def delay(self, failures: int, rng: random.Random) -> float:
        ceiling = min(self.maximum, self.initial * self.factor ** min(failures, 64))
        return rng.uniform(ceiling / 2, ceiling)


def websocket_url(url: str) -> str:
    """The ``/ws`` URL of a server given by its HTTP(S) base or its WebSocket URL."""
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise ValueError(f"not an http(s) or ws(s) URL: {url!r}")
    path = parts.path.rstrip("/")
    if not path.endswith("/ws"):
        path += "/ws"
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


def http_url(url: str) -> str:
    """The HTTP(S) base of a server given by either URL (the inverse of `websocket_url`)."""
    parts = urlsplit(url)
    scheme = {"http": "http", "https": "https", "ws": "http", "wss": "https"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise ValueError(f"not an http(s) or ws(s) URL: {url!r}")
    path = parts.path.rstrip("/")
    path = path.removesuffix("/ws")
    return urlunsplit((scheme, parts.netloc, path, "", ""))


T = TypeVar("T")


class _Inbox(Generic[T]):
    """A bounded buffer from the reader to one consumer. ``drop_oldest`` suits snapshots (positions),
    where the newest replaces what nobody read; otherwise `offer` refuses when full."""

    def __init__(self, limit: int, *, drop_oldest: bool = False) -> None:
        self.limit = limit
        self._drop_oldest = drop_oldest
        self._items: deque[T] = deque()
        self._wake = asyncio.Event()
        self._end: BaseException | None = None

    def __len__(self) -> int:
        return len(self._items)

    def offer(self, item: T) -> bool:
        if len(self._items) >= self.limit:
            if not self._drop_oldest:
                return False
            self._items.popleft()
        self._items.append(item)
        self._wake.set()
        return True

    def end(self, error: BaseException) -> None:
        if self._end is None:
            self._end = error
        self._wake.set()

    async def take(self) -> T:
        # What was buffered before the end is still handed out.
        while not self._items:
            if self._end is not None:
                raise self._end
            self._wake.clear()
            await self._wake.wait()
        return self._items.popleft()


@dataclass(eq=False, slots=True)
class _Pending:
    op: str
    id: str
    text: str
    future: asyncio.Future[dict[str, Any]]
    link: int = 0  # the link it was last sent on; 0: never sent


@dataclass(slots=True)
class _LinkEnd:
    welcomed: bool = False
    code: int | None = None
    message: str = ""  # the error frame that came before the close, if any
    relink: bool = False  # we closed it ourselves to catch up: come back at once


class _Unset:
    pass


_UNSET = _Unset()


@dataclass
class ConnectionOptions:
    """Tuning for a `Connection`; the defaults suit a field unit on a mobile link."""

    resume_from: int | None = None
    backoff: Backoff = field(default_factory=Backoff)
    request_timeout: float | None = DEFAULT_TIMEOUT_S
    max_pending: int = MAX_PENDING
    max_events: int = MAX_EVENTS
    max_positions: int = MAX_POSITIONS
    max_messages: int = MAX_MESSAGES
    max_receipts: int = MAX_RECEIPTS
    receipt_interval: float | None = RECEIPT_INTERVAL_S  # None: confirm nothing by itself (see confirm_receipts)
    # False: this client does not show messages (a script, a simulated unit); each is confirmed as
    # delivered on arrival instead of waiting in a buffer no one reads.
    take_messages: bool = True
    max_frame: int = MAX_FRAME
    open_timeout: float = 10.0
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0  # WebSocket keepalive: a link silent this long after a ping is dead
    close_timeout: float = 2.0
    proxy: str | Literal[True] | None = True  # True: the websockets default (proxy from the environment)
    client: Mapping[str, Any] = field(default_factory=lambda: {"sdk": "icp.client"})  # told in hello


class Connection:
    """The resumable link. Use as ``async with Connection(url, token) as conn:``; it connects in the
    background, so operations issued before the first link is up are queued, not refused."""

    def __init__(self, url: str, token: str, options: ConnectionOptions | None = None, **overrides: Any) -> None:
        if options is not None and overrides:
            raise TypeError("pass options or keyword overrides, not both")
        self.url = websocket_url(url)
        self.options = opts = ConnectionOptions(**overrides) if options is None else options
        self._token = token
        self.last_seq: int | None = opts.resume_from  # the last seq handed to the event buffer
        self.session: str | None = None
        self.welcome: dict[str, Any] = {}  # the last welcome frame, as the server sent it
        self.reconnects = 0  # links that reached welcome after the first
        self._pending: dict[str, _Pending] = {}  # insertion order is send order
        self._sticky: dict[str, dict[str, Any]] = {}  # ops repeated on every new link (subscriptions)
        self._events: _Inbox[Item] = _Inbox(opts.max_events)
        self._positions: _Inbox[list[dict[str, Any]]] = _Inbox(opts.max_positions, drop_oldest=True)
        self._messages: _Inbox[Message] = _Inbox(opts.max_messages)
        self._receipts: _Inbox[Receipt] = _Inbox(opts.max_receipts, drop_oldest=True)
        self._message_seen: dict[str, int] = {}  # channel → last seq entered into the message buffer
        self._consumed: dict[str, list[int]] = {}  # channel → [delivered, read]: handed out, read
        self._dirty: set[str] = set()  # channels whose cursors the server has not been told on this link
        self._acked: set[tuple[str, int]] = set()  # (channel, seq) acknowledged by this client
        self._receipt_task: asyncio.Task[None] | None = None
        self._overflowed = False  # events were dropped: relink once the consumer catches up
        self._messages_overflowed = False  # the same for messages (a separate consumer)
        self._ws: ClientConnection | None = None
        self._link = 0  # counts links that reached welcome; an op remembers the last it was sent on
        self._ready = False  # the queue has gone out on this link: new operations are sent directly
        self._relinking = False
        self._restoring: set[str] = set()  # sticky ops of this link not answered yet
        self._send_lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self._fatal: BaseException | None = None
        self._task: asyncio.Task[None] | None = None
        self._side_tasks: set[asyncio.Task[Any]] = set()
        self._rng = random.Random()

    # -- life cycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the background link (idempotent)."""
        if self._fatal is not None:
            raise self._fatal
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"icp-client {self.url}")
        if self._receipt_task is None and self.options.receipt_interval is not None:
            self._receipt_task = asyncio.create_task(self._confirm_loop(self.options.receipt_interval),
                                                     name=f"icp-client receipts {self.url}")

    async def close(self) -> None:
        """Close the link (after confirming the messages handed out, if it can within a second);
        waiting operations fail with `ClientClosed`, iterators end."""
        if self._dirty and self.connected and self._fatal is None:
            with contextlib.suppress(ClientError, TimeoutError):
                async with asyncio.timeout(1.0):
                    await self.confirm_receipts()
        for task in (self._receipt_task, self._task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._receipt_task = None
        for side in list(self._side_tasks):
            side.cancel()
        self._finish(ClientClosed("the client was closed"))

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        """A link is up, welcomed, and its sticky operations (subscriptions) are answered."""
        return self._ws is not None and self.session is not None and not self._restoring

    @property
    def pending(self) -> int:
        """Operations waiting for an answer (queued offline or in flight)."""
        return len(self._pending)

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until a link is welcomed and its subscriptions restored; raises `Unauthorized` (or
        `ClientClosed`) instead if it never will be."""
        async with asyncio.timeout(timeout):
            while not self.connected:
                if self._fatal is not None:
                    raise self._fatal
                self._changed.clear()
                await self._changed.wait()

    def set_sticky(self, op: str, fields: Mapping[str, Any] | None) -> None:
        """Send ``op`` with ``fields`` (under a fresh id) at the start of every new link, pipelined
        behind the hello, or stop doing so (None). For session state such as subscriptions."""
        if fields is None:
            self._sticky.pop(op, None)
        else:
            self._sticky[op] = dict(fields)

    def abort_link(self) -> None:
        """Drop the current link as a network failure would (no close handshake); the client
        reconnects and resumes. For tests and chaos drills."""
        if self._ws is not None:
            self._ws.transport.abort()

    # -- what the caller reads -------------------------------------------------------------------

    async def events(self) -> AsyncIterator[Item]:
        """Events in seq order, each exactly once, across reconnects; a `Resync` where the server
        could not replay a gap. Ends when the client is closed; raises `Unauthorized` if the token is
        refused. One consumer at a time."""
        while True:
            try:
                item = await self._events.take()
            except ClientClosed:
                return
            if self._overflowed and len(self._events) <= self._events.limit // 2:
                self._catch_up()
            yield item

    async def messages(self) -> AsyncIterator[Message]:
        """Messages of this principal's channels, each once and in seq order per channel, across
        reconnects (and again, marked ``repeat``, an emergency message not acknowledged yet). Each
        one handed out is confirmed to the server as delivered. One consumer at a time."""
        while True:
            try:
                message = await self._messages.take()
            except ClientClosed:
                return
            if self._messages_overflowed and len(self._messages) <= self._messages.limit // 2:
                self._catch_up()
            if message.repeat and (message.channel, message.seq) in self._acked:
                continue
            if not message.repeat:
                self._note(message.channel, delivered=message.seq)
            yield message

    async def receipts(self) -> AsyncIterator[Receipt]:
        """Who received, read and acknowledged the messages this member sent (live; the REST API
        `GET /api/v1/channels/{id}/messages/{seq}/receipts` has the whole record). When the
        consumer lags, the oldest are dropped."""
        while True:
            try:
                yield await self._receipts.take()
            except ClientClosed:
                return

    async def positions(self) -> AsyncIterator[list[dict[str, Any]]]:
        """Batches of unit positions (``positions`` frames) for subscribers of the ``positions`` topic.
        Not resumable: when the consumer lags, the oldest batches are dropped."""
        while True:
            try:
                yield await self._positions.take()
            except ClientClosed:
                return

    # -- operations ------------------------------------------------------------------------------

    async def request(self, op: str, /, *, op_id: str | None = None, timeout: float | _Unset | None = _UNSET,
                      **fields: Any) -> dict[str, Any]:
        """Send an operation and return the fields of its ``ok`` answer; raise `OpError` on ``error``.

        Offline, the operation waits in the queue and goes out after reconnect, in order, under the
        same id. ``timeout`` (default ``options.request_timeout``; None: wait for ever) withdraws it
        and raises `OpTimeout`.
        """
        if self._fatal is not None:
            raise self._fatal
        if len(self._pending) >= self.options.max_pending:
            raise QueueFull(f"{len(self._pending)} operations are already waiting for an answer")
        op_id = op_id or uuid.uuid4().hex
        if op_id in self._pending:
            raise ValueError(f"operation {op_id} is already waiting for its answer")
        text = _encode({"op": op, "id": op_id, **fields})
        if len(text.encode()) > MAX_OP_BYTES:
            raise ValueError(f"{op} is larger than the server's frame limit ({MAX_OP_BYTES} bytes)")
        pending = _Pending(op, op_id, text, asyncio.get_running_loop().create_future())
        self._pending[op_id] = pending
        limit = self.options.request_timeout if isinstance(timeout, _Unset) else timeout
        try:
            async with asyncio.timeout(limit):
                ws = self._ws
                if self._ready and ws is not None:
                    pending.link = self._link
                    await self._send(ws, pending.text)
                return await pending.future
        except TimeoutError:
            if pending.future.done() and not pending.future.cancelled():
                return pending.future.result()  # the answer won the race against the deadline
            raise OpTimeout(op, op_id, sent=pending.link != 0) from None
        finally:
            if self._pending.get(op_id) is pending:
                del self._pending[op_id]

    # -- messaging -------------------------------------------------------------------------------

    async def send_message(self, channel: str, text: str, *, priority: str = "normal", attachment: str | None = None,
                           client_id: str | None = None, op_id: str | None = None,
                           timeout: float | _Unset | None = _UNSET) -> dict[str, Any]:
        """Post a message; the answer (``message``: channel, seq, at, …; ``duplicate``) comes once it
        is stored. The op id is the message's client id unless ``client_id`` is given, so a resend
        after a dropped link returns the first message rather than posting a second."""
        fields: dict[str, Any] = {"channel": channel, "text": text}
        if priority != "normal":
            fields["priority"] = priority
        if attachment is not None:
            fields["attachment"] = attachment
        if client_id is not None:
            fields["client_id"] = client_id
        return await self.request("message.send", op_id=op_id, timeout=timeout, **fields)

    async def ack_message(self, channel: str, seq: int) -> dict[str, Any]:
        """Acknowledge a message (an emergency message asks it of every member)."""
        answer = await self.request("message.ack", channel=channel, seq=seq)
        self._acked.add((channel, seq))
        return answer

    def mark_read(self, channel: str, seq: int) -> None:
        """Confirm that everything up to ``seq`` in ``channel`` was read (sent with the next receipts)."""
        self._note(channel, delivered=seq, read=seq)

    async def history(self, channel: str, *, before: int | None = None, limit: int = 50) -> dict[str, Any]:
        """A page of the channel's messages (``messages``, oldest first, and ``next_before``)."""
        fields: dict[str, Any] = {"channel": channel, "limit": limit}
        if before is not None:
            fields["before"] = before
        return await self.request("message.history", **fields)

    async def channels(self) -> list[dict[str, Any]]:
        """The channels this principal is a member of."""
        return list((await self.request("channel.list"))["channels"])

    async def upload_attachment(self, channel: str, content: bytes, content_type: str, name: str = "",
                                *, timeout: float = 60.0) -> dict[str, Any]:
        """Upload a file to a channel over HTTP (an image or a PDF); send its ``id`` as a message's
        ``attachment``. Raises `OpError` with the server's problem code when refused."""
        import aiohttp  # only for uploads: the link itself is `websockets`

        url = f"{http_url(self.url)}/api/v1/channels/{channel}/attachments"
        headers = {"Authorization": f"Bearer {self._token}", "Content-Type": content_type}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http, \
                http.post(url, data=content, headers=headers, params={"name": name} if name else None) as resp:
            body = await resp.json(content_type=None)
            if resp.status >= 300:
                problem = body if isinstance(body, dict) else {}
                raise OpError(str(problem.get("code", resp.status)), str(problem.get("detail", "")),
                              errors=problem.get("errors") or ())
            return dict(body)

    async def confirm_receipts(self) -> None:
        """Tell the server now what was handed out and read since the last time (this also happens
        every ``receipt_interval``). Receipts are notifications: they get no answer, and every
        cursor is told again at the start of each link, so one lost with a link costs nothing."""
        ws = self._ws
        if ws is None or not self._dirty:
            return
        dirty, self._dirty = sorted(self._dirty), set()
        for i in range(0, len(dirty), MAX_RECEIPTS_PER_OP):
            receipts = []
            for channel in dirty[i:i + MAX_RECEIPTS_PER_OP]:
                delivered, read = self._consumed[channel]
                receipts.append({"channel": channel, **({"delivered": delivered} if delivered else {}),
                                 **({"read": read} if read else {})})
            await self._send(ws, _encode({"op": "message.receipt", "receipts": receipts}))

    def _note(self, channel: str, *, delivered: int = 0, read: int = 0) -> None:
        held = self._consumed.setdefault(channel, [0, 0])
        moved = [max(held[0], delivered, read), max(held[1], read)]
        if moved != held:
            held[:] = moved
            self._dirty.add(channel)

    async def _confirm_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            if self._dirty and self.connected:
                await self.confirm_receipts()

    async def ping(self, timeout: float | None = 10.0) -> float:
        """Round-trip time to the server in seconds, over the protocol (not WebSocket) ping."""
        loop = asyncio.get_running_loop()
        sent = loop.time()
        await self.request("ping", timeout=timeout)
        return loop.time() - sent

    # -- the link --------------------------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        try:
            while True:
                end = await self._link_once()
                if end.relink:
                    continue
                if end.code == CLOSE_UNAUTHORIZED:
                    raise Unauthorized(end.message or "the server refused the token (4401)")
                if end.code == CLOSE_BAD_HELLO:  # this client's hello: the same again would fail again
                    raise ClientError(f"the server refused the hello: {end.message or 'bad hello (4400)'}")
                if end.welcomed:
                    failures = 0
                # Closed for what this client sent: come back, but not soon.
                failures = 64 if end.code in (CLOSE_POLICY, CLOSE_TOO_BIG) else failures
                delay = self.options.backoff.delay(failures, self._rng)
                failures += 1
                log.info("link to %s lost (code %s); reconnecting in %.2f s", self.url, end.code, delay)
                await asyncio.sleep(delay)
        except ClientError as exc:
            self._finish(exc)
        except Exception as exc:
            # A bug here must not leave callers waiting for ever.
            log.exception("the client link failed")
            self._finish(ClientError(f"the client link failed: {exc!r}"))

    async def _link_once(self) -> _LinkEnd:
        opts, end = self.options, _LinkEnd()
        try:
            ws = await connect(self.url, open_timeout=opts.open_timeout, ping_interval=opts.ping_interval,
                               ping_timeout=opts.ping_timeout, close_timeout=opts.close_timeout,
                               max_size=opts.max_frame, compression=None,
                               proxy=opts.proxy)
        except InvalidStatus as exc:
            if exc.response.status_code in (401, 403):
                raise Unauthorized(f"the server refused the token (HTTP {exc.response.status_code})") from None
            log.info("cannot open %s: %s", self.url, exc)
            return end
        except InvalidURI as exc:
            raise ClientError(str(exc)) from None
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            log.info("cannot reach %s: %s", self.url, exc)
            return end
        try:
            hello: dict[str, Any] = {"op": "hello", "token": self._token, "protocol": PROTOCOL_VERSION,
                                     "client": dict(opts.client)}
            if self.last_seq is not None:
                hello["resume_from"] = self.last_seq
            await ws.send(_encode(hello))
            # Pipelined behind the hello, the server runs them right after welcome: subscriptions
            # are in place before the first live event.
            for op, fields in self._sticky.items():
                op_id = uuid.uuid4().hex
                self._restoring.add(op_id)
                await ws.send(_encode({"op": op, "id": op_id, **fields}))
            async with asyncio.timeout(opts.open_timeout):
                welcome = await self._welcome(ws, end)
            end.welcomed = True
            self._on_welcome(ws, welcome)
            flush = asyncio.create_task(self._flush(ws, self._link))
            try:
                async for raw in ws:
                    await self._on_frame(ws, raw)
            finally:
                flush.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await flush
        except (ConnectionClosed, TimeoutError, OSError):
            pass  # how it ended is read from the close frame below
        finally:
            self._ws, self.session, self._ready = None, None, False
            self._restoring.clear()
            if ws.state is State.CLOSED:
                # The closing handshake is over; on a link that died quietly, waiting for TCP to
                # wind down would hold up the reconnect for close_timeout.
                ws.transport.abort()
            else:
                await ws.close()  # we are leaving (closed or cancelled): say so, within close_timeout
            end.relink, self._relinking = self._relinking, False
        rcvd = ws.protocol.close_rcvd
        end.code = rcvd.code if rcvd is not None else None
        return end

    async def _welcome(self, ws: ClientConnection, end: _LinkEnd) -> dict[str, Any]:
        while True:
            frame = _decode(await ws.recv())
            if frame is None:
                continue
            if frame.get("op") == "welcome":
                return frame
            if frame.get("op") == "error":  # the close that follows says whether it is final
                end.message = f"{frame.get('code')}: {frame.get('message')}"
            log.warning("before welcome the server said %s", str(frame)[:200])

    def _on_welcome(self, ws: ClientConnection, welcome: dict[str, Any]) -> None:
        if self._link:
            self.reconnects += 1
        self._link += 1
        self._ws, self.welcome = ws, welcome
        self.session = str(welcome.get("session", ""))
        seq = welcome.get("seq")
        if self.last_seq is None and isinstance(seq, int):
            self.last_seq = seq  # a first link without resume: a later one resumes from here
        self._overflowed = False  # this link resumes from last_seq, so what was dropped comes again
        self._messages_overflowed = False
        self._dirty |= self._consumed.keys()  # a receipt lost with the last link is told again
        self._changed.set()

    async def _flush(self, ws: ClientConnection, link: int) -> None:
        """Send every unanswered operation in order (new ones join the end of the queue meanwhile),
        then let new operations go out directly."""
        while batch := [p for p in self._pending.values() if p.link != link]:
            for pending in batch:
                if self._pending.get(pending.id) is pending:
                    pending.link = link
                    await self._send(ws, pending.text)
        if self._ws is ws:
            self._ready = True

    async def _send(self, ws: ClientConnection, text: str) -> None:
        # One writer at a time keeps operations in the order they were issued.
        async with self._send_lock:
            with contextlib.suppress(ConnectionClosed):
                await ws.send(text)  # a lost link is noticed by the reader; the op stays queued

    async def _on_frame(self, ws: ClientConnection, raw: str | bytes) -> None:
        frame = _decode(raw)
        if frame is None:
            return
        op = frame.get("op")
        if op == "event":
            if isinstance(frame.get("seq"), int):
                self._deliver(Event.from_frame(frame), frame["seq"])
        elif op in ("ok", "error"):
            self._answer(frame)
        elif op == "ping":
            await self._send(ws, _encode({"op": "pong", **{k: frame[k] for k in ("t",) if k in frame}}))
        elif op == "message":
            if isinstance(frame.get("seq"), int) and isinstance(frame.get("channel"), str):
                self._deliver_message(Message.from_frame(frame))
        elif op == "receipts":
            for entry in frame.get("receipts") or ():
                if isinstance(entry, Mapping) and isinstance(entry.get("seq"), int) and "channel" in entry:
                    self._receipts.offer(Receipt.from_entry(entry))
        elif op == "positions":
            units = frame.get("units")
            if isinstance(units, list):
                self._positions.offer(units)
        elif op == "resync":
            if isinstance(frame.get("seq"), int):
                self._deliver(Resync(str(frame.get("reason", "")), frame["seq"]), frame["seq"], always=True)
        elif op == "pong":
            if frame.get("ref") is not None:
                self._answer({**frame, "op": "ok"})  # the answer to our `ping` op
        else:
            log.debug("ignored a %r frame", op)  # newer servers may say more than this client knows

    def _deliver(self, item: Item, seq: int, *, always: bool = False) -> None:
        if not always and self.last_seq is not None and seq <= self.last_seq:
            return  # replayed and already delivered
        if self._overflowed or not self._events.offer(item):
            # Dropped without moving last_seq: the relink after the consumer caught up replays it.
            self._overflowed = True
            return
        self.last_seq = seq

    def _deliver_message(self, message: Message) -> None:
        if not self.options.take_messages:  # this client shows no messages: it only says they arrived
            if not message.repeat:
                self._note(message.channel, delivered=message.seq)
            return
        if message.repeat:  # an emergency message asking again for an acknowledgement
            if (message.channel, message.seq) not in self._acked and not self._messages_overflowed:
                self._messages.offer(message)
            return
        if message.seq <= self._message_seen.get(message.channel, 0):
            return  # sent again after a relink, and already handed over
        if self._messages_overflowed or not self._messages.offer(message):
            # Not confirmed, so the server sends it again on the next link: the consumer of
            # `messages` asks for one once it has drained half the buffer.
            self._messages_overflowed = True
            return
        self._message_seen[message.channel] = message.seq

    def _answer(self, frame: dict[str, Any]) -> None:
        if frame.get("code") == IN_PROGRESS:
            return  # a resent op still executing from before the reconnect: its answer follows
        ref = frame.get("ref")
        if ref in self._restoring:
            self._restoring.discard(ref)
            if frame.get("op") == "error":
                log.warning("restoring the session failed: %s: %s", frame.get("code"), frame.get("message"))
            if not self._restoring:
                self._changed.set()
            return
        pending = self._pending.pop(ref, None) if isinstance(ref, str) else None
        if pending is None or pending.future.done():
            if frame.get("op") == "error":  # about a frame, or to something we cannot place
                log.warning("server error %s: %s", frame.get("code"), frame.get("message"))
            return
        if frame.get("op") == "ok":
            pending.future.set_result({k: v for k, v in frame.items() if k not in ("op", "ref")})
        else:
            pending.future.set_exception(OpError(str(frame.get("code", "error")), str(frame.get("message", "")),
                                                 ref=ref, errors=frame.get("errors") or ()))

    def _catch_up(self) -> None:
        ws = self._ws
        if ws is None or self._relinking:
            return
        self._relinking = True
        task = asyncio.create_task(ws.close(CLOSE_NORMAL, "resuming after a full buffer"))
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    def _finish(self, error: BaseException) -> None:
        if self._fatal is None:
            self._fatal = error
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(error)
        self._events.end(error)
        self._positions.end(error)
        self._messages.end(error)
        self._receipts.end(error)
        self._changed.set()


def _encode(frame: Mapping[str, Any]) -> str:
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _decode(raw: str | bytes) -> dict[str, Any] | None:
    try:
        frame = json.loads(raw)
    except ValueError:
        log.warning("the server sent a frame that is not JSON")
        return None
    return frame if isinstance(frame, dict) else None
