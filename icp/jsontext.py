"""JSON text as ICP writes it: compact (no spaces), UTF-8 kept as is.

Most of it is written by orjson, several times faster than the standard library's encoder on the
busiest paths (every stored report and jsonb value, every event, every WebSocket frame and HTTP
answer). The standard library stays the reference for what orjson cannot write (integers beyond
64 bits, keys that are not strings) and for the text that is hashed (see `canonical_finite`).
`json.dumps` and `json.loads` called with options build a new encoder or decoder every time, so
the standard encoders are made once here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import orjson

_compact_std: Callable[[Any], str] = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
# Sorted keys, no NaN/Infinity: the form that is hashed or compared (event log, SensorThings).
canonical: Callable[[Any], str] = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, sort_keys=True, allow_nan=False).encode
# For frames that may carry values JSON has no type for (a datetime in a result): written as text.
lenient: Callable[[Any], str] = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str).encode


def compact_bytes(value: Any) -> bytes:
    """Compact JSON as UTF-8 bytes (an HTTP body). NaN and infinities are written null (as
    JavaScript's JSON.stringify does), so the text is always JSON; datetimes in RFC 3339."""
    try:
        return orjson.dumps(value)
    except TypeError:  # an integer beyond 64 bits or a key that is not a string: the stdlib writes those
        return _compact_std(value).encode("utf-8")


def compact(value: Any) -> str:
    """`compact_bytes` as text."""
    return compact_bytes(value).decode("utf-8")


def canonical_finite(value: Any) -> str:
    """`canonical` of a value as the event log normalises it (no NaN or infinity, integral floats
    written as integers), byte for byte. orjson with sorted keys writes the same text but for
    some numbers, which go to `canonical`: integers beyond 64 bits (orjson refuses them) and
    floats under 1e-4, which orjson writes "0.00001" or "1e-7" where Python writes "1e-05" and
    "1e-07". Every such text holds "0.0000" or a digit followed by "e-" (text in strings can
    too, which only costs the slower encoder)."""
    try:
        text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError:
        return canonical(value)
    if "0.0000" in text or ("e-" in text and _EXPONENT.search(text)):
        return canonical(value)
    return text


_EXPONENT = re.compile(r"\de-")


def canonical_checked(value: Any) -> str:
    """`canonical_finite` of a value its producer checked holds no float under 1e-4 in magnitude
    (`eventlog.NewEvent.checked`): orjson's text as it is. An integer beyond 64 bits still goes
    to `canonical`."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError:
        return canonical(value)
