"""Compiled calls on ``"nkipy"`` tensors: inputs and outputs stay in the device's pool.

:class:`~spiky.torch.executable.CompiledGraph` hands a call here when any input is an
``nkipy`` tensor. Device inputs enter the runtime as DeviceTensors over their own memory (no
copy); CPU inputs (e.g. scalars) are uploaded. Outputs:

- ``keep_outputs_on_device=True``: the call's DeviceTensors become ``nkipy`` tensors owning
  that pool memory. With a pipelined bundle the call returns once queued; reading an output
  (``.cpu()``, another op) waits for it.
- default: outputs are downloaded and copied into fresh ``nkipy`` tensors (the host round
  trip the option avoids), so they are still on the device the graph's inputs were on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import fx

import spiky_runtime as rt
from spiky.torch.device import adopt_output, is_device_tensor, runtime_input

if TYPE_CHECKING:
    from spiky.torch.executable import CompiledGraph


def _bundle(compiled: CompiledGraph) -> rt.Bundle:
    """A one-model bundle (static shapes) of the graph: what takes DeviceTensor inputs."""
    bundle: rt.Bundle | None = compiled.__dict__.get("_device_bundle")
    if bundle is None:
        pipelined = bool(getattr(compiled, "pipelined", False))
        bundle = rt.Bundle({0: compiled.model}, name=compiled.kernel_name, pipelined=pipelined)
        compiled.__dict__["_device_bundle"] = bundle
    return bundle


def device_inputs(args: list[Any]) -> list[rt.DeviceTensor | np.ndarray[Any, Any]]:
    """Call inputs for ``Bundle.submit``: ``nkipy`` tensors as DeviceTensors (no copy), others as arrays."""
    out: list[rt.DeviceTensor | np.ndarray[Any, Any]] = []
    for value in args:
        if is_device_tensor(value):
            out.append(runtime_input(value))
        elif isinstance(value, torch.Tensor):
            out.append(value.detach().contiguous().numpy())
        else:
            raise TypeError(f"compiled graph input {value!r} is not a tensor")
    return out


def fx_output_devices(gm: fx.GraphModule) -> list[str | None]:
    """The device type (``"cpu"``, ``"nkipy"``) of each FX output per its fake value; None for non-tensors."""
    node = next(n for n in gm.graph.nodes if n.op == "output")
    values = node.args[0] if isinstance(node.args[0], list | tuple) else (node.args[0],)
    out: list[str | None] = []
    for value in values:
        val = value.meta.get("val") if isinstance(value, fx.Node) else None
        out.append(val.device.type if isinstance(val, torch.Tensor) else None)
    return out


def device_outputs(
    future: rt.Future, device: torch.device, keep: bool, on_host: Sequence[bool] = ()
) -> list[torch.Tensor]:
    """A call's outputs as ``nkipy`` tensors: adopted pool memory (``keep``, submitted with
    ``to_host=False``) or host results copied to ``device``. Outputs flagged in ``on_host``
    (CPU tensors in the traced graph, e.g. an optimizer's step counter) stay CPU tensors."""
    host = list(on_host) + [False] * (len(future.result()) - len(on_host))
    if keep:
        return [torch.from_numpy(t.numpy()) if h else adopt_output(t, device.index or 0)
                for t, h in zip(future.result(), host, strict=True)]
    return [torch.from_numpy(a) if h else torch.from_numpy(a).to(device)
            for a, h in zip(future.result(), host, strict=True)]


def call_on_device(compiled: CompiledGraph, args: list[Any]) -> list[torch.Tensor | None]:
    """Run ``compiled`` (boxed convention: ``args`` is cleared) with device-resident I/O."""
    device = next(a.device for a in args if is_device_tensor(a))
    inputs = device_inputs(args)
    args.clear()
    keep = compiled.keep_outputs_on_device
    future = _bundle(compiled).submit(inputs, to_host=not keep)
    del inputs
    slots = compiled.output_slots if compiled.output_slots is not None else range(len(future.result()))
    on_host = [False] * len(future.result())
    for slot, kind in zip(slots, compiled.output_devices, strict=False):
        if slot is not None and kind == "cpu":
            on_host[slot] = True
    outs = device_outputs(future, device, keep, on_host)
    return [None if slot is None else outs[slot] for slot in slots]
