"""Worker for tests/test_distributed.py, under torchrun: eager collectives on "nkipy" tensors.

Each collective runs once on nkipy tensors (staged through gloo by spiky-dist) and once on
the same values as CPU tensors (plain gloo); results must be equal and stay on the device.
Prints ``rank R: N eager checks ok``.
"""

from __future__ import annotations

import sys
from datetime import timedelta

import torch
import torch.distributed as dist

import spiky.torch


def main() -> None:
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    spiky.torch.init_nkipy_backend(target="host")
    rank, world = dist.get_rank(), dist.get_world_size()
    base = torch.arange(6, dtype=torch.float32).reshape(2, 3) + 10 * rank
    checks = 0

    def same(device_tensor: torch.Tensor, cpu_tensor: torch.Tensor) -> None:
        nonlocal checks
        assert device_tensor.device.type == "nkipy", device_tensor.device
        torch.testing.assert_close(device_tensor.cpu(), cpu_tensor)
        checks += 1

    for op in (dist.ReduceOp.SUM, dist.ReduceOp.MAX, dist.ReduceOp.MIN, dist.ReduceOp.PRODUCT):
        on_device, on_cpu = base.to("nkipy"), base.clone()
        dist.all_reduce(on_device, op)
        dist.all_reduce(on_cpu, op)
        same(on_device, on_cpu)
    on_device, on_cpu = base.to("nkipy"), base.clone()
    dist.broadcast(on_device, src=world - 1)
    dist.broadcast(on_cpu, src=world - 1)
    same(on_device, on_cpu)
    gathered_device = torch.empty(2 * world, 3, device="nkipy")
    gathered_cpu = torch.empty(2 * world, 3)
    dist.all_gather_into_tensor(gathered_device, base.to("nkipy"))
    dist.all_gather_into_tensor(gathered_cpu, base)
    same(gathered_device, gathered_cpu)
    listed_device = [torch.empty(2, 3, device="nkipy") for _ in range(world)]
    listed_cpu = [torch.empty(2, 3) for _ in range(world)]
    dist.all_gather(listed_device, base.to("nkipy"))
    dist.all_gather(listed_cpu, base)
    for d, c in zip(listed_device, listed_cpu, strict=True):
        same(d, c)
    scatter_in = torch.cat([base] * world)
    out_device, out_cpu = torch.empty(2, 3, device="nkipy"), torch.empty(2, 3)
    dist.reduce_scatter_tensor(out_device, scatter_in.to("nkipy"))
    dist.reduce_scatter_tensor(out_cpu, scatter_in)
    same(out_device, out_cpu)
    a2a_in = torch.arange(2 * world * 3, dtype=torch.float32).reshape(2 * world, 3) + 100 * rank
    a2a_device, a2a_cpu = torch.empty(2 * world, 3, device="nkipy"), torch.empty(2 * world, 3)
    dist.all_to_all_single(a2a_device, a2a_in.to("nkipy"))
    dist.all_to_all_single(a2a_cpu, a2a_in)
    same(a2a_device, a2a_cpu)
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.write(f"rank {rank}: {checks} eager checks ok\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
