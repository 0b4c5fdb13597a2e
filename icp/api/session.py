"""Console sessions: log in with a username and password, get an HttpOnly cookie."""

from __future__ import annotations

from datetime import timedelta

from aiohttp import web

from icp import appkeys
from icp.auth import credentials
from icp.auth.guard import principal, require
from icp.errors import FieldError, unauthorized, validation
from icp.httpapi import json_response, operation, read_json_object
from icp.store.eventlog import NewEvent

LOGIN_SCHEMA = {
    "type": "object", "required": ["username", "password"],
    "properties": {"username": {"type": "string", "maxLength": 100},
                   "password": {"type": "string", "maxLength": credentials.MAX_PASSWORD_LENGTH}},
}
PRINCIPAL_SCHEMA = {
    "type": "object",
    "properties": {"kind": {"type": "string"}, "id": {"type": "string"}, "name": {"type": "string"},
                   "role": {"type": "string"}, "agency": {"type": "string"}, "unit": {"type": "string"}},
}


@operation(
    "Log in (console): sets the HttpOnly session cookie", tags=("auth",), request=LOGIN_SCHEMA,
    responses={200: {"description": "logged in", "schema": {
        "type": "object", "properties": {"principal": PRINCIPAL_SCHEMA, "expires_at": {"type": "string"}}}}},
)
async def login(request: web.Request) -> web.Response:
    body = await read_json_object(request, max_bytes=8 * 1024)
    errors = [FieldError(name, "required, a string") for name in ("username", "password")
              if not isinstance(body.get(name), str) or not body.get(name)]
    if errors:
        raise validation(errors)
    pool = request.app[appkeys.POOL]
    who = await credentials.authenticate_user(pool, body["username"], body["password"])
    if who is None:
        raise unauthorized("the username or password is wrong")
    settings = request.app[appkeys.SETTINGS]
    secret, expires_at = await credentials.create_session(
        pool, int(who.id), timedelta(seconds=settings.session_ttl_s)
    )
    # Logins are on the record; only unrestricted principals (auditors) see them.
    await request.app[appkeys.COMMITTER].append(NewEvent(
        "session.created", f"user:{who.id}",
        {"username": who.name, "remote": request.remote or ""}, actor=who.actor(), visibility=(),
    ))
    response = json_response({"principal": who.to_json(), "expires_at": expires_at.isoformat()})
    response.set_cookie(
        credentials.SESSION_COOKIE, secret, max_age=settings.session_ttl_s, httponly=True,
        samesite="Strict", secure=settings.cookie_secure or request.secure, path="/",
    )
    return response


@operation("Who am I: the authenticated principal", tags=("auth",),
           responses={200: {"description": "the principal", "schema": PRINCIPAL_SCHEMA}})
@require()
async def whoami(request: web.Request) -> web.Response:
    return json_response(principal(request).to_json())


@operation("Log out (console): ends the session", tags=("auth",), responses={204: "logged out"})
async def logout(request: web.Request) -> web.Response:
    cookie = request.cookies.get(credentials.SESSION_COOKIE)
    if cookie:
        await credentials.end_session(request.app[appkeys.POOL], cookie)
    response = web.Response(status=204)
    response.del_cookie(credentials.SESSION_COOKIE, path="/")
    return response


def setup(app: web.Application) -> None:
    app.router.add_post("/api/v1/session", login)
    app.router.add_get("/api/v1/session", whoami)
    app.router.add_delete("/api/v1/session", logout)
