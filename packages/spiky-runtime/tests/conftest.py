"""Shared fixtures: every test gets the process-wide host device in a known state."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

import spiky_runtime as rt


@pytest.fixture
def dev() -> Iterator[rt.Device]:
    """host:0 with unlimited capacity, an empty cache and zeroed counters."""
    gc.collect()  # buffers of earlier tests go back to the pool
    device = rt.Device("host", 0, capacity_bytes=0)
    device.clear_cache()
    device.reset_stats()
    assert device.memory_stats()["used_bytes"] == 0, "a buffer leaked from an earlier test"
    yield device
    gc.collect()
    rt.Device("host", 0, capacity_bytes=0)  # undo a test's capacity on the shared device
    device.clear_cache()
