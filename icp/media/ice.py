"""ICE configuration: STUN/TURN servers from settings, and which host addresses become candidates.

aioice gathers host candidates from every interface except loopback (``get_host_addresses`` skips
127.0.0.1 and ::1). On a loopback-only host, or in tests where both peers run on one machine, a
peer then has no usable candidate. `use_host_addresses` replaces the gathering function with one
that offers the configured addresses (the word ``auto`` standing for aioice's own choice). aioice
has no per-connection hook for this, so the choice is process-wide: it applies to every peer in the
process, the SDK's included, which is what a test or a single-purpose node wants.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import unquote

import aioice.ice
from aiortc import RTCConfiguration, RTCIceServer

_original_host_addresses: Callable[[bool, bool], list[str]] = aioice.ice.get_host_addresses
MAX_SERVERS = 8


class IceConfigError(ValueError):
    """An ICE setting does not parse; the message says which entry."""


def parse_ice_servers(text: str) -> list[RTCIceServer]:
    """``media_ice_servers``: a JSON list of ``{urls, username?, credential?}`` or comma-separated
    URLs, where a TURN URL may carry ``user:secret@`` before the host."""
    text = text.strip()
    if not text:
        return []
    servers: list[RTCIceServer] = []
    if text.startswith("["):
        try:
            entries = json.loads(text)
        except ValueError as exc:
            raise IceConfigError(f"media_ice_servers is not valid JSON: {exc}") from None
        if not isinstance(entries, list):
            raise IceConfigError("media_ice_servers: a JSON list of {urls, username?, credential?}")
        for entry in entries:
            if not isinstance(entry, dict) or not isinstance(entry.get("urls"), str | list):
                raise IceConfigError("media_ice_servers: each entry is {urls, username?, credential?}")
            urls = entry["urls"] if isinstance(entry["urls"], list) else [entry["urls"]]
            for url in urls:
                _check_url(str(url))
            servers.append(RTCIceServer(urls=[str(u) for u in urls], username=entry.get("username"),
                                        credential=entry.get("credential")))
    else:
        for raw in text.split(","):
            url = raw.strip()
            if not url:
                continue
            scheme, _, rest = url.partition(":")
            username = credential = None
            if "@" in rest:
                auth, _, host = rest.rpartition("@")
                username, _, secret = auth.partition(":")
                username, credential = unquote(username), unquote(secret)
                url = f"{scheme}:{host}"
            _check_url(url)
            servers.append(RTCIceServer(urls=url, username=username, credential=credential))
    if len(servers) > MAX_SERVERS:
        raise IceConfigError(f"media_ice_servers: at most {MAX_SERVERS} servers")
    return servers


def _check_url(url: str) -> None:
    if not url.startswith(("stun:", "stuns:", "turn:", "turns:")) or len(url) > 500:
        raise IceConfigError(f"media_ice_servers: {url[:60]!r} is not a stun:, stuns:, turn: or turns: URL")


def configuration(servers: Sequence[RTCIceServer]) -> RTCConfiguration:
    """A peer connection's configuration. With no servers, none at all: aiortc would otherwise
    ask a public STUN server, which a dispatch centre's network may not reach (or want)."""
    return RTCConfiguration(iceServers=list(servers))


def servers_json(servers: Sequence[RTCIceServer]) -> list[dict[str, Any]]:
    """The servers as a browser's RTCPeerConnection takes them."""
    out = []
    for server in servers:
        entry: dict[str, Any] = {"urls": server.urls}
        if server.username:
            entry["username"] = server.username
        if server.credential:
            entry["credential"] = server.credential
        out.append(entry)
    return out


def parse_host_addresses(text: str) -> tuple[list[str], bool]:
    """``media_host_addresses``: (addresses, whether aioice's own choice is included). Empty means
    aioice's own choice only; ``loopback`` stands for 127.0.0.1."""
    entries = [e.strip().lower() for e in text.split(",") if e.strip()]
    if not entries:
        return [], True
    addresses: list[str] = []
    auto = False
    for entry in entries:
        if entry == "auto":
            auto = True
            continue
        if entry == "loopback":
            entry = "127.0.0.1"
        try:
            addresses.append(str(ipaddress.ip_address(entry)))
        except ValueError:
            raise IceConfigError(f"media_host_addresses: {entry[:60]!r} is not an address, 'loopback' or 'auto'")\
                from None
    return addresses, auto


def use_host_addresses(text: str) -> None:
    """Make aioice gather host candidates on these addresses (see the module's docstring)."""
    addresses, auto = parse_host_addresses(text)
    if not addresses:
        aioice.ice.get_host_addresses = _original_host_addresses  # type: ignore[assignment]
        return

    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        found = _original_host_addresses(use_ipv4, use_ipv6) if auto else []
        for address in addresses:
            version = ipaddress.ip_address(address).version
            if address not in found and ((version == 4 and use_ipv4) or (version == 6 and use_ipv6)):
                found.append(address)
        return found

    aioice.ice.get_host_addresses = host_addresses
