"""`require(role)`: the one gate every endpoint passes, and request authentication behind it."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web

from icp.appkeys import POOL
from icp.auth import credentials
from icp.auth.principal import Principal, Role
from icp.errors import forbidden, unauthorized

PRINCIPAL = web.RequestKey("principal", Principal)
TOKEN_CACHE_TTL_S = 5.0


class TokenCache:
    """Recently verified bearer tokens (by hash), so a busy sensor key costs no database read per
    request. A revoked or expired token stops working within ``TOKEN_CACHE_TTL_S`` on each node;
    failures are never cached. Bounded: when full, entries past their time are dropped first.

    Concurrent requests with a token not in the cache share one look-up (`load`): when a busy
    key's entry ran out, every request in flight looked it up, and those that also stamped its
    last use queued on its row lock."""

    def __init__(self, ttl_s: float = TOKEN_CACHE_TTL_S, max_entries: int = 10_000) -> None:
        self.ttl_s, self.max_entries = ttl_s, max_entries
        self._entries: dict[bytes, tuple[float, Principal]] = {}
        self._loading: dict[bytes, asyncio.Task[Principal | None]] = {}

    async def load(self, key: bytes, fetch: Callable[[], Awaitable[Principal | None]]) -> Principal | None:
        """The cached principal, else the one ``fetch`` finds (one fetch per key at a time; it
        runs on even if the request that started it goes away)."""
        found = self.get(key)
        if found is not None:
            return found
        task = self._loading.get(key)
        if task is None:
            task = self._loading[key] = asyncio.ensure_future(fetch())

            def done(t: asyncio.Task[Principal | None]) -> None:
                self._loading.pop(key, None)
                if not t.cancelled() and t.exception() is None and (who := t.result()) is not None:
                    self.put(key, who)

            task.add_done_callback(done)
        return await asyncio.shield(task)

    def get(self, key: bytes) -> Principal | None:
        hit = self._entries.get(key)
        if hit is None or hit[0] < time.monotonic():
            return None
        return hit[1]

    def put(self, key: bytes, who: Principal) -> None:
        now = time.monotonic()
        if len(self._entries) >= self.max_entries:
            self._entries = {k: v for k, v in self._entries.items() if v[0] >= now}
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
        self._entries[key] = (now + self.ttl_s, who)


TOKEN_CACHE = web.AppKey("token_cache", TokenCache)
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def principal_for_bearer(app: web.Application, secret: str) -> Principal | None:
    """The principal behind a bearer token (HTTP or the WebSocket hello), through the node's cache."""
    cache = app.get(TOKEN_CACHE)
    if cache is None:
        return await credentials.principal_for_token(app[POOL], secret)
    return await cache.load(credentials.hash_secret(secret),
                            functools.partial(credentials.principal_for_token, app[POOL], secret))


async def authenticate(request: web.Request) -> Principal:
    """The caller, from a bearer token or else the console's session cookie; 401 otherwise."""
    cached: Principal | None = request.get(PRINCIPAL)
    if cached is not None:
        return cached
    pool = request.app[POOL]
    header = request.headers.get("Authorization")
    principal: Principal | None
    if header is not None:
        scheme, _, secret = header.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise unauthorized("the Authorization header must be 'Bearer <token>'")
        principal = await principal_for_bearer(request.app, secret.strip())
        if principal is None:
            raise unauthorized("the bearer token is unknown, revoked or expired")
    else:
        cookie = request.cookies.get(credentials.SESSION_COOKIE)
        if not cookie:
            raise unauthorized()
        principal = await credentials.principal_for_session(pool, cookie)
        if principal is None:
            raise unauthorized("the session has expired; log in again")
        _check_same_origin(request)
    request[PRINCIPAL] = principal
    return principal


def _check_same_origin(request: web.Request) -> None:
    # Cookies ride along on cross-site requests; SameSite=Strict stops most, and refusing a
    # foreign Origin on state-changing requests stops the rest.
    if request.method not in UNSAFE_METHODS:
        return
    origin = request.headers.get("Origin")
    if origin and urlsplit(origin).netloc != request.host:
        raise forbidden("cross-origin requests with a session cookie are refused")


def require(*roles: Role | str) -> Callable[[Handler], Handler]:
    """Allow the handler only to principals holding one of ``roles`` (implications included).

    With no roles, any authenticated principal is allowed. The principal is available to the
    handler as ``request[PRINCIPAL]`` (or through `principal(request)`).
    """
    wanted = tuple(Role(r) for r in roles)

    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def guarded(request: web.Request) -> web.StreamResponse:
            who = await authenticate(request)
            if wanted and not any(who.has(role) for role in wanted):
                names = " or ".join(r.value for r in wanted)
                raise forbidden(f"this needs the role {names}; you are {who.role.value}")
            return await handler(request)

        guarded.__roles__ = [r.value for r in wanted]  # type: ignore[attr-defined]
        return guarded

    return wrap


def principal(request: web.Request) -> Principal:
    """The principal `require` authenticated for this request."""
    who: Principal | None = request.get(PRINCIPAL)
    if who is None:
        raise RuntimeError("principal() used on a handler without require()")
    return who
