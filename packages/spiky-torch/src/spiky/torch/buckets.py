"""Bucket policy for dynamic dims: which static sizes get compiled, and which one a call uses.

Neuron needs static shapes, so a dynamic dim is served by a small set of compiled sizes
("buckets") and inputs are padded up to the chosen bucket. This module is pure policy:
it knows nothing of graphs or devices.

>>> policy = BucketPolicy.from_options({"buckets": [4, 16]})
>>> policy.choose("s0", 3, compiled={4, 16})
4
>>> BucketPolicy(strategy="pow2", min_bucket=8).choose("s0", 20, compiled=set())
32
>>> BucketPolicy(strategy="geometric", bucket_ratio=1.5, min_bucket=4).ladder()[:6]
[4, 6, 9, 14, 21, 32]

Strategies (the ladder used for a symbol without explicit buckets):

- ``pow2``: powers of two from ``min_bucket`` (few compiles; padding up to 2x, ~1.33x on average
  for uniformly spread sizes);
- ``linear``: multiples of ``linear_step`` (padding bounded by the step; many compiles for a wide
  range);
- ``geometric``: each bucket ``bucket_ratio`` times the previous (rounded up, at least one larger),
  from ``min_bucket``: padding of any size at most ``bucket_ratio``; ~log(max/min)/log(ratio)
  buckets, so the small sizes alone take many when ``min_bucket`` is small;
- ``adaptive``: learned from the sizes seen. A size reuses the smallest compiled bucket that holds
  it while the running mean pad ratio (over the sizes this policy was asked about, bucket elements
  / real elements) stays within ``bucket_ratio``; otherwise it compiles a new bucket just above it
  (the size times (1 + ratio) / 2, rounded up to a multiple of 8). Compiles go where the traffic
  is; the buckets depend on the order sizes arrive in (each is cached on disk like any other).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from spiky.errors import SpikyOptionError, SpikyShapeError

STRATEGIES = ("pow2", "linear", "geometric", "adaptive")
ADAPTIVE_ALIGN = 8
"""Adaptive buckets are multiples of this (sizes repeat across runs, so the disk cache hits)."""


@dataclass(frozen=True)
class BucketPolicy:
    """How sizes of each dynamic symbol map to buckets.

    ``explicit`` lists the buckets per symbol (``"*"`` applies to every symbol without
    its own list); without a list a symbol uses the ladder of ``strategy`` (module doc):
    powers of two from ``min_bucket``, multiples of ``linear_step``, a geometric ladder of
    ``bucket_ratio``, or adaptive buckets, up to ``max_bucket_size``. With ``jit`` a size beyond
    every listed bucket compiles an exact-fit ladder bucket on demand; without it such a size is
    an error. An ``adaptive`` policy keeps per-symbol running sums (``seen``); the others are
    stateless.
    """

    explicit: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    strategy: str = "pow2"
    min_bucket: int = 1
    max_bucket_size: int = 65536
    linear_step: int = 64
    jit: bool = True
    bucket_ratio: float = 1.15
    seen: dict[str, list[int]] = field(default_factory=dict, compare=False, repr=False)
    """``adaptive``: per symbol [bucket elements, real elements] of the sizes chosen so far."""

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise SpikyOptionError(
                f"bucket_strategy {self.strategy!r} is not one of {', '.join(STRATEGIES)}"
            )
        for name in ("min_bucket", "max_bucket_size", "linear_step"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SpikyOptionError(f"{name} must be a positive int, got {value!r}")
        ratio = self.bucket_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 1 < ratio <= 4:
            raise SpikyOptionError(
                f"bucket_ratio must be a number in (1, 4] (e.g. 1.15: buckets 15% apart), got {ratio!r}"
            )
        if self.min_bucket > self.max_bucket_size:
            raise SpikyOptionError(
                f"min_bucket {self.min_bucket} is larger than max_bucket_size {self.max_bucket_size}"
            )

    @staticmethod
    def from_options(options: Mapping[str, Any]) -> BucketPolicy:
        """Build a policy from ``torch.compile`` options (missing keys take defaults)."""
        raw = options.get("buckets")
        explicit: dict[str, tuple[int, ...]] = {}
        if isinstance(raw, Mapping):
            for symbol, sizes in raw.items():
                explicit[str(symbol)] = _bucket_list(sizes, f"buckets[{symbol!r}]")
        elif raw is not None:
            explicit["*"] = _bucket_list(raw, "buckets")
        defaults = BucketPolicy()
        return BucketPolicy(
            explicit=explicit,
            strategy=options.get("bucket_strategy", defaults.strategy),
            min_bucket=options.get("min_bucket", defaults.min_bucket),
            max_bucket_size=options.get("max_bucket_size", defaults.max_bucket_size),
            linear_step=options.get("linear_step", defaults.linear_step),
            jit=options.get("jit", defaults.jit),
            bucket_ratio=options.get("bucket_ratio", defaults.bucket_ratio),
        )

    def listed(self, symbol: str) -> tuple[int, ...] | None:
        """The explicit buckets of ``symbol``, if the user gave any."""
        return self.explicit.get(symbol, self.explicit.get("*"))

    def ladder_bucket(self, size: int) -> int:
        """The ladder's smallest bucket holding ``size``."""
        if size > self.max_bucket_size:
            raise SpikyShapeError(
                f"size {size} exceeds max_bucket_size {self.max_bucket_size}; raise "
                "max_bucket_size in the options or split the input"
            )
        if self.strategy == "pow2":
            bucket = self.min_bucket
            while bucket < size:
                bucket *= 2
            return min(bucket, self.max_bucket_size)
        if self.strategy == "geometric":
            bucket = self.min_bucket
            while bucket < size:
                bucket = self._next_geometric(bucket)
            return min(bucket, self.max_bucket_size)
        if self.strategy == "adaptive":
            # Headroom for sizes a little larger than this one, on a grid of ADAPTIVE_ALIGN.
            wanted = math.ceil(size * (1 + self.bucket_ratio) / 2)
            bucket = -(-wanted // ADAPTIVE_ALIGN) * ADAPTIVE_ALIGN
            return min(max(bucket, self.min_bucket, size), self.max_bucket_size)
        steps = -(-size // self.linear_step)
        return min(max(steps * self.linear_step, self.min_bucket), self.max_bucket_size)

    def _next_geometric(self, bucket: int) -> int:
        # Rounded to 9 digits first: 100 * 1.15 is 114.99999999999999 in binary floating point.
        return max(bucket + 1, math.ceil(round(bucket * self.bucket_ratio, 9)))

    def ladder(self) -> list[int]:
        """Every bucket of the ladder (what ``precompile=True`` compiles). ``adaptive`` has no
        ladder before it sees sizes: it precompiles the ``geometric`` ladder of its ratio."""
        if self.strategy == "adaptive":
            return BucketPolicy(strategy="geometric", min_bucket=self.min_bucket,
                                max_bucket_size=self.max_bucket_size, bucket_ratio=self.bucket_ratio).ladder()
        out: list[int] = []
        size = 1
        while True:
            bucket = self.ladder_bucket(size)
            out.append(bucket)
            if bucket >= self.max_bucket_size:
                return out
            size = bucket + 1

    def choose(self, symbol: str, size: int, compiled: Collection[int]) -> int:
        """The bucket a call with ``size`` along ``symbol`` runs in.

        Prefers the smallest already-compiled bucket that fits, then the smallest
        listed (or ladder) bucket that fits, which the caller compiles.
        """
        if size < 1:
            raise SpikyShapeError(f"dynamic dim {symbol} has size {size}; sizes must be >= 1")
        listed = self.listed(symbol)
        candidates = sorted(b for b in compiled if b >= size)
        if listed is not None:
            fits = [b for b in listed if b >= size]
            if fits:
                return min([fits[0], *candidates])
            if not self.jit:
                raise SpikyShapeError(
                    f"size {size} of dynamic dim {symbol} is larger than the largest bucket "
                    f"{listed[-1]} and jit=False; add a bucket >= {size} or enable jit"
                )
            return candidates[0] if candidates else self.ladder_bucket(size)
        if self.strategy == "adaptive":
            return self._adaptive(symbol, size, candidates)
        ladder = self.ladder_bucket(size)
        return min([ladder, *candidates])

    def _adaptive(self, symbol: str, size: int, candidates: Sequence[int]) -> int:
        padded, real = self.seen.setdefault(symbol, [0, 0])
        if candidates and (padded + candidates[0]) <= self.bucket_ratio * (real + size):
            bucket = candidates[0]  # the running mean stays within the ratio: reuse
        else:
            bucket = self.ladder_bucket(size)
            if candidates:
                bucket = min(bucket, candidates[0])
        self.seen[symbol] = [padded + bucket, real + size]
        return bucket


def _bucket_list(sizes: Any, where: str) -> tuple[int, ...]:
    if not isinstance(sizes, Sequence) or isinstance(sizes, str) or not sizes:
        raise SpikyOptionError(f"{where} must be a non-empty list of positive ints, got {sizes!r}")
    for size in sizes:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise SpikyOptionError(f"{where} has {size!r}; bucket sizes must be positive ints")
    return tuple(sorted(set(sizes)))
