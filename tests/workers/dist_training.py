"""Worker for tests/test_dist_training.py, under torchrun: PyTorch's own distributed training
engines with the forward and backward compiled by nkipy, each step compared with the same
program run eagerly.

- FSDP2 (``fully_shard``): per layer + root and root only, ``reshard_after_forward`` both ways,
  on torch's default mesh (the ``nkipy`` device: parameters and inputs move onto it) and on an
  explicit CPU mesh;
- DTensor tensor parallel (``parallelize_module``): ColwiseParallel + RowwiseParallel, and with
  SequenceParallel on the norm;
- DDP with the gradient all-reduce inside the compiled backward (``optimize_ddp="python_reducer"``
  and compiled autograd), and DDP around a compiled module (the C++ reducer, eager all-reduce).

Each case checks the loss of every step, every gradient (full tensors) after the first backward,
and every weight after the last optimizer step. Prints ``RESULT {...}`` with this rank's checks.
``SPIKY_DIST_CASES`` (comma-separated prefixes) selects cases; the default runs all.
"""

from __future__ import annotations

import copy
import json
import os
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)

import spiky
import spiky.torch
import spiky_dist

STEPS = 3
TOL = {"rtol": 1e-5, "atol": 1e-6}


class Block(nn.Module):
    """A pre-norm MLP block: LayerNorm, up projection, GELU, down projection, residual."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.up = nn.Linear(width, 2 * width)
        self.down = nn.Linear(2 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(nn.functional.gelu(self.up(self.norm(x))))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([Block(), Block()])
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def _full(t: torch.Tensor) -> torch.Tensor:
    full = t.full_tensor() if hasattr(t, "full_tensor") else t
    return full.detach().cpu()


class Checker:
    def __init__(self) -> None:
        self.checks = 0

    def close(self, actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
        torch.testing.assert_close(_full(actual), _full(expected), **TOL, msg=lambda m: f"{what}: {m}")
        self.checks += 1

    def train(self, eager: nn.Module, model: nn.Module, x: torch.Tensor, name: str,
              around: Callable[[], AbstractContextManager[Any]] = nullcontext) -> None:
        """``STEPS`` SGD steps of ``eager`` (run eagerly) and ``model`` (compiled; its forward and
        backward run inside ``around()``) side by side: losses each step, gradients after the
        first, weights at the end."""
        opt_e = torch.optim.SGD(eager.parameters(), lr=0.05, momentum=0.9)
        opt_m = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        for step in range(STEPS):
            loss_e = eager(x).square().mean()
            loss_e.backward()
            with around():
                loss_m = model(x).square().mean()
                loss_m.backward()
            self.close(loss_m, loss_e, f"{name} loss at step {step}")
            if step == 0:
                for (pname, p), q in zip(eager.named_parameters(), model.parameters(), strict=True):
                    assert p.grad is not None and q.grad is not None, f"{name}: no gradient for {pname}"
                    self.close(q.grad, p.grad, f"{name} grad of {pname}")
            opt_e.step()
            opt_m.step()
            opt_e.zero_grad()
            opt_m.zero_grad()
        for (pname, p), q in zip(eager.named_parameters(), model.parameters(), strict=True):
            self.close(q, p, f"{name} weight {pname} after {STEPS} steps")


def fsdp_case(check: Checker, rank: int, world: int, mesh_kind: str, per_layer: bool, reshard: bool) -> None:
    torch.manual_seed(0)
    eager = Net()
    model = copy.deepcopy(eager)
    cpu_mesh = init_device_mesh("cpu", (world,))  # eager FSDP2 always shards over the CPU
    mesh: DeviceMesh | None = cpu_mesh if mesh_kind == "cpu" else None  # None: torch's default (nkipy)
    for net, m in ((eager, cpu_mesh), (model, mesh)):
        kwargs: dict[str, Any] = {"reshard_after_forward": reshard}
        if m is not None:
            kwargs["mesh"] = m
        if per_layer:
            for block in net.blocks:
                fully_shard(block, **kwargs)
        fully_shard(net, **kwargs)
    if mesh is None:
        assert next(model.parameters()).device.type == "nkipy", "the default mesh is the nkipy device"
    compiled = torch.compile(model, backend="nkipy")
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(10 + rank))
    name = f"fsdp2 mesh={mesh_kind} per_layer={per_layer} reshard={reshard}"
    check.train(eager, compiled, x, name)


def tp_case(check: Checker, rank: int, world: int, sequence_parallel: bool) -> None:
    torch.manual_seed(1)
    eager = _Bare(Block()) if sequence_parallel else Block()
    model = copy.deepcopy(eager)
    mesh = init_device_mesh("cpu", (world,))
    plan: dict[str, Any] = {"up": ColwiseParallel(), "down": RowwiseParallel()}
    if sequence_parallel:  # the norm runs on a sequence shard; up gathers it, down scatters it again
        plan = {"block.norm": SequenceParallel(), "block.up": ColwiseParallel(input_layouts=Shard(1)),
                "block.down": RowwiseParallel(output_layouts=Shard(1))}
    for net in (eager, model):
        parallelize_module(net, mesh, plan)
    compiled = torch.compile(model, backend="nkipy")
    x = torch.randn(2, 6, 16, generator=torch.Generator().manual_seed(20))  # the same on every rank
    check.train(eager, compiled, x, "tp+sequence parallel" if sequence_parallel else "tp colwise+rowwise")


class _Bare(nn.Module):
    """A block without its residual: under sequence parallel its output is a sequence shard."""

    def __init__(self, block: Block) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.block
        out: torch.Tensor = b.down(nn.functional.gelu(b.up(b.norm(x))))
        return out


def ddp_case(check: Checker, rank: int, world: int) -> None:
    from torch.nn.parallel import DistributedDataParallel

    torch._dynamo.config.optimize_ddp = "python_reducer"  # the reducer's all-reduce in the graph
    torch.manual_seed(2)
    eager = DistributedDataParallel(Net())
    model = DistributedDataParallel(copy.deepcopy(eager.module))
    compiled = torch.compile(model, backend="nkipy")
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(30 + rank))
    captures = torch._dynamo.utils.counters["compiled_autograd"]["captures"]
    check.train(eager, compiled, x, "ddp(compiled autograd)",
                around=lambda: torch._dynamo.compiled_autograd._enable(torch.compile(backend="nkipy")))
    assert torch._dynamo.utils.counters["compiled_autograd"]["captures"] > captures, "compiled autograd ran"


def ddp_inner_case(check: Checker, rank: int, world: int) -> None:
    """DDP around a compiled module: nkipy compiles forward and backward, DDP's C++ reducer
    all-reduces the gradients eagerly."""
    from torch.nn.parallel import DistributedDataParallel

    torch._dynamo.config.optimize_ddp = True
    torch.manual_seed(3)
    net = Net()
    eager = DistributedDataParallel(net)
    model = DistributedDataParallel(torch.compile(copy.deepcopy(net), backend="nkipy"))
    before = spiky.get_stats().total_executions
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(40 + rank))
    check.train(eager, model, x, "ddp(compiled module)")
    assert spiky.get_stats().total_executions >= before + 2 * STEPS, "forward and backward ran compiled"


CASES: dict[str, Callable[[Checker, int, int], None]] = {
    "fsdp2-default-mesh-per-layer": lambda c, r, w: fsdp_case(c, r, w, "default", True, True),
    "fsdp2-default-mesh-root-noreshard": lambda c, r, w: fsdp_case(c, r, w, "default", False, False),
    "fsdp2-cpu-mesh-per-layer-noreshard": lambda c, r, w: fsdp_case(c, r, w, "cpu", True, False),
    "fsdp2-cpu-mesh-root": lambda c, r, w: fsdp_case(c, r, w, "cpu", False, True),
    "tp-colwise-rowwise": lambda c, r, w: tp_case(c, r, w, False),
    "tp-sequence-parallel": lambda c, r, w: tp_case(c, r, w, True),
    "ddp-compiled-autograd": ddp_case,
    "ddp-inner-compiled": ddp_inner_case,
}


def run_cases(check: Checker, rank: int, world: int) -> list[str]:
    wanted = [p for p in os.environ.get("SPIKY_DIST_CASES", "").split(",") if p]
    ran = []
    for name, case in CASES.items():
        if wanted and not any(name.startswith(p) for p in wanted):
            continue
        torch._dynamo.reset()
        case(check, rank, world)
        ran.append(name)
    return ran


def main() -> None:
    dist.init_process_group("gloo", timeout=timedelta(seconds=120))
    rank, world = dist.get_rank(), dist.get_world_size()
    cache = os.environ["SPIKY_TEST_CACHE"]
    check = Checker()
    target = os.environ.get("SPIKY_DIST_TARGET", "host")
    if target == "neuron":  # the contract emulator: fake libnrt + fake neuronx-cc, HLO run on XLA:CPU
        from spiky.testing import fake_neuron

        with fake_neuron(cache) as fake:
            assert spiky.torch.current_config().target.startswith("neuron")
            # FSDP2's collectives run between the compiled graphs; tensor parallel and DDP's in-graph
            # reducer compile theirs into the NEFFs, which the emulator performs between the ranks'
            # processes (spiky.testing.xla_collectives).
            ran = run_cases(check, rank, world)
            executions = spiky.get_stats().total_executions
            assert fake.execute_count() > 0 and fake.neffs, "nothing ran on the emulated NeuronCore"
            if any(name.startswith(("tp", "ddp-compiled")) for name in ran):
                assert any(n.collectives for n in fake.neffs), "no NEFF with collectives was compiled"
    else:
        config = spiky.torch.init_nkipy_backend(nkipy_cache=cache, target="host")
        assert (config.rank, config.world_size) == (rank, world)
        ran = run_cases(check, rank, world)
        executions = spiky.get_stats().total_executions
    assert executions > 0, "nothing ran through the nkipy backend"
    # The NeuronCore this rank would own: its machine's core, from the local rank.
    core = spiky_dist.neuron_runtime_env(rank, world, env={"MASTER_ADDR": "x", **os.environ})
    dist.barrier()
    dist.destroy_process_group()
    result = {"rank": rank, "world": world, "target": target, "cases": ran, "checks": check.checks,
              "executions": executions, "local_rank": int(os.environ.get("LOCAL_RANK", "-1")),
              "core": core.get("NEURON_RT_VISIBLE_CORES")}
    sys.stdout.write(f"RESULT {json.dumps(result)}\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
