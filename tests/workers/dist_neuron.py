"""Worker for tests/test_dist_neuron.py, under torchrun: collectives inside compiled graphs on the
neuron target through the contract emulator (fake libnrt + fake neuronx-cc, the HLO on XLA:CPU,
the collectives between ranks performed by the execute rule over gloo), compared with eager.

- functional collectives in ``torch.compile(..., backend="nkipy", fullgraph=True)``: all_reduce
  (sum, max, avg), all_gather_tensor, reduce_scatter_tensor, all_to_all_single, and a graph with
  two dependent collectives and compute between them (three stages);
- a DTensor tensor-parallel training step (ColwiseParallel + RowwiseParallel MLP): loss and every
  gradient (full tensors).

Prints ``RESULT {...}`` with this rank's checks and what the emulator recorded.
"""

from __future__ import annotations

import copy
import json
import os
import sys
from collections.abc import Callable
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

import spiky.torch
from spiky.testing import fake_neuron


def _full(t: torch.Tensor) -> torch.Tensor:
    full = t.full_tensor() if hasattr(t, "full_tensor") else t
    return full.detach().cpu()


class Checker:
    def __init__(self) -> None:
        self.checks: list[str] = []

    def close(self, actual: torch.Tensor, expected: torch.Tensor, what: str, tol: float) -> None:
        torch.testing.assert_close(_full(actual), _full(expected), rtol=tol, atol=tol, msg=lambda m: f"{what}: {m}")
        self.checks.append(what)


def _functional(rank: int, world: int) -> dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor]]:
    group = dist.group.WORLD
    x = torch.randn(4 * world, 3, generator=torch.Generator().manual_seed(100 + rank))

    def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
        return funcol.all_reduce(t * 2.0, "sum", group) + 1.0

    def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
        return funcol.all_reduce(t.sin(), "max", group) - t

    def all_reduce_avg(t: torch.Tensor) -> torch.Tensor:
        return funcol.all_reduce(t.exp(), "avg", group) * 3.0

    def all_gather(t: torch.Tensor) -> torch.Tensor:
        return funcol.all_gather_tensor(t + 1.0, 0, group).cos()

    def reduce_scatter(t: torch.Tensor) -> torch.Tensor:
        return funcol.reduce_scatter_tensor(t * t, "sum", 0, group) / 2.0

    def all_to_all(t: torch.Tensor) -> torch.Tensor:
        return funcol.all_to_all_single(t - 0.5, None, None, group) * 2.0

    def chained(t: torch.Tensor) -> torch.Tensor:  # collective -> compute -> collective, plus an independent one
        first = funcol.all_reduce(t.tanh(), "sum", group)
        second = funcol.all_gather_tensor(first.relu() + t, 0, group)
        side = funcol.all_reduce(t.abs(), "max", group)
        return second.sum(0) + side.sum(0) + t.mean()

    return {fn.__name__: (fn, x) for fn in
            (all_reduce_sum, all_reduce_max, all_reduce_avg, all_gather, reduce_scatter, all_to_all, chained)}


class Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(16, 32)
        self.down = nn.Linear(32, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.down(torch.relu(self.up(x)))
        return out


def tensor_parallel_step(check: Checker, world: int) -> None:
    torch.manual_seed(7)
    eager = Mlp()
    model = copy.deepcopy(eager)
    mesh = init_device_mesh("cpu", (world,))
    for net in (eager, model):
        parallelize_module(net, mesh, {"up": ColwiseParallel(), "down": RowwiseParallel()})
    compiled = torch.compile(model, backend="nkipy")
    x = torch.randn(5, 16, generator=torch.Generator().manual_seed(8))  # the same on every rank
    loss_e = eager(x).square().mean()
    loss_e.backward()
    loss_m = compiled(x).square().mean()
    loss_m.backward()
    check.close(loss_m, loss_e, "tp loss", 1e-5)
    for (name, p), q in zip(eager.named_parameters(), model.parameters(), strict=True):
        assert p.grad is not None and q.grad is not None, f"no gradient for {name}"
        check.close(q.grad, p.grad, f"tp grad of {name}", 1e-5)


def main() -> None:
    dist.init_process_group("gloo", timeout=timedelta(seconds=120))
    rank, world = dist.get_rank(), dist.get_world_size()
    check = Checker()
    with fake_neuron(os.environ["SPIKY_TEST_CACHE"]) as fake:
        assert spiky.torch.current_config().target.startswith("neuron")
        for name, (fn, x) in _functional(rank, world).items():
            expected = fn(x)
            got = torch.compile(fn, backend="nkipy", fullgraph=True)(x)
            check.close(got, expected, name, 1e-6)
        functional_executions = fake.execute_count()
        tensor_parallel_step(check, world)
        executions = fake.execute_count()
        neffs = fake.neffs
        loads = fake.call_count("nrt_load_collectives")
    assert functional_executions >= 7 and executions > functional_executions, (functional_executions, executions)
    collective_neffs = [n.neff_id for n in neffs if n.collectives]
    assert collective_neffs, "no NEFF with collectives was compiled"
    dist.barrier()
    dist.destroy_process_group()
    result = {"rank": rank, "world": world, "checks": check.checks, "executions": executions,
              "neffs": len(neffs), "collective_neffs": len(collective_neffs), "collective_loads": loads}
    sys.stdout.write(f"RESULT {json.dumps(result)}\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
