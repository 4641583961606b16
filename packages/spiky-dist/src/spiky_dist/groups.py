"""Process groups as the compiler sees them: a group name → the global ranks in it.

Dynamo's functional collectives (``torch.ops._c10d_functional.*``) name their process
group by string. The host target executes them on that very group; the Neuron target
needs the ranks as HLO ``replica_groups``.
"""

from __future__ import annotations

from typing import Any, cast

import torch.distributed as dist

from spiky_dist.errors import DistConfigError


def resolve_group(group_name: str) -> Any:
    """The live ``ProcessGroup`` registered under ``group_name``."""
    if not (dist.is_available() and dist.is_initialized()):
        raise DistConfigError(
            f"collective on group {group_name!r} needs torch.distributed; call "
            "dist.init_process_group('gloo') (e.g. under torchrun) before running the compiled function"
        )
    try:
        return cast(Any, dist.distributed_c10d)._resolve_process_group(group_name)
    except (RuntimeError, KeyError, ValueError) as exc:
        raise DistConfigError(
            f"no process group named {group_name!r} in this process; groups must be created with "
            "dist.new_group(...) on every rank before the compiled function runs"
        ) from exc


def group_ranks(group_name: str) -> tuple[int, ...]:
    """Global ranks of the group, in group-rank order."""
    return tuple(dist.get_process_group_ranks(resolve_group(group_name)))


def replica_groups(group_name: str, world_size: int) -> tuple[tuple[int, ...], ...]:
    """HLO ``replica_groups`` for a collective on ``group_name``.

    Every rank must emit the same module, so all groups are listed: the world is split
    into blocks shaped like this rank's group. That holds for the whole world and for
    the equal, contiguous subgroups ``dist.new_subgroups`` makes; other layouts cannot
    be derived locally and raise.
    """
    ranks = group_ranks(group_name)
    size = len(ranks)
    start = ranks[0]
    contiguous = ranks == tuple(range(start, start + size))
    if not contiguous or world_size % size or start % size:
        raise DistConfigError(
            f"group {group_name!r} has ranks {list(ranks)}: replica groups for the Neuron target are "
            f"derived for contiguous, equal-size groups that tile world_size {world_size}; "
            "create groups with dist.new_subgroups(group_size)"
        )
    return tuple(tuple(range(s, s + size)) for s in range(0, world_size, size))
