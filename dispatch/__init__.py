"""Dispatch domain core: pure, synchronous, deterministic (no I/O, no clocks)."""
