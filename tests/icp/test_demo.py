"""`icp demo` as a user runs it: a fresh embedded database, the city seeded, crews, sensors and the
autopilot at work, a clean stop on its own (--duration) or on Ctrl-C."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path

import pytest

from tests.process import ICP, free_port, icp_env

pytestmark = pytest.mark.slow


def _run(cluster_dir: Path, *args: str) -> tuple[subprocess.Popen[str], list[str], threading.Event]:
    proc = subprocess.Popen([*ICP, "demo", *args], env=icp_env(ICP_DATA_DIR=cluster_dir), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "ICP demo city is running" in line:
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    return proc, lines, ready


def _login(url: str, password: str) -> urllib.request.OpenerDirector:
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
    request = urllib.request.Request(url + "api/v1/session", method="POST",
                                     headers={"Content-Type": "application/json"},
                                     data=json.dumps({"username": "dispatcher", "password": password}).encode())
    with opener.open(request, timeout=10) as response:
        assert response.status == 200
    return opener


def test_demo_city_lives_on_its_own_for_a_minute(cluster_dir: Path) -> None:
    port = free_port()
    proc, lines, ready = _run(cluster_dir, "--duration", "60", "--seed", "1", "--port", str(port))
    assert ready.wait(120), "".join(lines)
    banner = "".join(lines)
    url = f"http://127.0.0.1:{port}/"
    assert url in banner
    password = banner.split("dispatcher login: dispatcher / ")[1].split()[0]
    opener = _login(url, password)
    with opener.open(url + "console/", timeout=10) as response:
        assert b"ICP dispatch console" in response.read()
    # While it runs, the city shows up to a logged-in dispatcher: incidents, and some already dispatched.
    deadline, incidents = time.monotonic() + 50, []
    while time.monotonic() < deadline:
        with opener.open(url + "api/v1/incidents?status=all", timeout=10) as response:
            incidents = json.loads(response.read())["incidents"]
        if len(incidents) >= 2 and any(i["assignments"] for i in incidents):
            break
        time.sleep(2)
    assert len(incidents) >= 2 and any(i["assignments"] for i in incidents), incidents
    assert proc.wait(timeout=120) == 0, "".join(lines)
    summary = json.loads(lines[-1])
    assert summary["seeded"]["units"] >= 25 and summary["seeded"]["agencies"] == 5
    assert summary["feed"]["alerts"] >= 5 and summary["feed"]["errors"] == 0
    assert {"smoke", "gunshot", "collision", "weather"} <= set(summary["feed"]["scenarios"])
    assert summary["incidents"] >= 3 and summary["dispatched_incidents"] >= 2, summary
    assert summary["simulation"]["positions"] > 100 and summary["simulation"]["acknowledged"] >= 1, summary


def test_ctrl_c_stops_everything_cleanly_and_a_rerun_starts_afresh(cluster_dir: Path) -> None:
    for _ in range(2):  # the second run reuses the data directory (roads, cluster) on a fresh database
        port = free_port()
        proc, lines, ready = _run(cluster_dir, "--seed", "3", "--port", str(port), "--password", "sesame-123")
        assert ready.wait(120), "".join(lines)
        time.sleep(4)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0, "".join(lines)
        summary = json.loads(lines[-1])
        assert summary["seeded"]["stations"] == 6
        assert not any("Traceback" in line for line in lines), "".join(lines)
    # The embedded PostgreSQL stopped with the demo: nothing holds the data directory.
    assert not (cluster_dir / "demo" / "pg" / "postmaster.pid").exists()
