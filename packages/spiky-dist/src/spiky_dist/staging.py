"""Eager collectives on accelerator tensors, staged through the process group's host backend.

``dist.all_reduce(t)`` on an ``"nkipy"`` tensor under a ``gloo`` process group would raise
(gloo has no kernel for that device). :func:`stage_eager_collectives` registers, for the
device's dispatch key, kernels of torch's ``c10d`` collective ops that copy the tensors to
the host, run the same op through the group's CPU backend, wait, and copy the results back.
Compiled graphs do not come here: their collectives run inside the graph (see
:mod:`spiky_dist.host`). Staging costs two host copies per tensor; it exists so that eager
code keeps working, not to be fast.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch

from spiky_dist.host import settle_gloo_at_exit

_lock = threading.Lock()
_libraries: dict[str, torch.library.Library] = {}

c10d = torch.ops.c10d


def _host_one(tensor: torch.Tensor) -> torch.Tensor:
    settle_gloo_at_exit()  # the host copy goes to gloo's threads
    return tensor.detach().cpu()


def _host(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [_host_one(t) for t in tensors]


def _back(devices: Sequence[torch.Tensor], hosts: Sequence[torch.Tensor]) -> None:
    for device_tensor, host in zip(devices, hosts, strict=True):
        device_tensor.copy_(host)


def _allreduce(tensors: list[torch.Tensor], pg: Any, op: Any, sparse: Any = None,
               async_op: bool = True, timeout: int = -1) -> tuple[list[torch.Tensor], Any]:
    hosts = _host(tensors)
    _, work = c10d.allreduce_.default(hosts, pg, op, sparse, async_op, timeout)
    work.wait()
    _back(tensors, hosts)
    return tensors, work


def _broadcast(tensors: list[torch.Tensor], pg: Any, root_rank: int, root_tensor: int,
               async_op: bool = True, timeout: int = -1) -> tuple[list[torch.Tensor], Any]:
    hosts = _host(tensors)
    _, work = c10d.broadcast_.default(hosts, pg, root_rank, root_tensor, async_op, timeout)
    work.wait()
    _back(tensors, hosts)
    return tensors, work


def _allgather(outputs: list[list[torch.Tensor]], inputs: list[torch.Tensor], pg: Any,
               async_op: bool = True, timeout: int = -1) -> tuple[list[list[torch.Tensor]], Any]:
    host_outs = [_host(group) for group in outputs]
    _, work = c10d.allgather_.default(host_outs, _host(inputs), pg, async_op, timeout)
    work.wait()
    for group, host_group in zip(outputs, host_outs, strict=True):
        _back(group, host_group)
    return outputs, work


def _allgather_base(output: torch.Tensor, input: torch.Tensor, pg: Any,
                    async_op: bool = True, timeout: int = -1) -> tuple[torch.Tensor, Any]:
    host_out = _host_one(output)
    _, work = c10d._allgather_base_.default(host_out, _host_one(input), pg, async_op, timeout)
    work.wait()
    output.copy_(host_out)
    return output, work


def _reduce_scatter_base(output: torch.Tensor, input: torch.Tensor, pg: Any, op: Any,
                         async_op: bool = True, timeout: int = -1) -> tuple[torch.Tensor, Any]:
    host_out = _host_one(output)
    _, work = c10d._reduce_scatter_base_.default(host_out, _host_one(input), pg, op, async_op, timeout)
    work.wait()
    output.copy_(host_out)
    return output, work


def _alltoall_base(output: torch.Tensor, input: torch.Tensor, pg: Any,
                   output_split_sizes: list[int], input_split_sizes: list[int],
                   async_op: bool = True, timeout: int = -1) -> Any:
    host_out = _host_one(output)
    work = c10d.alltoall_base_.default(host_out, _host_one(input), pg, output_split_sizes,
                                       input_split_sizes, async_op, timeout)
    work.wait()
    output.copy_(host_out)
    return work


KERNELS: dict[str, Callable[..., Any]] = {
    "allreduce_": _allreduce,
    "broadcast_": _broadcast,
    "allgather_": _allgather,
    "_allgather_base_": _allgather_base,
    "_reduce_scatter_base_": _reduce_scatter_base,
    "alltoall_base_": _alltoall_base,
}
"""c10d op → staging kernel: all_reduce, broadcast, all_gather (list and into-tensor),
reduce_scatter_tensor, all_to_all_single."""


# ---------------------------------------------------------------- functional collectives
# ``torch.distributed._functional_collectives`` (DTensor's redistribute, ``full_tensor()``, FSDP2's
# state-dict code) call the ``_c10d_functional`` ops, which find the group's backend for the
# tensor's device in C++ and fail for a device gloo lacks. Each kernel below runs the same op on
# host copies (the CPU kernels, gloo), waits for it, and hands back device tensors: fresh ones for
# the functional forms, the caller's own (written in place) for ``_`` and ``_out`` forms.

FUNCTIONAL_OPS = (
    "all_reduce", "all_reduce_", "all_reduce_coalesced", "all_reduce_coalesced_",
    "all_gather_into_tensor", "all_gather_into_tensor_out", "all_gather_into_tensor_coalesced",
    "reduce_scatter_tensor", "reduce_scatter_tensor_out", "reduce_scatter_tensor_coalesced",
    "all_to_all_single", "broadcast", "broadcast_",
)


def _to_host(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return _host_one(value)
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], torch.Tensor):
        return [_host_one(t) for t in value]
    return value


def _functional_kernel(name: str) -> Callable[..., Any]:
    op = getattr(torch.ops._c10d_functional, name).default
    wait = torch.ops._c10d_functional.wait_tensor.default
    names = [arg.name for arg in op._schema.arguments]
    written = [arg.name for arg in op._schema.arguments if arg.alias_info is not None and arg.alias_info.is_write]

    def kernel(*args: Any, **kwargs: Any) -> Any:
        bound = dict(zip(names, args, strict=False)) | kwargs
        hosts = {key: _to_host(value) for key, value in bound.items()}
        result = op(**hosts)
        for out in result if isinstance(result, (list, tuple)) else [result]:
            wait(out)
        if written:  # the in-place / out= forms: write the host results into the caller's tensors
            key = written[0]
            targets, host_results = bound[key], hosts[key]
            if isinstance(targets, torch.Tensor):
                targets.copy_(host_results)
            else:
                _back(targets, host_results)
            return targets
        first = next(t for t in (bound[n] for n in names if n in bound) if isinstance(t, torch.Tensor)
                     or (isinstance(t, (list, tuple)) and t and isinstance(t[0], torch.Tensor)))
        device = (first if isinstance(first, torch.Tensor) else first[0]).device
        if isinstance(result, (list, tuple)):
            return [out.to(device) for out in result]
        return result.to(device)

    kernel.__name__ = f"staged_{name}"
    return kernel


def stage_eager_collectives(dispatch_key: str = "PrivateUse1") -> bool:
    """Register the staging kernels for ``dispatch_key`` (idempotent); True on first call."""
    with _lock:
        if dispatch_key in _libraries:
            return False
        library = torch.library.Library("c10d", "IMPL")  # type: ignore[no-untyped-call]
        functional = torch.library.Library("_c10d_functional", "IMPL")  # type: ignore[no-untyped-call]
        with warnings.catch_warnings():
            # torch registers placeholder kernels for the key; replacing them is the point.
            warnings.filterwarnings("ignore", message=r"(?s).*Overriding a previously registered kernel")
            for name, kernel in KERNELS.items():
                library.impl(name, kernel, dispatch_key, allow_override=True)  # type: ignore[no-untyped-call]
            for name in FUNCTIONAL_OPS:
                functional.impl(name, _functional_kernel(name), dispatch_key,  # type: ignore[no-untyped-call]
                                allow_override=True)
        _libraries[dispatch_key] = library
        _libraries[f"{dispatch_key}/functional"] = functional
        return True
