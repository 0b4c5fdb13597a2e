"""Small helpers shared by tests."""

from __future__ import annotations

from typing import Any

from aiohttp import ClientResponse


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def problem(response: ClientResponse, status: int) -> dict[str, Any]:
    """Assert a problem+json response with ``status`` and return its body."""
    assert response.status == status, await response.text()
    assert response.content_type == "application/problem+json"
    body: dict[str, Any] = await response.json(content_type=None)
    assert body["status"] == status
    assert body["type"].startswith("urn:icp:problem:")
    assert body["title"] and body["detail"]
    return body
