"""The geometric and adaptive bucket strategies through torch.compile (host target): the buckets the
policy chooses are the ones compiled, and padding never changes results."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from spiky.torch.dynamic import bucket_stats, reset_bucket_stats

TOL = {"rtol": 1e-5, "atol": 1e-5}


def pooled(x: torch.Tensor) -> torch.Tensor:
    """Softmax over the dynamic (padded) dim, then a weighted sum: padding must be masked."""
    return (x.softmax(dim=0) * x).sum(0)


# (options, lengths of the stream, the buckets compiled): the adaptive stream is test_buckets.py's
# first policy table row, now end to end.
CASES = [
    ({"bucket_strategy": "adaptive", "bucket_ratio": 1.15}, [300, 200, 310, 100, 210, 320], {112, 216, 328}),
    ({"bucket_strategy": "geometric", "bucket_ratio": 1.5, "min_bucket": 64}, [70, 100, 150, 64], {64, 96, 144, 216}),
]


@pytest.mark.parametrize(("options", "lengths", "buckets"), CASES, ids=["adaptive", "geometric"])
def test_strategy_buckets_are_compiled_and_results_exact(options: dict[str, Any], lengths: list[int],
                                                         buckets: set[int]) -> None:
    reset_bucket_stats()
    compiled = torch.compile(pooled, backend="nkipy", dynamic=True, options=options)
    torch.manual_seed(0)
    with torch.no_grad():
        for n in lengths:
            x = torch.randn(n, 8)
            torch.testing.assert_close(compiled(x), pooled(x), **TOL)
    (stats,) = [s for s in bucket_stats() if s.calls]
    assert {key[0] for key in stats.bucket_hits} == buckets
    assert stats.compiles == len(buckets)
