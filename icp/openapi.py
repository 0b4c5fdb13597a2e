"""The OpenAPI 3.1 document, built from the routes and the metadata on their handlers."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

PROBLEM_SCHEMA = {
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
        "detail": {"type": "string"}, "code": {"type": "string"}, "instance": {"type": "string"},
        "errors": {"type": "array", "items": {
            "type": "object", "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
        }},
    },
}
_PARAM = re.compile(r"\{([^}:]+)(?::[^}]*)?\}")


def build(app: web.Application, *, title: str = "ICP", version: str = "0.1.0") -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in app.router.routes():
        meta = getattr(route.handler, "__openapi__", None)
        resource = route.resource
        if meta is None or resource is None or route.method in ("HEAD", "*"):
            continue
        path = _PARAM.sub(r"{\1}", resource.canonical)
        op: dict[str, Any] = {"summary": meta["summary"], "operationId": route.handler.__name__}
        if meta["description"]:
            op["description"] = meta["description"]
        if meta["tags"]:
            op["tags"] = meta["tags"]
        params = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in _PARAM.findall(resource.canonical)
        ]
        params += meta["parameters"]
        if params:
            op["parameters"] = params
        if meta["request"] is not None:
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": meta["request"]}}}
        responses: dict[str, Any] = {}
        for status, spec in meta["responses"].items():
            if isinstance(spec, str):
                responses[str(status)] = {"description": spec}
            elif "schema" not in spec:  # no body (204)
                responses[str(status)] = {"description": spec.get("description", "")}
            else:
                responses[str(status)] = {"description": spec.get("description", ""),
                                          "content": {"application/json": {"schema": spec["schema"]}}}
        roles = getattr(route.handler, "__roles__", None)
        if roles is not None:
            op["security"] = [{"bearer": []}, {"session": []}]
            op["x-roles"] = roles or ["any authenticated principal"]
            responses.setdefault("401", {"$ref": "#/components/responses/Problem"})
            responses.setdefault("403", {"$ref": "#/components/responses/Problem"})
        responses.setdefault("default", {"$ref": "#/components/responses/Problem"})
        op["responses"] = responses
        paths.setdefault(path, {})[route.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version,
                 "description": "Integrated Communications Platform — emergency dispatch server."},
        "paths": dict(sorted(paths.items())),
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "session": {"type": "apiKey", "in": "cookie", "name": "icp_session"},
            },
            "schemas": {"Problem": PROBLEM_SCHEMA},
            "responses": {"Problem": {
                "description": "An error (RFC 9457 problem details)",
                "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
            }},
        },
    }
