"""JSON text as ICP writes it: compact (no spaces), UTF-8 kept as is.

`json.dumps` and `json.loads` called with options build a new encoder or decoder every time; on the
busiest paths (every WebSocket frame, every JSONB value, every event) that costs more than the
encoding itself, so the encoders are made once here.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

compact: Callable[[Any], str] = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
# Sorted keys, no NaN/Infinity: the form that is hashed or compared (event log, SensorThings).
canonical: Callable[[Any], str] = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, sort_keys=True, allow_nan=False).encode
# For frames that may carry values JSON has no type for (a datetime in a result): written as text.
lenient: Callable[[Any], str] = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str).encode
