"""Floor control without media: grants, queueing, denial, pre-emption, talk-time limits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from icp.media.floor import (
    TABLE,
    Denied,
    Floor,
    FloorPolicy,
    FloorState,
    Granted,
    Queued,
    Rank,
    Revoked,
    Speaker,
    Trigger,
)

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def test_a_free_floor_is_granted_and_announced():
    floor, effects = Floor().request("E1", Rank.MEMBER, at(0))
    assert effects == [Granted("E1", Rank.MEMBER, at(30)), Speaker("E1", Rank.MEMBER)]
    assert floor.state is FloorState.TAKEN


def test_two_requesters_one_granted_one_queued_then_passed_on():
    floor, _ = Floor().request("E1", Rank.MEMBER, at(0))
    floor, effects = floor.request("E2", Rank.MEMBER, at(1))
    assert effects == [Queued("E2", 1)]
    floor, effects = floor.release("E1", at(5))
    assert effects == [Granted("E2", Rank.MEMBER, at(35)), Speaker("E2", Rank.MEMBER)]
    floor, effects = floor.release("E2", at(6))
    assert effects == [Speaker(None)] and floor.state is FloorState.IDLE


def test_without_queueing_a_busy_floor_is_denied():
    floor, _ = Floor(FloorPolicy(queue=False)).request("E1", Rank.MEMBER, at(0))
    _, effects = floor.request("E2", Rank.MEMBER, at(1))
    assert effects == [Denied("E2", "E1 has the floor")]


def test_a_full_queue_denies():
    floor, _ = Floor(FloorPolicy(max_queue=1)).request("E1", Rank.MEMBER, at(0))
    floor, _ = floor.request("E2", Rank.MEMBER, at(1))
    _, effects = floor.request("E3", Rank.MEMBER, at(2))
    assert effects == [Denied("E3", "the queue for the floor is full")]


def test_a_dispatcher_pre_empts_a_unit_which_then_waits_first():
    floor, _ = Floor().request("E1", Rank.MEMBER, at(0))
    floor, _ = floor.request("E2", Rank.MEMBER, at(1))
    floor, effects = floor.request("disp", Rank.DISPATCHER, at(2))
    assert effects[0] == Revoked("E1", "pre-empted by a dispatcher request", by="disp")
    assert effects[1:] == [Granted("disp", Rank.DISPATCHER, at(32)), Speaker("disp", Rank.DISPATCHER)]
    floor, effects = floor.release("disp", at(3))
    assert effects[0] == Granted("E1", Rank.MEMBER, at(33))  # the interrupted speaker goes on first


def test_an_emergency_pre_empts_everyone_and_nobody_pre_empts_it():
    floor, _ = Floor().request("disp", Rank.DISPATCHER, at(0))
    floor, effects = floor.request("E7", Rank.EMERGENCY, at(1))
    assert isinstance(effects[0], Revoked) and effects[1] == Granted("E7", Rank.EMERGENCY, at(121))
    floor, effects = floor.request("disp2", Rank.DISPATCHER, at(2))
    assert effects == [Queued("disp2", 2)]  # behind the pre-empted dispatcher (earlier request)
    assert floor.holder is not None and floor.holder.member == "E7"


def test_the_talk_time_limit_revokes_and_passes_on():
    floor, _ = Floor(FloorPolicy(max_talk_s=10)).request("E1", Rank.MEMBER, at(0))
    floor, _ = floor.request("E2", Rank.MEMBER, at(1))
    same, effects = floor.tick(at(9.9))
    assert effects == [] and same is floor
    floor, effects = floor.tick(at(10))
    assert effects == [Revoked("E1", "maximum talk time reached"), Granted("E2", Rank.MEMBER, at(20)),
                       Speaker("E2", Rank.MEMBER)]


def test_leaving_and_withdrawing():
    floor, _ = Floor().request("E1", Rank.MEMBER, at(0))
    floor, _ = floor.request("E2", Rank.MEMBER, at(1))
    floor, _ = floor.request("E3", Rank.MEMBER, at(2))
    floor, effects = floor.release("E2", at(3))  # a waiting member withdraws: nothing to announce
    assert effects == [] and [w.member for w in floor.waiting] == ["E3"]
    floor, effects = floor.leave("E1", at(4))
    assert effects[0] == Granted("E3", Rank.MEMBER, at(34))
    assert Floor().release("nobody", at(0)) == (Floor(), [])
    assert Floor().tick(at(0)) == (Floor(), [])


def test_asking_again_while_holding_confirms_or_raises_to_emergency():
    floor, _ = Floor().request("E1", Rank.MEMBER, at(0))
    same, effects = floor.request("E1", Rank.MEMBER, at(1))
    assert effects == [Granted("E1", Rank.MEMBER, at(30))] and same == floor
    floor, effects = floor.request("E1", Rank.EMERGENCY, at(2))
    assert effects[0] == Granted("E1", Rank.EMERGENCY, at(122))


def test_the_table_covers_every_state():
    assert set(TABLE) == set(FloorState)
    assert TABLE[FloorState.IDLE] == {Trigger.REQUEST: "grant"}
    assert set(TABLE[FloorState.TAKEN]) == set(Trigger)
