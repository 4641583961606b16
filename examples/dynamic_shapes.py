"""Dynamic shapes: one compiled function serves many batch sizes through buckets.

The first call compiles only the bucket it needs; later sizes reuse it or compile their
bucket on demand (JIT). Padding never changes results: reductions over padded dims are
masked. `spiky.bucket_stats()` shows what happened.
"""

from __future__ import annotations

import torch

import spiky
import spiky.torch


def main() -> None:
    torch.manual_seed(0)
    spiky.torch.init_nkipy_backend(target="host")
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 4))
    compiled = torch.compile(model, backend="nkipy", dynamic=True, options={"buckets": [4, 16]})
    worst = 0.0
    with torch.no_grad():
        for batch in (3, 4, 9, 16, 2, 20):  # 20 > 16: a bucket compiled on demand
            x = torch.randn(batch, 16)
            worst = max(worst, (compiled(x) - model(x)).abs().max().item())
    print(f"batches 3, 4, 9, 16, 2, 20: max |compiled - eager| = {worst:.2e}")
    for stats in spiky.bucket_stats():
        print(stats)


if __name__ == "__main__":
    main()
