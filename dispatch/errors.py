"""Domain errors: each carries a stable ``code`` so the server maps them to HTTP/WebSocket once."""

from __future__ import annotations

from typing import ClassVar


class DomainError(Exception):
    """A command or value the domain refuses. ``code`` is stable; the message is for humans.

    The server maps ``code`` to one HTTP status in one place (``not_found`` → 404,
    ``invalid`` → 422, the rest → 409); the message names the rule that was broken and
    never contains anything a peer did not send.
    """

    code: ClassVar[str] = "domain_error"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def to_dict(self) -> dict[str, str]:
        out = {"code": self.code, "message": self.message}
        if self.field is not None:
            out["field"] = self.field
        return out


class Invalid(DomainError):
    """A value breaks a rule that does not depend on state (bad id, priority 9, naive time)."""

    code = "invalid"


class NotFound(DomainError):
    """A command names an incident, unit, assignment, agency or station that does not exist."""

    code = "not_found"

    def __init__(self, kind: str, ident: str) -> None:
        super().__init__(f"{kind} {ident!r} does not exist")
        self.kind = kind
        self.ident = ident


class Conflict(DomainError):
    """The command is well formed but the current state does not allow it (not a lifecycle step)."""

    code = "conflict"


class UnitUnavailable(Conflict):
    """A unit cannot take an assignment in its current status."""

    code = "unit_unavailable"


class IllegalTransition(DomainError):
    """A lifecycle table has no transition for this trigger from this state.

    The message names the command, the machine, the subject and the state, e.g.
    ``AcknowledgeAssignment: assignment 'I7-A1' is timed_out; cannot acknowledge``.
    """

    code = "illegal_transition"

    def __init__(
        self, *, machine: str, state: str, trigger: str, command: str, subject: str = ""
    ) -> None:
        who = f"{machine} {subject!r}" if subject else f"the {machine}"
        super().__init__(f"{command}: {who} is {state}; cannot {trigger}")
        self.machine = machine
        self.state = state
        self.trigger = trigger
        self.command = command
        self.subject = subject
