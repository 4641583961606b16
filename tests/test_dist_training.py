"""PyTorch's distributed training engines with nkipy-compiled forward and backward, two ranks under
torchrun (gloo on loopback; worker: workers/dist_training.py), against the same program run eagerly.

Tolerances (the worker's ``TOL``): rtol 1e-5, atol 1e-6 on every loss, gradient and weight.
Cases: FSDP2 on torch's default mesh (the nkipy device) and on a CPU mesh, per layer and root only,
``reshard_after_forward`` both ways; DTensor tensor parallel (colwise + rowwise, and with sequence
parallel); DDP with the all-reduce inside the compiled backward (compiled autograd), and DDP around a
compiled module.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

WORKER = Path(__file__).parent / "workers" / "dist_training.py"
CASES = ["fsdp2-default-mesh-per-layer", "fsdp2-default-mesh-root-noreshard", "fsdp2-cpu-mesh-per-layer-noreshard",
         "fsdp2-cpu-mesh-root", "tp-colwise-rowwise", "tp-sequence-parallel", "ddp-compiled-autograd",
         "ddp-inner-compiled"]
# Net: 14 parameters, Block: 6. Per FSDP2 case: 3 losses + 14 grads + 14 weights; per TP case 3 + 6 + 6;
# DDP: 3 + 14 + 14.
CHECKS = {"fsdp2": 31, "tp": 15, "ddp": 31}


def _expected_checks(cases: list[str]) -> int:
    return sum(CHECKS[name.split("-")[0]] for name in cases)


@pytest.mark.slow
def test_fsdp2_tp_and_ddp_match_eager(torchrun: Any) -> None:
    reports = torchrun.reports(torchrun.run(WORKER).stdout)
    assert [r["rank"] for r in reports] == [0, 1]
    for r in reports:
        assert r["cases"] == CASES and r["checks"] == _expected_checks(CASES), r
        assert r["executions"] > 0 and r["target"] == "host"
        assert (r["local_rank"], r["core"]) == (r["rank"], str(r["rank"]))


@pytest.mark.slow
def test_every_engine_on_the_contract_emulator(torchrun: Any) -> None:
    """The same cases on the neuron target (spiky.testing.fake_neuron): FSDP2 runs its collectives
    between compiled graphs; tensor parallel and DDP's in-graph reducer compile theirs into the NEFFs,
    which the emulator performs between the ranks' processes. (DDP's compiled-autograd backward takes
    a zero-element input: emitted as a constant, it never reaches the NEFF.) Same tolerances."""
    reports = torchrun.reports(torchrun.run(WORKER, SPIKY_DIST_TARGET="neuron").stdout)
    assert [r["rank"] for r in reports] == [0, 1]
    for r in reports:
        assert r["target"] == "neuron" and r["cases"] == CASES, r
        assert r["checks"] == _expected_checks(CASES), r


@pytest.mark.slow
def test_two_node_simulation(torchrun: Any, tmp_path: Path) -> None:
    """``torchrun --nnodes 2`` on one machine, one process per node, each node its own compile cache:
    ranks and world size come from the process group, the Neuron core from the local rank (0 on both
    nodes), and FSDP2 training matches eager."""
    port = torchrun.free_port()
    procs = []
    for node in (0, 1):
        cmd = torchrun.command(WORKER, 1, "--nnodes=2", f"--node-rank={node}", port=port)
        env = torchrun.env(SPIKY_TEST_CACHE=str(tmp_path / f"node{node}"), SPIKY_DIST_CASES="fsdp2-cpu")
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-3000:] + err[-5000:]
    reports = torchrun.reports(outs[0][0] + outs[1][0])
    assert [(r["rank"], r["world"], r["local_rank"], r["core"]) for r in reports] == [(0, 2, 0, "0"), (1, 2, 0, "0")]
    cases = [c for c in CASES if c.startswith("fsdp2-cpu")]
    assert all(r["cases"] == cases and r["checks"] == _expected_checks(cases) for r in reports), reports
    assert all(any((tmp_path / f"node{n}").iterdir()) for n in (0, 1))  # each node compiled into its own cache


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.slow
@pytest.mark.parametrize(("example", "what"), [("fsdp2", "loss"), ("tensor_parallel", "gradient"),
                                               ("ddp", "averaged gradient")])
def test_distributed_training_examples(torchrun: Any, example: str, what: str) -> None:
    """The examples docs/distributed.md shows, as written, under torchrun with 2 ranks."""
    out = torchrun.run(EXAMPLES / f"{example}.py", SPIKY_CACHE=str(torchrun.tmp_path / "cache")).stdout
    # Ranks share stdout, so one line may hold both reports: match the number exactly.
    found = dict(re.findall(rf"rank (\d): [^|]*max \|compiled - eager\| {what} = (\d\.\d\de[+-]\d\d)", out))
    assert sorted(found) == ["0", "1"], out
    assert all(float(diff) <= 1e-5 for diff in found.values()), found
