"""What the client SDK raises: one base class, one subclass per way an operation or a link can fail."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


class ClientError(Exception):
    """Base of every error the SDK raises."""


class Unauthorized(ClientError):
    """The server refused the token (close code 4401 or HTTP 401/403); the client does not retry."""


class ClientClosed(ClientError):
    """The client was closed while the operation or iterator was waiting."""


class QueueFull(ClientError):
    """Too many operations are waiting for an answer (the offline queue is bounded)."""


class OpError(ClientError):
    """The server answered an operation with ``{"op":"error","code":…,"message":…}``."""

    def __init__(self, code: str, message: str, *, ref: str | None = None,
                 errors: Sequence[Mapping[str, Any]] = ()) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.ref, self.errors = code, message, ref, list(errors)

    @property
    def retryable(self) -> bool:
        """Worth sending again later with the same id (``op_id=ref``): the server says so
        (``rate_limited``, ``internal_error``), or the code is one this client does not know, which
        the protocol asks clients to treat the same way. The id still guards against a second
        application."""
        return self.code not in FINAL


# Error codes of protocol v1 whose answer will not change if the op is sent again.
FINAL = frozenset({
    "hello_expected", "unauthorized", "unsupported_protocol", "invalid_json", "not_an_object", "too_large",
    "binary_unsupported", "unknown_op", "invalid_request", "forbidden", "not_found", "conflict",
    "unit_unavailable", "illegal_transition", "unsupported", "room_elsewhere", "room_full",
})


class OpTimeout(ClientError, TimeoutError):
    """No answer in time. ``sent`` says whether the operation ever left this process: if it did, it
    may have been applied; retry with ``op_id=`` this ``op_id`` to get its answer without applying it twice."""

    def __init__(self, op: str, op_id: str, *, sent: bool) -> None:
        state = "sent, outcome unknown" if sent else "never sent (no link)"
        super().__init__(f"{op} {op_id}: no answer in time ({state})")
        self.op, self.op_id, self.sent = op, op_id, sent
