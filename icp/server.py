"""Running a node: listen, and on SIGTERM/SIGINT shut down gracefully.

Shutdown order: stop accepting connections; close WebSockets with 1001 (Going Away); let
in-flight requests finish (up to ``shutdown_timeout_s``); then tear down the app's resources in
reverse (event feed, group commit — which drains its queue — the pool, the embedded cluster).

One Python process uses one core. With ``workers`` > 1 the process becomes a supervisor: it holds
the database (starting the embedded cluster if needed), applies migrations once, and runs that
many worker processes on the same address (SO_REUSEPORT, so the kernel spreads connections). Each
worker is an ordinary node — nodes already share one PostgreSQL — so nothing else changes. A
worker that dies is restarted; SIGTERM/SIGINT go to every worker, which shut down as above.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import subprocess
import sys
import time

from aiohttp import web

from icp.app import create_app
from icp.config import Settings
from icp.store import migrations
from icp.store.database import connect, database_url

log = logging.getLogger(__name__)


async def _freeze_heap(app: web.Application) -> None:
    """Move everything start-up built (gazetteer, road network, live picture) out of the collector's
    sight: a full collection otherwise walks it all and pauses the event loop for hundreds of ms."""
    gc.collect()
    gc.freeze()


def serve(settings: Settings) -> None:
    if settings.workers > 1:
        supervise(settings)
        return
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    if settings.gc_threshold > 0:
        # With thousands of sockets the heap is large and a full collection pauses the event loop
        # for hundreds of milliseconds; collect less often, and never scan what start-up built.
        gc.set_threshold(settings.gc_threshold, 20, 100)
    app = create_app(settings)
    if settings.gc_threshold > 0:
        app.on_startup.append(_freeze_heap)  # after the cleanup contexts: the road graph, gazetteer, picture
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        shutdown_timeout=settings.shutdown_timeout_s,
        print=lambda _banner: log.info(
            "ICP listening on http://%s:%d (database: %s)", settings.host, settings.port,
            "external" if settings.database_url else f"embedded in {settings.pgdata}",
        ),
        access_log=None,
        handle_signals=True,
        reuse_port=settings.reuse_port,
    )
    log.info("ICP stopped")


def supervise(settings: Settings) -> None:
    """Run ``settings.workers`` worker nodes on one address until SIGTERM/SIGINT."""
    with database_url(settings) as url:
        if settings.auto_migrate:
            asyncio.run(_migrate(url))
        env = {**os.environ, "ICP_DATABASE_URL": url, "ICP_WORKERS": "1", "ICP_REUSE_PORT": "true",
               "ICP_AUTO_MIGRATE": "false", "ICP_HOST": settings.host, "ICP_PORT": str(settings.port)}
        command = [sys.executable, "-m", "icp.cli", "serve"]
        stopping = False

        def stop(signum: int, _frame: object) -> None:
            nonlocal stopping
            stopping = True
            for worker in workers:
                if worker.poll() is None:
                    worker.send_signal(signal.SIGTERM)

        # Own sessions: a terminal's Ctrl-C reaches the supervisor only, which stops each worker once.
        workers = [subprocess.Popen(command, env=env, start_new_session=True) for _ in range(settings.workers)]
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        log.info("ICP supervising %d workers on http://%s:%d", settings.workers, settings.host, settings.port)
        while True:
            alive = [w for w in workers if w.poll() is None]
            if stopping and not alive:
                break
            if not stopping:
                for n, worker in enumerate(workers):
                    if worker.poll() is not None:  # a worker died: replace it
                        log.warning("worker %d exited with %s; restarting it", worker.pid, worker.returncode)
                        time.sleep(1)
                        workers[n] = subprocess.Popen(command, env=env, start_new_session=True)
            time.sleep(0.2)
    log.info("ICP stopped")


async def _migrate(url: str) -> None:
    conn = await connect(url)
    try:
        for m in await migrations.migrate(conn):
            log.info("applied migration %s", m.label)
    finally:
        await conn.close()
