"""Render ``docs/lifecycles.md`` (tables and Mermaid state diagrams) from the lifecycle tables.

    python -m dispatch.docs_gen > docs/lifecycles.md      # regenerate
    python -m dispatch.docs_gen --check docs/lifecycles.md  # exit 1 if out of date
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any

from dispatch.lifecycle import MACHINES, Lifecycle

_INTRO = """\
# Lifecycles

<!-- Generated from dispatch/lifecycle.py by `python -m dispatch.docs_gen`. Do not edit by hand:
     change the tables and regenerate; a test fails while this file is out of date. -->

Incidents, units and assignments each move through a state machine kept as a transition table
in `dispatch/lifecycle.py`. `decide` consults the table before emitting any event; a command
whose trigger is not listed for the current state is refused with the error code
`illegal_transition`, and the message names the command, the subject and its state, e.g.
`AcknowledgeAssignment: assignment 'I7-A1' is timed_out; cannot acknowledge`.

A trigger that leads from a state back to itself is allowed there without changing the state
(adding a note, dispatching more units to an incident already on scene). Terminal states have
no way out except such self-loops.
"""


def _title(machine: Lifecycle[Any]) -> str:
    return machine.name.capitalize()


def _diagram(machine: Lifecycle[Any]) -> list[str]:
    lines = ["```mermaid", "stateDiagram-v2", f"    [*] --> {machine.initial.value}"]
    for state, row in machine.table.items():
        grouped: dict[StrEnum, list[str]] = {}
        for trigger, target in row.items():
            grouped.setdefault(target, []).append(trigger)
        for target, triggers in grouped.items():
            lines.append(f"    {state.value} --> {target.value} : {', '.join(triggers)}")
    for state in machine.states:
        if state in machine.terminal:
            lines.append(f"    {state.value} --> [*]")
    lines.append("```")
    return lines


def _section(machine: Lifecycle[Any]) -> list[str]:
    lines = [f"## {_title(machine)}", "", f"Initial state: `{machine.initial.value}`.", ""]
    lines += ["| State | Meaning | Terminal |", "| --- | --- | --- |"]
    for state in machine.states:
        terminal = "yes" if state in machine.terminal else ""
        lines.append(f"| `{state.value}` | {machine.descriptions[state]} | {terminal} |")
    lines += ["", *_diagram(machine), ""]
    lines += ["| From | Trigger | To |", "| --- | --- | --- |"]
    for state, row in machine.table.items():
        for trigger, target in row.items():
            lines.append(f"| `{state.value}` | {trigger} | `{target.value}` |")
    lines.append("")
    return lines


def render() -> str:
    """The whole of ``docs/lifecycles.md``."""
    lines = [_INTRO]
    for machine in MACHINES:
        lines += _section(machine)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    text = render()
    if len(args) == 2 and args[0] == "--check":
        if Path(args[1]).read_text(encoding="utf-8") != text:
            print(f"{args[1]} is out of date: run python -m dispatch.docs_gen > {args[1]}",
                  file=sys.stderr)
            return 1
        return 0
    if args:
        print("usage: python -m dispatch.docs_gen [--check PATH]", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
