"""Collectives inside compiled graphs across real processes (torchrun on loopback, gloo)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

import spiky

WORKER = Path(__file__).parent / "workers" / "dist_compiled.py"
EXAMPLES = Path(__file__).parents[1] / "examples"


@pytest.mark.slow
@pytest.mark.parametrize("world_size", [2, 4])
def test_compiled_collectives_tp_and_dp_match_eager(world_size: int, tmp_path: Path, torchrun: Any) -> None:
    result = torchrun.run(WORKER, world_size, timeout=300)
    reports = torchrun.reports(result.stdout)
    assert sorted(r["rank"] for r in reports) == list(range(world_size)), result.stdout
    assert len({r["checks"] for r in reports}) == 1 and reports[0]["checks"] == (23 if world_size == 4 else 13)
    # Identical graphs across ranks compile once in the shared cache; every other rank reuses
    # them. (Graphs on different subgroups differ: the group is part of the IR.)
    entries = spiky.cache.list_entries(tmp_path / "cache")
    assert sum(r["misses"] for r in reports) == len(entries), reports
    assert sum(r["hits"] for r in reports) == sum(r["misses"] + r["hits"] for r in reports) - len(entries)
    assert len({r["misses"] + r["hits"] for r in reports}) == 1  # every rank compiled the same number of graphs
    assert all((tmp_path / "cache" / f"rank_{r}").is_dir() for r in range(world_size))


@pytest.mark.slow
def test_readme_torchrun_example(tmp_path: Path, torchrun: Any) -> None:
    result = torchrun.run(EXAMPLES / "distributed.py", timeout=180, SPIKY_CACHE=str(tmp_path))
    # Ranks share stdout, so their lines may interleave: find each report anywhere in it.
    reports = dict(re.findall(r"rank (\d)/2 on host: output \(5, 4\), max \|tp - full\| = (\S+),", result.stdout))
    assert sorted(reports) == ["0", "1"], result.stdout
    assert all(float(diff) < 1e-5 for diff in reports.values())


@pytest.mark.slow
def test_eager_collectives_on_nkipy_tensors(tmp_path: Path, torchrun: Any) -> None:
    worker = Path(__file__).parent / "workers" / "dist_eager_device.py"
    result = torchrun.run(worker, timeout=180, SPIKY_CACHE=str(tmp_path))
    reports = dict(re.findall(r"rank (\d): (\d+) eager checks ok", result.stdout))
    assert reports == {"0": "10", "1": "10"}, result.stdout
