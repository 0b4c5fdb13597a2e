"""One error mapping to the wire: problem+json (RFC 9457) over HTTP, error frames over WebSocket.

Handlers raise `Problem` (or a domain/store error that `to_problem` knows); everything else is
an internal error whose text never reaches a peer — it is logged with a reference instead.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)
PROBLEM_JSON = "application/problem+json"


@dataclass(frozen=True)
class FieldError:
    field: str
    message: str


@dataclass(eq=False)
class Problem(Exception):
    """A failure with a stable ``code`` (the last part of the problem ``type`` URI and the
    WebSocket error ``code``), an HTTP status and a human-readable detail."""

    status: int
    code: str
    detail: str
    title: str | None = None
    errors: Sequence[FieldError] = ()
    headers: Mapping[str, str] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.detail}"

    @property
    def type_uri(self) -> str:
        return f"urn:icp:problem:{self.code}"

    def body(self, instance: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": self.type_uri,
            "title": self.title or _TITLES.get(self.status, "Error"),
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
        }
        if instance:
            out["instance"] = instance
        if self.errors:
            out["errors"] = [{"field": e.field, "message": e.message} for e in self.errors]
        out.update(self.extra)
        return out

    def ws_frame(self, ref: Any = None) -> dict[str, Any]:
        frame: dict[str, Any] = {"op": "error", "ref": ref, "code": self.code, "message": self.detail}
        if self.errors:
            frame["errors"] = [{"field": e.field, "message": e.message} for e in self.errors]
        return frame


_TITLES = {
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 409: "Conflict", 410: "Gone", 413: "Content Too Large",
    415: "Unsupported Media Type", 422: "Unprocessable Content", 429: "Too Many Requests",
    500: "Internal Server Error", 503: "Service Unavailable",
}


def bad_request(detail: str, *errors: FieldError) -> Problem:
    return Problem(400, "invalid_request", detail, errors=errors)


def validation(errors: Sequence[FieldError], detail: str = "the request has invalid fields") -> Problem:
    return Problem(422, "validation_failed", detail, errors=tuple(errors))


def not_found(what: str) -> Problem:
    return Problem(404, "not_found", f"{what} was not found")


def unauthorized(detail: str = "authentication is required") -> Problem:
    return Problem(401, "unauthorized", detail, headers={"WWW-Authenticate": 'Bearer realm="icp"'})


def forbidden(detail: str) -> Problem:
    return Problem(403, "forbidden", detail)


def conflict(detail: str, code: str = "conflict") -> Problem:
    return Problem(409, code, detail)


# Translators from lower-layer exceptions, registered by the modules that own them; kept here
# so there is exactly one place that decides what a peer sees.
Translator = Callable[[BaseException], Problem | None]
_translators: list[Translator] = []


def register_translator(translator: Translator) -> None:
    _translators.append(translator)


def to_problem(exc: BaseException) -> Problem:
    if isinstance(exc, Problem):
        return exc
    for translate in _translators:
        problem = translate(exc)
        if problem is not None:
            return problem
    reference = uuid.uuid4().hex[:12]
    log.error("internal error (reference %s)", reference, exc_info=exc)
    return Problem(500, "internal_error", f"an internal error occurred (reference {reference})")


def _from_store(exc: BaseException) -> Problem | None:
    from icp.store.eventlog import EventError
    from icp.store.group_commit import Overloaded

    if isinstance(exc, Overloaded):
        return Problem(503, "overloaded", "the server is busy; retry shortly",
                       headers={"Retry-After": "1"})
    if isinstance(exc, EventError):
        return Problem(422, "invalid_event", str(exc))
    try:
        import asyncpg
    except ImportError:  # pragma: no cover
        return None
    if isinstance(exc, (asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError,
                        ConnectionError, TimeoutError)):
        return Problem(503, "database_unavailable", "the database is unavailable; retry shortly",
                       headers={"Retry-After": "2"})
    return None


register_translator(_from_store)


def _from_geo(exc: BaseException) -> Problem | None:
    from geo.coords import CoordinateError
    from geo.geocoder import GeocodeQueryError
    from geo.geojson import GeometryError
    from geo.route import NoRouteError
    from icp.geography import GeographyError, NoRoadNetwork

    if isinstance(exc, NoRouteError):
        return Problem(404, "no_route", str(exc) or "no road route joins the two points")
    if isinstance(exc, NoRoadNetwork):
        return Problem(503, "no_road_network", str(exc))
    if isinstance(exc, GeographyError):
        return Problem(422, "invalid_request", str(exc))
    if isinstance(exc, (GeometryError, CoordinateError, GeocodeQueryError)):
        return Problem(422, "invalid_geometry" if isinstance(exc, GeometryError) else "invalid_location", str(exc))
    return None


register_translator(_from_geo)


def _from_domain(exc: BaseException) -> Problem | None:
    from dispatch.errors import Conflict, DomainError, IllegalTransition, Invalid, NotFound, UnitUnavailable

    if not isinstance(exc, DomainError):
        return None
    if isinstance(exc, Invalid):
        return validation([FieldError(exc.field or "", str(exc))], str(exc))
    if isinstance(exc, NotFound):
        return Problem(404, "not_found", str(exc))
    if isinstance(exc, UnitUnavailable):
        return Problem(409, "unit_unavailable", str(exc))
    if isinstance(exc, IllegalTransition):
        return Problem(409, "illegal_transition", str(exc))
    if isinstance(exc, Conflict):
        return Problem(409, "conflict", str(exc))
    return Problem(422, exc.code, str(exc))


register_translator(_from_domain)


def _from_intake(exc: BaseException) -> Problem | None:
    from icp.intake.report import ERROR_STATUS, IntakeError

    if not isinstance(exc, IntakeError):
        return None
    errors = tuple(FieldError(e["field"], e["message"]) for e in exc.errors())
    return Problem(ERROR_STATUS.get(exc.code, 422), exc.code, str(exc), errors=errors)


register_translator(_from_intake)


def problem_response(problem: Problem, instance: str | None = None) -> web.Response:
    return web.Response(
        status=problem.status,
        text=json.dumps(problem.body(instance), ensure_ascii=False),
        content_type=PROBLEM_JSON,
        headers=dict(problem.headers),
    )


def _from_http(exc: web.HTTPException) -> Problem:
    status = exc.status
    code = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large",
            415: "unsupported_media_type"}.get(status, "http_error")
    detail = {
        404: "no such resource",
        405: "this method is not allowed on this resource",
        413: "the request body is too large",
    }.get(status, exc.reason or "request failed")
    headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
    return Problem(status, code, detail, headers=headers)


@web.middleware
async def problem_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Turn every failure into problem+json; successful and redirect responses pass through."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return problem_response(_from_http(exc), request.path)
    except Exception as exc:
        return problem_response(to_problem(exc), request.path)
