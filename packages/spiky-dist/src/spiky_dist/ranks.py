"""Where this process stands in a distributed run: rank and world size."""

from __future__ import annotations

import os
from collections.abc import Mapping

from spiky_dist.errors import DistConfigError


def _env_int(env: Mapping[str, str], key: str) -> int | None:
    raw = env.get(key)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise DistConfigError(f"environment variable {key}={raw!r} is not an integer") from None


def _from_torch_distributed() -> tuple[int, int] | None:
    try:
        import torch.distributed as dist
    except ImportError:  # torch built without distributed support
        return None
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return None


def resolve_rank_world(
    rank: int | None = None,
    world_size: int | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[int, int]:
    """``(rank, world_size)`` from explicit values, torch.distributed, ``RANK``/``WORLD_SIZE``, or 0/1.

    Each of ``rank`` and ``world_size`` not given explicitly comes from the first source
    that has it. ``env`` defaults to ``os.environ`` (tests pass their own).

    >>> resolve_rank_world(1, 4)
    (1, 4)
    """
    environ = os.environ if env is None else env
    source = "explicit arguments"
    if rank is None or world_size is None:
        found = _from_torch_distributed()
        if found is not None:
            source = "torch.distributed"
        else:
            env_rank, env_world = _env_int(environ, "RANK"), _env_int(environ, "WORLD_SIZE")
            found = (env_rank if env_rank is not None else 0, env_world if env_world is not None else 1)
            source = "RANK/WORLD_SIZE environment" if env_rank is not None or env_world is not None else "defaults"
        rank = found[0] if rank is None else rank
        world_size = found[1] if world_size is None else world_size
    for name, value in (("rank", rank), ("world_size", world_size)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise DistConfigError(f"{name} must be an int, got {value!r} (from {source})")
    if world_size < 1:
        raise DistConfigError(f"world_size must be >= 1, got {world_size} (from {source})")
    if not 0 <= rank < world_size:
        raise DistConfigError(f"rank {rank} is outside [0, {world_size}) (from {source})")
    return rank, world_size
