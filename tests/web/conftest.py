"""Browser tests: Debian's Chromium driven by Playwright (``executable_path``; Playwright never
downloads a browser here), against a real `icp demo` process on a private database.

Outside CI the tests skip when Chromium or Playwright is missing; in CI (``CI=true``) they fail
instead, so a missing browser cannot pass unnoticed."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from icp.auth import credentials
from icp.store.embedded import EmbeddedCluster
from tests.conftest import _create_database, _drop_database, _public_tmpdir
from tests.process import ICP, free_port, icp_env

CHROMIUM = os.environ.get("ICP_CHROMIUM", "/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[2]


def screenshot_dir() -> Path:
    """Where the browser tests save their screenshots: docs/screenshots when asked to refresh the
    README's (ICP_UPDATE_SCREENSHOTS=1), else the run's artifacts (ICP_TEST_ARTIFACTS, default
    ./artifacts/screenshots, ignored by git) for a person or CI to look at afterwards."""
    if os.environ.get("ICP_UPDATE_SCREENSHOTS"):
        target = ROOT / "docs" / "screenshots"
    else:
        target = Path(os.environ.get("ICP_TEST_ARTIFACTS", ROOT / "artifacts")) / "screenshots"
    target.mkdir(parents=True, exist_ok=True)
    return target
PASSWORD = "console-test-pass"
VIEWPORT = {"width": 1366, "height": 768}


def _need_browser() -> None:
    missing = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing = "the playwright package is not installed (pip install -e '.[dev]')"
    if missing is None and not Path(CHROMIUM).exists():
        missing = f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)"
    if missing:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"browser tests must run in CI: {missing}")
        pytest.skip(missing)


@dataclass
class DemoServer:
    """An `icp demo` process: its URL, database, and a way to stop it."""

    url: str
    port: int
    db_url: str
    data_dir: Path
    proc: subprocess.Popen[str]
    output: list[str] = field(default_factory=list)

    def token(self, role: str, **kwargs: Any) -> str:
        async def make() -> str:
            conn = await asyncpg.connect(self.db_url)
            try:
                return (await credentials.create_token(conn, role, **kwargs)).secret
            finally:
                await conn.close()

        # Playwright's synchronous API keeps an event loop in this thread: run ours in another.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, make()).result()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_demo(db_url: str, data_dir: Path, port: int, *extra: str, timeout: float = 120,
               env: dict[str, str] | None = None) -> DemoServer:
    """``env``: more ICP_* settings for the process (e.g. ICP_MEDIA_HOST_ADDRESSES)."""
    env = icp_env(ICP_DATABASE_URL=db_url, ICP_DATA_DIR=data_dir, ICP_EVENT_POLL_INTERVAL_S="0.3",
                  ICP_POOL_MIN="1", ICP_POOL_MAX="8", **(env or {}))
    proc = subprocess.Popen([*ICP, "demo", "--port", str(port), "--seed", "1", "--password", PASSWORD, *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    server = DemoServer(f"http://127.0.0.1:{port}", port, db_url, data_dir, proc)
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            server.output.append(line)
            if "ICP demo city is running" in line:
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + timeout
    while not ready.wait(0.2):
        if proc.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise AssertionError("icp demo did not start:\n" + "".join(server.output))
    return server


@pytest.fixture(scope="module")
def demo_data(pg_cluster: EmbeddedCluster, template_db: str, helsinki_roads: Path) -> Iterator[tuple[str, Path]]:
    """A fresh database and a data directory whose roads are the session's Helsinki import."""
    name = _create_database(pg_cluster, template_db)
    base = _public_tmpdir()
    data_dir = base / "demo"
    data_dir.mkdir()
    (data_dir / "roads").symlink_to(helsinki_roads, target_is_directory=True)
    yield pg_cluster.url(name), data_dir
    _drop_database(pg_cluster, name)
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def demo(demo_data: tuple[str, Path]) -> Iterator[DemoServer]:
    """The demo city with quick crews, no sensor feed and no autopilot: the tests make what happens."""
    _need_browser()
    db_url, data_dir = demo_data
    server = start_demo(db_url, data_dir, free_port(), "--no-feed", "--no-autopilot", "--speed", "4")
    yield server
    server.stop()


def launch_chromium(args: list[str]) -> Iterator[Any]:
    """Debian's Chromium through Playwright with these flags, closed after the module's tests."""
    _need_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=args)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    yield from launch_chromium(["--no-sandbox", "--disable-gpu"])


def login(browser: Any, url: str, username: str = "dispatcher", **context_options: Any) -> Any:
    """A new browser session (its own cookies), logged in, with the gateway link up; ``context_options``
    go to Playwright's ``new_context`` (e.g. ``permissions=["microphone"]``)."""
    context = browser.new_context(viewport=VIEWPORT, **context_options)
    page = context.new_page()
    page.set_default_timeout(20_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors
    page.goto(url + "/")
    page.fill("#login-username", username)
    page.fill("#login-password", PASSWORD)
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("#conn-status.online")
    return page
