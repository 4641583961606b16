"""The ``"nkipy"`` torch.compile backend: capture → lower → compile → callable.

::

    Dynamo FX graph → aot_autograd (decompositions; forward, backward and inference graphs)
      → per graph: symbolic sizes → DynamicGraph (buckets), else CompiledGraph (one static graph);
        with fallback="eager", ops without a lowering run eagerly between compiled partitions
      → spiky.torch.pipeline: FX → IR → cache entry (host: HLO; neuron: NEFF) → model on the device
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import fx
from torch._dynamo.backends.common import aot_autograd
from torch._functorch.partitioners import min_cut_rematerialization_partition
from torch._library.fake_class_registry import FakeScriptObject

from spiky.torch.decompositions import spiky_decompositions
from spiky.torch.device_call import note_module_buffers, refills_weights_unseen
from spiky.torch.dynamic import compile_dynamic, is_dynamic, with_static_layouts
from spiky.torch.executable import compile_graph
from spiky.torch.fallback import compile_with_fallback, unlowered_ops
from spiky.torch.options import validate_options
from spiky.torch.pipeline import Context
from spiky.torch.saved import pack_saved_activations

log = logging.getLogger("spiky.backend")


def nkipy_backend(
    gm: fx.GraphModule,
    example_inputs: Sequence[Any],
    options: Mapping[str, Any] | None = None,
) -> Callable[..., Any]:
    """Compile a Dynamo graph for the configured target (host or Neuron).

    Used as ``torch.compile(model, backend="nkipy", options={...})``; options are
    validated (and merged with the defaults) before anything is traced.
    """
    validated = validate_options(options)
    note_module_buffers(gm)  # resident weights: module buffers count as weights, like parameters
    if validated["resident_weights"] and (why := refills_weights_unseen(gm)) is not None:
        log.info("resident_weights off for this function: %s", why)
        validated = validated.replace(resident_weights=False)
    training = Context.create(validated)

    def compile_training(graph_module: fx.GraphModule, _inputs: Sequence[Any]) -> Any:
        return compile_one(graph_module, training)

    def compile_inference(graph_module: fx.GraphModule, _inputs: Sequence[Any]) -> Any:
        return compile_one(graph_module, Context.create(validated, inference=not _updates_inputs()))

    backend = aot_autograd(
        fw_compiler=compile_training,
        bw_compiler=compile_training,
        inference_compiler=compile_inference,
        decompositions=spiky_decompositions(),
        partition_fn=_min_cut_partition,
    )
    return backend(gm, example_inputs)


def _min_cut_partition(joint: fx.GraphModule, inputs: Any, **kwargs: Any) -> tuple[fx.GraphModule, fx.GraphModule]:
    """Split a training graph into forward and backward as Inductor does: cheap ops whose inputs
    the backward has anyway are recomputed there instead of saved by the forward.

    Every saved activation is a forward output and a backward input, and on the host target each
    crosses the XLA boundary twice (~5 µs per tensor): llama_train's forward saved 86 tensors with
    aot_autograd's default split. Recomputing runs the forward's own ops again in the backward
    graph (no random ops: torch never recomputes those), so values and gradients are unchanged.
    """
    fw, bw = min_cut_rematerialization_partition(joint, inputs, compiler="inductor", **kwargs)
    packed = pack_saved_activations(fw, bw, kwargs["num_fwd_outputs"], lambda gm: not unlowered_ops(gm))
    if packed:
        log.debug("the forward saves %d activations for the backward as packed tensors", packed)
    return fw, bw


def compile_one(gm: fx.GraphModule, ctx: Context) -> Any:
    """The compiled callable of one aot_autograd graph (forward, backward or inference).

    ``fallback="eager"`` is honoured on every path: a graph with unlowered ops is partitioned first,
    and each lowerable partition then goes the static or the dynamic way on its own.
    """
    carried = carry_script_objects(gm)
    if carried is not None:
        return carried(compile_one(gm, ctx))
    if ctx.options["fallback"] == "eager" and unlowered_ops(gm):
        # Unlowered ops run eagerly between compiled partitions, on the CPU tensors they were traced with.
        part = replace(ctx, inference=False)
        return compile_with_fallback(gm, lambda sub: _compile_whole(sub, part))
    return _compile_whole(gm, ctx)


def _is_script_object(value: Any) -> bool:
    return isinstance(value, FakeScriptObject | torch.ScriptObject)


class _CarriedObjects:
    """A compiled graph whose script-object inputs (a DeviceMesh or ProcessGroup that DTensor's
    tensor parallel passes through the forward to the backward) went around it: they are taken
    out of the call's inputs and put back where the graph returned them."""

    _boxed_call = True

    def __init__(self, positions: Sequence[int], returned: Mapping[int, int]) -> None:
        self.positions = tuple(positions)
        self.returned = dict(returned)  # output index -> index into positions
        self.inner: Any = None
        self._boxed_call = True  # on the instance too: wrappers copy the instance's __dict__

    def __call__(self, args: list[Any]) -> Any:
        objects = [args[i] for i in self.positions]
        skip = set(self.positions)
        rest = [a for i, a in enumerate(args) if i not in skip]
        args.clear()
        outs = list(self.inner(rest))
        for out_index, k in self.returned.items():
            outs[out_index] = objects[k]
        return outs

    def wrap(self, inner: Any) -> _CarriedObjects:
        if not getattr(inner, "_boxed_call", False):
            raise TypeError(f"expected a boxed compiled graph, got {inner!r}")
        self.inner = inner
        return self


def carry_script_objects(gm: fx.GraphModule) -> Callable[[Any], _CarriedObjects] | None:
    """Script-object placeholders that the graph only returns (or ignores) are removed from ``gm``
    (in place); the result wraps the callable compiled from what is left so that calls keep their
    signature. ``None`` when there are none. An object an op of the graph uses stays, and lowering
    says which input it is."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    output = next(n for n in gm.graph.nodes if n.op == "output")
    carried = [(i, n) for i, n in enumerate(placeholders)
               if _is_script_object(n.meta.get("val")) and all(u is output for u in n.users)]
    if not carried:
        return None
    outs = list(output.args[0]) if isinstance(output.args[0], list | tuple) else [output.args[0]]
    returned: dict[int, int] = {}
    for k, (_, node) in enumerate(carried):
        for out_index, out in enumerate(outs):
            if out is node:
                returned[out_index] = k
                outs[out_index] = None
    output.args = (outs if isinstance(output.args[0], list | tuple) else outs[0],)
    for _, node in carried:
        gm.graph.erase_node(node)
    gm.recompile()
    wrapper = _CarriedObjects([i for i, _ in carried], returned)
    return wrapper.wrap


def _compile_whole(gm: fx.GraphModule, ctx: Context) -> Any:
    """``gm`` compiled as one graph: symbolic sizes → buckets, padding, JIT (spiky.torch.dynamic);
    static sizes → one CompiledGraph."""
    if is_dynamic(gm):
        return compile_dynamic(gm, ctx)
    return with_static_layouts(compile_graph(gm, ctx), ctx.options)


def _updates_inputs() -> bool:
    """Whether the graph aot_autograd is compiling writes into its inputs (an optimizer step, running
    statistics): its outputs must then stay next to the state they update. True when unknown."""
    context = torch._guards.TracingContext.try_get()
    metadata = getattr(context, "fw_metadata", None)
    return metadata is None or bool(getattr(metadata, "num_mutated_inp_runtime_indices", 1))


def register() -> None:
    """Register ``"nkipy"`` with Dynamo (idempotent)."""
    from torch._dynamo.backends.registry import _BACKENDS, register_backend

    if _BACKENDS.get("nkipy") is None:
        register_backend(nkipy_backend, name="nkipy")
