"""Running a node: listen, and on SIGTERM/SIGINT shut down gracefully.

Shutdown order: stop accepting connections; close WebSockets with 1001 (Going Away); let
in-flight requests finish (up to ``shutdown_timeout_s``); then tear down the app's resources in
reverse (event feed, group commit — which drains its queue — the pool, the embedded cluster).
"""

from __future__ import annotations

import gc
import logging

from aiohttp import web

from icp.app import create_app
from icp.config import Settings

log = logging.getLogger(__name__)


def serve(settings: Settings) -> None:
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    if settings.gc_threshold > 0:
        # With thousands of sockets the heap is large and a full collection pauses the event loop
        # for hundreds of milliseconds; collect less often, and never scan what start-up built.
        gc.set_threshold(settings.gc_threshold, 20, 100)
        gc.freeze()
    app = create_app(settings)
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
    )
    log.info("ICP stopped")
