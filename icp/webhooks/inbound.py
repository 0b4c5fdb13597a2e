"""Signed inbound requests from agencies: what they may ask, as dispatch commands.

The body is ``{"type": …, "data": {…}}``:

- ``unit.status`` ``{"unit", "status"}`` — one of the agency's units reports a status;
- ``mutual_aid.accept`` ``{"assignment"}`` / ``mutual_aid.decline`` ``{"assignment", "reason"?}`` —
  the agency answers a mutual-aid request for one of its units;
- ``incident.note`` ``{"incident", "text"}`` — a note on an incident the agency takes part in.

Signature, replay and authorization checks happen around this (icp/api/webhooks.py and the
dispatch service): this module only turns well-formed JSON into a command, or says which field
is wrong.
"""

from __future__ import annotations

import json
from typing import Any

from dispatch import codec
from dispatch import commands as cmd

TYPES = ("unit.status", "mutual_aid.accept", "mutual_aid.decline", "incident.note")


class InboundError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _string(data: dict[str, Any], name: str, *, required: bool = True) -> str:
    value = data.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value:
        raise InboundError(f"data.{name}", f"required: a string {name}")
    return value


def parse_inbound(body: bytes, agency_id: str) -> cmd.Command:
    """The command an inbound request asks for (``dispatch.errors.Invalid`` or ``InboundError``
    name a bad field)."""
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InboundError("", "the body must be JSON") from None
    if not isinstance(doc, dict):
        raise InboundError("", "the body must be a JSON object {\"type\", \"data\"}")
    kind, data = doc.get("type"), doc.get("data")
    if kind not in TYPES:
        raise InboundError("type", f"type must be one of {', '.join(TYPES)}")
    if not isinstance(data, dict):
        raise InboundError("data", "data must be an object")
    if kind == "unit.status":
        return codec.decode(cmd.ChangeUnitStatus, {"unit_id": _string(data, "unit"), "status": _string(data, "status")})
    if kind == "mutual_aid.accept":
        return cmd.AcceptMutualAid(assignment_id=_string(data, "assignment"))
    if kind == "mutual_aid.decline":
        return codec.decode(cmd.DeclineAssignment, {"assignment_id": _string(data, "assignment"),
                                                    "reason": _string(data, "reason", required=False)})
    return codec.decode(cmd.AddNote, {"incident_id": _string(data, "incident"), "author": f"agency {agency_id}",
                                      "text": _string(data, "text")})
