"""Worker for tests/test_distributed.py, run under torchrun: collectives inside compiled graphs.

Every check compares ``torch.compile(backend="nkipy")`` with the same program run eagerly
on gloo (or with the single-process reference of a parallel model). Prints one JSON line
``RESULT {...}`` with this rank's check count and compile-cache numbers.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
from torch import nn

import spiky
import spiky.torch

TOL = {"rtol": 1e-5, "atol": 1e-5}


def main() -> None:
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    config = spiky.torch.init_nkipy_backend(nkipy_cache=os.environ["SPIKY_TEST_CACHE"], target="host")
    rank, world = config.rank, config.world_size
    assert (rank, world) == (dist.get_rank(), dist.get_world_size())
    assert config.rank_dir.is_dir() and config.rank_dir.name == f"rank_{rank}"
    checks = 0

    def check(fn: object, *inputs: torch.Tensor) -> None:
        nonlocal checks
        expected = fn(*inputs)  # type: ignore[operator]
        torch._dynamo.reset()  # the loop's lambdas share one code object: no recompile limit
        # fullgraph: a graph break would run the collective eagerly and prove nothing
        actual = torch.compile(fn, backend="nkipy", fullgraph=True)(*inputs)  # type: ignore[arg-type]
        torch.testing.assert_close(actual, expected, **TOL)
        checks += 1

    gen = torch.Generator().manual_seed(100 + rank)
    x = torch.randn(4, 6, generator=gen)
    groups = {"world": dist.group.WORLD}
    if world % 2 == 0 and world > 2:
        groups["pairs"] = dist.new_subgroups(group_size=2)[0]
    for group in groups.values():
        size = dist.get_world_size(group)
        for op in ("sum", "avg", "max", "min", "product"):
            check(lambda t, op=op, group=group: funcol.all_reduce(t * 2, op, group) + 1, x)
        check(lambda t, group=group: funcol.all_gather_tensor(t, 0, group) * 3, x)
        check(lambda t, group=group: funcol.all_gather_tensor(t.relu(), 1, group), x)  # any dim via the graph
        check(lambda t, group=group, size=size: funcol.reduce_scatter_tensor(t.repeat(size, 1), "sum", 0, group), x)
        check(lambda t, group=group: funcol.all_to_all_single(t.reshape(-1), None, None, group), x)
        check(lambda t, group=group: funcol.broadcast(t + 1, 1, group), x)

    def in_place(t: torch.Tensor) -> torch.Tensor:  # Dynamo turns this into functional collectives
        y = t * 2
        dist.all_reduce(y)
        return y - 1

    check(in_place, x)

    # Tensor parallel MLP: column-parallel fc1, row-parallel fc2, all_reduce of partial sums.
    torch.manual_seed(0)
    full = nn.Sequential(nn.Linear(16, 8 * world, bias=False), nn.ReLU(), nn.Linear(8 * world, 4, bias=False))
    w1 = full[0].weight.detach()[rank * 8:(rank + 1) * 8]
    w2 = full[2].weight.detach()[:, rank * 8:(rank + 1) * 8]

    def tp_mlp(inp: torch.Tensor) -> torch.Tensor:
        return funcol.all_reduce(torch.relu(inp @ w1.t()) @ w2.t(), "sum", dist.group.WORLD)

    inp = torch.randn(5, 16, generator=torch.Generator().manual_seed(7))  # same on every rank
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(tp_mlp, backend="nkipy", fullgraph=True)(inp), full(inp), **TOL)
    checks += 1

    # Data parallel training step: local batches, gradient all_reduce(avg), SGD; vs one process.
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 1))
    reference = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 1))
    reference.load_state_dict(model.state_dict())
    data = torch.randn(4 * world, 6, generator=torch.Generator().manual_seed(3))
    target = torch.randn(4 * world, 1, generator=torch.Generator().manual_seed(4))
    compiled = torch.compile(model, backend="nkipy")
    loss = nn.functional.mse_loss(compiled(data[rank * 4:(rank + 1) * 4]), target[rank * 4:(rank + 1) * 4])
    loss.backward()
    for p in model.parameters():
        assert p.grad is not None
        dist.all_reduce(p.grad)
        p.grad /= world
    nn.functional.mse_loss(reference(data), target).backward()
    with torch.no_grad():
        for p, q in zip(model.parameters(), reference.parameters(), strict=True):
            assert p.grad is not None and q.grad is not None
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5)
            p.sub_(0.1 * p.grad)
            q.sub_(0.1 * q.grad)
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
    checks += 1

    # Every collective above ran inside a compiled graph, through spiky-dist.
    assert spiky.get_stats().total_executions >= checks
    stats = spiky.cache.stats()
    dist.barrier()
    dist.destroy_process_group()
    result = {"rank": rank, "checks": checks, "misses": stats.misses, "hits": stats.hits}
    sys.stdout.write(f"RESULT {json.dumps(result)}\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
