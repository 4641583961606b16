"""Memory pool and execution statistics: the runtime's real numbers."""

from __future__ import annotations

import torch

import spiky
import spiky.torch


def main() -> None:
    spiky.torch.init_nkipy_backend(target="host")
    compiled = torch.compile(torch.nn.Linear(256, 256), backend="nkipy")
    spiky.reset_stats()
    with torch.no_grad():
        for _ in range(10):
            compiled(torch.randn(64, 256))
    stats = spiky.get_stats()
    print(f"executions {stats.total_executions}, compiles {stats.total_compile_count}, "
          f"mean call {stats.total_execution_time_ms / stats.total_executions:.3f} ms")
    memory = spiky.get_memory_stats()
    print(f"pool: {memory}")
    freed = spiky.trim_memory_pool(0)
    print(f"trim_memory_pool(0) freed {freed} bytes; cached now {spiky.get_memory_stats()['cached_bytes']}")


if __name__ == "__main__":
    main()
