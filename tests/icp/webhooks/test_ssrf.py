"""SSRF guards: literal addresses of every class in every spelling, host names, the allow-list,
resolution checked address by address, and real aiohttp requests refused or let through."""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from icp.webhooks import ssrf
from icp.webhooks.ssrf import AllowList, BlockedDestination, GuardedResolver, check_url, resolve_and_check

BLOCKED_LITERALS = {
    "127.0.0.1": "loopback",
    "127.255.0.9": "loopback",
    "10.1.2.3": "private",
    "172.16.0.1": "private",
    "172.31.255.254": "private",
    "192.168.1.1": "private",
    "169.254.169.254": "metadata",
    "169.254.1.1": "link-local",
    "100.64.0.1": "CGNAT",
    "100.127.255.254": "CGNAT",
    "0.0.0.0": "unspecified",
    "0.1.2.3": "private",
    "224.0.0.1": "multicast",
    "239.255.255.250": "multicast",
    "240.0.0.1": "reserved",
    "255.255.255.255": "reserved",
    "192.0.2.10": "private",  # documentation (TEST-NET-1)
    "198.18.0.1": "private",  # benchmarking
    "[::1]": "loopback",
    "[::]": "unspecified",
    "[fe80::1]": "link-local",
    "[fc00::1]": "private",
    "[fd12:3456::1]": "private",
    "[fec0::1]": "site-local",
    "[ff02::1]": "multicast",
    "[::ffff:127.0.0.1]": "loopback (embedded",
    "[::ffff:10.0.0.1]": "private (embedded",
    "[::ffff:169.254.169.254]": "metadata",
    "[64:ff9b::a00:1]": "private (embedded",  # NAT64 of 10.0.0.1
    "[64:ff9b:1::1]": "reserved",
    "[2002:7f00:1::1]": "loopback (embedded",  # 6to4 of 127.0.0.1
    "[::7f00:1]": "reserved",  # IPv4-compatible
    "[2001:db8::1]": "private",  # documentation
}


@pytest.mark.parametrize(("host", "why"), BLOCKED_LITERALS.items())
def test_literal_addresses_of_every_class_are_refused(host: str, why: str) -> None:
    with pytest.raises(BlockedDestination, match="webhooks may only reach public addresses") as info:
        check_url(f"https://{host}:8443/hook")
    assert why in str(info.value)


@pytest.mark.parametrize("url", ["https://8.8.8.8/hook", "http://[2606:4700::1111]:8080/x", "https://hooks.example.org/a?b=c"])
def test_public_destinations_pass(url: str) -> None:
    dest = check_url(url)
    assert dest.url.human_repr() == url
    assert dest.port in (443, 8080)


def test_destination_is_normalised() -> None:
    dest = check_url("HTTPS://Hooks.Example.ORG./x")
    assert (dest.host, dest.port, dest.address) == ("hooks.example.org", 443, None)
    dest = check_url("http://bücher.example/x")
    assert dest.host == "xn--bcher-kva.example"
    dest = check_url("http://[2606:4700:0::1111]/")
    assert dest.host == "2606:4700::1111" and dest.address == ipaddress.ip_address("2606:4700::1111")


@pytest.mark.parametrize(
    ("host", "meaning"),
    [
        ("2130706433", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),
        ("127.000.000.001", "127.0.0.1"),
        ("0xa9.0xfe.0xa9.0xfe", "169.254.169.254"),
        ("3232235777", "192.168.1.1"),
        ("0x", "0.0.0.0"),
        ("0x08080808", "8.8.8.8"),  # public, but still ambiguous: refused all the same
    ],
)
def test_numeric_ipv4_spellings_are_refused(host: str, meaning: str) -> None:
    with pytest.raises(BlockedDestination, match=re.escape(f"non-canonical spelling of the IPv4 address {meaning}")):
        check_url(f"http://{host}/")


@pytest.mark.parametrize("host", ["1.2.3.4.5", "example.123", "256.1.1.1", "08.1.1.1", "1.2.3.256", "0x100000000"])
def test_numeric_looking_hosts_that_are_not_addresses_are_refused(host: str) -> None:
    with pytest.raises(BlockedDestination, match="neither a host name nor an IPv4 address"):
        check_url(f"http://{host}/")


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST.", "api.localhost", "localhost:8080"])
def test_localhost_names_are_refused(host: str) -> None:
    with pytest.raises(BlockedDestination, match="loopback name"):
        check_url(f"http://{host}/")
    check_url(f"http://{host}/", ["loopback"])


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("ftp://example.org/", "http:// or https://"),
        ("file:///etc/passwd", "http:// or https://"),
        ("javascript:alert(1)", "http:// or https://"),
        ("//example.org/x", "http:// or https://"),
        ("http:///x", "needs a host"),
        ("https://user:pw@example.org/", "user name or password"),
        ("https://user@example.org/", "user name or password"),
        ("https://example.org:0/", "port"),
        ("https://example.org:70000/", "does not parse"),
        ("https://exa mple.org/", "spaces"),
        ("https://example.org/\r\nX-Injected: 1", "control characters"),
        ("https://example.org/" + "a" * 2048, "2048"),
        ("", "required"),
        ("http://[fe80::1%25eth0]/", "zone"),
        ("http://exa_mple..org/", "not a valid host name"),
        ("http://-bad-.org/", "not a valid host name"),
    ],
)
def test_malformed_urls_are_refused(url: str, needle: str) -> None:
    with pytest.raises(BlockedDestination, match=needle):
        check_url(url)


# --- allow-list ----------------------------------------------------------------------------------


def test_allow_list_lets_chosen_networks_through() -> None:
    allow = ["127.0.0.1/32", "::1/128"]
    assert check_url("http://127.0.0.1:8080/hook", allow).address == ipaddress.ip_address("127.0.0.1")
    assert check_url("http://[::1]:8080/hook", allow).host == "::1"
    assert check_url("http://[::ffff:127.0.0.1]/", allow).address is not None  # the same destination
    with pytest.raises(BlockedDestination):
        check_url("http://127.0.0.2/", allow)
    with pytest.raises(BlockedDestination):
        check_url("http://0x7f.1/", allow)  # the allow-list never legitimises odd spellings


def test_allow_list_keywords_and_single_addresses() -> None:
    assert check_url("http://127.9.9.9/", ["loopback"])
    assert check_url("http://10.20.30.40/", ["private"])
    assert check_url("http://[fd00::5]/", ["private"])
    assert check_url("http://10.20.30.40/", ["10.20.30.40"])
    for url in ("http://169.254.169.254/", "http://100.64.0.1/", "http://127.0.0.1/"):
        with pytest.raises(BlockedDestination):
            check_url(url, ["private"])
    parsed = AllowList.parse(["loopback", "192.168.5.0/24"])
    assert check_url("http://192.168.5.7/", parsed)


@pytest.mark.parametrize("entry", ["10.1.2.3/8", "hooks.internal", "everything", "", "300.1.1.1"])
def test_bad_allow_list_entries_are_refused(entry: str) -> None:
    with pytest.raises(ValueError, match="allow-list entry"):
        AllowList.parse([entry])


def test_one_string_is_not_an_allow_list() -> None:
    with pytest.raises(TypeError):
        AllowList.parse("loopback")


# --- resolution ----------------------------------------------------------------------------------


def _fake_dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[str]]) -> None:
    loop = asyncio.get_running_loop()

    async def getaddrinfo(host: str, port: int, *, family: int = 0, type: int = 0, **_: Any) -> list[Any]:
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        out = []
        for a in answers[host]:
            fam = socket.AF_INET6 if ":" in a else socket.AF_INET
            if family and fam != family:
                continue
            sockaddr = (a, port, 0, 0) if fam == socket.AF_INET6 else (a, port)
            out.append((fam, socket.SOCK_STREAM, 6, "", sockaddr))
        return out

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)


async def test_resolve_and_check_returns_the_checked_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_dns(monkeypatch, {"hooks.example.org": ["93.184.216.34", "2606:2800:220:1::1", "93.184.216.34"]})
    assert await resolve_and_check("hooks.example.org", 443) == ["93.184.216.34", "2606:2800:220:1::1"]
    assert await resolve_and_check("hooks.example.org", 443, family=socket.AF_INET) == ["93.184.216.34"]


async def test_any_private_answer_refuses_the_name(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_dns(monkeypatch, {"rebind.example": ["93.184.216.34", "169.254.169.254"], "inside.example": ["10.0.0.7"]})
    why = re.escape("rebind.example resolves to 169.254.169.254, which is a link-local")
    with pytest.raises(BlockedDestination, match=why):
        await resolve_and_check("rebind.example", 80)
    with pytest.raises(BlockedDestination, match="private"):
        await resolve_and_check("inside.example", 80)
    assert await resolve_and_check("inside.example", 80, ["10.0.0.0/24"]) == ["10.0.0.7"]


async def test_literals_and_localhost_are_checked_without_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_dns(monkeypatch, {})
    with pytest.raises(BlockedDestination):
        await resolve_and_check("127.0.0.1", 80)
    with pytest.raises(BlockedDestination):
        await resolve_and_check("::ffff:10.0.0.1", 80)
    with pytest.raises(BlockedDestination, match="loopback name"):
        await resolve_and_check("localhost", 80)
    assert await resolve_and_check("8.8.8.8", 53) == ["8.8.8.8"]
    with pytest.raises(OSError):
        await resolve_and_check("nowhere.invalid", 80)


async def test_answers_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_dns(monkeypatch, {"many.example": [f"93.184.216.{i}" for i in range(1, 40)]})
    assert len(await resolve_and_check("many.example", 80)) == ssrf.MAX_ADDRESSES


async def test_guarded_resolver_gives_aiohttp_the_checked_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_dns(monkeypatch, {"hooks.example.org": ["93.184.216.34"], "evil.example": ["127.0.0.1"]})
    resolver = GuardedResolver()
    [result] = await resolver.resolve("hooks.example.org", 443, socket.AF_UNSPEC)
    assert (result["host"], result["port"], result["family"], result["hostname"]) == (
        "93.184.216.34", 443, socket.AF_INET, "hooks.example.org")
    with pytest.raises(BlockedDestination):
        await resolver.resolve("evil.example", 443)
    await resolver.close()


# --- real requests through aiohttp -----------------------------------------------------------------


async def _ok(request: web.Request) -> web.Response:
    return web.Response(text="ok")


@pytest.fixture
async def loopback_server() -> AsyncIterator[TestServer]:
    app = web.Application()
    app.router.add_post("/hook", _ok)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield server
    await server.close()


async def _post(url: str, allow: list[str]) -> int:
    async with (
        aiohttp.ClientSession(connector=ssrf.guarded_connector(allow)) as session,
        session.post(url, data=b"{}", allow_redirects=False) as response,
    ):
        return response.status


async def test_request_to_loopback_is_refused_at_connect_time(loopback_server: TestServer) -> None:
    port = loopback_server.port
    with pytest.raises(BlockedDestination, match="loopback"):
        await _post(f"http://localhost:{port}/hook", [])
    # A literal address never reaches the resolver; the socket factory refuses it.
    with pytest.raises(BlockedDestination, match="loopback"):
        await _post(f"http://127.0.0.1:{port}/hook", [])


async def test_request_to_loopback_is_allowed_when_configured(loopback_server: TestServer) -> None:
    port = loopback_server.port
    assert await _post(f"http://localhost:{port}/hook", ["loopback"]) == 200
    assert await _post(f"http://127.0.0.1:{port}/hook", ["127.0.0.1/32", "::1/128"]) == 200


async def test_resolver_alone_refuses_names(loopback_server: TestServer) -> None:
    connector = aiohttp.TCPConnector(resolver=GuardedResolver())
    async with aiohttp.ClientSession(connector=connector) as session:
        with pytest.raises(BlockedDestination):
            await session.post(f"http://localhost:{loopback_server.port}/hook")


async def test_redirect_to_a_private_address_is_refused() -> None:
    # The first hop is allow-listed (127.0.0.2 stands in for a public receiver); its redirect
    # to 127.0.0.1 is refused by the socket factory even though the client follows it.
    target = web.Application()
    target.router.add_get("/secret", _ok)
    inside = TestServer(target, host="127.0.0.1")
    await inside.start_server()

    async def bounce(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"http://127.0.0.1:{inside.port}/secret")

    front = web.Application()
    front.router.add_get("/hook", bounce)
    outside = TestServer(front, host="127.0.0.2")
    try:
        await outside.start_server()
    except OSError:
        await inside.close()
        pytest.skip("127.0.0.2 is not routable to loopback here")
    try:
        async with aiohttp.ClientSession(connector=ssrf.guarded_connector(["127.0.0.2/32"])) as session:
            with pytest.raises(BlockedDestination, match=re.escape("127.0.0.1")):
                await session.get(f"http://127.0.0.2:{outside.port}/hook")
    finally:
        await outside.close()
        await inside.close()
