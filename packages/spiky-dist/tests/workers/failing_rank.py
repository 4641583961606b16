"""Worker for test_host.py: rank 1 raises before the collective; rank 0 must not hang."""

from __future__ import annotations

import os
import sys
from datetime import timedelta

import numpy as np
import torch.distributed as dist

from spiky_dist import CollectiveError, HostCollectives


def main() -> int:
    dist.init_process_group("gloo", timeout=timedelta(seconds=5))
    if dist.get_rank() == 1:
        os._exit(3)  # a crashed rank: no clean shutdown, no further messages
    try:
        HostCollectives().all_reduce(np.ones(4, np.float32), "sum", dist.group.WORLD.group_name)
    except CollectiveError as exc:
        print(f"clear error: {exc}", flush=True)
        # Leave without tearing down the broken gloo group: its teardown after a peer died
        # sometimes aborts the process ("terminate called without an active exception",
        # torch 2.13), which is torch's exit path, not the behaviour under test.
        os._exit(0)
    print("all_reduce returned without the other rank", flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main())
