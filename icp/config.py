"""Configuration: environment variables over an optional TOML file, with safe defaults."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A setting is malformed; the message names the setting and where it came from."""


def default_data_dir() -> Path:
    # Root's home is private (0700) and the embedded PostgreSQL runs as an unprivileged user that
    # must traverse the data directory's parents, so root gets a system location.
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return Path("/var/lib/icp")
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "icp"


@dataclass(frozen=True)
class Settings:
    """Every setting of a node. Environment names are ``ICP_`` + the field name in upper case;
    in the TOML file (``ICP_CONFIG``) the same names are written in lower case without prefix."""

    database_url: str | None = None
    data_dir: Path = field(default_factory=default_data_dir)
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1  # > 1: a supervisor runs this many node processes on one address
    reuse_port: bool = False  # set for workers: several processes listen on one port
    auto_migrate: bool = True
    log_level: str = "INFO"
    # HTTP
    max_body_bytes: int = 1024 * 1024
    shutdown_timeout_s: float = 10.0
    gc_threshold: int = 50_000  # the cyclic collector's first threshold (Python: 700); 0 leaves it
    # Auth
    session_ttl_s: int = 12 * 3600
    token_cache_ttl_s: float = 5.0  # a revoked bearer token stops working within this on every node
    cookie_secure: bool = False
    # Database pool
    pool_min: int = 2
    pool_max: int = 20
    db_timeout_s: float = 5.0
    # Geography: an external Nominatim-compatible geocoder asked when the offline gazetteer
    # has no answer (None: offline only).
    geocoder_url: str | None = None
    geocoder_timeout_s: float = 5.0
    # Dispatch policy: acknowledgement deadline and what follows a timeout or a decline (none,
    # recommend the next unit, or dispatch it), whether closing releases the units, and the
    # recommendation's limits.
    ack_timeout_s: float = 60.0
    mutual_aid_timeout_s: float = 120.0
    on_ack_timeout: str = "dispatch"
    on_decline: str = "recommend"
    close_releases_units: bool = True
    max_travel_s: float = 720.0
    max_position_age_s: float = 300.0
    timer_interval_s: float = 0.25
    # Sensor intake: the service area when no jurisdiction is defined ("min_lon,min_lat,max_lon,
    # max_lat"), CAP language preference, strict XSD validation, per-key rate limits.
    service_area: str | None = None
    intake_languages: str = "en-US,en,fi,sv"
    cap_strict: bool = False
    sensor_rate_per_s: float = 1000.0
    sensor_burst: int = 2000
    # Secrets at rest: the key (base64 of 32 bytes) sealing webhook signing secrets. None: a key
    # file in data_dir, made on first use. Nodes sharing a database must share this key.
    secret_key: str | None = None
    # Agency webhooks: destinations allowed despite the SSRF rules ("loopback", CIDRs, host
    # names; comma-separated), request timeout, retry schedule (delays after each failed attempt)
    # and a time scale for it (tests), rotation overlap, per-endpoint lease, claim poll.
    webhook_allow: str = ""
    webhook_timeout_s: float = 10.0
    webhook_retry_schedule: str = "0,5s,30s,2m,10m,30m,1h,3h,6h"
    webhook_time_scale: float = 1.0
    webhook_secret_overlap_s: float = 86_400.0
    webhook_lease_s: float = 30.0
    webhook_poll_s: float = 1.0
    # This ICP's domain name: the EIDO sender and issuer of the identifiers in webhook payloads.
    site_domain: str = "icp.localhost"
    # Signed inbound agency requests: timestamp tolerance and body bound.
    inbound_tolerance_s: int = 300
    inbound_max_bytes: int = 64 * 1024
    # Web console: an optional raster tile URL under ICP's own vector layers ("https://…/{z}/{x}/{y}.png";
    # its origin is allowed by the console's CSP), its attribution, and the queue's standards timers:
    # amber/red after this long pending (since creation) and without a unit on scene (since dispatch).
    console_tile_url: str | None = None
    console_tile_attribution: str = "© OpenStreetMap contributors"
    console_pending_amber_s: float = 60.0
    console_pending_red_s: float = 90.0
    console_response_amber_s: float = 300.0
    console_response_red_s: float = 480.0
    # Event log
    event_poll_interval_s: float = 1.0
    group_commit_max_batch: int = 2000
    group_commit_max_queue: int = 100_000
    # Messaging (docs/messaging.md): text and attachment bounds, what a member gets on connect,
    # how receipts are written, the message writer's batches and a per-member sending rate.
    message_max_chars: int = 4000  # at most 4000, the WebSocket protocol's own bound
    attachment_max_bytes: int = 10 * 1024 * 1024
    attachment_types: str = "image/jpeg,image/png,image/gif,image/webp,application/pdf"
    message_backlog: int = 100
    message_recent_incident_s: float = 86_400.0
    message_emergency_repeat_s: float = 86_400.0
    message_receipt_flush_s: float = 0.25
    message_writer_max_batch: int = 1000
    message_writer_max_queue: int = 50_000
    message_rate_per_s: float = 20.0
    message_burst: int = 60
    # Media (docs/media.md): WebRTC calls, incident conferences and push-to-talk, terminated here.
    # ICE servers ("stun:host:3478,turn:user:secret@host:3478?transport=udp", or a JSON list of
    # RTCIceServer objects); host addresses offered as candidates (empty: every interface but
    # loopback, aioice's default; "127.0.0.1" or "loopback,auto" for loopback-only hosts and tests);
    # the address clients are told a room's node has (room_elsewhere); ring timeout; floor control;
    # room size; recording retention; camera URLs let through the SSRF rules and the directory
    # file: URLs may name.
    media_enabled: bool = True
    media_ice_servers: str = ""
    media_host_addresses: str = ""
    media_node_url: str | None = None
    media_ring_timeout_s: float = 30.0
    media_ptt_max_talk_s: float = 30.0
    media_ptt_emergency_max_talk_s: float = 120.0
    media_ptt_queue: bool = True
    media_max_participants: int = 32
    media_record: bool = True
    media_retention_days: float = 365.0
    media_camera_allow: str = ""
    media_camera_dir: Path | None = None

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pg"

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def _coerce(name: str, kind: Any, raw: Any, origin: str) -> Any:
    where = f"{name} (from {origin})"
    if kind in ("bool", bool):
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{where}: expected a boolean, got {raw!r}")
    if kind in ("int", int):
        try:
            return int(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected an integer, got {raw!r}") from None
    if kind in ("float", float):
        try:
            return float(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {raw!r}") from None
    if kind in ("Path", Path):
        return Path(str(raw)).expanduser()
    if raw in ("", None):
        return None if "None" in str(kind) else ""
    return str(raw)


def load_settings(
    environ: Mapping[str, str] | None = None, **overrides: Any
) -> Settings:
    """Settings from the TOML file named by ``ICP_CONFIG`` (if any), then the environment, then
    explicit overrides (CLI flags). Unknown keys in the file are an error, so typos surface."""
    env = os.environ if environ is None else environ
    known = {f.name: f.type for f in fields(Settings)}
    values: dict[str, Any] = {}

    config_path = env.get("ICP_CONFIG")
    if config_path:
        path = Path(config_path).expanduser()
        try:
            document = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"ICP_CONFIG names {path}, which does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from None
        table = document.get("icp", document)
        for key, raw in table.items():
            name = key.lower().removeprefix("icp_")
            if name not in known:
                raise ConfigError(f"{path}: unknown setting {key!r}")
            values[name] = _coerce(name, known[name], raw, str(path))

    for name, kind in known.items():
        env_name = "ICP_" + name.upper()
        if env_name in env:
            values[name] = _coerce(name, kind, env[env_name], env_name)

    for name, raw in overrides.items():
        if raw is not None:
            values[name] = _coerce(name, known[name], raw, "command line")

    settings = Settings(**values)
    if not 0 < settings.port < 65536:
        raise ConfigError(f"port {settings.port} is outside 1..65535")
    if not 1 <= settings.workers <= 64:
        raise ConfigError("workers must be between 1 and 64")
    if settings.pool_min < 1 or settings.pool_max < settings.pool_min:
        raise ConfigError("pool_min must be ≥ 1 and pool_max ≥ pool_min")
    if not 1 <= settings.message_max_chars <= 4000:
        raise ConfigError("message_max_chars must be between 1 and 4000 (the protocol's bound)")
    if settings.attachment_max_bytes < 1 or settings.message_backlog < 0 or settings.message_burst < 1:
        raise ConfigError("attachment_max_bytes and message_burst must be ≥ 1, message_backlog ≥ 0")
    if settings.message_rate_per_s <= 0 or settings.message_receipt_flush_s <= 0:
        raise ConfigError("message_rate_per_s and message_receipt_flush_s must be positive")
    if not 2 <= settings.media_max_participants <= 1000 or settings.media_ring_timeout_s <= 0 or (
            settings.media_ptt_max_talk_s <= 0 or settings.media_ptt_emergency_max_talk_s <= 0
            or settings.media_retention_days < 0):
        raise ConfigError("media_max_participants must be 2..1000; media timeouts positive; media_retention_days ≥ 0")
    return settings
