"""Environment a Neuron rank needs before the runtime starts (``nrt_init``).

One process per NeuronCore: each rank owns core ``rank + core_offset`` through
``NEURON_RT_VISIBLE_CORES``, and collectives rendezvous at ``NEURON_RT_ROOT_COMM_ID``
(``<MASTER_ADDR>:<port>`` of rank 0).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping

from spiky_dist.errors import DistConfigError

DEFAULT_COMM_PORT = 62182


def neuron_runtime_env(
    rank: int,
    world_size: int,
    core_offset: int = 0,
    comm_port: int = DEFAULT_COMM_PORT,
    env: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The ``NEURON_RT_*`` variables for this rank (values already set by the user win)."""
    environ = os.environ if env is None else env
    if core_offset < 0:
        raise DistConfigError(f"core_offset must be >= 0, got {core_offset}")
    if not 0 < comm_port < 65536:
        raise DistConfigError(f"comm port {comm_port} is not a TCP port (1..65535)")
    out: dict[str, str] = {}
    if "NEURON_RT_VISIBLE_CORES" not in environ:
        out["NEURON_RT_VISIBLE_CORES"] = str(rank + core_offset)
    if world_size > 1 and "NEURON_RT_ROOT_COMM_ID" not in environ:
        master = environ.get("MASTER_ADDR")
        if not master:
            raise DistConfigError(
                "a multi-rank Neuron run needs MASTER_ADDR (set by torchrun) or NEURON_RT_ROOT_COMM_ID"
            )
        out["NEURON_RT_ROOT_COMM_ID"] = f"{master}:{comm_port}"
    return out


def apply_neuron_runtime_env(
    rank: int, world_size: int, core_offset: int = 0, comm_port: int = DEFAULT_COMM_PORT,
    env: MutableMapping[str, str] | None = None,
) -> dict[str, str]:
    """Set :func:`neuron_runtime_env`'s variables in ``env`` (``os.environ``); returns them."""
    target = os.environ if env is None else env
    values = neuron_runtime_env(rank, world_size, core_offset, comm_port, target)
    target.update(values)
    return values
