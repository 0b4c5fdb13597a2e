"""A load-generator process for bench/gateway.py: holds many `/ws` connections at once.

    python bench/gateway_worker.py HOST PORT      (started by bench/gateway.py, not by hand)

Commands arrive on stdin, one JSON object a line; each is answered on stdout by one JSON object a
line. End of stdin (the parent went away) aborts every connection and ends the process, so a
crashed benchmark leaves no worker behind.

The WebSocket client is a minimal one on `asyncio.Protocol` (RFC 6455: handshake, unfragmented
text frames, masked with a zero key, ping → pong, close): a few kilobytes and a few microseconds
per connection and frame, so that thousands of sockets and tens of thousands of frames a second
cost the 2-core machine as little CPU as possible next to the server under test. Frames are
recognised by byte patterns rather than parsed as JSON for the same reason. Receive times are
`time.time()` at the moment the bytes reach the process, on the same clock as the parent's.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import resource
import sys
import time
from datetime import UTC, datetime
from typing import Any

TYPE_RE = re.compile(rb'"type":"([^"]+)"')
INCIDENT_RE = re.compile(rb'"incident_id":"([^"]+)"')
MARK_RE = re.compile(rb"#m(\d+)#")
ZERO_MASK = b"\0\0\0\0"


def raise_nofile(want: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for limit in ((want, max(hard, want)), (min(want, hard), hard)):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, limit)
            return limit[0]
        except (ValueError, OSError):
            continue
    return soft


def text_frame(payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        head = bytes((0x81, 0x80 | n))
    elif n < 65536:
        head = bytes((0x81, 0xFE)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x81, 0xFF)) + n.to_bytes(8, "big")
    return head + ZERO_MASK + payload  # XOR with a zero key leaves the payload as it is


class Conn(asyncio.Protocol):
    """One WebSocket connection; frames go to the worker's `on_text`."""

    def __init__(self, worker: Worker, host: str, port: int, token: str, unit: str | None) -> None:
        loop = asyncio.get_running_loop()
        self.worker, self.host, self.port, self.token, self.unit = worker, host, port, token, unit
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.upgraded = False
        self.welcomed = loop.create_future()
        self.answered: asyncio.Future[bytes] | None = None  # the next ok/error (subscribe)
        self.gone = loop.create_future()
        self.close_code: int | None = None
        self.closing = False
        self.seq = 0
        self.outstanding = 0  # positions sent and not answered yet
        self.lat = self.lon = 0.0
        self.last_t = 0.0

    # -- asyncio.Protocol ----------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write((f"GET /ws HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nUpgrade: websocket\r\n"
                         f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                         ).encode())

    def data_received(self, data: bytes) -> None:
        now = time.time()
        buf = self.buf
        buf += data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buf[:buf.find(b"\r\n")])
            if b" 101 " not in status:
                self._fail(f"handshake refused: {status.decode(errors='replace')}")
                return
            del buf[:end + 4]
            self.upgraded = True
            self.send(json.dumps({"op": "hello", "token": self.token, "protocol": 1,
                                  "client": {"app": "bench/gateway.py"}}).encode())
        while len(buf) >= 2:
            b1 = buf[1]
            n, off = b1 & 0x7F, 2
            if n == 126:
                if len(buf) < 4:
                    return
                n, off = int.from_bytes(buf[2:4], "big"), 4
            elif n == 127:
                if len(buf) < 10:
                    return
                n, off = int.from_bytes(buf[2:10], "big"), 10
            if b1 & 0x80:  # servers do not mask; tolerate it anyway
                off += 4
            if len(buf) < off + n:
                return
            opcode = buf[0] & 0x0F
            payload = bytes(buf[off:off + n])
            del buf[:off + n]
            if opcode == 1:
                self.worker.on_text(self, payload, now)
            elif opcode == 8:
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                if not self.closing:
                    self.worker.closed_by_server.append([self.close_code, payload[2:].decode(errors="replace")])
                self.transport.close() if self.transport else None
                return
            elif opcode == 9:
                self._write(bytes((0x8A, 0x80 | len(payload))) + ZERO_MASK + payload)

    def connection_lost(self, exc: Exception | None) -> None:
        self.worker.conns.discard(self)
        if not self.welcomed.done():
            self.welcomed.set_exception(ConnectionError(f"connection lost before welcome ({exc or 'closed'})"))
        elif not self.closing:
            self.worker.lost += 1
        if self.answered is not None and not self.answered.done():
            self.answered.set_exception(ConnectionError("connection lost"))
        if not self.gone.done():
            self.gone.set_result(None)

    # -- sending -------------------------------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def send(self, payload: bytes) -> None:
        self._write(text_frame(payload))

    def close(self) -> None:
        self.closing = True
        self._write(bytes((0x88, 0x82)) + ZERO_MASK + (1000).to_bytes(2, "big"))

    def _fail(self, message: str) -> None:
        if not self.welcomed.done():
            self.welcomed.set_exception(ConnectionError(message))
        if self.transport is not None:
            self.transport.abort()


class Worker:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.conns: set[Conn] = set()
        self.lost = 0
        self.closed_by_server: list[list[Any]] = []
        self.errors: dict[str, int] = {}
        self.recording = False
        self.records: list[list[Any]] = []
        self.window = (0.0, 0.0)
        self.accepted = self.refused = self.answers = 0
        self.reasons: dict[str, int] = {}
        self.in_flight = 0  # positions sent and not answered, all connections
        self.drained = asyncio.Event()

    def answered_one(self) -> None:
        self.in_flight -= 1
        if self.in_flight <= 0:
            self.drained.set()

    # -- frames from the server -----------------------------------------------------------------------
    def on_text(self, conn: Conn, payload: bytes, now: float) -> None:
        head = payload[:24]
        if head.startswith(b'{"op":"ok"'):
            if b'"accepted":' in payload:
                conn.outstanding -= 1
                self.answered_one()
                self.answers += 1
                if self.window[0] <= now < self.window[1]:
                    if b'"accepted":true' in payload:
                        self.accepted += 1
                    else:
                        self.refused += 1
                        reason = re.search(rb'"reason":"([^"]*)"', payload)
                        key = reason.group(1).decode(errors="replace")[:60] if reason else "?"
                        self.reasons[key] = self.reasons.get(key, 0) + 1
            elif conn.answered is not None and not conn.answered.done():
                conn.answered.set_result(payload)
        elif head.startswith(b'{"op":"event"'):
            if self.recording:
                kind, incident, mark = TYPE_RE.search(payload), INCIDENT_RE.search(payload), MARK_RE.search(payload)
                self.records.append([kind.group(1).decode() if kind else None,
                                     incident.group(1).decode() if incident else None,
                                     int(mark.group(1)) if mark else None, now])
        elif head.startswith(b'{"op":"ping"'):
            conn.send(b'{"op":"pong"}')
        elif head.startswith(b'{"op":"welcome"'):
            if not conn.welcomed.done():
                conn.welcomed.set_result(None)
        elif head.startswith(b'{"op":"error"'):
            code = re.search(rb'"code":"([^"]*)"', payload)
            key = code.group(1).decode() if code else payload[:80].decode(errors="replace")
            self.errors[key] = self.errors.get(key, 0) + 1
            if not conn.welcomed.done():
                conn.welcomed.set_exception(ConnectionError(payload[:300].decode(errors="replace")))
            elif conn.answered is not None and not conn.answered.done():
                conn.answered.set_result(payload)
            elif b'"accepted"' not in payload and conn.unit is not None and conn.outstanding > 0:
                conn.outstanding -= 1  # an error answering a position
                self.answered_one()

    # -- commands -------------------------------------------------------------------------------------
    async def connect(self, tokens: list[str], units: list[str | None] | None, subscribe: list[str] | None,
                      concurrency: int, timeout: float) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        gate = asyncio.Semaphore(concurrency)
        failures: dict[str, int] = {}
        started = time.perf_counter()

        async def one(token: str, unit: str | None) -> bool:
            async with gate:
                conn: Conn | None = None
                try:
                    async with asyncio.timeout(timeout):
                        _, conn = await loop.create_connection(
                            lambda: Conn(self, self.host, self.port, token, unit), self.host, self.port)
                        await conn.welcomed
                        if subscribe:
                            conn.answered = loop.create_future()
                            conn.send(json.dumps({"op": "subscribe", "id": "sub-1", "topics": subscribe}).encode())
                            answer = await conn.answered
                            if not answer.startswith(b'{"op":"ok"'):
                                raise ConnectionError(answer[:200].decode(errors="replace"))
                            conn.answered = None
                    self.conns.add(conn)
                    return True
                except (OSError, TimeoutError, ConnectionError) as exc:
                    key = f"{type(exc).__name__}: {exc}"[:200]
                    failures[key] = failures.get(key, 0) + 1
                    if conn is not None and conn.transport is not None:
                        conn.transport.abort()
                    return False

        units = units or [None] * len(tokens)
        results = await asyncio.gather(*(one(t, u) for t, u in zip(tokens, units, strict=True)))
        return {"connected": sum(results), "failed": len(results) - sum(results), "failures": failures,
                "seconds": round(time.perf_counter() - started, 3)}

    async def positions(self, start: float, warmup: float, seconds: float, interval: float,
                        max_outstanding: int, seed: int,
                        box: tuple[float, float, float, float] = (60.10, 24.80, 0.1, 0.2)) -> dict[str, Any]:
        """Every unit reports every ``interval`` s (its ``time`` never closer than ``interval`` to its
        previous one), moving ~8 m a report (16 m/s) inside ``box`` (south, west, height, width in
        degrees; leaving it at the north-east, a unit comes back in at the south-west); answers are
        counted when they arrive inside [start + warmup, start + warmup + seconds). A unit with
        ``max_outstanding`` reports still unanswered skips its turn, so an overloaded server is not
        buried under an ever-growing backlog."""
        units = sorted((c for c in self.conns if c.unit), key=lambda c: c.unit or "")
        slots = 20
        groups = [units[i::slots] for i in range(slots)]
        south, west, height, width = box
        for i, conn in enumerate(units):  # spread over the box, each heading north-east
            conn.lat = south + ((seed * 7919 + i * 104729) % 10000) / 10000 * height
            conn.lon = west + ((seed * 15485863 + i * 32452843) % 10000) / 10000 * width
            conn.last_t = 0.0
        self.window = (start + warmup, start + warmup + seconds)
        self.accepted = self.refused = self.answers = self.in_flight = 0
        self.reasons = {}
        sent = sent_in_window = skipped = late = 0
        end = self.window[1]
        tick = 0
        while True:
            due = start + tick * interval / slots
            if due >= end:
                break
            delay = due - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -interval / slots:
                late += 1
            now = time.time()
            for conn in groups[tick % slots]:
                if conn.outstanding >= max_outstanding or conn.transport is None or conn.transport.is_closing():
                    skipped += 1
                    continue
                t = max(now, conn.last_t + interval) if conn.last_t else now
                conn.last_t = t
                conn.lat = south + (conn.lat + 0.00006 - south) % height
                conn.lon = west + (conn.lon + 0.00008 - west) % width
                conn.seq += 1
                stamp = datetime.fromtimestamp(t, UTC).isoformat()
                conn.send(b'{"op":"position","id":%d,"lat":%.6f,"lon":%.6f,"accuracy":5,"heading":42.0,'
                          b'"speed":16.0,"time":"%s"}' % (conn.seq, conn.lat, conn.lon, stamp.encode()))
                conn.outstanding += 1
                self.in_flight += 1
                sent += 1
                if self.window[0] <= now < end:
                    sent_in_window += 1
            tick += 1
        self.drained = asyncio.Event()
        if self.in_flight <= 0:
            self.drained.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.drained.wait(), 5)
        return {"units": len(units), "sent": sent, "sent_in_window": sent_in_window, "skipped": skipped,
                "late_ticks": late, "accepted_in_window": self.accepted, "refused_in_window": self.refused,
                "refused_reasons": self.reasons, "answers": self.answers,
                "unanswered_at_end": sum(max(0, c.outstanding) for c in units)}

    async def close(self, timeout: float, abort: bool) -> dict[str, Any]:
        conns = list(self.conns)
        started = time.perf_counter()
        for conn in conns:
            if abort and conn.transport is not None:
                conn.closing = True
                conn.transport.abort()
            else:
                conn.close()
        waits = [c.gone for c in conns]
        aborted = 0
        if waits:
            _, pending = await asyncio.wait(waits, timeout=timeout)
            for conn in conns:
                if not conn.gone.done() and conn.transport is not None:
                    conn.transport.abort()
                    aborted += 1
            if pending:
                await asyncio.wait(pending, timeout=2)
        self.conns.clear()
        return {"closed": len(conns), "aborted_after_timeout": aborted,
                "seconds": round(time.perf_counter() - started, 3)}

    def status(self) -> dict[str, Any]:
        return {"open": len(self.conns), "lost": self.lost, "closed_by_server": self.closed_by_server[:5],
                "closed_by_server_count": len(self.closed_by_server), "errors": self.errors,
                "cpu_s": round(time.process_time(), 3),
                "rss_kib": int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize() // 1024}

    async def handle(self, cmd: dict[str, Any]) -> dict[str, Any]:
        name = cmd.get("cmd")
        if name == "connect":
            return await self.connect(cmd["tokens"], cmd.get("units"), cmd.get("subscribe"),
                                      int(cmd.get("concurrency", 32)), float(cmd.get("timeout", 30)))
        if name == "positions":
            box = tuple(cmd["box"]) if cmd.get("box") else (60.10, 24.80, 0.1, 0.2)
            return await self.positions(cmd["start"], cmd["warmup"], cmd["seconds"], cmd.get("interval", 0.5),
                                        int(cmd.get("max_outstanding", 2)), int(cmd.get("seed", 0)),
                                        box)  # type: ignore[arg-type]
        if name == "record":
            self.recording, self.records = bool(cmd["on"]), []
            return {"recording": self.recording}
        if name == "collect":
            records, self.records = self.records, []
            return {"records": records}
        if name == "close":
            return await self.close(float(cmd.get("timeout", 10)), bool(cmd.get("abort")))
        if name == "status":
            return self.status()
        raise ValueError(f"unknown command {name!r}")


async def serve_commands(worker: Any) -> None:
    """Run a load-generating worker on this process's pipes: one JSON command per stdin line,
    answered by one JSON line on stdout (``{"ok": …}``), until ``{"cmd": "exit"}`` or EOF. The
    worker has ``handle(cmd)`` and the ``conns`` it aborts at the end."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while line := await reader.readline():
            cmd = json.loads(line)
            if cmd.get("cmd") == "exit":
                break
            try:
                answer = {"ok": True, **await worker.handle(cmd)}
            except Exception as exc:  # reported to the parent, which decides
                answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            sys.stdout.write(json.dumps(answer) + "\n")
            sys.stdout.flush()
    finally:
        for conn in list(worker.conns):
            if conn.transport is not None:
                conn.transport.abort()


async def main(host: str, port: int) -> None:
    await serve_commands(Worker(host, port))


if __name__ == "__main__":
    raise_nofile(int(os.environ.get("BENCH_NOFILE", "20000")))
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
