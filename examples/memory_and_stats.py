"""Memory pool and execution statistics: the runtime's real numbers.

On the host target, a call with static shapes runs on the caller's tensors in place and
writes the arrays it returns: it needs no pool memory. Calls whose sizes vary run in
buckets: their padded inputs and outputs live in the pool, which caches and reuses them.
"""

from __future__ import annotations

import torch

import spiky
import spiky.torch


def main() -> None:
    spiky.torch.init_nkipy_backend(target="host")
    compiled = torch.compile(torch.nn.Linear(256, 256), backend="nkipy", dynamic=True)
    spiky.reset_stats()
    with torch.no_grad():
        for batch in range(40, 60, 2):  # ten sizes, one bucket (64 rows)
            compiled(torch.randn(batch, 256))
    stats = spiky.get_stats()
    print(f"executions {stats.total_executions}, compiles {stats.total_compile_count}, "
          f"mean call {stats.total_execution_time_ms / stats.total_executions:.3f} ms")
    memory = spiky.get_memory_stats()
    print(f"pool: {memory}")
    freed = spiky.trim_memory_pool(0)
    print(f"trim_memory_pool(0) freed {freed} bytes; cached now {spiky.get_memory_stats()['cached_bytes']}")


if __name__ == "__main__":
    main()
