"""DDP with the gradient all-reduce inside the compiled backward (compiled autograd).

    torchrun --nproc-per-node 2 examples/ddp.py

``optimize_ddp="python_reducer"`` lets Dynamo trace DDP's reducer, and compiled autograd puts the
backward, all-reduce included, into one graph that nkipy compiles.
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import spiky.torch


def main() -> None:
    dist.init_process_group("gloo")
    spiky.torch.init_nkipy_backend(target="auto")
    torch._dynamo.config.optimize_ddp = "python_reducer"
    torch.manual_seed(0)
    eager = DistributedDataParallel(nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 1)))
    model = DistributedDataParallel(copy.deepcopy(eager.module))
    compiled = torch.compile(model, backend="nkipy")
    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(dist.get_rank()))
    with torch._dynamo.compiled_autograd._enable(torch.compile(backend="nkipy")):
        compiled(x).square().mean().backward()
    eager(x).square().mean().backward()
    worst = max((a.grad - b.grad).abs().max().item()
                for a, b in zip(model.parameters(), eager.parameters(), strict=True))
    print(f"rank {dist.get_rank()}: ddp, max |compiled - eager| averaged gradient = {worst:.2e}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
