"""Pure parts of media: the call lifecycle table, ICE settings, host-address gathering, mono mixing input."""

from __future__ import annotations

import aioice.ice
import numpy as np
import pytest
from av import AudioFrame

from icp.media import calls
from icp.media.calls import CallState, CallTrigger, IllegalCallTransition, end_reason, step
from icp.media.ice import IceConfigError, parse_host_addresses, parse_ice_servers, servers_json, use_host_addresses
from icp.media.tracks import FRAME_SAMPLES, OpusEncoder, mono


def test_the_call_lifecycle_table() -> None:
    assert step(CallState.RINGING, CallTrigger.ACCEPT) is CallState.CONNECTED
    assert step(CallState.RINGING, CallTrigger.DECLINE) is CallState.DECLINED
    assert step(CallState.RINGING, CallTrigger.TIMEOUT) is CallState.MISSED
    assert step(CallState.RINGING, CallTrigger.HANGUP) is CallState.CANCELLED
    assert step(CallState.CONNECTED, CallTrigger.HANGUP) is CallState.ENDED
    for final in calls.FINAL:
        with pytest.raises(IllegalCallTransition):
            step(final, CallTrigger.HANGUP)
    with pytest.raises(IllegalCallTransition):
        step(CallState.CONNECTED, CallTrigger.ACCEPT)
    assert end_reason(CallState.RINGING, CallTrigger.HANGUP) == "cancelled"
    assert end_reason(CallState.CONNECTED, CallTrigger.HANGUP) == "hangup"
    assert end_reason(CallState.RINGING, CallTrigger.TIMEOUT) == "timeout"
    assert {CallState.ENDED, CallState.DECLINED, CallState.MISSED, CallState.CANCELLED} == calls.FINAL
    assert "| ringing | accept | connected |" in calls.markdown()


def test_ice_servers_from_settings() -> None:
    assert parse_ice_servers("") == []
    servers = parse_ice_servers("stun:stun.example.org:3478, turn:alice:s%40cret@turn.example.org:3478?transport=udp")
    assert servers_json(servers) == [
        {"urls": "stun:stun.example.org:3478"},
        {"urls": "turn:turn.example.org:3478?transport=udp", "username": "alice", "credential": "s@cret"}]
    listed = parse_ice_servers('[{"urls": ["turns:t.example.org:443?transport=tcp"], "username": "u", '
                               '"credential": "p"}]')
    assert listed[0].urls == ["turns:t.example.org:443?transport=tcp"] and listed[0].credential == "p"
    for bad in ("http://stun.example.org", "[1, 2]", "[{", "stun:" + "x" * 600):
        with pytest.raises(IceConfigError):
            parse_ice_servers(bad)


def test_host_addresses_include_loopback_when_configured() -> None:
    assert parse_host_addresses("") == ([], True)
    assert parse_host_addresses("loopback") == (["127.0.0.1"], False)
    assert parse_host_addresses("auto, ::1") == (["::1"], True)
    with pytest.raises(IceConfigError):
        parse_host_addresses("localhost")
    original = aioice.ice.get_host_addresses
    try:
        use_host_addresses("127.0.0.1")
        assert aioice.ice.get_host_addresses(True, False) == ["127.0.0.1"]
        assert aioice.ice.get_host_addresses(False, True) == []
        use_host_addresses("loopback,auto")
        assert "127.0.0.1" in aioice.ice.get_host_addresses(True, False)
    finally:
        aioice.ice.get_host_addresses = original


def test_mono_input_and_one_encoder_for_many_listeners() -> None:
    stereo = np.array([[100, 300] * FRAME_SAMPLES], dtype=np.int16)
    frame = AudioFrame.from_ndarray(stereo, format="s16", layout="stereo")
    frame.sample_rate = 48_000
    assert mono(frame).tolist() == [200] * FRAME_SAMPLES
    encoder = OpusEncoder()
    packets = encoder.encode(np.zeros(FRAME_SAMPLES, dtype=np.int16))
    packets += encoder.encode(np.zeros(FRAME_SAMPLES, dtype=np.int16))
    assert packets and all(p.time_base.denominator == 48_000 for p in packets)
    assert [p.pts for p in packets] == sorted(p.pts for p in packets)
