"""FSDP2 (fully_shard) training with the forward and backward compiled by nkipy.

    torchrun --nproc-per-node 2 examples/fsdp2.py

Each layer and the root are sharded over the ranks; torch's default mesh is the nkipy device, so
parameters and inputs move onto it as they would onto a GPU. The same program runs eagerly on a
CPU mesh next to it, and the losses must agree.
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

import spiky.torch


def build() -> nn.Module:
    return nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 32), nn.GELU(), nn.Linear(32, 4))


def shard(model: nn.Module, **kwargs: object) -> nn.Module:
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)
    return model


def main() -> None:
    dist.init_process_group("gloo")
    spiky.torch.init_nkipy_backend(target="auto")
    rank = dist.get_rank()
    torch.manual_seed(0)
    eager = build()
    model = shard(copy.deepcopy(eager))  # default mesh: the nkipy device
    shard(eager, mesh=init_device_mesh("cpu", (dist.get_world_size(),)))
    compiled = torch.compile(model, backend="nkipy")
    opt, opt_eager = torch.optim.AdamW(model.parameters()), torch.optim.AdamW(eager.parameters())
    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(rank))  # each rank its own batch
    worst = 0.0
    for _ in range(3):
        for net, optimizer in ((compiled, opt), (eager, opt_eager)):
            loss = net(x).square().mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            if net is compiled:
                compiled_loss = loss.item()
        worst = max(worst, abs(compiled_loss - loss.item()))
    print(f"rank {rank}: fsdp2 3 steps, max |compiled - eager| loss = {worst:.2e}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
