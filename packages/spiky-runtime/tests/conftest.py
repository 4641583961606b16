"""Shared fixtures: every test gets the process-wide host device in a known state."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

import spiky_runtime as rt


@pytest.fixture
def dev() -> Iterator[rt.Device]:
    """host:0 with unlimited capacity, an empty cache and zeroed counters."""
    device = rt.Device("host", 0, capacity_bytes=0)
    if device.memory_stats()["used_bytes"]:
        # Buffers of earlier tests held by reference cycles go back to the pool. (A full
        # collection costs ~0.3 s with torch loaded, so only when something is still held.)
        gc.collect()
    device.clear_cache()
    device.reset_stats()
    assert device.memory_stats()["used_bytes"] == 0, "a buffer leaked from an earlier test"
    yield device
    rt.Device("host", 0, capacity_bytes=0)  # undo a test's capacity on the shared device
    device.clear_cache()
