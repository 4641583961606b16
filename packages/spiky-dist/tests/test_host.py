"""Host collectives across real processes (torchrun on loopback, gloo), vs eager gloo."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from spiky_dist import DistConfigError, HostCollectives

WORKERS = Path(__file__).parent / "workers"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.mark.slow
@pytest.mark.parametrize("world_size", [2, 4])
def test_collectives_match_eager_gloo(world_size: int) -> None:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={world_size}",
        "--master-addr=127.0.0.1", f"--master-port={_free_port()}", str(WORKERS / "collectives.py"),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=_env(), check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    # Ranks share stdout, so lines may interleave: find the reports anywhere in it.
    reports = dict(re.findall(r"rank (\d+): (\d+) checks ok", result.stdout))
    assert sorted(reports) == [str(r) for r in range(world_size)], result.stdout
    assert len(set(reports.values())) == 1 and int(reports["0"]) > 40  # same checks on every rank


@pytest.mark.slow
def test_a_failing_rank_gives_a_clear_error_not_a_hang() -> None:
    port = _free_port()
    procs = []
    start = time.monotonic()
    for rank in range(2):
        env = {**_env(), "RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen(
            [sys.executable, str(WORKERS / "failing_rank.py")], env=env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        ))
    outs = [p.communicate(timeout=120) for p in procs]
    elapsed = time.monotonic() - start
    assert procs[1].returncode == 3
    assert procs[0].returncode == 0, outs[0]
    assert "clear error: all_reduce on group" in outs[0][0]
    assert "another rank raised or exited" in outs[0][0]
    assert elapsed < 60


@pytest.mark.smoke
def test_without_process_group_the_error_says_what_to_do() -> None:
    with pytest.raises(DistConfigError, match=r"needs torch.distributed; call dist.init_process_group"):
        HostCollectives().all_reduce(np.ones(2, np.float32), "sum", "0")


@pytest.mark.smoke
def test_bad_reduce_op_is_named(tmp_path: Path) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        name = dist.group.WORLD.group_name
        host = HostCollectives()
        with pytest.raises(DistConfigError, match=r"reduce op 'mean' is not one of sum, avg, max, min, product"):
            host.all_reduce(np.ones(2, np.float32), "mean", name)
        with pytest.raises(DistConfigError, match=r"'avg' needs a floating dtype, got int32"):
            host.all_reduce(np.ones(2, np.int32), "avg", name)
        with pytest.raises(DistConfigError, match=r"no process group named 'nope'"):
            host.all_reduce(np.ones(2, np.float32), "sum", "nope")
        np.testing.assert_array_equal(host.all_reduce(np.arange(3, dtype=np.float32), "sum", name), [0, 1, 2])
    finally:
        dist.destroy_process_group()


@pytest.mark.smoke
def test_processes_that_ran_collectives_let_gloo_threads_settle_at_exit() -> None:
    """Registered once, by the first HostCollectives or staged eager collective; never by import alone."""
    code = (
        "import atexit, torch\n"
        "import spiky_dist.staging as staging\n"
        "from spiky_dist import HostCollectives\n"
        "n = atexit._ncallbacks()\n"
        "print(atexit._ncallbacks() - n)\n"
        "HostCollectives(); HostCollectives(); staging._host_one(torch.ones(2))\n"
        "print(atexit._ncallbacks() - n)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=_env(),
                         check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0", "1"]
