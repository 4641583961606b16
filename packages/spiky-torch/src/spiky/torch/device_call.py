"""Torch tensors into and out of runtime calls: where each input lives and where each output goes.

Both compiled callables (:class:`~spiky.torch.executable.CompiledGraph`,
:class:`~spiky.torch.dynamic.DynamicGraph`) use this for every call that is not plain CPU in,
CPU out.

Inputs (:func:`runtime_inputs`): CPU tensors enter as numpy views (bfloat16 ones as
``ml_dtypes.bfloat16`` views of their bits, :mod:`spiky.torch.arrays`). ``"nkipy"`` tensors enter as
DeviceTensors over their own pool memory (no copy) when the graph runs on the runtime device
behind the ``"nkipy"`` torch device: the host target's on a machine without Neuron, the neuron
target's where the device is NeuronCore memory (:func:`spiky.torch.device.choose_driver`).
Otherwise (graphs on one, tensors on the other) they are read as arrays and uploaded like CPU ones.

Outputs (:func:`output_placement`, then :func:`torch_outputs`):

- a call with ``"nkipy"`` inputs returns outputs traced on ``"nkipy"`` on that device, and keeps
  outputs traced on ``"cpu"`` (e.g. an optimizer's step counter) on the CPU;
- a call with CPU inputs returns CPU tensors, except with ``keep_outputs_on_device=True`` in an
  inference graph: then every output is an ``"nkipy"`` tensor (as a CUDA model's outputs stay
  on the GPU). Training graphs keep CPU outputs, which autograd needs next to their parameters;
- ``keep_outputs_on_device=True``: device outputs own the call's pool memory (no D2H copy; with
  ``pipelined`` the call returns once queued and reading an output waits for it). Without it they
  are downloaded and copied into fresh ``"nkipy"`` tensors (the host round trip the option avoids).
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import fx

import spiky_runtime as rt
from spiky.torch import device as nkipy_device
from spiky.torch.arrays import from_array, to_array
from spiky.torch.device import adopt_output, is_device_tensor, runtime_input

Placement = tuple[torch.device | None, ...]
"""Per runtime output of a call: the ``"nkipy"`` device it is returned on, or None for the CPU."""


def fx_output_devices(gm: fx.GraphModule) -> list[str | None]:
    """The device type (``"cpu"``, ``"nkipy"``) of each FX output per its fake value; None for non-tensors."""
    node = next(n for n in gm.graph.nodes if n.op == "output")
    values = node.args[0] if isinstance(node.args[0], list | tuple) else (node.args[0],)
    out: list[str | None] = []
    for value in values:
        val = value.meta.get("val") if isinstance(value, fx.Node) else None
        out.append(val.device.type if isinstance(val, torch.Tensor) else None)
    return out


def input_device(tensors: Sequence[Any]) -> torch.device | None:
    """The ``"nkipy"`` device of the first ``"nkipy"`` input, None when every input is on the CPU."""
    return next((t.device for t in tensors if is_device_tensor(t)), None)


def on_nkipy_device(runtime: rt.Device, device: torch.device) -> bool:
    """Whether ``runtime`` (where a graph runs) is the memory behind the ``"nkipy"`` torch ``device``."""
    return runtime == rt.Device(nkipy_device.DRIVER, device.index or 0)


def runtime_inputs(
    tensors: Sequence[Any], runtime: rt.Device,
    resident: Callable[[int, Any], rt.DeviceTensor | None] | None = None,
) -> list[np.ndarray[Any, Any] | rt.DeviceTensor]:
    """Call inputs for a bundle on ``runtime``: see the module doc. ``resident`` (see
    :class:`ResidentWeights`) may give an input's device copy instead."""
    out: list[np.ndarray[Any, Any] | rt.DeviceTensor] = []
    for index, value in enumerate(tensors):
        kept = None if resident is None else resident(index, value)
        if kept is not None:
            out.append(kept)
        elif is_device_tensor(value):
            if on_nkipy_device(runtime, value.device):
                out.append(runtime_input(value))
            else:
                out.append(to_array(value.detach().cpu()))
        elif isinstance(value, torch.Tensor):
            out.append(to_array(value.detach().contiguous()))
        else:
            raise TypeError(f"compiled graph input {value!r} is not a tensor")
    return out


def output_placement(
    output_devices: Sequence[str | None], slots: Sequence[int | None], outputs: int,
    device: torch.device | None, keep_cpu_outputs: bool,
) -> Placement:
    """Where each of a call's ``outputs`` runtime outputs goes (see the module doc); ``device`` is the
    call's input device, ``slots`` maps FX outputs (traced on ``output_devices``) to runtime outputs."""
    if device is None:
        if not keep_cpu_outputs:
            return (None,) * outputs
        return (torch.device(nkipy_device.DEVICE_TYPE, nkipy_device.current_device()),) * outputs
    where: list[torch.device | None] = [device] * outputs
    for slot, kind in zip(slots, output_devices, strict=False):
        if slot is not None and kind == "cpu":
            where[slot] = None
    return tuple(where)


def torch_outputs(results: Sequence[np.ndarray[Any, Any] | rt.DeviceTensor], where: Placement) -> list[torch.Tensor]:
    """A call's results as torch tensors on the devices ``where`` says: DeviceTensors are adopted
    (their pool memory becomes the ``"nkipy"`` tensor's), host arrays are wrapped or copied over."""
    out: list[torch.Tensor] = []
    for result, device in zip(results, where, strict=True):
        if isinstance(result, rt.DeviceTensor):
            out.append(from_array(result.numpy()) if device is None else adopt_output(result, device.index or 0))
        else:
            tensor = from_array(result)
            out.append(tensor if device is None else tensor.to(device))
    return out


def stays_on_device(where: Placement, runtime: rt.Device, keep: bool) -> bool:
    """Whether a call's outputs should stay in device memory (submitted with ``to_host=False``):
    ``keep_outputs_on_device`` with outputs bound for the ``"nkipy"`` device that ``runtime`` is."""
    return keep and any(d is not None and on_nkipy_device(runtime, d) for d in where)


_BUFFERS: dict[int, weakref.ref[torch.Tensor]] = {}
"""Module buffers Dynamo lifted into compiled graphs (by id, held weakly): :func:`note_module_buffers`."""


def note_module_buffers(gm: torch.fx.GraphModule) -> None:
    """Remember the module buffers among a Dynamo graph's inputs (sources through ``_buffers``), so
    :class:`ResidentWeights` keeps them like parameters. Other inputs are never kept: a caller may
    refill the same tensor between calls in ways its version counter does not see."""
    for node in gm.graph.find_nodes(op="placeholder"):
        arg = node.meta.get("grapharg")
        source = getattr(arg, "source", None)
        if source is None or "._buffers[" not in source.name:
            continue
        example = arg.example
        if isinstance(example, torch.Tensor) and not isinstance(example, torch.nn.Parameter):
            _BUFFERS[id(example)] = weakref.ref(example, _forget_buffer(id(example)))


def refills_weights_unseen(gm: torch.fx.GraphModule) -> str | None:
    """Why the weights among a Dynamo graph's inputs may change without their version counter
    moving, or ``None``. FSDP2 (``fully_shard``) frees the storage of its unsharded parameters after
    use and all-gathers into it again under ``torch.autograd._unsafe_preserve_version_counter``: a
    resident copy keyed by storage and version would go stale after the first optimizer step (and
    the allocator often hands back the same address). FSDP2's parameters are found through torch's
    composable-state registry (private: tests/test_dist_training.py fails if torch moves it)."""
    registry = sys.modules.get("torch.distributed._composable_state")
    mapping = getattr(registry, "_module_state_mapping", None)
    if not mapping:
        return None
    managed: dict[int, str] = {}
    for module, state_ref in list(mapping.items()):
        group = getattr(state_ref(), "_fsdp_param_group", None)
        for fsdp_param in getattr(group, "fsdp_params", None) or ():
            for attr in ("_unsharded_param", "_sharded_post_forward_param", "sharded_param"):
                param = getattr(fsdp_param, attr, None)
                if param is not None:
                    managed[id(param)] = type(module).__name__
    for node in gm.graph.find_nodes(op="placeholder"):
        arg = node.meta.get("grapharg")
        example = getattr(arg, "example", None)
        if example is not None and id(example) in managed:
            return f"input {getattr(arg.source, 'name', node.name)} is a parameter FSDP2 manages " \
                   f"({managed[id(example)]})"
    return None


def _forget_buffer(key: int) -> Callable[[weakref.ref[torch.Tensor]], None]:
    def forget(ref: weakref.ref[torch.Tensor]) -> None:
        if _BUFFERS.get(key) is ref:
            del _BUFFERS[key]

    return forget


def is_weight(value: torch.Tensor) -> bool:
    """An ``nn.Parameter`` or a module buffer seen by :func:`note_module_buffers`."""
    if isinstance(value, torch.nn.Parameter):
        return True
    ref = _BUFFERS.get(id(value))
    return ref is not None and ref() is value


class ResidentWeights:
    """Weights of a compiled graph kept in device memory across calls (option ``resident_weights``).

    Weights are parameters and module buffers (:func:`is_weight`); other inputs cross each call.
    Input ``i`` is reused while it is the same tensor object (held weakly) with the same storage,
    offset, shape, strides, dtype and ``_version``; anything else (an in-place update bumps the
    version, ``load_state_dict`` copies in place, a new parameter is another object) uploads it
    again. A device copy is freed when its tensor dies (the module was deleted) or with this object
    (the compiled graph), whichever comes first. Writes that bypass the version counter
    (``p.data.mul_``, through ``p.numpy()``) are not seen: ``resident_weights=False`` for them."""

    def __init__(self, runtime: rt.Device, skip: Sequence[int] = ()) -> None:
        self.runtime = runtime
        self.skip = frozenset(skip)
        self.slots: dict[int, tuple[weakref.ref[torch.Tensor], tuple[Any, ...], rt.DeviceTensor]] = {}

    @staticmethod
    def _key(tensor: torch.Tensor) -> tuple[Any, ...]:
        return (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape),
                tensor.stride(), tensor.dtype, tensor._version)

    def inputs(self, tensors: Sequence[Any]) -> list[np.ndarray[Any, Any] | rt.DeviceTensor]:
        """Call inputs like :func:`runtime_inputs`, with weights as their resident DeviceTensors."""
        return runtime_inputs(tensors, self.runtime, self._resident)

    def _resident(self, index: int, value: Any) -> rt.DeviceTensor | None:
        if index in self.skip or not isinstance(value, torch.Tensor) or is_device_tensor(value) \
                or not is_weight(value):
            self.slots.pop(index, None)
            return None
        key = self._key(value)
        entry = self.slots.get(index)
        if entry is None or entry[0]() is not value or entry[1] != key:
            entry = self.slots[index] = (weakref.ref(value, self._dropper(index)), key,
                                         self.runtime.to_device(to_array(value.detach().contiguous())))
        return entry[2]

    def _dropper(self, index: int) -> Callable[[weakref.ref[torch.Tensor]], None]:
        """A tensor's death frees its device copy (the compiled graph may outlive the module:
        torch's caches keep it), unless the slot already holds another tensor's."""
        owner = weakref.ref(self)

        def drop(ref: weakref.ref[torch.Tensor]) -> None:
            me = owner()
            if me is not None and (entry := me.slots.get(index)) is not None and entry[0] is ref:
                del me.slots[index]

        return drop
