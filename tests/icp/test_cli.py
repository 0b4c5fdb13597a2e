"""The `icp` command line end to end, in subprocesses, against real PostgreSQL clusters."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import asyncpg
import pytest

from icp.cli import build_parser
from icp.store.embedded import EmbeddedCluster
from tests.process import free_port, icp_env, run_icp, serving

COMMANDS = [
    ["serve"], ["migrate"], ["token", "create"], ["token", "revoke"], ["user", "create"],
    ["audit", "verify"], ["db", "url"], ["roads", "import"], ["areas", "import"], ["simulate"],
]


@pytest.mark.parametrize("command", [[], *COMMANDS], ids=lambda c: " ".join(c) or "icp")
def test_every_command_has_help(command: list[str]) -> None:
    result = run_icp(*command, "--help", env=icp_env())
    assert result.returncode == 0, result.stderr
    assert "usage: icp" in result.stdout


def test_parser_knows_every_fixed_command() -> None:
    parser = build_parser()
    for command in COMMANDS:
        args = {"serve": [], "migrate": [], "create": ["--role", "admin", "--username", "u"],
                "revoke": ["1"], "verify": [], "url": [], "simulate": ["--url", "http://x", "--token", "t"]}.get(
                    command[-1], [])
        if command[0] == "token" and command[-1] == "create":
            args = ["--role", "admin"]
        if command[-1] == "import":
            args = ["file"] + (["--agency", "a", "--kind", "zone"] if command[0] == "areas" else [])
        assert parser.parse_args([*command, *args]).func


def _get(url: str, token: str | None = None) -> tuple[int, dict]:  # type: ignore[type-arg]
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


async def test_token_user_migrate_audit_against_an_external_database(empty_db_url: str) -> None:
    env = icp_env(ICP_DATABASE_URL=empty_db_url)
    migrated = run_icp("migrate", env=env)
    assert migrated.returncode == 0, migrated.stderr
    assert "applied 0001_foundation" in migrated.stdout
    assert "up to date" in run_icp("migrate", env=env).stdout

    token = run_icp("token", "create", "--role", "dispatcher", "--agency", "hki-fire", "--name", "desk 3",
                    "--expires-in", "12h", env=env)
    assert token.returncode == 0, token.stderr
    secret = token.stdout.strip()
    assert secret.startswith("icp_") and "\n" not in secret
    assert "shown only once" in token.stderr

    made = run_icp("user", "create", "--username", "alice", "--role", "supervisor", "--password-stdin",
                   env=env, stdin="a long enough secret\n")
    assert made.returncode == 0, made.stderr
    weak = run_icp("user", "create", "--username", "bob", "--role", "dispatcher", "--password-stdin",
                   env=env, stdin="short\n")
    assert weak.returncode != 0 and "at least 8" in weak.stderr
    bad_role = run_icp("token", "create", "--role", "emperor", env=env)
    assert bad_role.returncode != 0 and "unknown role" in bad_role.stderr

    conn = await asyncpg.connect(empty_db_url)
    try:
        row = await conn.fetchrow("SELECT role, agency_id, name, expires_at FROM api_tokens")
        assert (row["role"], row["agency_id"], row["name"]) == ("dispatcher", "hki-fire", "desk 3")
        assert row["expires_at"] is not None
        assert await conn.fetchval("SELECT role FROM users WHERE username = 'alice'") == "supervisor"
        async with conn.transaction():
            from icp.store import eventlog

            await eventlog.append(conn, [eventlog.NewEvent("test.e", f"s:{i}", {"i": i}) for i in range(5)])
    finally:
        await conn.close()

    ok = run_icp("audit", "verify", env=env)
    assert ok.returncode == 0 and "ok: 5 events" in ok.stdout

    conn = await asyncpg.connect(empty_db_url)
    try:
        await conn.execute("ALTER TABLE events DISABLE TRIGGER USER")
        await conn.execute("""UPDATE events SET data = '{"i": 42}' WHERE seq = 3""")
    finally:
        await conn.close()
    broken = run_icp("audit", "verify", env=env)
    assert broken.returncode == 1
    assert "BROKEN at seq 3" in broken.stdout

    assert run_icp("db", "url", env=env).stdout.strip() == empty_db_url


def test_configuration_file_and_errors(tmp_path: Path, empty_db_url: str) -> None:
    config = tmp_path / "icp.toml"
    config.write_text(f'database_url = "{empty_db_url}"\nport = 9999\n')
    assert run_icp("db", "url", env=icp_env(ICP_CONFIG=config)).stdout.strip() == empty_db_url
    config.write_text('databse_url = "typo"\n')
    result = run_icp("db", "url", env=icp_env(ICP_CONFIG=config))
    assert result.returncode == 1 and "unknown setting 'databse_url'" in result.stderr
    result = run_icp("db", "url", env=icp_env(ICP_CONFIG=tmp_path / "missing.toml"))
    assert result.returncode == 1 and "does not exist" in result.stderr
    result = run_icp("serve", env=icp_env(ICP_PORT="eighty"))
    assert result.returncode == 1 and "ICP_PORT" in result.stderr


@pytest.mark.slow
def test_embedded_cluster_is_shared_started_on_demand_and_persistent(cluster_dir: Path) -> None:
    data = cluster_dir / "icp-data"
    env = icp_env(ICP_DATA_DIR=data)
    cluster = EmbeddedCluster(data / "pg")

    # No server: the command starts the cluster for its duration, then stops it.
    first = run_icp("token", "create", "--role", "admin", env=env)
    assert first.returncode == 0, first.stderr
    assert not cluster.is_running()
    url = run_icp("db", "url", env=env).stdout.strip()
    assert url == cluster.url() and "host=" in url

    port = free_port()
    with serving(env, port) as proc:
        assert cluster.is_running()
        # While the server runs, CLI commands attach to its cluster and leave it running.
        second = run_icp("token", "create", "--role", "dispatcher", env=env)
        assert second.returncode == 0, second.stderr
        assert cluster.is_running()
        assert _get(f"http://127.0.0.1:{port}/readyz")[0] == 200
        # Data persisted across the earlier stop: the first token still works.
        status, me = _get(f"http://127.0.0.1:{port}/api/v1/session", first.stdout.strip())
        assert status == 200 and me["role"] == "admin"
        assert _get(f"http://127.0.0.1:{port}/api/v1/session", second.stdout.strip())[0] == 200
        verify = run_icp("audit", "verify", env=env)
        assert verify.returncode == 0, verify.stderr
    assert proc.returncode == 0
    # The server was the last holder: the cluster stopped with it.
    assert not cluster.is_running()


@pytest.mark.slow
def test_server_restart_reuses_the_data(cluster_dir: Path) -> None:
    env = icp_env(ICP_DATA_DIR=cluster_dir / "d")
    token = run_icp("token", "create", "--role", "admin", env=env).stdout.strip()
    for _ in range(2):
        port = free_port()
        with serving(env, port):
            assert _get(f"http://127.0.0.1:{port}/api/v1/session", token)[0] == 200


def test_no_migrate_leaves_the_schema_alone(empty_db_url: str) -> None:
    result = run_icp("token", "create", "--role", "admin", "--no-migrate", env=icp_env(ICP_DATABASE_URL=empty_db_url))
    assert result.returncode == 1
    assert "api_tokens" in result.stderr  # the table does not exist: nothing was migrated


def test_serve_refuses_a_port_in_use(db_url: str) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [*__import__("tests.process", fromlist=["ICP"]).ICP, "serve", "--port", str(port)],
            env=icp_env(ICP_DATABASE_URL=db_url), capture_output=True, text=True, timeout=60, check=False,
        )
    assert proc.returncode != 0


def _unprivileged_runner() -> list[str]:
    """A command prefix running as an ordinary user, or skip with the reason."""
    import os
    import pwd
    import shutil
    import sys

    if os.geteuid() != 0:
        return []  # already an ordinary user: the other tests cover this case
    name = "icp_test_user"
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--shell", "/usr/sbin/nologin", name], check=True)
    runuser = shutil.which("runuser")
    if runuser is None:
        pytest.skip("runuser is not available to drop privileges")
    probe = subprocess.run([runuser, "-u", name, "--", sys.executable, "-c", "import icp.cli"],
                           capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"the test interpreter is not usable by an ordinary user: {probe.stderr.strip()[-200:]}")
    return [runuser, "-u", name, "--"]


@pytest.mark.slow
def test_embedded_cluster_as_an_ordinary_user(cluster_dir: Path) -> None:
    import shutil
    import sys

    prefix = _unprivileged_runner()
    data = cluster_dir / "user-data"
    data.mkdir()
    if prefix:
        shutil.chown(data, prefix[2])
    env = icp_env(ICP_DATA_DIR=data)
    made = subprocess.run([*prefix, "env", *[f"{k}={v}" for k, v in env.items() if k.startswith("ICP_")],
                           sys.executable, "-m", "icp.cli", "token", "create", "--role", "admin"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert made.returncode == 0, made.stderr
    assert made.stdout.strip().startswith("icp_")
    pg = data / "pg"
    assert (pg / "PG_VERSION").exists()
    if prefix:
        import pwd

        assert pwd.getpwuid(pg.stat().st_uid).pw_name == prefix[2]  # not root, not embedded_postgres
    assert not EmbeddedCluster(pg).is_running()


@pytest.mark.slow
def test_serve_with_workers_shares_one_address(db_url: str, make_token) -> None:  # type: ignore[no-untyped-def]
    import asyncio
    import signal

    import psutil

    token = asyncio.run(make_token("admin"))
    port = free_port()
    with serving(icp_env(ICP_DATABASE_URL=db_url), port, "--workers", "2") as proc:
        workers = psutil.Process(proc.pid).children()
        assert len(workers) == 2
        assert all(_get(f"http://127.0.0.1:{port}/api/v1/session", token)[0] == 200 for _ in range(20))
        assert _get(f"http://127.0.0.1:{port}/readyz")[0] == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)
