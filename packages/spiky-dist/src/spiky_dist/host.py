"""Collectives on the host target: numpy arrays through a torch.distributed process group.

The host driver calls these from inside a compiled graph's execution, in graph order,
with the GIL held by the calling thread; torch.distributed releases it while it waits
on the network, so a pipelined executor keeps running. Every rank must reach the same
collectives in the same order, as in any SPMD program.

>>> # under torchrun with dist.init_process_group("gloo"):
>>> # total = HostCollectives().all_reduce(np.ones(4, np.float32), "sum", group_name)
"""

from __future__ import annotations

import atexit
import threading
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from spiky_dist.errors import CollectiveError, DistConfigError
from spiky_dist.groups import resolve_group

Array = np.ndarray[Any, np.dtype[Any]]

REDUCE_OPS = ("sum", "avg", "max", "min", "product")
_TORCH_OPS = {
    "sum": dist.ReduceOp.SUM,
    "avg": dist.ReduceOp.SUM,  # gloo has no AVG: sum, then divide by the group size
    "max": dist.ReduceOp.MAX,
    "min": dist.ReduceOp.MIN,
    "product": dist.ReduceOp.PRODUCT,
}


def _reduce_op(op: str, array: Array) -> Any:
    if op not in _TORCH_OPS:
        raise DistConfigError(f"reduce op {op!r} is not one of {', '.join(REDUCE_OPS)}")
    if op == "avg" and not (np.issubdtype(array.dtype, np.floating) or _is_bfloat16(array.dtype)):
        raise DistConfigError(f"reduce op 'avg' needs a floating dtype, got {array.dtype}")
    return _TORCH_OPS[op]


def _is_bfloat16(dtype: np.dtype[Any]) -> bool:
    return dtype.itemsize == 2 and dtype.name == "bfloat16"  # ml_dtypes.bfloat16 (numpy has none)


def _tensor(array: Array) -> torch.Tensor:
    # A private, writable, contiguous copy: collectives write in place. numpy has no bfloat16:
    # an ``ml_dtypes.bfloat16`` array crosses as its raw 16-bit pattern.
    copy = np.array(array, copy=True, order="C")
    if _is_bfloat16(copy.dtype):
        return torch.from_numpy(copy.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(copy)


def _array(t: torch.Tensor, like: np.dtype[Any]) -> Array:
    """``t`` as a numpy array of dtype ``like`` (bfloat16 tensors as ``ml_dtypes.bfloat16``)."""
    if t.dtype is torch.bfloat16:
        return t.view(torch.int16).numpy().view(like)
    return t.numpy()


EXIT_SETTLE_S = 0.2
"""How long the interpreter waits at exit, once collectives ran here, for gloo's threads (see below)."""
_settle_lock = threading.Lock()
_settle_registered = False


def _settle() -> None:
    time.sleep(EXIT_SETTLE_S)  # the GIL is released: gloo's threads can finish their decrefs


def settle_gloo_at_exit() -> None:
    """Make interpreter exit wait a moment for gloo's worker threads (registered once per process).

    A gloo worker thread destroys a finished work object a moment after the caller was
    woken, and with it the tensors the work held (a barrier holds every earlier work). A
    tensor created from Python is then released through Python, which needs the GIL; if the
    main thread is already finalizing the interpreter, CPython ends that thread with a forced
    unwind that aborts the process ("terminate called without an active exception", seen in
    about 1 run of 20 of a two-rank example). An ``atexit`` hook runs before finalization,
    so sleeping there lets those threads finish first.
    """
    global _settle_registered
    if _settle_registered:
        return
    with _settle_lock:
        if not _settle_registered:
            _settle_registered = True
            atexit.register(_settle)


class HostCollectives:
    """Collectives over the process groups of ``torch.distributed`` (gloo on the host)."""

    def __init__(self, timeout: timedelta | None = None) -> None:
        self.timeout = timeout
        settle_gloo_at_exit()

    def _run(self, name: str, group_name: str, call: Callable[[Any], Any]) -> None:
        group = resolve_group(group_name)
        try:
            work = call(group)
            if work is not None:
                work.wait(self.timeout) if self.timeout is not None else work.wait()
        except (RuntimeError, dist.DistBackendError) as exc:
            raise CollectiveError(
                f"{name} on group {group_name!r} (rank {dist.get_rank()}) failed: {exc}; "
                "if another rank raised or exited, this rank cannot complete the collective"
            ) from exc

    def _finish(self, out: torch.Tensor, op: str, group_name: str, dtype: Any) -> Array:
        result = _array(out, dtype)
        if op == "avg":  # half types divide in float32 and round once, as torch does
            wide = result.astype(np.float32) if result.dtype.itemsize < 4 else result
            result = (wide / dist.get_world_size(resolve_group(group_name))).astype(dtype)
        return result

    def all_reduce(self, array: Array, op: str, group_name: str) -> Array:
        torch_op = _reduce_op(op, array)
        t = _tensor(array)
        self._run("all_reduce", group_name, lambda g: dist.all_reduce(t, torch_op, group=g, async_op=True))
        return self._finish(t, op, group_name, array.dtype)

    def all_gather(self, array: Array, group_name: str) -> Array:
        """Concatenate every rank's array along dim 0 (``all_gather_into_tensor``)."""
        size = dist.get_world_size(resolve_group(group_name))
        t = _tensor(array)
        out = torch.empty((size * t.shape[0], *t.shape[1:]), dtype=t.dtype)
        self._run(
            "all_gather", group_name,
            lambda g: dist.all_gather_into_tensor(out, t, group=g, async_op=True),
        )
        return _array(out, array.dtype)

    def reduce_scatter(self, array: Array, op: str, group_name: str) -> Array:
        """Reduce across ranks, then group rank i keeps block i along dim 0."""
        torch_op = _reduce_op(op, array)
        size = dist.get_world_size(resolve_group(group_name))
        if array.ndim == 0:
            raise DistConfigError("reduce_scatter needs an input of rank >= 1, got a scalar")
        if array.shape[0] % size:
            raise DistConfigError(
                f"reduce_scatter input dim 0 ({array.shape[0]}) is not divisible by the group size {size} "
                f"(input shape {array.shape})"
            )
        t = _tensor(array)
        out = torch.empty((t.shape[0] // size, *t.shape[1:]), dtype=t.dtype)
        self._run(
            "reduce_scatter", group_name,
            lambda g: dist.reduce_scatter_tensor(out, t, torch_op, group=g, async_op=True),
        )
        return self._finish(out, op, group_name, array.dtype)

    def all_to_all(
        self,
        array: Array,
        group_name: str,
        output_split_sizes: Sequence[int] | None = None,
        input_split_sizes: Sequence[int] | None = None,
    ) -> Array:
        """``all_to_all_single``: block i of the input (dim 0) goes to group rank i."""
        size = dist.get_world_size(resolve_group(group_name))
        t = _tensor(array)
        ins = list(input_split_sizes or [])
        outs = list(output_split_sizes or [])
        if (ins and (len(ins) != size or sum(ins) != t.shape[0])) or (outs and len(outs) != size):
            raise DistConfigError(
                f"all_to_all splits in={ins} out={outs} do not match dim 0 ({t.shape[0]}) and group size {size}"
            )
        if not ins and t.shape[0] % size:
            raise DistConfigError(f"all_to_all dim 0 ({t.shape[0]}) is not divisible by the group size {size}")
        rows = sum(outs) if outs else t.shape[0]
        out = torch.empty((rows, *t.shape[1:]), dtype=t.dtype)
        self._run(
            "all_to_all", group_name,
            lambda g: dist.all_to_all_single(out, t, outs or None, ins or None, group=g, async_op=True),
        )
        return _array(out, array.dtype)

    def broadcast(self, array: Array, src: int, group_name: str) -> Array:
        """Every rank gets group rank ``src``'s array."""
        group = resolve_group(group_name)
        t = _tensor(array)
        global_src = dist.get_global_rank(group, src)
        self._run("broadcast", group_name, lambda g: dist.broadcast(t, global_src, group=g, async_op=True))
        return _array(t, array.dtype)
