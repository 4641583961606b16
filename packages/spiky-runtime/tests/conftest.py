"""Shared fixtures: every test gets the process-wide host device in a known state; a test
taking ``dtype_case`` runs once per row of the dtype table (dtype_table.py)."""

from __future__ import annotations

import gc
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

import spiky_runtime as rt


def _load_dtype_table() -> ModuleType:
    # tests/ is not a package (pytest runs with --import-mode=importlib): load by path, once.
    name = "_spiky_runtime_dtype_table"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent / "dtype_table.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the class is built
        spec.loader.exec_module(module)
    return sys.modules[name]


DTYPE_TABLE = _load_dtype_table()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "dtype_case" in metafunc.fixturenames:
        metafunc.parametrize("dtype_case", DTYPE_TABLE.DTYPES, ids=DTYPE_TABLE.NAMES)


@pytest.fixture
def dtype_table() -> ModuleType:
    """dtype_table.py: DTYPES, NAMES, BY_NAME (e.g. ``dtype_table.BY_NAME["bfloat16"]``)."""
    return DTYPE_TABLE


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
