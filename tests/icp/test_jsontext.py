"""JSON text: orjson writes it, and what is hashed is byte for byte what the standard library writes."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from icp import jsontext

text = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)  # no lone surrogates: not UTF-8
# As the event log hands values over: integral floats are already integers.
non_integral = st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not f.is_integer())
scalars = st.none() | st.booleans() | st.integers(min_value=-(2**80), max_value=2**80) | non_integral | text
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
                      max_leaves=20)


@settings(max_examples=600)
@given(values)
@example({"tiny": [1e-05, 9.999e-05, 1e-07, -2.5e-300, 5e-324], "b": 1e-4})
@example({"big": [2**64, -(2**63) - 1, 2**64 - 1], "s": "e-1 and 0.0000 in text"})
@example({"z\u00e9": 1, "z": 2, "\U0001f600": 3, "A": [0.1, 123456.789, 1e15 + 0.5]})
def test_canonical_finite_is_the_reference_text(value: Any) -> None:
    assert jsontext.canonical_finite(value) == jsontext.canonical(value)


@settings(max_examples=300)
@given(values)
def test_compact_reads_back_as_the_value(value: Any) -> None:
    out = jsontext.compact(value)
    assert json.loads(out) == value
    assert jsontext.compact_bytes(value) == out.encode("utf-8")


def test_compact_writes_what_orjson_cannot_and_always_json() -> None:
    assert jsontext.compact({1: "a", "b": 2**70}) == '{"1":"a","b":1180591620717411303424}'  # the stdlib's way
    assert jsontext.compact({"x": math.nan, "y": -math.inf}) == '{"x":null,"y":null}'
    at = datetime(2026, 11, 22, 8, 30, 5, tzinfo=UTC)
    assert json.loads(jsontext.compact({"at": at})) == {"at": "2026-11-22T08:30:05+00:00"}
    written = jsontext.compact({"name": "Töölö ☃", "n": [1, 2.5, None, True]})
    assert written == '{"name":"Töölö ☃","n":[1,2.5,null,true]}'
