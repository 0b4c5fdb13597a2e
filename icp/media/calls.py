"""The call lifecycle as a transition table, pure: ringing → connected → ended, or declined, missed, cancelled."""

from __future__ import annotations

from enum import StrEnum
from types import MappingProxyType


class CallState(StrEnum):
    RINGING = "ringing"
    CONNECTED = "connected"
    ENDED = "ended"
    DECLINED = "declined"
    MISSED = "missed"
    CANCELLED = "cancelled"


class CallTrigger(StrEnum):
    ACCEPT = "accept"    # the callee accepts
    DECLINE = "decline"  # the callee declines
    TIMEOUT = "timeout"  # nobody accepted within the ring timeout
    HANGUP = "hangup"    # either party hangs up (or leaves: its connection closed)
    FAIL = "fail"        # the server gave up on it (a peer's media failed, the node shuts down)


# (state, trigger) → next state. Anything missing is illegal; final states have no moves.
TRANSITIONS = MappingProxyType({
    CallState.RINGING: MappingProxyType({
        CallTrigger.ACCEPT: CallState.CONNECTED,
        CallTrigger.DECLINE: CallState.DECLINED,
        CallTrigger.TIMEOUT: CallState.MISSED,
        CallTrigger.HANGUP: CallState.CANCELLED,
        CallTrigger.FAIL: CallState.CANCELLED,
    }),
    CallState.CONNECTED: MappingProxyType({
        CallTrigger.HANGUP: CallState.ENDED,
        CallTrigger.FAIL: CallState.ENDED,
    }),
})
FINAL = frozenset(s for s in CallState if s not in TRANSITIONS)

# What the parties are told in `rtc.ended` for each way a call ends.
END_REASONS = MappingProxyType({
    CallTrigger.DECLINE: "declined", CallTrigger.TIMEOUT: "timeout", CallTrigger.FAIL: "failed",
})


class IllegalCallTransition(ValueError):
    def __init__(self, state: CallState, trigger: CallTrigger) -> None:
        super().__init__(f"a {state.value} call cannot {trigger.value}")
        self.state, self.trigger = state, trigger


def step(state: CallState, trigger: CallTrigger) -> CallState:
    """The state after ``trigger``; `IllegalCallTransition` when the table has no such move."""
    moves = TRANSITIONS.get(state)
    if moves is None or trigger not in moves:
        raise IllegalCallTransition(state, trigger)
    return moves[trigger]


def end_reason(state: CallState, trigger: CallTrigger) -> str:
    """The `rtc.ended` reason: hangup (or cancelled, when the caller hung up a ringing call)."""
    if trigger is CallTrigger.HANGUP:
        return "cancelled" if state is CallState.RINGING else "hangup"
    return END_REASONS[trigger]


def markdown() -> str:
    """The table for docs/media.md."""
    lines = ["| from | trigger | to |", "| --- | --- | --- |"]
    for state, moves in TRANSITIONS.items():
        lines += [f"| {state.value} | {trigger.value} | {target.value} |" for trigger, target in moves.items()]
    return "\n".join(lines) + "\n"
