"""The dispatcher web console: its static files under ``/console/`` and its settings.

The console is plain files (``web/``: HTML, JavaScript modules, CSS) with no data in them: every
incident, unit and message reaches the browser through the API and the gateway, which need a
session. The files are sent with a strict Content-Security-Policy (scripts and styles from this
origin only, no inline script), revalidated on every load (``no-cache`` with an ETag: there is no
build step that would give them versioned names), and only from the ``web/`` folder.

The console's gateway link authenticates with the same session: the browser sends the
(HttpOnly) cookie with the WebSocket upgrade, and a ``hello`` without a token uses it (see
``icp.gateway.handler.console_session`` for the Origin check that goes with it).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

from icp import appkeys
from icp.auth.guard import principal, require
from icp.errors import not_found
from icp.httpapi import json_response, operation
from icp.resources import resource_dir

MAX_FILE_BYTES = 4 * 1024 * 1024
# What the console ships; anything else in web/ (or outside it) is not served.
CONTENT_TYPES = {
    ".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml",
    ".png": "image/png", ".ico": "image/x-icon", ".txt": "text/plain", ".json": "application/json",
    ".webmanifest": "application/manifest+json", ".woff2": "font/woff2",
}


@dataclass(frozen=True)
class _Cached:
    stamp: tuple[int, int]
    body: bytes
    etag: str


class ConsoleFiles:
    """The web/ folder, read once per change of a file (mtime and size), with ETags."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self._cache: dict[Path, _Cached] = {}

    def find(self, relative: str) -> Path | None:
        if not relative or any(part.startswith(".") or part == "" for part in relative.split("/")):
            return None
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root) or path.suffix not in CONTENT_TYPES or not path.is_file():
            return None
        return path

    def read(self, path: Path) -> _Cached:
        stat = path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        hit = self._cache.get(path)
        if hit is None or hit.stamp != stamp:
            if stat.st_size > MAX_FILE_BYTES:
                raise not_found("console file")
            body = path.read_bytes()
            hit = _Cached(stamp, body, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')
            self._cache[path] = hit
        return hit


CONSOLE_FILES = web.AppKey("console_files", ConsoleFiles)


def content_security_policy(request: web.Request) -> str:
    settings = request.app[appkeys.SETTINGS]
    images = ["'self'", "data:"]
    if settings.console_tile_url:
        parts = urlsplit(settings.console_tile_url.replace("{", "").replace("}", ""))
        if parts.scheme in ("http", "https") and parts.netloc:
            images.append(f"{parts.scheme}://{parts.netloc.split('@')[-1]}")
    host = request.host
    return "; ".join([
        "default-src 'none'", "script-src 'self'", "style-src 'self'", f"img-src {' '.join(images)}",
        f"connect-src 'self' ws://{host} wss://{host}", "media-src 'self'", "font-src 'self'", "manifest-src 'self'",
        "base-uri 'none'", "form-action 'self'", "frame-ancestors 'none'",
    ])


def security_headers(request: web.Request) -> dict[str, str]:
    return {
        "Content-Security-Policy": content_security_policy(request),
        "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY", "Referrer-Policy": "same-origin",
        "Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Resource-Policy": "same-origin",
        # The console's own calls and push-to-talk need the microphone (and a call's video the camera).
        "Permissions-Policy": "camera=(self), microphone=(self), geolocation=()",
    }


async def root(request: web.Request) -> web.Response:
    raise web.HTTPFound("/console/")


async def console_file(request: web.Request) -> web.Response:
    files = request.app[CONSOLE_FILES]
    relative = request.match_info.get("path") or "index.html"
    path = files.find(relative)
    if path is None:
        raise not_found(f"console file {relative[:100]!r}")
    cached = files.read(path)
    headers = {**security_headers(request), "Cache-Control": "no-cache", "ETag": cached.etag}
    if request.headers.get("If-None-Match") == cached.etag:
        return web.Response(status=304, headers=headers)
    content_type = CONTENT_TYPES[path.suffix]
    charset = "utf-8" if content_type.startswith("text/") or content_type.endswith(("json", "+xml")) else None
    return web.Response(body=cached.body, content_type=content_type, charset=charset, headers=headers)


CONFIG_SCHEMA = {"type": "object", "properties": {
    "principal": {"type": "object"}, "tile_url": {"type": ["string", "null"]},
    "tile_attribution": {"type": "string"}, "timers": {"type": "object"}}}


@operation("The console's settings for the signed-in user: who they are, map tiles, standards timers",
           tags=("console",), responses={200: {"description": "settings", "schema": CONFIG_SCHEMA}})
@require()
async def console_config(request: web.Request) -> web.Response:
    settings = request.app[appkeys.SETTINGS]
    return json_response({
        "principal": principal(request).to_json(),
        "tile_url": settings.console_tile_url,
        "tile_attribution": settings.console_tile_attribution,
        "timers": {"pending_amber_s": settings.console_pending_amber_s,
                   "pending_red_s": settings.console_pending_red_s,
                   "response_amber_s": settings.console_response_amber_s,
                   "response_red_s": settings.console_response_red_s},
    }, headers={"Cache-Control": "no-store"})


def setup(app: web.Application) -> None:
    app.router.add_get("/api/v1/console/config", console_config)
    try:
        folder = resource_dir("web")
    except FileNotFoundError:  # an installation without the console still serves the API
        return
    app[CONSOLE_FILES] = ConsoleFiles(folder)
    app.router.add_get("/", root)
    app.router.add_get("/console", root)
    app.router.add_get("/console/", console_file)
    app.router.add_get("/console/{path:.+}", console_file)
