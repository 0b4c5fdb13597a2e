"""Running real `icp` processes in tests: the CLI and `icp serve` on a free loopback port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

ICP = [sys.executable, "-m", "icp.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def icp_env(**values: str | Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ICP_")}
    for key, value in values.items():
        if value is not None:
            env[key] = str(value)
    return env


def run_icp(*args: str, env: Mapping[str, str], stdin: str | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ICP, *args], env=dict(env), input=stdin, capture_output=True, text=True,
                          timeout=timeout, check=False)


@contextmanager
def serving(env: Mapping[str, str], port: int, *extra: str, timeout: float = 90) -> Iterator[subprocess.Popen[str]]:
    """`icp serve` in a subprocess, ready (healthz answers) when the block starts; SIGTERMed after."""
    proc = subprocess.Popen([*ICP, "serve", "--port", str(port), *extra], env=dict(env),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"icp serve exited early:\n{proc.stdout.read() if proc.stdout else ''}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("icp serve did not become healthy in time")
            time.sleep(0.1)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout:
            proc.stdout.close()
