"""Bucket policy: ladders, explicit lists per symbol, JIT on/off, and bad options."""

from __future__ import annotations

from typing import Any

import pytest

from spiky.errors import SpikyOptionError, SpikyShapeError
from spiky.torch.buckets import BucketPolicy

pytestmark = pytest.mark.smoke


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (BucketPolicy(strategy="pow2", min_bucket=1, max_bucket_size=16), [1, 2, 4, 8, 16]),
        (BucketPolicy(strategy="pow2", min_bucket=4, max_bucket_size=24), [4, 8, 16, 24]),
        (BucketPolicy(strategy="linear", linear_step=64, max_bucket_size=200), [64, 128, 192, 200]),
    ],
)
def test_ladders(policy: BucketPolicy, expected: list[int]) -> None:
    assert policy.ladder() == expected
    # every size maps to the smallest ladder bucket holding it
    for size in range(1, expected[-1] + 1):
        bucket = policy.ladder_bucket(size)
        assert bucket in expected and bucket >= size
        assert all(b < size for b in expected if b < bucket)


@pytest.mark.parametrize(
    ("options", "symbol", "size", "compiled", "expected"),
    [
        ({"buckets": [4, 16]}, "s0", 3, set(), 4),
        ({"buckets": [4, 16]}, "s0", 5, {4}, 16),
        ({"buckets": [16, 4]}, "s1", 16, set(), 16),
        ({"buckets": [4, 16]}, "s0", 17, set(), 32),  # jit: ladder bucket beyond the list
        ({"buckets": [4, 16]}, "s0", 17, {20}, 20),  # an earlier JIT bucket is reused
        ({"buckets": {"s0": [2], "s1": [128, 512]}}, "s1", 100, set(), 128),
        ({"buckets": {"s0": [2], "s1": [128, 512]}}, "s0", 1, set(), 2),
        ({"buckets": {"s0": [2]}}, "s1", 5, set(), 8),  # no list for s1: the ladder
        ({}, "s0", 33, set(), 64),
        ({}, "s0", 33, {48}, 48),
        ({"bucket_strategy": "linear", "linear_step": 32}, "s0", 33, set(), 64),
    ],
)
def test_choose(options: dict[str, Any], symbol: str, size: int, compiled: set[int], expected: int) -> None:
    assert BucketPolicy.from_options(options).choose(symbol, size, compiled) == expected


def test_jit_off_beyond_largest_bucket_is_an_error() -> None:
    policy = BucketPolicy.from_options({"buckets": [4, 16], "jit": False})
    assert policy.choose("s0", 16, set()) == 16
    with pytest.raises(SpikyShapeError, match=r"size 17 of dynamic dim s0 is larger than the largest bucket 16"):
        policy.choose("s0", 17, set())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"buckets": []}, r"buckets must be a non-empty list"),
        ({"buckets": [4, 0]}, r"buckets has 0; bucket sizes must be positive ints"),
        ({"buckets": {"s0": "16"}}, r"buckets\['s0'\] must be a non-empty list"),
        ({"bucket_strategy": "fib"}, r"bucket_strategy 'fib' is not one of pow2, linear"),
        ({"min_bucket": 0}, r"min_bucket must be a positive int, got 0"),
        ({"min_bucket": 64, "max_bucket_size": 32}, r"min_bucket 64 is larger than max_bucket_size 32"),
    ],
)
def test_bad_options(options: dict[str, Any], message: str) -> None:
    with pytest.raises(SpikyOptionError, match=message):
        BucketPolicy.from_options(options)


def test_bad_sizes() -> None:
    policy = BucketPolicy(max_bucket_size=64)
    with pytest.raises(SpikyShapeError, match=r"has size 0"):
        policy.choose("s0", 0, set())
    with pytest.raises(SpikyShapeError, match=r"size 65 exceeds max_bucket_size 64"):
        policy.choose("s0", 65, set())
