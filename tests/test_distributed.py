"""Collectives inside compiled graphs across real processes (torchrun on loopback, gloo)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import spiky

WORKER = Path(__file__).parent / "workers" / "dist_compiled.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
@pytest.mark.parametrize("world_size", [2, 4])
def test_compiled_collectives_tp_and_dp_match_eager(world_size: int, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(SPIKY_TEST_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={world_size}",
        "--master-addr=127.0.0.1", f"--master-port={_free_port()}", str(WORKER),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, check=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-6000:]
    reports = [json.loads(line.split("RESULT ", 1)[1]) for line in result.stdout.splitlines() if "RESULT " in line]
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
def test_readme_torchrun_example(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(SPIKY_CACHE=str(tmp_path), OMP_NUM_THREADS="1")
    example = Path(__file__).parents[1] / "examples" / "distributed.py"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-addr=127.0.0.1",
           f"--master-port={_free_port()}", str(example)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    # Ranks share stdout, so their lines may interleave: find each report anywhere in it.
    reports = dict(re.findall(r"rank (\d)/2 on host: output \(5, 4\), max \|tp - full\| = (\S+),", result.stdout))
    assert sorted(reports) == ["0", "1"], result.stdout
    assert all(float(diff) < 1e-5 for diff in reports.values())


@pytest.mark.slow
def test_eager_collectives_on_nkipy_tensors(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(SPIKY_CACHE=str(tmp_path), OMP_NUM_THREADS="1")
    worker = Path(__file__).parent / "workers" / "dist_eager_device.py"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-addr=127.0.0.1",
           f"--master-port={_free_port()}", str(worker)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    reports = dict(re.findall(r"rank (\d): (\d+) eager checks ok", result.stdout))
    assert reports == {"0": "10", "1": "10"}, result.stdout
