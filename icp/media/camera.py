"""Camera feeds attached to an incident: a URL (RTSP, HTTP(S) or a file in the configured directory) read
by aiortc's MediaPlayer in its own thread, relayed to the incident's conference.

A camera URL is a server-side request like a webhook, so it passes the same SSRF guard
(`icp.webhooks.ssrf`): its host must resolve to public addresses only, unless the operator allows
a network (``media_camera_allow``); the player then connects to the address that was checked, not
to the name again (for RTSP and plain HTTP; HTTPS keeps the name for its certificate). ``file:``
URLs must name a file inside ``media_camera_dir``, so a camera cannot read the server's files.
"""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from aiortc.contrib.media import MediaPlayer
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av.frame import Frame
from av.packet import Packet

from icp.errors import FieldError, validation
from icp.webhooks.ssrf import AllowList, BlockedDestination, check_url, resolve_and_check

SCHEMES = ("rtsp", "rtsps", "http", "https", "file")
DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322, "http": 80, "https": 443}
OPEN_TIMEOUT_S = 10.0
MAX_CAMERAS = 8  # per incident


@dataclass(eq=False)
class Camera:
    id: str
    incident_id: str
    url: str  # as given, without credentials
    host: str
    player: MediaPlayer
    track: MediaStreamTrack
    added_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    added_by: str = ""

    def view(self) -> dict[str, Any]:
        return {"id": self.id, "incident_id": self.incident_id, "url": self.url, "host": self.host,
                "added_at": self.added_at.isoformat(), "added_by": self.added_by}

    def stop(self) -> None:
        self.track.stop()


class LoopedFile(MediaStreamTrack):
    """A video file shown over and over at its own pace.

    aiortc's ``MediaPlayer(loop=True)`` paces only its first pass: its clock is not reset when the
    file starts again, so every later pass floods frames as fast as they decode (hundreds a
    second). Here each pass is a fresh player, paced from its own start; timestamps carry on from
    the previous pass so the receivers' decoders see one continuous stream."""

    kind = "video"

    def __init__(self, path: str, first: MediaPlayer) -> None:
        super().__init__()
        self._path, self._player = path, first
        self._offset = self._last = 0
        self._step = 1

    async def recv(self) -> Frame | Packet[Any]:
        while True:
            source = self._player.video
            assert source is not None
            try:
                frame = await source.recv()
            except MediaStreamError:
                if self.readyState != "live":
                    raise
                self._offset = self._last + self._step  # the next pass starts just after this one
                self._player = await asyncio.get_running_loop().run_in_executor(None, MediaPlayer, self._path)
                continue
            if frame.pts is not None:
                pts = frame.pts + self._offset
                if pts > self._last:
                    self._step = pts - self._last
                frame.pts = self._last = pts
            return frame

    def stop(self) -> None:
        super().stop()
        if self._player.video is not None:
            self._player.video.stop()


def _invalid(message: str) -> Exception:
    return validation([FieldError("url", message)])


async def checked_source(url: Any, allow: AllowList, files: Path | None) -> tuple[str, str, str, dict[str, str]]:
    """(what the player opens, the URL to show without credentials, its host, player options);
    refuses what the SSRF rules or the file rule forbid."""
    if not isinstance(url, str) or not 0 < len(url) <= 2048:
        raise _invalid("a camera URL of at most 2048 characters is required")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise _invalid("a camera URL is rtsp://, rtsps://, http://, https:// or file:")
    if scheme == "file":
        if files is None:
            raise _invalid("file: cameras are off on this server (media_camera_dir is not set)")
        root, path, is_file = await asyncio.get_running_loop().run_in_executor(
            None, _resolve_file, files, unquote(parts.path))
        if not path.is_relative_to(root) or not is_file:
            raise _invalid(f"file: cameras must name a file inside {root}")
        return str(path), f"file:{path}", "", {}
    # The webhook guard checks http(s) URLs; other schemes are checked as the same URL over http.
    stand_in = urlunsplit(("http" if scheme.startswith("rtsp") else scheme, parts.netloc, parts.path or "/", "", ""))
    try:
        destination = check_url(stand_in.replace(f"{parts.username}:{parts.password}@", "").replace(
            f"{parts.username}@", "") if parts.username else stand_in, allow)
        port = parts.port or DEFAULT_PORTS[scheme]
        addresses = await resolve_and_check(destination.host, port, allow)
    except BlockedDestination as exc:
        raise _invalid(str(exc)) from None
    except (OSError, ValueError):
        raise _invalid(f"{parts.hostname} does not resolve") from None
    shown = urlunsplit((scheme, destination.host + (f":{parts.port}" if parts.port else ""), parts.path,
                        parts.query, ""))
    target = url
    if scheme != "https" and scheme != "rtsps":
        address = addresses[0]
        host = f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
        auth = parts.netloc.rpartition("@")[0]
        netloc = (auth + "@" if auth else "") + host + (f":{parts.port}" if parts.port else "")
        target = urlunsplit((scheme, netloc, parts.path, parts.query, ""))
    options = {"rtsp_transport": "tcp", "timeout": str(int(OPEN_TIMEOUT_S * 1_000_000))} if scheme.startswith(
        "rtsp") else {"timeout": str(int(OPEN_TIMEOUT_S * 1_000_000))}
    return target, shown, destination.host, options


def _resolve_file(root: Path, name: str) -> tuple[Path, Path, bool]:
    path = Path(name).resolve()
    return root.resolve(), path, path.is_file()


async def open_camera(incident_id: str, url: Any, allow: AllowList, files: Path | None, added_by: str) -> Camera:
    target, shown, host, options = await checked_source(url, allow, files)
    loop = asyncio.get_running_loop()

    def start() -> MediaPlayer:
        # Opening a stream is blocking network (or file) I/O: never on the loop.
        if target.startswith("/"):
            return MediaPlayer(target)  # played again and again by LoopedFile
        return MediaPlayer(target, options=options)

    try:
        player = await asyncio.wait_for(loop.run_in_executor(None, start), OPEN_TIMEOUT_S + 2)
    except (TimeoutError, OSError, ValueError) as exc:
        raise _invalid(f"the camera could not be opened: {str(exc)[:200]}") from None
    except Exception as exc:  # PyAV's errors (av.error.*) for streams it cannot read
        raise _invalid(f"the camera could not be opened: {type(exc).__name__}") from None
    if player.video is None:
        raise _invalid("the camera URL has no video stream")
    track: MediaStreamTrack = LoopedFile(target, player) if target.startswith("/") else player.video
    return Camera("k" + secrets.token_hex(6), incident_id, shown, host, player, track, added_by=added_by)
