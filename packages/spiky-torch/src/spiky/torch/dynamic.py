"""Dynamic shapes: one symbolic lowering, buckets compiled on demand, padding that never changes results.

A Dynamo graph with symbolic sizes (``dynamic=True``, ``mark_dynamic``, automatic dynamic) is
lowered once. Its symbols are renamed ``s0, s1, ...`` in order of first appearance in the
inputs (so ``options={"buckets": {"s0": [...], "s1": [...]}}`` names batch and sequence of a
``(batch, seq, d)`` input). Then:

1. :func:`spiky_ir.padding.pad_graph` decides per symbol whether padding can change a result,
   masks the ops that mix data along padded dims, and adds one int64 scalar input per symbol
   whose real length the masks need. Symbols it cannot make safe compile at exact sizes
   (logged once, in ``spiky.buckets``).
2. Each call reads the symbol values off the input shapes, picks a bucket per symbol with the
   :class:`~spiky.torch.buckets.BucketPolicy` (exact size for unsafe symbols), compiles the
   bucket if needed ("JIT": the graph specialised to the bucket goes through the compile
   pipeline, :func:`spiky.torch.pipeline.build`, like any static graph), and runs it through a
   runtime :class:`spiky_runtime.Bundle` that pads on device and unpads the outputs along the
   dims they carry (tracked symbolically by the padding pass, never guessed from sizes).
   ``pad_on_device=False`` pads and unpads on the host instead; ``precompile`` builds a whole
   ladder first (:func:`spiky.torch.pipeline.build_many`).

Layouts: ``output_layout="padded"`` returns bucket-sized outputs that carry their real shape
(:func:`real_shape`); ``input_layout="padded"`` takes such tensors without padding them again
(tensors without a real shape are taken at their own size).

Per-function statistics: :func:`bucket_stats` (bucket hits, compiles, JIT compiles, pad ratio).
"""

from __future__ import annotations

import logging
import math
import time
import weakref
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import fx

import spiky_runtime as rt
from spiky.errors import SpikyOptionError, SpikyShapeError
from spiky.torch import pipeline
from spiky.torch.arrays import InputViews, array_reader
from spiky.torch.buckets import BucketPolicy
from spiky.torch.device_call import (
    Placement,
    ResidentWeights,
    input_device,
    output_placement,
    runtime_inputs,
    stays_on_device,
    torch_outputs,
)
from spiky.torch.options import Options
from spiky_ir import DType, Graph, TensorType, Value, print_graph, specialize
from spiky_ir.errors import ShapeError
from spiky_ir.fx import sym_dim
from spiky_ir.padding import PaddedGraph, has_padded, pad_graph, unpad
from spiky_ir.specialize import bindings_for, rename_symbols
from spiky_ir.symbolic import Dim, base_symbols, dim_eval, dim_rename, dim_symbols, is_derived, solve_binding

log = logging.getLogger("spiky.buckets")

BucketKey = tuple[int, ...]
"""One bucket: a size per symbol, in the order of :attr:`DynamicGraph.symbols`."""


def is_dynamic(gm: fx.GraphModule) -> bool:
    """Whether a Dynamo/aot graph has symbolic sizes (SymInt inputs or symbolic tensor shapes)."""
    for node in gm.graph.nodes:
        if node.op != "placeholder":
            continue
        val = node.meta.get("val")
        if isinstance(val, torch.SymInt):
            return True
        if isinstance(val, torch.Tensor) and any(isinstance(d, torch.SymInt) for d in val.shape):
            return True
    return False


# --- real-shape metadata of padded tensors -----------------------------------------------------

_REAL_ATTR = "_spiky_real_shape"
_real_by_ptr: dict[int, tuple[weakref.ref[torch.Tensor], tuple[int, ...]]] = {}


def _set_real_shape(tensor: torch.Tensor, real: tuple[int, ...]) -> None:
    setattr(tensor, _REAL_ATTR, real)
    ptr = tensor.data_ptr()

    def forget(_ref: weakref.ref[torch.Tensor]) -> None:
        _real_by_ptr.pop(ptr, None)

    _real_by_ptr[ptr] = (weakref.ref(tensor, forget), real)


def real_shape(tensor: torch.Tensor) -> tuple[int, ...] | None:
    """The real (unpadded) shape of a bucket-sized tensor returned with ``output_layout="padded"``
    (None for other tensors). Views sharing its storage start (``.detach()``) carry it too.

    >>> real_shape(torch.zeros(2))  # an ordinary tensor
    """
    real = getattr(tensor, _REAL_ATTR, None)
    if real is None and tensor.numel():
        entry = _real_by_ptr.get(tensor.data_ptr())
        if entry is not None and (owner := entry[0]()) is not None and owner.shape == tensor.shape:
            real = entry[1]
    return tuple(real) if real is not None else None


def unpad_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """A padded tensor cropped to its real shape (the tensor itself when it carries none)."""
    real = real_shape(tensor)
    if real is None or tuple(tensor.shape) == real:
        return tensor
    return tensor[tuple(slice(0, n) for n in real)]


# --- statistics ------------------------------------------------------------------------------------


@dataclass
class BucketStats:
    """What one dynamic compiled graph did: buckets, hits, compiles, padding."""

    name: str
    symbols: tuple[str, ...]
    padded: tuple[str, ...]
    exact: dict[str, str]
    bucket_hits: Counter[BucketKey] = field(default_factory=Counter)
    compiles: int = 0
    """Buckets built or loaded from the disk cache (precompile included)."""
    jit_compiles: int = 0
    """Of those, the ones a call triggered because no compiled bucket fitted."""
    cache_hits: int = 0
    """Buckets found in the on-disk compile cache (no new compile)."""
    calls: int = 0
    padded_elements: int = 0
    real_elements: int = 0
    recompile_reasons: list[str] = field(default_factory=list)

    @property
    def pad_ratio(self) -> float:
        """Bucket-sized input elements over real input elements, over all calls (1.0 = no padding)."""
        return self.padded_elements / self.real_elements if self.real_elements else 1.0


_STATS: list[weakref.ref[DynamicGraph]] = []


def bucket_stats() -> list[BucketStats]:
    """Per dynamic compiled graph still alive: bucket hits, compiles, JIT compiles, pad ratio."""
    out: list[BucketStats] = []
    for ref in list(_STATS):
        graph = ref()
        if graph is None:
            _STATS.remove(ref)
        else:
            out.append(graph.stats)
    return out


def reset_bucket_stats() -> None:
    """Forget the graphs :func:`bucket_stats` reports (they keep working)."""
    _STATS.clear()


# --- the compiled graph ------------------------------------------------------------------------------


def _symbol_order(graph: Graph) -> list[str]:
    order: list[str] = []
    for value in graph.inputs:
        for dim in value.type.shape:
            plain = dim if isinstance(dim, str) and dim.isidentifier() and not is_derived(dim) else None
            for sym in ([plain] if plain is not None else sorted(base_symbols(dim))):
                if sym not in order:
                    order.append(sym)
    return order


def _int32_lengths(graph: Graph, count: int) -> Graph:
    """``graph`` with its last ``count`` inputs (the padding pass's int64 real lengths) taken as int32
    and widened inside. Neuron's compiler narrows int64 graph inputs to int32 unless told otherwise
    (docs/neuron-interfaces.md), and a length is far below 2**31; the same graph runs on every target."""
    if count == 0:
        return graph
    out = Graph(name=graph.name)
    env: dict[int, Value] = {}
    first = len(graph.inputs) - count
    for value in graph.inputs[:first]:
        env[id(value)] = out.add_input(value.name, value.type, exact=True)
    narrow = [out.add_input(v.name, TensorType(v.type.shape, DType.int32), exact=True) for v in graph.inputs[first:]]
    for old, new in zip(graph.inputs[first:], narrow, strict=True):
        env[id(old)] = out.add_op("astype", [new], {"dtype": DType.int64}, name=f"{old.name}_int64")
    for node in graph.nodes:
        copied = out.add_node(node.op, [env[id(v)] for v in node.inputs], node.attrs, source=node.source,
                              result_names=[v.name for v in node.outputs])
        for before, after in zip(node.outputs, copied.outputs, strict=True):
            env[id(before)] = after
    out.set_outputs([env[id(v)] for v in graph.outputs])
    return out


_TENSOR, _VALUE, _NONE = 0, 1, 2
_MAX_ROUTES = 4096


@dataclass(frozen=True)
class _Bucket:
    """One compiled bucket: its loaded model and the runtime bundle that pads to exactly its sizes."""

    key: BucketKey
    loaded: pipeline.Loaded
    bundle: rt.Bundle


@dataclass(frozen=True)
class _Route:
    """What a call with one combination of input shapes runs (see ``DynamicGraph.__call__``)."""

    key: BucketKey
    run: Callable[[list[Any]], list[np.ndarray[Any, Any]]]
    lengths: tuple[np.ndarray[Any, Any], ...]
    real_elements: int
    padded_elements: int
    slots: tuple[tuple[int, int], ...] | None
    """Per FX output: (_TENSOR, output index), (_VALUE, a SymInt's value) or (_NONE, 0); None: the
    runtime's outputs as they are."""
    crops: tuple[tuple[int, tuple[slice, ...]], ...] = ()
    """Outputs the runtime leaves bucket-sized (an axis of ``s+1``: a grown KV cache), with the
    prefix that is their real region."""
    sizes: tuple[int, ...] = ()
    """The call's size of each symbol (``DynamicGraph.symbols`` order)."""


_BUNDLE_BUCKET = 1
"""The id of the one bucket of each bucket's runtime bundle (what the runtime's stats count hits under)."""


class DynamicGraph:
    """A boxed callable (aot_autograd's convention) serving every size of one symbolic graph.

    Each bucket is built by the compile pipeline (:func:`spiky.torch.pipeline.build`, or
    :func:`~spiky.torch.pipeline.build_many` for ``precompile``) from the padded symbolic graph
    specialised to the bucket's sizes; this class picks buckets and moves tensors."""

    _boxed_call = True

    def __init__(self, lowered: pipeline.Lowered, ctx: pipeline.Context,
                 size_args: Mapping[int, Dim] | None = None) -> None:
        self._boxed_call = True
        start = time.perf_counter()
        self.ctx = ctx
        self.options = ctx.options
        self.lowered = lowered
        self.tensor_args = list(lowered.tensor_args)
        self._tensor_indices = tuple(i for i, is_tensor in enumerate(self.tensor_args) if is_tensor)
        self.output_slots = list(lowered.output_slots)
        # FX outputs that are inputs (parameters a forward saves): (output index, argument index).
        self._passthrough = tuple(sorted(lowered.passthrough.items()))
        # Symbols of the input shapes first (the names options use), then those only SymInt inputs carry
        # (Python ints Dynamo made dynamic): each call reads their values off those arguments.
        order = _symbol_order(lowered.graph)
        for dim in (size_args or {}).values():
            order += sorted(dim_symbols(dim) - set(order))
        rename = {old: f"s{i}" for i, old in enumerate(order)}
        self.size_args: dict[int, Dim] = {i: dim_rename(d, rename) for i, d in (size_args or {}).items()}
        self.value_symbols = frozenset(rename[s] for s in order[len(_symbol_order(lowered.graph)):])
        """Symbols no tensor input's shape carries, bound from SymInt arguments (exact sizes)."""
        self.graph = rename_symbols(lowered.graph, rename)
        self.dim_outputs: dict[int, Dim] = {
            i: dim_eval(d, {}) if isinstance(d, int) else dim_rename(d, rename) for i, d in lowered.dim_outputs.items()
        }
        self.symbols: tuple[str, ...] = tuple(rename.values())
        self.policy = BucketPolicy.from_options(self.options.values)
        self._check_bucket_symbols()
        # Which input axes carry a symbol alone: the runtime pads those and reads sizes off them.
        self.input_dims: list[dict[int, str]] = []
        not_plain: set[str] = set()
        for value in self.graph.inputs:
            dims: dict[int, str] = {}
            for axis, dim in enumerate(value.type.shape):
                if isinstance(dim, str) and dim.isidentifier() and not is_derived(dim):
                    dims[axis] = dim
                elif isinstance(dim, str):
                    not_plain |= dim_symbols(dim)
            self.input_dims.append(dims)
        plain = {s for dims in self.input_dims for s in dims.values()}
        # A size a floor division is taken of (a strided window's input, a view by an int) is exact: the
        # quotient of a bucket is not the quotient of the real size.
        divided: set[str] = set()
        for value in [*self.graph.inputs, *(out for node in self.graph.nodes for out in node.outputs)]:
            for dim in value.type.shape:
                if isinstance(dim, str):
                    divided |= {b for sym in dim_symbols(dim) if is_derived(sym) for b in base_symbols(sym)}
        candidates = (plain - not_plain - divided) & set(self.symbols)
        self.plan: PaddedGraph = pad_graph(self.graph, candidates)
        self.bucket_graph = _int32_lengths(self.plan.graph, len(self.plan.length_symbols))
        """What every bucket specialises: the padded graph, its real lengths taken as int32."""
        exact = dict(self.plan.exact)
        for sym in self.symbols:
            if sym in self.value_symbols:
                exact[sym] = ("it is an int argument of the graph (a SymInt input), not the size of a tensor "
                              "input: each value compiles its own bucket")
            elif sym in divided and sym not in exact:
                exact[sym] = "a size is floor-divided by it or from it (a strided window, a view by an int)"
            elif sym not in self.plan.padded and sym not in exact:
                exact[sym] = "it appears in an input only inside a size expression, which the runtime cannot pad"
        self.name = pipeline.kernel_name_of(print_graph(self.graph))
        for sym, why in sorted(exact.items()):
            log.warning("%s: %s is compiled at exact sizes instead of padded: %s", self.name, sym, why)
        self.stats = BucketStats(self.name, self.symbols, tuple(sorted(self.plan.padded)), exact)
        _STATS.append(weakref.ref(self))
        # Outputs whose padded axes are all a symbol alone are unpadded by the runtime, others here.
        self.output_dims: list[dict[int, str] | None] = []
        self.runtime_unpads: list[bool] = []
        for layout in self.plan.output_layouts:
            dims = {}
            simple = True
            for axis, factors in enumerate(layout):
                padded = [f for f in factors if isinstance(f, str) and dim_symbols(f) & self.plan.padded]
                if not padded:
                    continue
                if len(factors) == 1 and factors[0] in self.plan.padded:
                    dims[axis] = str(factors[0])
                else:
                    simple = False
            self.output_dims.append(dims if simple else None)
            self.runtime_unpads.append(simple)
        # Outputs whose real region is a prefix of the bucket-sized result (every padded axis one
        # factor, ``s`` or ``s+c``): the runtime or a slice unpads them, so their calls may take a route.
        self._prefix_unpads = [all(len(factors) == 1 for factors in layout if has_padded(factors, self.plan.padded))
                               for layout in self.plan.output_layouts]
        if self.options["dump_ir_dir"] is not None:  # the symbolic graph every bucket specialises
            pipeline.dump_ir(self.bucket_graph, self.name, self.options["dump_ir_dir"])
        self.buckets: dict[BucketKey, _Bucket] = {}
        self._precompiled = False
        # numpy has no bfloat16: bfloat16 inputs and results cross as views of their bits
        # (spiky.torch.arrays). Decided once, so float32 calls keep numpy's own conversions.
        self._bf16_inputs = any(v.type.dtype is DType.bfloat16 for v in self.graph.inputs)
        # The tensor arguments are the graph's inputs, in order. Only inputs with symbolic sizes can change
        # shape under an unchanged pointer (Dynamo guards the rest).
        self._views = InputViews(len(self.graph.inputs), self._bf16_inputs,
                                 check_shapes=[not v.type.is_static for v in self.graph.inputs])
        self._from_array = array_reader(any(v.type.dtype is DType.bfloat16 for v in self.graph.outputs))
        self._placements: dict[torch.device | None, Placement] = {}
        # Input shapes -> what a call with them runs: for CPU calls padded in the runtime with
        # unpadded layouts; a route is forgotten when a bucket is added that it would now choose.
        # With SymInt arguments the key also holds their values (a symbol only they carry, e.g. a
        # `logits_to_keep`, changes the bucket and the outputs without changing any input shape).
        self._routes: dict[tuple[Any, ...], _Route] | None = (
            {} if self.options["input_layout"] != "padded" and self.options["output_layout"] != "padded"
            and self.options["pad_on_device"] and not ctx.keep_cpu_outputs_on_device else None)
        self._size_indices = tuple(sorted(self.size_args))
        # Neuron target: weights stay in device memory across calls (device_call.ResidentWeights); not
        # inputs with a symbolic size (padded per bucket) nor int64 ones (narrowed on the host).
        self._resident: ResidentWeights | None = None
        if ctx.target == "neuron" and self.options["resident_weights"]:
            self._resident = ResidentWeights(ctx.device, [
                i for i, v in enumerate(self.graph.inputs)
                if v.type.dtype is DType.int64 or any(isinstance(d, str) for d in v.type.shape)])
            self._routes = None  # the fast route hands numpy views straight to the runtime
        log.info("%s: dynamic graph over %s (padded %s, exact %s), lowered in %.1f ms", self.name,
                 list(self.symbols), sorted(self.plan.padded), sorted(exact),
                 (time.perf_counter() - start + lowered.seconds) * 1e3)

    @property
    def models(self) -> dict[BucketKey, rt.Model]:
        """The loaded model of each compiled bucket."""
        return {key: bucket.loaded.model for key, bucket in self.buckets.items()}

    # -- buckets --

    def _check_bucket_symbols(self) -> None:
        raw = self.options["buckets"]
        if isinstance(raw, Mapping):
            unknown = sorted(set(raw) - set(self.symbols) - {"*"})
            if unknown:
                raise SpikyOptionError(
                    f"option 'buckets' names symbol(s) {unknown}, but this graph's dynamic symbols are "
                    f"{list(self.symbols)} (numbered in order of first appearance in the inputs)"
                )

    def _compiled_sizes(self, index: int) -> set[int]:
        return {key[index] for key in self.buckets}

    def choose(self, sizes: Mapping[str, int], given: Mapping[str, int] | None = None) -> BucketKey:
        """The bucket of a call with these symbol sizes (exact sizes for unpaddable symbols;
        ``given``: buckets of inputs that arrive already padded)."""
        key: list[int] = []
        for i, sym in enumerate(self.symbols):
            size = sizes[sym]
            if given and sym in given:
                key.append(given[sym])
            elif sym not in self.plan.padded:
                # An int argument may be 0 (transformers' logits_to_keep=0: keep every position); a tensor's
                # dynamic dim may not.
                if sym in self.value_symbols and size < 0:
                    raise SpikyShapeError(f"int argument {sym} is {size}; the graph binds it as a size, so it must be "
                                          ">= 0 (mark the function's int arguments static, or pass a tensor)")
                if sym not in self.value_symbols and size < 1:
                    raise SpikyShapeError(f"dynamic dim {sym} has size {size}; sizes must be >= 1")
                key.append(size)
            else:
                key.append(self.policy.choose(sym, size, self._compiled_sizes(i)))
        return tuple(key)

    def ladder(self, sym: str) -> list[int]:
        listed = self.policy.listed(sym)
        return list(listed) if listed is not None else self.policy.ladder()

    def is_bucket(self, sym: str, size: int) -> bool:
        i = self.symbols.index(sym)
        if size in self._compiled_sizes(i):
            return True
        listed = self.policy.listed(sym)
        if listed is not None:
            return size in listed
        return size <= self.policy.max_bucket_size and self.policy.ladder_bucket(size) == size

    def _job(self, key: BucketKey) -> pipeline.Job:
        bindings = dict(zip(self.symbols, key, strict=True))
        return pipeline.Job(specialize(self.bucket_graph, bindings), {s: [b] for s, b in bindings.items()},
                            _describe(self.symbols, key))

    def compile_bucket(self, key: BucketKey, reason: str, jit: bool) -> None:
        """Build one bucket through the compile pipeline and add it."""
        job = self._job(key)
        loaded = pipeline.build(job.graph, self.ctx, buckets=job.buckets,
                                label=f"bucket {job.label} of {self.name}: {reason}")
        self._add_bucket(key, loaded, reason, jit)

    def _add_bucket(self, key: BucketKey, loaded: pipeline.Loaded, reason: str, jit: bool) -> None:
        if self._routes:
            # The new bucket is chosen instead of a route's only where it fits that route's size of some
            # padded symbol more tightly (buckets are the smallest that fit); those routes are forgotten,
            # the others keep running what they ran.
            padded = [sym in self.plan.padded for sym in self.symbols]
            for route_key in [k for k, route in self._routes.items() if any(
                    pad and size <= new < old
                    for pad, size, new, old in zip(padded, route.sizes, key, route.key, strict=True))]:
                del self._routes[route_key]
        self.stats.compiles += 1
        self.stats.cache_hits += int(loaded.hit)
        self.stats.jit_compiles += int(jit)
        self.stats.recompile_reasons.append(reason)
        # One runtime bundle per bucket: its model's static dims (sizes of exact symbols, size
        # expressions) are then fixed, and the bundle pads to exactly this bucket.
        bundle = rt.Bundle(
            {_BUNDLE_BUCKET: loaded.model},
            input_dims=[*self.input_dims, *({} for _ in self.plan.length_symbols)],
            output_dims=self.output_dims,
            name=f"{self.name}[{_describe(self.symbols, key)}]",
            pipelined=bool(self.options["pipelined"]),
            bucket_sizes={_BUNDLE_BUCKET: dict(zip(self.symbols, key, strict=True))},
        )
        self.buckets[key] = _Bucket(key, loaded, bundle)

    def precompile(self) -> None:
        """Compile every bucket of the ladders (the listed buckets, else the default ladder) of the
        padded symbols (on neuron in parallel compiler processes); exact symbols still compile per
        size, on demand."""
        self._precompiled = True
        if any(sym not in self.plan.padded for sym in self.symbols):
            log.warning("%s: precompile skipped: %s compile at exact sizes", self.name,
                        sorted(set(self.symbols) - self.plan.padded))
            return
        keys: list[BucketKey] = [()]
        for sym in self.symbols:
            keys = [(*k, b) for k in keys for b in self.ladder(sym)]
        missing = [key for key in keys if key not in self.buckets]
        jobs = {key: self._job(key) for key in missing}
        by_label = {job.label: key for key, job in jobs.items()}
        pipeline.build_many(list(jobs.values()), self.ctx, name=self.name,
                            on_loaded=lambda job, loaded: self._add_bucket(by_label[job.label], loaded, "precompile",
                                                                          jit=False))

    # -- calls --

    def __call__(self, args: list[Any]) -> list[Any]:
        # Fast route: plain CPU tensors whose shapes were seen before reuse what the first call
        # with those shapes derived (symbol sizes, bucket, length inputs, stats increments,
        # output slots); only the runtime call and the tensor views are left per call.
        if self._routes is not None:
            try:
                arrays = self._views([args[i] for i in self._tensor_indices])
            except (TypeError, AttributeError, RuntimeError, BufferError, IndexError):
                pass  # "nkipy" tensors and anything unusual: the general path says what is wrong
            else:
                shapes = tuple(a.shape for a in arrays)
                key: tuple[Any, ...] | None = shapes
                if self._size_indices:
                    values = tuple(args[i] for i in self._size_indices)
                    # exactly ints (a bool or a tensor there is the general path's error to report)
                    key = (*shapes, values) if all(type(v) is int for v in values) else None
                route = self._routes.get(key) if key is not None else None
                if route is not None:
                    passed = [args[j] for _, j in self._passthrough]
                    args.clear()
                    return pipeline.return_inputs(self._run_route(route, arrays), self._passthrough, passed)
        return self._call_general(args)

    def _run_route(self, route: _Route, arrays: list[np.ndarray[Any, Any]]) -> list[Any]:
        stats = self.stats
        stats.calls += 1
        stats.bucket_hits[route.key] += 1
        stats.real_elements += route.real_elements
        stats.padded_elements += route.padded_elements
        from_array = self._from_array
        results = route.run([*arrays, *route.lengths])
        if route.crops:
            results = list(results)
            for index, crop in route.crops:
                results[index] = np.ascontiguousarray(results[index][crop])
        outs = [from_array(out) for out in results]
        if route.slots is None:
            return outs
        return [outs[slot] if kind == _TENSOR else slot if kind == _VALUE else None for kind, slot in route.slots]

    def _call_general(self, args: list[Any]) -> list[Any]:
        passed = [args[j] for _, j in self._passthrough]
        tensors = [a for a, is_tensor in zip(args, self.tensor_args, strict=True) if is_tensor]
        size_values = {i: args[i] for i in self.size_args}
        args.clear()
        for index, value in enumerate(tensors):
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"compiled graph input {index} ({value!r}) is not a tensor")
        if self.options["precompile"] and not self._precompiled:
            self.precompile()
        device = input_device(tensors)
        shapes = [tuple(int(n) for n in t.shape) for t in tensors]
        given: dict[str, int] = {}
        carries: list[bool] = [False] * len(tensors)
        if self.options["input_layout"] == "padded":
            sizes = self._real_sizes(tensors, given, carries)
        else:
            sizes = bindings_for(self.graph, shapes)
        self._bind_size_args(sizes, size_values)
        key = self.choose(sizes, given)
        if key not in self.buckets:
            compiled = sorted(self.buckets)
            reason = (f"{_describe(self.symbols, tuple(sizes[s] for s in self.symbols))} fits no compiled bucket "
                      f"(compiled: {[_describe(self.symbols, k) for k in compiled] or 'none'})")
            self.compile_bucket(key, reason, jit=True)
        bucket = self.buckets[key]
        bucket_sizes = dict(zip(self.symbols, key, strict=True))
        lengths = [np.array(sizes[s], np.int32) for s in self.plan.length_symbols]
        self._count(key, sizes)
        inputs = (runtime_inputs(tensors, self.ctx.device) if self._resident is None
                  else self._resident.inputs(tensors))
        if given or not self.options["pad_on_device"]:
            # Padded on the host: pad_on_device=False, or a call mixing inputs that arrive padded
            # (input_layout="padded") with inputs at their own size. The runtime then sees bucket-sized
            # inputs only, so outputs are unpadded here too.
            inputs = [inp if carried else self._pad_on_host(inp, dims, bucket_sizes)
                      for inp, dims, carried in zip(inputs, self.input_dims, carries, strict=True)]
            runtime_unpad = False
        else:
            runtime_unpad = self.options["output_layout"] != "padded"
        where = self._placements.get(device)
        if where is None:
            where = self._placements[device] = output_placement(
                self.lowered.output_devices, self.output_slots, len(self.plan.output_layouts), device,
                self.ctx.keep_cpu_outputs_on_device)
        to_host = not stays_on_device(where, self.ctx.device, bool(self.options["keep_outputs_on_device"]))
        results = pipeline.execute(bucket.loaded, bucket.bundle, [*inputs, *lengths], to_host=to_host,
                                   unpad=runtime_unpad)
        del inputs
        keep_padded = self.options["output_layout"] == "padded"
        finished: list[Any] = []
        reals: list[tuple[int, ...]] = []
        for index, (out, layout, by_runtime) in enumerate(
                zip(results, self.plan.output_layouts, self.runtime_unpads, strict=True)):
            real = self.plan.output_real_shape(index, sizes, bucket_sizes)[0]
            if (runtime_unpad and by_runtime) or (keep_padded and by_runtime):
                finished.append(out)  # unpadded by the runtime, or kept bucket-sized on purpose
                reals.append(real)
                continue
            array = out.numpy() if isinstance(out, rt.DeviceTensor) else out
            cropped = np.ascontiguousarray(unpad(array, layout, self.plan.padded, sizes, bucket_sizes))
            finished.append(cropped)
            reals.append(tuple(cropped.shape))
        outs = torch_outputs(finished, where)
        if keep_padded:
            for tensor, real in zip(outs, reals, strict=True):
                _set_real_shape(tensor, real)
        returned = pipeline.return_inputs(self._slots(outs, sizes), self._passthrough, passed)
        if self._routes is not None and device is None and all(self._prefix_unpads):
            route_key: tuple[Any, ...] = tuple(shapes)
            if self._size_indices:
                route_key = (*route_key, tuple(int(size_values[i]) for i in self._size_indices))
            self._remember_route(route_key, bucket, lengths, sizes)
        return returned

    def _bind_size_args(self, sizes: dict[str, int], values: Mapping[int, Any]) -> None:
        """Bind the symbols only SymInt arguments carry (the input shapes bound the others; under
        ``input_layout="padded"`` an argument holding such a size may hold its bucket) to their values."""
        for index, dim in self.size_args.items():
            if not dim_symbols(dim) - sizes.keys():
                continue
            value = values[index]
            if isinstance(value, bool) or not isinstance(value, int | torch.SymInt):
                raise TypeError(f"compiled graph argument {index} ({value!r}) is not an int; it was traced "
                                f"as the size {dim}")
            try:
                solve_binding(dim, int(value), sizes)
            except ShapeError as exc:
                raise SpikyShapeError(f"compiled graph argument {index} is {int(value)}, which does not fit "
                                      f"the size {dim} it was traced as: {exc}") from None

    def _pad_on_host(self, value: np.ndarray[Any, Any] | rt.DeviceTensor, dims: Mapping[int, str],
                     bucket: Mapping[str, int]) -> np.ndarray[Any, Any] | rt.DeviceTensor:
        """``value`` zero-padded to the bucket along its padded axes (what the runtime's padding writes)."""
        if not dims:
            return value  # no symbolic axis: nothing to pad (a device tensor stays on the device)
        array = value.numpy() if isinstance(value, rt.DeviceTensor) else value
        shape = tuple(bucket[dims[a]] if a in dims and dims[a] in self.plan.padded else n
                      for a, n in enumerate(array.shape))
        if shape == array.shape:
            return array
        padded = np.zeros(shape, array.dtype)
        padded[tuple(slice(0, n) for n in array.shape)] = array
        return padded

    def _remember_route(self, key: tuple[Any, ...], bucket: _Bucket, lengths: list[np.ndarray[Any, Any]],
                        sizes: Mapping[str, int]) -> None:
        routes = self._routes
        assert routes is not None
        if len(routes) >= _MAX_ROUTES:
            routes.clear()
        bucket_sizes = dict(zip(self.symbols, bucket.key, strict=True))
        real = padded = 0
        for value, dims in zip(self.graph.inputs, self.input_dims, strict=True):
            if dims:
                real += math.prod(int(dim_eval(d, sizes)) for d in value.type.shape)
                padded += math.prod(int(dim_eval(d, bucket_sizes)) for d in value.type.shape)
        slots: list[tuple[int, int]] = []
        for index, slot in enumerate(self.output_slots):
            if slot is not None:
                slots.append((_TENSOR, slot))
            elif index in self.dim_outputs:
                slots.append((_VALUE, int(dim_eval(self.dim_outputs[index], sizes))))
            else:
                slots.append((_NONE, 0))
        for array in lengths:
            array.flags.writeable = False  # shared by every call of the route
        identity = slots == [(_TENSOR, i) for i in range(len(slots))]
        crops = tuple((index, tuple(slice(0, n) for n in self.plan.output_real_shape(index, sizes, bucket_sizes)[0]))
                      for index, by_runtime in enumerate(self.runtime_unpads) if not by_runtime)
        loaded = bucket.loaded
        run: Callable[[list[Any]], list[np.ndarray[Any, Any]]]
        if loaded.profiler is not None or loaded.int64 is not None:
            run = partial(pipeline.execute, loaded, bucket.bundle)
        elif all(sizes[sym] == n for sym, n in bucket_sizes.items()) and not self.options["pipelined"]:
            # The inputs are the bucket's exact shapes: nothing to pad or unpad, so the bundle's per-call
            # bucket choice and checks (~0.35 µs per input) are skipped; its model runs and counts the hit
            # under the bundle's bucket id, as the bundle would.
            run = partial(loaded.model.run, bucket=_BUNDLE_BUCKET)
        else:
            run = bucket.bundle.run
        routes[key] = _Route(bucket.key, run, tuple(lengths), real, padded, None if identity else tuple(slots), crops,
                             tuple(sizes[sym] for sym in self.symbols))

    def _slots(self, outs: list[torch.Tensor], sizes: Mapping[str, int]) -> list[Any]:
        """Results in FX output order (tensors, sizes of SymInt outputs, Nones)."""
        result: list[Any] = []
        for index, slot in enumerate(self.output_slots):
            if slot is not None:
                result.append(outs[slot])
            elif index in self.dim_outputs:
                result.append(int(dim_eval(self.dim_outputs[index], sizes)))
            else:
                result.append(None)
        return result

    def _count(self, key: BucketKey, sizes: Mapping[str, int]) -> None:
        self.stats.calls += 1
        self.stats.bucket_hits[key] += 1
        bucket = dict(zip(self.symbols, key, strict=True))
        for value, dims in zip(self.graph.inputs, self.input_dims, strict=True):
            if not dims:
                continue
            self.stats.real_elements += math.prod(int(dim_eval(d, sizes)) for d in value.type.shape)
            self.stats.padded_elements += math.prod(int(dim_eval(d, bucket)) for d in value.type.shape)

    def _real_sizes(self, tensors: list[torch.Tensor], given: dict[str, int], carries: list[bool]) -> dict[str, int]:
        """``input_layout="padded"``: symbol sizes from the inputs' real-shape metadata (inputs without
        it: from their shape). Inputs carrying it must be bucket-sized along padded symbols and are
        cropped along exact symbols (whose graphs compile at exact sizes)."""
        sizes: dict[str, int] = {}
        for index, (tensor, dims) in enumerate(zip(tensors, self.input_dims, strict=True)):
            if not dims:
                continue
            real = real_shape(tensor)
            carries[index] = real is not None
            for axis, sym in dims.items():
                have = int(tensor.shape[axis])
                size = real[axis] if real is not None else have
                if sizes.setdefault(sym, size) != size:
                    raise SpikyShapeError(f"input {index} dim {axis} ({sym}) has real size {size}, but {sym} is "
                                          f"{sizes[sym]} in an earlier input")
                if real is None or sym not in self.plan.padded:
                    continue
                if not self.is_bucket(sym, have):
                    known = sorted(self._compiled_sizes(self.symbols.index(sym)) | set(self.ladder(sym)))
                    raise SpikyShapeError(
                        f"input {index} dim {axis} ({sym}) is {have}, which is not a bucket of {sym} "
                        f"(buckets: {known[:12]}{' ...' if len(known) > 12 else ''}); pad it to a bucket "
                        "or use input_layout='unpadded'"
                    )
                if given.setdefault(sym, have) != have:
                    raise SpikyShapeError(f"input {index} dim {axis} ({sym}) is padded to {have}, but an earlier "
                                          f"input is padded to {given[sym]}")
            if real is not None and any(sym not in self.plan.padded for sym in dims.values()):
                index_exp = tuple(slice(0, real[a]) if a in dims and dims[a] not in self.plan.padded
                                  else slice(None) for a in range(tensor.dim()))
                tensors[index] = tensor[index_exp]
        for sym in self.symbols:
            if sym not in sizes and sym not in self.value_symbols:  # those come from the int arguments
                raise SpikyShapeError(f"symbol {sym} appears in no input of this call")
        return sizes


def _describe(symbols: Sequence[str], key: Sequence[int]) -> str:
    return ", ".join(f"{s}={n}" for s, n in zip(symbols, key, strict=True)) or "static"


class _StaticLayouts:
    """A static compiled graph under ``input_layout``/``output_layout="padded"``: its sizes are its
    buckets, so padded inputs must be exactly real-sized and outputs carry their own shape."""

    _boxed_call = True

    def __init__(self, compiled: Any, options: Options) -> None:
        self._boxed_call = True
        self.compiled = compiled
        self.check_inputs = options["input_layout"] == "padded"
        self.mark_outputs = options["output_layout"] == "padded"

    def __call__(self, args: list[Any]) -> list[Any]:
        if self.check_inputs:
            for index, arg in enumerate(args):
                if isinstance(arg, torch.Tensor) and (real := real_shape(arg)) is not None \
                        and real != tuple(arg.shape):
                    raise SpikyShapeError(
                        f"input {index} is padded to {tuple(arg.shape)} (real {real}), but this graph was "
                        "compiled for static shapes; compile with dynamic=True (or mark the dim dynamic) "
                        "to take padded inputs"
                    )
        outs: list[Any] = self.compiled(args)
        if self.mark_outputs:
            for out in outs:
                if isinstance(out, torch.Tensor):
                    _set_real_shape(out, tuple(out.shape))
        return outs


def with_static_layouts(compiled: Any, options: Options) -> Any:
    """``compiled`` itself, or wrapped to honour the padded layouts on a static graph."""
    if options["input_layout"] == "padded" or options["output_layout"] == "padded":
        return _StaticLayouts(compiled, options)
    return compiled


def compile_dynamic(gm: fx.GraphModule, ctx: pipeline.Context) -> DynamicGraph:
    """The compiled callable of a graph with symbolic sizes (see the module docstring)."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    size_args = {i: sym_dim(n.meta["val"]) for i, n in enumerate(placeholders)
                 if isinstance(n.meta.get("val"), torch.SymInt)}
    return DynamicGraph(pipeline.lower(gm), ctx, size_args)
