"""Worker for test_host.py, run under torchrun: every host collective vs eager gloo.

Each check runs the same collective twice on this rank — through HostCollectives on
numpy arrays and through torch.distributed on tensors — and compares the results.
Prints ``rank R: N checks ok`` on success.
"""

from __future__ import annotations

import sys
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from spiky_dist import HostCollectives, group_ranks, replica_groups, resolve_rank_world


def main() -> None:
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    rank, world = resolve_rank_world()
    assert (rank, world) == (dist.get_rank(), dist.get_world_size())
    host = HostCollectives()
    world_name = dist.group.WORLD.group_name
    # Subgroups: pairs {0,1}, {2,3}, ... (every rank takes part in creating each).
    pairs = dist.new_subgroups(group_size=2)[0] if world % 2 == 0 else dist.group.WORLD
    groups = {"world": world_name, "pairs": pairs.group_name}
    gen = torch.Generator().manual_seed(1234 + rank)
    checks = 0

    def same(actual: np.ndarray, expected: torch.Tensor, what: str) -> None:
        nonlocal checks
        np.testing.assert_allclose(actual, expected.numpy(), rtol=1e-6, err_msg=what)
        assert actual.dtype == expected.numpy().dtype, what
        checks += 1

    for label, name in groups.items():
        group = dist.distributed_c10d._resolve_process_group(name)
        size = dist.get_world_size(group)
        for dtype in (torch.float32, torch.int32):
            x = (torch.rand((4, 3), generator=gen) * 10).to(dtype)
            for op, torch_op in (("sum", dist.ReduceOp.SUM), ("max", dist.ReduceOp.MAX),
                                 ("min", dist.ReduceOp.MIN), ("product", dist.ReduceOp.PRODUCT)):
                expected = x.clone()
                dist.all_reduce(expected, torch_op, group=group)
                same(host.all_reduce(x.numpy(), op, name), expected, f"all_reduce {op} {dtype} {label}")
                rs_in = torch.cat([x] * size)
                rs_expected = torch.empty_like(x)
                dist.reduce_scatter_tensor(rs_expected, rs_in, torch_op, group=group)
                same(host.reduce_scatter(rs_in.numpy(), op, name), rs_expected, f"reduce_scatter {op} {label}")
            gathered = torch.empty((size * 4, 3), dtype=dtype)
            dist.all_gather_into_tensor(gathered, x, group=group)
            same(host.all_gather(x.numpy(), name), gathered, f"all_gather {dtype} {label}")
            a2a_in = torch.arange(size * 2 * 3, dtype=dtype).reshape(size * 2, 3) + rank * 100
            a2a_expected = torch.empty_like(a2a_in)
            dist.all_to_all_single(a2a_expected, a2a_in, group=group)
            same(host.all_to_all(a2a_in.numpy(), name), a2a_expected, f"all_to_all {dtype} {label}")
            b_expected = x.clone()
            dist.broadcast(b_expected, dist.get_global_rank(group, size - 1), group=group)
            same(host.broadcast(x.numpy(), size - 1, name), b_expected, f"broadcast {dtype} {label}")
        xf = torch.rand((4, 3), generator=gen)
        summed = xf.clone()
        dist.all_reduce(summed, group=group)
        same(host.all_reduce(xf.numpy(), "avg", name), summed / size, f"all_reduce avg {label}")
        ranks = group_ranks(name)
        assert rank in ranks and len(ranks) == size
        blocks = replica_groups(name, world)
        assert sorted(r for b in blocks for r in b) == list(range(world)) and ranks in blocks
        checks += 1
    # Uneven all_to_all splits: rank r sends j+1 rows to rank j.
    size = world
    ins = [j + 1 for j in range(size)]
    outs = [rank + 1] * size
    src = torch.full((sum(ins), 2), float(rank))
    expected = torch.empty((sum(outs), 2))
    dist.all_to_all_single(expected, src, outs, ins)
    same(host.all_to_all(src.numpy(), world_name, outs, ins), expected, "all_to_all uneven")
    dist.barrier()
    dist.destroy_process_group()
    print(f"rank {rank}: {checks} checks ok", flush=True)


if __name__ == "__main__":
    sys.exit(main())
