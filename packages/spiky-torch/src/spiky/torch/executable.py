"""A static graph's compiled callable: what the backend hands back to aot_autograd.

:func:`compile_graph` runs the compile pipeline (:mod:`spiky.torch.pipeline`: IR → cache entry →
loaded model, on the host or the neuron target) and wraps the model in a
:class:`CompiledGraph`, which only moves tensors in and out of calls.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx

import spiky_runtime as rt
from spiky.torch import pipeline
from spiky.torch.arrays import InputViews, array_reader
from spiky.torch.device_call import (
    Placement,
    ResidentWeights,
    input_device,
    output_placement,
    runtime_inputs,
    stays_on_device,
    torch_outputs,
)
from spiky.torch.pipeline import Context, Loaded, Lowered
from spiky_ir import DType


class CompiledGraph:
    """A boxed callable (aot_autograd's calling convention) running one static graph."""

    _boxed_call = True

    def __init__(self, lowered: Lowered, loaded: Loaded, ctx: Context) -> None:
        # An instance attribute too: aot_autograd wraps backward compilers with functools.wraps,
        # which copies the instance __dict__ but not class attributes.
        self._boxed_call = True
        self.lowered = lowered
        self.loaded = loaded
        self.ctx = ctx
        self.kernel_name = loaded.kernel_name
        self.graph = loaded.graph
        self.model = loaded.model
        self.cache_entry = loaded.entry
        self.cache_hit = loaded.hit
        # Backward graphs return None for inputs that need no gradient; the IR graph returns only
        # tensors and the slots put the Nones back (None: the runtime's outputs as they are).
        slots = list(lowered.output_slots)
        self.output_slots: list[int | None] | None = None if slots == list(range(len(slots))) else slots
        # FX outputs that are inputs (parameters a forward saves): (output index, argument index).
        self._passthrough = tuple(sorted(lowered.passthrough.items()))
        self.bundle = rt.Bundle({0: loaded.model}, name=loaded.kernel_name, pipelined=ctx.options["pipelined"])
        self.keep_outputs_on_device = bool(ctx.options["keep_outputs_on_device"])
        self._placements: dict[torch.device | None, Placement] = {}
        # Neuron target: parameters stay in device memory across calls (not int64 ones, which the
        # int64 boundary narrows on the host). The host target borrows inputs, nothing to keep.
        int64 = {i for i, _ in loaded.int64.inputs} if loaded.int64 is not None else set()
        self._resident = (ResidentWeights(ctx.device, sorted(int64))
                          if ctx.target == "neuron" and ctx.options["resident_weights"] else None)
        # The plain path: CPU tensors in, CPU tensors out, one synchronous call.
        self._plain = (loaded.profiler is None and loaded.int64 is None and not ctx.options["pipelined"]
                       and not ctx.keep_cpu_outputs_on_device and self._resident is None)
        # numpy has no bfloat16: bfloat16 inputs and results cross as views of their bits
        # (spiky.torch.arrays). Decided once, so float32 calls keep numpy's own conversions.
        self._bf16_inputs = any(v.type.dtype is DType.bfloat16 for v in self.graph.inputs)
        self._from_array = array_reader(any(v.type.dtype is DType.bfloat16 for v in self.graph.outputs))
        self._views = InputViews(len(self.graph.inputs), self._bf16_inputs)

    def __call__(self, args: list[Any]) -> list[Any]:
        # The plain path is kept to a few attribute reads: CPU tensors become numpy views (no copy;
        # the runtime makes non-contiguous ones contiguous). Anything else ("nkipy" tensors, tensors
        # numpy cannot view, non-tensors, the options above) takes the general path.
        if self._plain:
            try:
                arrays = self._views(args)
            except (TypeError, AttributeError, RuntimeError, BufferError, IndexError):
                return self._call_general(args)
            passed = [args[j] for _, j in self._passthrough]
            args.clear()  # boxed convention: drop our references to the inputs early
            from_array = self._from_array
            outs = [from_array(out) for out in self.model.run(arrays)]
            slots = self.output_slots
            if slots is None:
                return outs
            results = [None if slot is None else outs[slot] for slot in slots]
            return pipeline.return_inputs(results, self._passthrough, passed)
        return self._call_general(args)

    def _call_general(self, args: list[Any]) -> list[Any]:
        passed = [args[j] for _, j in self._passthrough]
        device = input_device(args)
        where = self._placements.get(device)
        if where is None:
            where = self._placements[device] = output_placement(
                self.lowered.output_devices, self.lowered.output_slots, len(self.graph.outputs), device,
                self.ctx.keep_cpu_outputs_on_device)
        inputs = (runtime_inputs(args, self.ctx.device) if self._resident is None
                  else self._resident.inputs(args))
        args.clear()
        to_host = not stays_on_device(where, self.ctx.device, self.keep_outputs_on_device)
        results = pipeline.execute(self.loaded, self.bundle, inputs, to_host=to_host)
        del inputs
        outs: list[torch.Tensor | None] = list(torch_outputs(results, where))
        slots = self.output_slots
        if slots is None:
            return outs
        returned = [None if slot is None else outs[slot] for slot in slots]
        return pipeline.return_inputs(returned, self._passthrough, passed)


def compile_graph(gm: fx.GraphModule, ctx: Context) -> CompiledGraph:
    """Lower ``gm``, find or build its cache entry, and load it on the context's device."""
    lowered = pipeline.lower(gm)
    return CompiledGraph(lowered, pipeline.build(lowered.graph, ctx), ctx)

