"""Bucket policy for dynamic dims: which static sizes get compiled, and which one a call uses.

Neuron needs static shapes, so a dynamic dim is served by a small set of compiled sizes
("buckets") and inputs are padded up to the chosen bucket. This module is pure policy:
it knows nothing of graphs or devices.

>>> policy = BucketPolicy.from_options({"buckets": [4, 16]})
>>> policy.choose("s0", 3, compiled={4, 16})
4
>>> BucketPolicy(strategy="pow2", min_bucket=8).choose("s0", 20, compiled=set())
32
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from spiky.errors import SpikyOptionError, SpikyShapeError

STRATEGIES = ("pow2", "linear")


@dataclass(frozen=True)
class BucketPolicy:
    """How sizes of each dynamic symbol map to buckets.

    ``explicit`` lists the buckets per symbol (``"*"`` applies to every symbol without
    its own list); without a list a symbol uses the ladder of ``strategy``:
    powers of two from ``min_bucket``, or multiples of ``linear_step``, up to
    ``max_bucket_size``. With ``jit`` a size beyond every listed bucket compiles an
    exact-fit ladder bucket on demand; without it such a size is an error.
    """

    explicit: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    strategy: str = "pow2"
    min_bucket: int = 1
    max_bucket_size: int = 65536
    linear_step: int = 64
    jit: bool = True

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise SpikyOptionError(
                f"bucket_strategy {self.strategy!r} is not one of {', '.join(STRATEGIES)}"
            )
        for name in ("min_bucket", "max_bucket_size", "linear_step"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SpikyOptionError(f"{name} must be a positive int, got {value!r}")
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
        steps = -(-size // self.linear_step)
        return min(max(steps * self.linear_step, self.min_bucket), self.max_bucket_size)

    def ladder(self) -> list[int]:
        """Every bucket of the ladder (what ``precompile=True`` compiles)."""
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
        ladder = self.ladder_bucket(size)
        return min([ladder, *candidates])


def _bucket_list(sizes: Any, where: str) -> tuple[int, ...]:
    if not isinstance(sizes, Sequence) or isinstance(sizes, str) or not sizes:
        raise SpikyOptionError(f"{where} must be a non-empty list of positive ints, got {sizes!r}")
    for size in sizes:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise SpikyOptionError(f"{where} has {size!r}; bucket sizes must be positive ints")
    return tuple(sorted(set(sizes)))
