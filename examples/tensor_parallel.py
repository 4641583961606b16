"""DTensor tensor parallel (parallelize_module) with the forward and backward compiled by nkipy.

    torchrun --nproc-per-node 2 examples/tensor_parallel.py

``up`` is split by columns and ``down`` by rows over a CPU mesh; the all-reduce that joins the
partial sums runs inside the compiled graphs (forward and backward).
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

import spiky.torch


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(16, 64)
        self.down = nn.Linear(64, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.relu(self.up(x)))


def main() -> None:
    dist.init_process_group("gloo")
    spiky.torch.init_nkipy_backend(target="auto")
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    torch.manual_seed(0)
    eager = MLP()
    model = copy.deepcopy(eager)
    plan = {"up": ColwiseParallel(), "down": RowwiseParallel()}
    for net in (eager, model):
        parallelize_module(net, mesh, plan)
    compiled = torch.compile(model, backend="nkipy")
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(1))  # the same input on every rank
    compiled(x).square().mean().backward()
    eager(x).square().mean().backward()
    worst = max((a.grad.full_tensor() - b.grad.full_tensor()).abs().max().item()
                for a, b in zip(model.parameters(), eager.parameters(), strict=True))
    print(f"rank {dist.get_rank()}: tensor parallel, max |compiled - eager| gradient = {worst:.2e}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
