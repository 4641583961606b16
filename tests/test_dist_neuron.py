"""Collectives inside compiled graphs on the neuron target through the contract emulator: the execute
rule splits a NEFF's HLO at its cross-rank collectives and performs them over torch.distributed
(spiky.testing.xla_collectives); what it cannot map it refuses with a clear error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from spiky.testing.neuronx_cc import PRIMITIVE_DTYPES
from spiky.testing.xla_collectives import ProcessGroups, cross_rank_collectives, stage_module
from spiky_ir import DType, Graph, TensorType
from spiky_ir.hlo import HloModule, emit_hlo

WORKER = Path(__file__).resolve().parent / "workers" / "dist_neuron.py"
FUNCTIONAL = ["all_reduce_sum", "all_reduce_max", "all_reduce_avg", "all_gather", "reduce_scatter", "all_to_all",
              "chained"]


@pytest.mark.slow
def test_collectives_in_compiled_graphs_on_the_emulator(torchrun: Any) -> None:
    """Functional collectives and a DTensor tensor-parallel step compiled for neuron run on the emulator
    across two ranks and match eager (each rank's inputs differ, so a rank-local run would not)."""
    reports = torchrun.reports(torchrun.run(WORKER, nproc=2, timeout=600).stdout)
    assert [r["rank"] for r in reports] == [0, 1]
    for r in reports:
        assert r["world"] == 2
        assert r["checks"][:len(FUNCTIONAL)] == FUNCTIONAL, r
        tp = r["checks"][len(FUNCTIONAL):]
        assert tp == ["tp loss", "tp grad of up.weight", "tp grad of up.bias", "tp grad of down.weight",
                      "tp grad of down.bias"], r
        assert r["executions"] >= len(FUNCTIONAL) + 2, r  # + the TP forward and backward
        assert r["collective_neffs"] >= len(FUNCTIONAL) and r["collective_loads"] >= r["collective_neffs"], r


def _all_reduce_module(groups: list[list[int]]) -> HloModule:
    graph = Graph()
    x = graph.add_input("x", TensorType((4,), DType.float32))
    reduced = graph.add_op("all_reduce", [x], {"reduce_op": "sum", "group_name": "g"})
    graph.set_outputs([graph.add_op("exp", [reduced])])
    return HloModule.decode(emit_hlo(graph, replica_groups={"g": groups}).proto)


def _stage(module: HloModule, rank: int, world: int) -> Any:
    def no_compile(proto: bytes) -> Any:
        raise AssertionError("nothing may be compiled before the checks pass")

    return stage_module(module, "kernel_test", rank, world, ProcessGroups(), no_compile,
                        lambda element_type: np.dtype(PRIMITIVE_DTYPES[element_type]))


def test_the_emulator_refuses_collectives_without_torch_distributed(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.distributed as dist

    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    module = _all_reduce_module([[0, 1]])
    assert [i.opcode for i in cross_rank_collectives(module)] == ["all-reduce"]
    with pytest.raises(RuntimeError, match=r"performs them over torch.distributed, which is not initialised"):
        _stage(module, 0, 2)


def test_the_emulator_refuses_a_load_that_disagrees_with_torch_distributed(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.distributed as dist

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda group=None: 0)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    module = _all_reduce_module([[0, 1]])
    with pytest.raises(RuntimeError, match=r"loaded as rank 1 of 2, but torch.distributed is rank 0 of 2"):
        _stage(module, 1, 2)
    with pytest.raises(RuntimeError, match=r"not loaded with nrt_load_collectives"):
        _stage(module, -1, -1)


def test_the_emulator_refuses_replica_groups_it_cannot_map() -> None:
    # Replica ids are global ranks: rank 2 does not exist in a job of 2, and groups must tile the world.
    for groups in ([[0, 2]], [[0, 1], [2, 3]]):
        with pytest.raises(NotImplementedError, match=r"do not split the 2 ranks of the job into equal groups"):
            _stage(_all_reduce_module(groups), 0, 2)


def test_a_rank_local_graph_is_not_split() -> None:
    assert cross_rank_collectives(_all_reduce_module([[0], [1]])) == []
