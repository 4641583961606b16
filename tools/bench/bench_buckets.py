"""Bucketing strategies under a stream of variable-length requests (host target).

200 requests with random sequence lengths in 1..512 (seeded) go through one compiled model
whose sequence dim is dynamic and mixed by a softmax over the sequence (so padding is masked).
For each strategy: bucket compiles, mean padding ratio (bucket-sized / real input elements)
and total wall time of the stream including compiles, each from an empty compile cache.

- default ladder: powers of two (the default ``bucket_strategy="pow2"``)
- exact sizes: ``bucket_strategy="linear", linear_step=1`` (every length its own compile)
- finer ladder: ``bucket_strategy="linear", linear_step=32``
- geometric ladders: ``bucket_strategy="geometric"`` with ``bucket_ratio`` 1.15 (from 1), and 1.25
  from ``min_bucket=64``
- learned: ``bucket_strategy="adaptive", bucket_ratio=1.15`` (mean pad ratio kept within 1.15)

    .venv/bin/python tools/bench/bench_buckets.py [--requests 200] [--max-len 512] [--dim 64]
        [--only adaptive,geometric]   # strategies whose name contains one of these words
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from typing import Any

import torch
from torch import nn

import spiky
import spiky.torch
from spiky.torch.dynamic import bucket_stats, reset_bucket_stats


class Scorer(nn.Module):
    """Token MLP, then a softmax over the sequence and a weighted sum (attention pooling)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.score = nn.Linear(d, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.mlp(x)
        weights = self.score(h).softmax(dim=0)
        return (weights * h).sum(0)


STRATEGIES: dict[str, dict[str, Any]] = {
    "default ladder (pow2)": {},
    "exact sizes": {"bucket_strategy": "linear", "linear_step": 1},
    "finer ladder (linear, step 32)": {"bucket_strategy": "linear", "linear_step": 32},
    "geometric, ratio 1.15": {"bucket_strategy": "geometric", "bucket_ratio": 1.15},
    "geometric, ratio 1.25, min 64": {"bucket_strategy": "geometric", "bucket_ratio": 1.25, "min_bucket": 64},
    "adaptive, ratio 1.15": {"bucket_strategy": "adaptive", "bucket_ratio": 1.15},
}


def run(name: str, options: dict[str, Any], lengths: list[int], dim: int) -> dict[str, Any]:
    torch.manual_seed(0)
    model = Scorer(dim).eval()
    with tempfile.TemporaryDirectory() as cache:
        os.environ["SPIKY_CACHE"] = cache
        spiky.torch.reset_nkipy_backend()
        torch._dynamo.reset()
        reset_bucket_stats()
        compiled = torch.compile(model, backend="nkipy", dynamic=True, options=options)
        inputs = [torch.randn(n, dim) for n in lengths]
        start = time.perf_counter()
        with torch.no_grad():
            outs = [compiled(x) for x in inputs]
        seconds = time.perf_counter() - start
        with torch.no_grad():  # checked after the clock stops
            worst = max(float((out - model(x)).abs().max()) for out, x in zip(outs, inputs, strict=True))
    stats = [s for s in bucket_stats() if s.calls]
    return {
        "strategy": name,
        "compiles": sum(s.compiles for s in stats),
        "graphs": len(stats),
        "calls": sum(s.calls for s in stats),
        "pad_ratio": sum(s.padded_elements for s in stats) / max(1, sum(s.real_elements for s in stats)),
        "seconds": seconds,
        "max_abs_err": worst,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--max-len", type=int, default=512)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default="", help="comma-separated words; run strategies whose name has one")
    args = parser.parse_args()
    words = [w for w in args.only.split(",") if w]
    rng = random.Random(args.seed)
    lengths = [rng.randint(1, args.max_len) for _ in range(args.requests)]
    print(f"{args.requests} requests, lengths 1..{args.max_len} ({len(set(lengths))} distinct), d={args.dim}")
    print(f"{'strategy':34} {'compiles':>8} {'calls':>6} {'pad ratio':>9} {'total s':>8} {'max |err|':>10}")
    for name, options in STRATEGIES.items():
        if words and not any(w in name for w in words):
            continue
        r = run(name, options, lengths, args.dim)
        print(f"{r['strategy']:34} {r['compiles']:8d} {r['calls']:6d} {r['pad_ratio']:9.3f} {r['seconds']:8.2f} "
              f"{r['max_abs_err']:10.2e}")
    print("calls: requests served by bucketed graphs (length 1 is Dynamo's static specialisation, not counted)")


if __name__ == "__main__":
    main()
