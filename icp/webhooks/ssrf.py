"""Guards against server-side request forgery: webhooks reach public addresses only.

An agency registers a URL and ICP posts to it, so a careless or hostile URL could aim ICP at its
own database, the cloud metadata service (169.254.169.254) or anything else on the private
network. Three checks close that door:

- ``check_url`` when a URL is registered: syntax, and literal addresses (in every spelling);
- ``resolve_and_check`` / ``GuardedResolver`` at connect time: every address a name resolves to
  is checked, and the connection goes to exactly the addresses checked, so a DNS answer that
  changes between the check and the connect (rebinding) gains nothing;
- ``guarded_socket_factory``: the last word on every socket, which also sees literal addresses
  (aiohttp does not ask the resolver about those, e.g. after a redirect).

Operators let chosen destinations through with an allow-list from configuration: CIDRs
(``"10.20.0.0/16"``, ``"::1/128"``), single addresses, or the words ``loopback`` and ``private``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_URL_CHARS = 2048
MAX_HOST_CHARS = 253
# A DNS answer with more addresses than this is cut (after every address has been checked).
MAX_ADDRESSES = 16
SCHEMES = frozenset({"http", "https"})

_NET = ipaddress.ip_network
_CGNAT = _NET("100.64.0.0/10")
_NAT64 = _NET("64:ff9b::/96")
_NAT64_LOCAL = _NET("64:ff9b:1::/48")
_IPV6_SITE_LOCAL = _NET("fec0::/10")
_IPV6_RESERVED = _NET("::/8")  # IPv4-compatible and other retired forms (mapped ones are handled first)
_METADATA = ipaddress.ip_address("169.254.169.254")
_LOOPBACK = ipaddress.ip_address("127.0.0.1")

_KEYWORDS: dict[str, tuple[IPNetwork, ...]] = {
    "loopback": (_NET("127.0.0.0/8"), _NET("::1/128")),
    "private": (_NET("10.0.0.0/8"), _NET("172.16.0.0/12"), _NET("192.168.0.0/16"), _NET("fc00::/7")),
}
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
# One part of a legacy IPv4 spelling as inet_aton reads it: decimal, 0x-hex or 0-octal.
_NUMBER_PART = re.compile(r"0[xX][0-9a-fA-F]*|[0-9]+")
_CONTROL_OR_SPACE = re.compile(r"[\x00-\x20\x7f]")


class BlockedDestination(ValueError):
    """A webhook URL or one of its addresses is not allowed; the message says why, readably."""


# --- allow-list ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AllowList:
    """Networks let through despite being non-public.

    Only addresses, never names: the last check sees a socket address and nothing else, and a
    name's addresses can change under it. To let a service with moving addresses through, allow
    its network.
    """

    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> AllowList:
        """An allow-list from configuration entries; ValueError names a bad entry."""
        if isinstance(entries, str):
            raise TypeError("the allow-list must be a list of entries, not one string")
        networks: list[IPNetwork] = []
        for raw in entries:
            entry = raw.strip().lower() if isinstance(raw, str) else ""
            if entry in _KEYWORDS:
                networks.extend(_KEYWORDS[entry])
                continue
            try:
                # strict: "10.1.2.3/8" is a typo for a host or a network, and guessing which
                # would widen or narrow the hole silently.
                networks.append(ipaddress.ip_network(entry))
            except ValueError as exc:
                raise ValueError(
                    f"webhook allow-list entry {str(raw)[:60]!r} is not an address, a network (CIDR), "
                    f"'loopback' or 'private': {exc}"
                ) from None
        return cls(networks=tuple(networks))

    def allows(self, address: IPAddress) -> bool:
        candidates = [address]
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            candidates.append(embedded)
        return any(a in net for a in candidates for net in self.networks if a.version == net.version)


def _allow(allow: AllowList | Sequence[str]) -> AllowList:
    return allow if isinstance(allow, AllowList) else AllowList.parse(allow)


# --- address classes -------------------------------------------------------------------------


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (mapped, NAT64 or 6to4), which is where it goes."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour


def blocked_reason(address: IPAddress) -> str | None:
    """Why ``address`` is not a public destination (``"loopback"``, ``"private"``, …), or None."""
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        inner = blocked_reason(embedded)
        return None if inner is None else f"{inner} (embedded in IPv6 {address})"
    if address.is_loopback:
        return "loopback"
    if address.is_unspecified:
        return "unspecified"
    if address == _METADATA:
        return "link-local (the cloud metadata service)"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if isinstance(address, ipaddress.IPv4Address) and address in _CGNAT:
        return "shared CGNAT (100.64.0.0/10)"
    if isinstance(address, ipaddress.IPv6Address) and (address in _IPV6_RESERVED or address in _NAT64_LOCAL):
        return "reserved"
    if isinstance(address, ipaddress.IPv6Address) and address in _IPV6_SITE_LOCAL:
        return "site-local"
    if address.is_private and not address.is_reserved:
        return "private"
    if address.is_reserved:
        return "reserved"
    if not address.is_global:
        return "special-purpose (not globally routable)"
    return None


def check_address(address: IPAddress, allow: AllowList | Sequence[str], host: str | None = None) -> None:
    """Raise BlockedDestination unless ``address`` is public or allow-listed. ``host``, the name
    the address was resolved from, only makes the message clearer."""
    allow = _allow(allow)
    reason = blocked_reason(address)
    if reason is None or allow.allows(address):
        return
    via = f"{host} resolves to {address}, which" if host and host != str(address) else f"{address}"
    raise BlockedDestination(
        f"{via} is a {reason} address; webhooks may only reach public addresses "
        "unless the destination is in the webhook allow-list"
    )


# --- URLs ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Destination:
    """A checked webhook URL. ``host`` is normalised (lower case, IDNA, no brackets or final
    dot); ``address`` is set when the host is a literal address (already checked)."""

    url: URL
    host: str
    port: int
    address: IPAddress | None = None


def check_url(url: str, allow: AllowList | Sequence[str] = ()) -> Destination:
    """Check a webhook URL's syntax and, for literal addresses, its destination.

    http and https only, a host, no user name or password, a port in 1-65535, at most 2048
    characters. Numeric IPv4 spellings other than dotted decimal (``2130706433``, ``0x7f.1``,
    ``0177.0.0.1``, ``127.1``) are refused outright: resolvers disagree on what they mean, which is
    the whole trick. Names are checked again, address by address, when they are resolved.
    """
    allow = _allow(allow)
    if not isinstance(url, str) or not url:
        raise BlockedDestination("a webhook URL is required")
    if len(url) > MAX_URL_CHARS:
        raise BlockedDestination(f"a webhook URL may have at most {MAX_URL_CHARS} characters")
    if _CONTROL_OR_SPACE.search(url):
        raise BlockedDestination("a webhook URL may not contain spaces or control characters")
    try:
        parsed = URL(url)
        port = parsed.port
    except ValueError as exc:
        raise BlockedDestination(f"the webhook URL does not parse: {exc}") from None
    if parsed.scheme not in SCHEMES:
        raise BlockedDestination("a webhook URL must start with http:// or https://")
    if parsed.user is not None or parsed.password is not None:
        raise BlockedDestination("a webhook URL may not carry a user name or password (use the signing secret)")
    raw_host = parsed.raw_host
    if not raw_host:
        raise BlockedDestination("a webhook URL needs a host")
    if port is None or not 1 <= port <= 65535:
        raise BlockedDestination("a webhook URL's port must be 1-65535")

    host = raw_host.lower()
    if ":" in host:  # yarl has already removed the brackets of an IPv6 literal
        if "%" in host:
            raise BlockedDestination("IPv6 zone identifiers are not allowed in webhook URLs")
        try:
            address: IPAddress = ipaddress.IPv6Address(host)
        except ValueError:
            raise BlockedDestination(f"{raw_host[:60]!r} is not a valid IPv6 address") from None
        check_address(address, allow)
        return Destination(url=parsed, host=str(address), port=port, address=address)

    host = host.removesuffix(".")
    labels = host.split(".")
    if _looks_numeric(host) or (labels and _NUMBER_PART.fullmatch(labels[-1])):
        legacy = _inet_aton(host)
        if legacy is None:
            raise BlockedDestination(f"{raw_host[:60]!r} is neither a host name nor an IPv4 address")
        if str(legacy) != host:
            raise BlockedDestination(
                f"{raw_host[:60]!r} is a non-canonical spelling of the IPv4 address {legacy}; "
                "write addresses in dotted decimal"
            )
        check_address(legacy, allow)
        return Destination(url=parsed, host=host, port=port, address=legacy)

    name = _host_name(host)
    if name is None:
        raise BlockedDestination(f"{raw_host[:60]!r} is not a valid host name")
    _check_localhost(name, allow)
    return Destination(url=parsed, host=name, port=port)


def _host_name(text: str) -> str | None:
    """``text`` as a normalised DNS name (IDNA-encoded, lower case), or None if it is not one."""
    try:
        ascii_name = text.encode("idna").decode("ascii").lower() if not text.isascii() else text.lower()
    except UnicodeError:
        return None
    if not ascii_name or len(ascii_name) > MAX_HOST_CHARS:
        return None
    return ascii_name if all(_LABEL.fullmatch(label) for label in ascii_name.split(".")) else None


def _check_localhost(name: str, allow: AllowList) -> None:
    # RFC 6761: "localhost" and every name under it are loopback, whatever DNS says (some
    # resolvers answer it without asking DNS), so the name alone is refused.
    if (name == "localhost" or name.endswith(".localhost")) and not allow.allows(_LOOPBACK):
        raise BlockedDestination(f"{name} is a loopback name; webhooks may only reach public addresses")


def _looks_numeric(host: str) -> bool:
    parts = host.split(".")
    return 1 <= len(parts) <= 4 and all(_NUMBER_PART.fullmatch(p) for p in parts)


def _inet_aton(host: str) -> ipaddress.IPv4Address | None:
    """The address C's ``inet_aton`` (and so many resolvers) reads from ``host``: 1-4 parts, each
    decimal, 0x-hex or 0-octal, the last filling the remaining bytes. None if it reads none."""
    parts = host.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    values = []
    for part in parts:
        if not _NUMBER_PART.fullmatch(part):
            return None
        if part[:2].lower() == "0x":
            values.append(int(part[2:] or "0", 16))
        elif len(part) > 1 and part[0] == "0":
            if not all(c in "01234567" for c in part):
                return None
            values.append(int(part, 8))
        else:
            values.append(int(part))
    *head, last = values
    if any(v > 255 for v in head) or last >= 256 ** (4 - len(head)):
        return None
    number = last
    for i, v in enumerate(head):
        number |= v << (8 * (3 - i))
    return ipaddress.IPv4Address(number)


# --- resolution ------------------------------------------------------------------------------


async def _resolve(
    host: str, port: int, allow: AllowList, family: int
) -> list[tuple[socket.AddressFamily, str]]:
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        check_address(literal, allow)
        fam = socket.AF_INET6 if literal.version == 6 else socket.AF_INET
        return [(fam, str(literal))]

    name = host.lower().removesuffix(".")
    _check_localhost(name, allow)
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(name, port, family=family, type=socket.SOCK_STREAM)
    found: list[tuple[socket.AddressFamily, str]] = []
    for fam, _, _, _, sockaddr in infos:
        text = str(sockaddr[0])
        if (fam, text) in found:
            continue
        # Every answer is checked, not just the first: a name that resolves to a public and a
        # private address is refused, since the connection could go to either.
        check_address(ipaddress.ip_address(text), allow, host=name)
        found.append((fam, text))
    if not found:
        raise OSError(f"{name} has no addresses")
    return found[:MAX_ADDRESSES]


async def resolve_and_check(
    host: str, port: int, allow: AllowList | Sequence[str] = (), *, family: int = socket.AF_UNSPEC
) -> list[str]:
    """Resolve ``host`` with the loop's resolver and return its addresses, every one checked.

    Connect to exactly these (never resolve again) so the answer cannot change in between.
    Raises BlockedDestination if any address is refused, OSError if the name does not resolve.
    """
    return [address for _, address in await _resolve(host, port, _allow(allow), family)]


class GuardedResolver(AbstractResolver):
    """An aiohttp resolver that checks every address at connect time, redirects included."""

    def __init__(self, allow: AllowList | Sequence[str] = ()) -> None:
        self._allow = _allow(allow)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            {
                "hostname": host,
                "host": address,
                "port": port,
                "family": fam,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
            }
            for fam, address in await _resolve(host, port, self._allow, family)
        ]

    async def close(self) -> None:
        return None


def guarded_socket_factory(allow: AllowList | Sequence[str] = ()) -> Callable[[Any], socket.socket]:
    """A socket factory for ``aiohttp.TCPConnector(socket_factory=…)`` that refuses to open a
    socket to a blocked address: the check nothing (literal hosts, redirects, caches) gets past."""
    allowed = _allow(allow)

    def factory(addr_info: Any) -> socket.socket:
        family, type_, proto, _, sockaddr = addr_info
        check_address(ipaddress.ip_address(sockaddr[0]), allowed)
        return socket.socket(family=family, type=type_, proto=proto)

    return factory


def guarded_connector(allow: AllowList | Sequence[str] = (), **kwargs: Any) -> aiohttp.TCPConnector:
    """A TCPConnector with both guards (call it inside the running loop). Keep the session's
    ``trust_env`` off: a proxy from the environment would be refused like any private address."""
    allowed = _allow(allow)
    return aiohttp.TCPConnector(
        resolver=GuardedResolver(allowed), socket_factory=guarded_socket_factory(allowed), **kwargs
    )
