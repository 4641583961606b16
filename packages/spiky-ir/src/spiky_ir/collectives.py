"""How the numpy reference executor runs collective ops: through a pluggable backend.

spiky-ir has no process group of its own. A distributed layer (spiky-dist's
``HostCollectives`` over torch.distributed) registers itself with
:func:`set_collective_backend`; collective ops then call it in graph order. Without a
backend a collective raises an error saying what to install and call.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from spiky_ir.errors import IRError

Array = np.ndarray[Any, np.dtype[Any]]


class CollectiveBackend(Protocol):
    """What a process-group implementation provides (all arrays are numpy, dim 0 is split)."""

    def all_reduce(self, array: Array, op: str, group_name: str) -> Array: ...

    def all_gather(self, array: Array, group_name: str) -> Array: ...

    def reduce_scatter(self, array: Array, op: str, group_name: str) -> Array: ...

    def all_to_all(
        self,
        array: Array,
        group_name: str,
        output_split_sizes: Sequence[int] | None = None,
        input_split_sizes: Sequence[int] | None = None,
    ) -> Array: ...

    def broadcast(self, array: Array, src: int, group_name: str) -> Array: ...


_lock = threading.Lock()
_backend: CollectiveBackend | None = None


def set_collective_backend(backend: CollectiveBackend | None) -> CollectiveBackend | None:
    """Make ``backend`` the process-wide executor of collectives; returns the previous one.

    Process-wide (not a context variable) on purpose: the runtime calls host
    executables from its own worker threads, which do not inherit Python contexts.
    """
    global _backend
    with _lock:
        previous, _backend = _backend, backend
    return previous


def collective_backend(op: str) -> CollectiveBackend:
    """The registered backend, or an error naming ``op`` and what to do."""
    backend = _backend
    if backend is None:
        raise IRError(
            f"op '{op}' is a collective: it needs a process group, which the numpy reference "
            "executor does not have on its own; install spiky-dist and call "
            "spiky_ir.collectives.set_collective_backend(spiky_dist.HostCollectives()) "
            "(spiky-torch does this for compiled graphs)"
        )
    return backend
