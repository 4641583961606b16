"""Builds and runs the C++ unit tests (tests/cpp) so the README test command covers them."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import pytest

CPP_DIR = Path(__file__).resolve().parent / "cpp"


def _builder() -> object:
    spec = importlib.util.spec_from_file_location("_spiky_cpp_build", CPP_DIR / "build_tests.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_cpp_unit_tests_pass() -> None:
    binary = _builder().build()  # type: ignore[attr-defined]
    proc = subprocess.run([str(binary)], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "FAIL" not in proc.stdout
    # Every suite registered: a missing object file would silently drop its tests.
    for name in ("pool_concurrent_8_threads", "pad_unpad_each_dim_1d_to_4d_every_dtype",
                 "pipelined_100_distinct_inputs_and_sync_agree", "timeline_records_pipeline_tracks"):
        assert f"PASS {name}" in proc.stdout, proc.stdout
