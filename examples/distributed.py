"""Tensor-parallel MLP with an all_reduce inside the compiled graph, on the host target.

    torchrun --nproc-per-node 2 examples/distributed.py

Each rank holds a column shard of fc1 and a row shard of fc2; the partial outputs are
summed by an all_reduce that spiky compiles into the graph and runs through the gloo
process group (on Neuron it would compile into the NEFF).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
from torch import nn

import spiky
import spiky.torch


def main() -> None:
    dist.init_process_group("gloo")
    config = spiky.torch.init_nkipy_backend(target="auto")  # rank and world size from torchrun
    rank, world = config.rank, config.world_size

    torch.manual_seed(0)  # the same full model on every rank
    full = nn.Sequential(nn.Linear(16, 8 * world, bias=False), nn.ReLU(), nn.Linear(8 * world, 4, bias=False))
    w1 = full[0].weight.detach()[rank * 8:(rank + 1) * 8]
    w2 = full[2].weight.detach()[:, rank * 8:(rank + 1) * 8]

    @torch.compile(backend="nkipy", fullgraph=True)
    def tp_mlp(x: torch.Tensor) -> torch.Tensor:
        return funcol.all_reduce(torch.relu(x @ w1.t()) @ w2.t(), "sum", dist.group.WORLD)

    x = torch.randn(5, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = tp_mlp(x)
        diff = (out - full(x)).abs().max().item()
    print(f"rank {rank}/{world} on {config.target}: output {tuple(out.shape)}, max |tp - full| = {diff:.2e}, "
          f"executions {spiky.get_stats().total_executions}", flush=True)
    dist.barrier()  # every rank done before any tears the group down
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
