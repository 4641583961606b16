"""Environment a Neuron rank needs before the runtime starts (``nrt_init``).

One process per NeuronCore: each rank owns core ``local_rank + core_offset`` of its machine
through ``NEURON_RT_VISIBLE_CORES``, and collectives rendezvous at ``NEURON_RT_ROOT_COMM_ID``
(``<MASTER_ADDR>:<port>`` of rank 0). The local rank is the rank within the machine
(torchrun's ``LOCAL_RANK``): with ``torchrun --nnodes 2 --nproc-per-node 32`` global rank 40
is local rank 8 of the second machine and owns that machine's core 8, not core 40.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping

from spiky_dist.errors import DistConfigError
from spiky_dist.ranks import _env_int

DEFAULT_COMM_PORT = 62182


def neuron_runtime_env(
    rank: int,
    world_size: int,
    core_offset: int = 0,
    comm_port: int = DEFAULT_COMM_PORT,
    env: Mapping[str, str] | None = None,
    local_rank: int | None = None,
) -> dict[str, str]:
    """The ``NEURON_RT_*`` variables for this rank (values already set by the user win).

    ``local_rank`` defaults to :func:`resolve_local_rank` of ``env``."""
    environ = os.environ if env is None else env
    local = resolve_local_rank(rank, environ) if local_rank is None else local_rank
    if local < 0:
        raise DistConfigError(f"local_rank must be >= 0, got {local}")
    if core_offset < 0:
        raise DistConfigError(f"core_offset must be >= 0, got {core_offset}")
    if not 0 < comm_port < 65536:
        raise DistConfigError(f"comm port {comm_port} is not a TCP port (1..65535)")
    out: dict[str, str] = {}
    if "NEURON_RT_VISIBLE_CORES" not in environ:
        out["NEURON_RT_VISIBLE_CORES"] = str(local + core_offset)
    if world_size > 1 and "NEURON_RT_ROOT_COMM_ID" not in environ:
        master = environ.get("MASTER_ADDR")
        if not master:
            raise DistConfigError(
                "a multi-rank Neuron run needs MASTER_ADDR (set by torchrun) or NEURON_RT_ROOT_COMM_ID"
            )
        out["NEURON_RT_ROOT_COMM_ID"] = f"{master}:{comm_port}"
    return out


def resolve_local_rank(rank: int, env: Mapping[str, str] | None = None) -> int:
    """This process's rank within its machine: ``LOCAL_RANK`` (torchrun sets it), else
    ``rank % LOCAL_WORLD_SIZE``, else ``rank`` (every rank on one machine)."""
    environ = os.environ if env is None else env
    local = _env_int(environ, "LOCAL_RANK")
    local_world = _env_int(environ, "LOCAL_WORLD_SIZE")
    if local_world is not None and local_world < 1:
        raise DistConfigError(f"LOCAL_WORLD_SIZE={local_world} must be >= 1")
    if local is not None:
        if local < 0 or (local_world is not None and local >= local_world):
            bound = f"LOCAL_WORLD_SIZE={local_world}" if local_world is not None else "no upper bound"
            raise DistConfigError(f"LOCAL_RANK={local} is outside [0, {bound}): check the launcher's environment")
        return local
    return rank % local_world if local_world is not None else rank


def apply_neuron_runtime_env(
    rank: int, world_size: int, core_offset: int = 0, comm_port: int = DEFAULT_COMM_PORT,
    env: MutableMapping[str, str] | None = None,
) -> dict[str, str]:
    """Set :func:`neuron_runtime_env`'s variables in ``env`` (``os.environ``); returns them."""
    target = os.environ if env is None else env
    values = neuron_runtime_env(rank, world_size, core_offset, comm_port, target)
    target.update(values)
    return values
