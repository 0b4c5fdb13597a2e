"""What the benchmarks share: a private `icp serve` to measure, its tokens, and small HTTP helpers."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import psutil

CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_preexec(nofile: int) -> Callable[[], None]:
    """In the server's process before exec: a raised descriptor limit, and SIGTERM if this process dies."""

    def run() -> None:
        raise_nofile(nofile)
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG

    return run


def raise_nofile(want: int) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))


class Api:
    """A bearer-token JSON client for the server under test; any status ≥ 300 raises."""

    def __init__(self, http: aiohttp.ClientSession, base: str, token: str) -> None:
        self.http, self.base, self.headers = http, base, {"Authorization": f"Bearer {token}"}

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        async with self.http.request(method, self.base + path, json=body, headers=self.headers) as r:
            payload = await r.json(content_type=None)
            if r.status >= 300:
                raise RuntimeError(f"{method} {path}: {r.status} {payload}")
            return payload


async def gather_limited(n: int, coros: list[Any]) -> list[Any]:
    """Await the coroutines with at most ``n`` running at once."""
    gate = asyncio.Semaphore(n)

    async def run(c: Any) -> Any:
        async with gate:
            return await c

    return await asyncio.gather(*(run(c) for c in coros))


async def unit_tokens(admin: Api, agency: str, ids: list[str], *, concurrency: int = 16,
                      staffing: int = 4) -> list[str]:
    """Create the units ``ids`` (engines of ``agency``) and a unit token for each, in order."""

    async def make(unit_id: str) -> str:
        await admin.call("POST", "/api/v1/units", {"id": unit_id, "call_sign": unit_id, "agency_id": agency,
                                                   "capabilities": ["ENGINE"], "staffing": staffing})
        issued = await admin.call("POST", "/api/v1/tokens", {"role": "unit", "agency": agency, "unit": unit_id,
                                                             "name": f"bench {unit_id}"})
        return str(issued["token"])

    return list(await gather_limited(concurrency, [make(u) for u in ids]))


class Server:
    """One `icp serve` node with its own embedded PostgreSQL in a private data directory (outside
    private home folders), started for a benchmark and removed after it. ``settings`` are ICP_*
    values to add; ``prepare`` may fill the data directory first (e.g. install a road network)."""

    def __init__(self, name: str, *, settings: dict[str, str] | None = None, nofile: int = 4096,
                 prepare: Callable[[Path], Any] | None = None) -> None:
        self.data = Path(tempfile.mkdtemp(prefix=f"icp-bench-{name}-"))
        self.data.chmod(0o755)
        self.log_path = Path(tempfile.mkstemp(prefix=f"icp-bench-{name}-", suffix=".log")[1])
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.nofile = nofile
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("ICP_")}
        self.env |= {"ICP_DATA_DIR": str(self.data), "ICP_PORT": str(self.port), "ICP_LOG_LEVEL": "WARNING",
                     **(settings or {})}
        self.icp = [sys.executable, "-m", "icp.cli"]
        self.proc: subprocess.Popen[bytes] | None = None
        self.admin = ""
        if prepare is not None:
            prepare(self.data)

    def token(self, role: str, *options: str) -> str:
        """A bearer token made with `icp token create` on this node's data directory."""
        return subprocess.run([*self.icp, "token", "create", "--role", role, *options], env=self.env,
                              capture_output=True, text=True, check=True, timeout=120).stdout.strip()

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.log_path.unlink(missing_ok=True)

    def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen([*self.icp, "serve"], env=self.env, stdout=subprocess.DEVNULL, stderr=log,
                                         preexec_fn=server_preexec(self.nofile))
        deadline = time.monotonic() + 120
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    break
            except OSError:
                if self.proc.poll() is not None:
                    raise SystemExit(f"icp serve exited: {self.log_tail()}") from None
                if time.monotonic() > deadline:
                    raise SystemExit(f"icp serve did not listen within 120 s: {self.log_tail()}") from None
                time.sleep(0.1)
        self.admin = self.token("admin", "--name", "bench")

    def stop(self) -> int | None:
        code = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                code = self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                code = self.proc.wait(timeout=10)
        elif self.proc is not None:
            code = self.proc.returncode
        shutil.rmtree(self.data, ignore_errors=True)
        return code

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _node_pids(self) -> list[int]:
        """The server process and its worker processes (`--workers`); PostgreSQL is counted apart."""
        pids = [self.pid]
        with contextlib.suppress(psutil.Error):
            pids += [child.pid for child in psutil.Process(self.pid).children()]
        return pids

    def rss_kib(self) -> int:
        total = 0
        for pid in self._node_pids():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        return total

    def cpu_s(self) -> float:
        return sum(self.cpu_times())

    def cpu_times(self) -> tuple[float, float]:
        """The node's user and system (kernel) CPU seconds so far."""
        user = system = 0.0
        for pid in self._node_pids():
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                user += int(fields[11]) / CLK_TCK
                system += int(fields[12]) / CLK_TCK
        return user, system

    @contextlib.contextmanager
    def profiled(self, path: str | None) -> Any:
        """Record the node's processes with py-spy while the block runs (``path``: raw collapsed
        stacks, one file per process, ``path.<pid>`` when there are several; None: no profile)."""
        if not path:
            yield
            return
        pids = self._node_pids()
        pids = pids[1:] if len(pids) > 1 else pids  # with workers the supervisor only waits
        spies = [subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--format", "raw", "--rate", "200",
                                   "--output", path if len(pids) == 1 else f"{path}.{pid}"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for pid in pids]
        try:
            yield
        finally:
            for spy in spies:
                spy.send_signal(signal.SIGINT)
            for spy in spies:
                spy.wait(60)

    def max_open_files(self) -> str:
        for line in Path(f"/proc/{self.pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                return " ".join(line.split()[3:5])
        return "?"

    def pg_cpu(self) -> dict[int, float]:
        """CPU seconds of this node's PostgreSQL processes (the postmaster and its children)."""
        out: dict[int, float] = {}
        for pidfile in self.data.rglob("postmaster.pid"):
            with_children: list[psutil.Process] = []
            try:
                master = psutil.Process(int(pidfile.read_text().split()[0]))
                with_children = [master, *master.children(recursive=True)]
            except (psutil.Error, OSError, ValueError, IndexError):
                continue
            for proc in with_children:
                try:
                    t = proc.cpu_times()
                    out[proc.pid] = t.user + t.system
                except psutil.Error:
                    pass
        return out

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def log_summary(self) -> dict[str, Any]:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        lines = [line for line in text.splitlines() if line.strip()]
        levels = {lvl: sum(lvl in line for line in lines) for lvl in ("WARNING", "ERROR", "CRITICAL", "Traceback")}
        firsts: dict[str, str] = {}
        for line in lines:
            if any(lvl in line for lvl in ("WARNING", "ERROR", "CRITICAL")):
                key = line.split(" ", 3)[-1][:100]
                firsts.setdefault(key, line[:300])
        return {"lines": len(lines), "by_level": levels, "distinct_samples": list(firsts.values())[:8]}
