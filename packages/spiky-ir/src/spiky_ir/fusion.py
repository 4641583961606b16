"""Native fused steps for the numpy plan: a layer norm, an eval-mode batch norm, a softmax and erf
in one call each instead of five to eleven numpy calls.

A plan (:func:`spiky_ir.compile_plan`) runs each IR node as a numpy step at ~1 µs of dispatch per
call on small tensors, so a decomposed layer norm (mean, var, add, rsqrt, subtract and 2-4
elementwise ops) costs ~10 µs where one fused kernel costs ~1 µs. Given kernels that implement
:class:`NativeKernels` (spiky-runtime ships them in C++: ``spiky_runtime.host_kernels``), the plan
replaces

- the layer norm the FX lowering emits (``mean`` and ``var`` over trailing axes, ``add`` of a constant
  eps, ``rsqrt``, ``subtract``, ``multiply``, then an optional ``multiply`` by a weight and ``add`` of a
  bias of the normalized shape) by one ``layer_norm`` call that also gives the mean and rstd values;
- the eval-mode batch norm (per-channel ``reshape`` of mean, var, weight, bias to ``(C, 1, ...)``,
  ``add`` eps, ``rsqrt``, ``subtract``, ``multiply``, optional weight and bias) by ``channel_norm``;
- ``softmax`` and ``erf`` nodes by the native kernel;

for float32 and float64 values only. A pattern is fused only when it is exactly that computation:
every intermediate value used once, inside the pattern, and not a graph output; the mean and rstd a
layer norm also returns used only after it. Anything else keeps its numpy steps, so fusion can
make a plan faster but never changes which graphs it runs.

The fused results agree with the unfused plan to float rounding, not bit for bit: the layer norm
sums in double (the plan's float32 pairwise sums differ by an ULP or so), softmax uses the C
library's exp. The batch norm does the unfused plan's float arithmetic in its order.
:data:`spiky_ir.testing.NUMPY_KERNELS` implements the protocol with numpy, for tests of the
matching without native code and as the reference the native kernels are tested against.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from spiky_ir.dtypes import DType
from spiky_ir.ir import Graph, Node, Value
from spiky_ir.registry import attr_int

Array = np.ndarray[Any, np.dtype[Any]]
FusedKernel = Callable[[Sequence[Array], Any], list[Array]]
FUSABLE = (DType.float32, DType.float64)


class NativeKernels(Protocol):
    """What the plan calls for its fused steps (all operands of one float type, C-contiguous)."""

    def layer_norm(self, x: Array, axes: int, weight: Array | None, bias: Array | None,
                   eps: float) -> tuple[Array, Array, Array]:
        """``(y, mean, rstd)`` over ``x``'s last ``axes`` axes; mean and rstd keep them as 1."""
        ...

    def channel_norm(self, x: Array, mean: Array, var: Array, weight: Array | None, bias: Array | None,
                     eps: float) -> Array:
        """Eval-mode batch norm of ``x`` (N, C, ...) with per-channel vectors of C elements."""
        ...

    def softmax(self, x: Array, axis: int) -> Array:
        ...

    def erf(self, x: Array) -> Array:
        """erf computed in double, rounded to ``x``'s type."""
        ...


@dataclass
class Fused:
    """One native step: it replaces ``nodes`` and runs where the last of them ran."""

    nodes: list[Node]
    kernel: FusedKernel
    inputs: list[Value]
    outputs: list[Value]


def _contiguous(a: Array) -> Array:
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


class _Graph:
    """Users, producers and positions of a graph's values, for the matchers."""

    def __init__(self, graph: Graph) -> None:
        self.users: dict[int, list[Node]] = {}
        self.producer: dict[int, Node] = {}
        self.position: dict[int, int] = {}
        for index, node in enumerate(graph.nodes):
            self.position[id(node)] = index
            for v in node.inputs:
                self.users.setdefault(id(v), []).append(node)
            for v in node.outputs:
                self.producer[id(v)] = node
        self.outputs = {id(v) for v in graph.outputs}

    def sole_user(self, value: Value, op: str) -> Node | None:
        """The one node using ``value`` (once), if it is ``op`` and ``value`` is no graph output."""
        users = self.users.get(id(value), [])
        return users[0] if self.used_once(value) and users[0].op == op else None

    def used_once(self, value: Value) -> bool:
        users = self.users.get(id(value), [])
        return len(users) == 1 and id(value) not in self.outputs and sum(v is value for v in users[0].inputs) == 1

    def made_by(self, value: Value, op: str) -> Node | None:
        node = self.producer.get(id(value))
        return node if node is not None and node.op == op else None

    def scalar_constant(self, value: Value) -> float | None:
        node = self.made_by(value, "constant")
        if node is None or value.type.rank != 0:
            return None
        raw = node.attrs["value"]
        return float(raw) if isinstance(raw, (int, float)) and not isinstance(raw, bool) else None


def _other(node: Node, value: Value) -> Value:
    """The operand of binary ``node`` that is not ``value``."""
    a, b = node.inputs
    return b if a is value else a


def _float_type(values: Sequence[Value], dtype: DType) -> bool:
    return all(v.type.dtype is dtype and v.type.is_static for v in values)


def _used_after(g: _Graph, value: Value, nodes: list[Node]) -> bool:
    """Every use of ``value`` outside ``nodes`` comes after the last of them."""
    inside = {id(n) for n in nodes}
    last = max(g.position[id(n)] for n in nodes)
    return all(id(u) in inside or g.position[id(u)] > last for u in g.users.get(id(value), []))


def _affine_tail(g: _Graph, value: Value, fits: Callable[[Value], Value | None]) -> tuple[list[Node], Value | None,
                                                                                         Value | None, Value]:
    """An optional ``multiply`` by a weight then ``add`` of a bias after ``value`` (``fits`` accepts an
    operand and gives the vector the kernel takes): ``(nodes, weight, bias, result)``."""
    nodes: list[Node] = []
    weight = bias = None
    scaled = g.sole_user(value, "multiply")
    if scaled is not None and (w := fits(_other(scaled, value))) is not None:
        nodes.append(scaled)
        weight, value = w, scaled.output
    shifted = g.sole_user(value, "add")
    if shifted is not None and (b := fits(_other(shifted, value))) is not None:
        nodes.append(shifted)
        bias, value = b, shifted.output
    return nodes, weight, bias, value


def _layer_norm(g: _Graph, var: Node, native: NativeKernels) -> Fused | None:
    x = var.inputs[0]
    axes = var.attrs.get("axes")
    rank, dtype = x.type.rank, x.type.dtype
    if (dtype not in FUSABLE or not isinstance(axes, tuple) or not axes or var.attrs.get("keepdims") is not True
            or float(var.attrs.get("correction", 1.0)) != 0.0  # type: ignore[arg-type]
            or tuple(sorted(axes)) != tuple(range(rank - len(axes), rank))):
        return None
    means = [u for u in g.users.get(id(x), []) if u.op == "mean" and u.attrs.get("axes") == axes
             and u.attrs.get("keepdims") is True]
    plus_eps = g.sole_user(var.output, "add")
    if not means or plus_eps is None:
        return None
    mean = means[0]
    eps = g.scalar_constant(_other(plus_eps, var.output))
    rsqrt = g.sole_user(plus_eps.output, "rsqrt") if eps is not None else None
    centred = [u for u in g.users.get(id(x), []) if u.op == "subtract" and u.inputs[0] is x
               and u.inputs[1] is mean.output]
    if rsqrt is None or eps is None or len(centred) != 1:
        return None
    normed = g.sole_user(centred[0].output, "multiply")
    if normed is None or _other(normed, centred[0].output) is not rsqrt.output:
        return None
    trailing = x.type.static_shape()[rank - len(axes):]

    def fits(v: Value) -> Value | None:  # a weight or bias of the normalized shape, x's type
        return v if v.type.dtype is dtype and v.type.is_static and v.type.static_shape() == trailing else None

    tail, weight, bias, result = _affine_tail(g, normed.output, fits)
    nodes = [mean, var, plus_eps, rsqrt, centred[0], normed, *tail]
    values = [mean.output, var.output, plus_eps.output, rsqrt.output, centred[0].output, normed.output,
              *(n.output for n in tail)]
    if not _float_type(values, dtype) or not all(_used_after(g, v, nodes) for v in (mean.output, rsqrt.output)):
        return None
    inputs = [x, *(v for v in (weight, bias) if v is not None)]
    count, has_w, has_b = len(axes), weight is not None, bias is not None
    run = native.layer_norm

    def kernel(xs: Sequence[Array], _attrs: Any) -> list[Array]:
        w = _contiguous(xs[1]) if has_w else None
        b = _contiguous(xs[1 + has_w]) if has_b else None
        y, m, r = run(_contiguous(xs[0]), count, w, b, eps)
        return [y, m, r]

    return Fused(nodes, kernel, inputs, [result, mean.output, rsqrt.output])


def _channel_norm(g: _Graph, centred: Node, native: NativeKernels) -> Fused | None:
    x, mean_c = centred.inputs
    dtype, rank = x.type.dtype, x.type.rank
    if dtype not in FUSABLE or rank < 2 or not x.type.is_static:
        return None
    channels = x.type.static_shape()[1]
    column = (channels,) + (1,) * (rank - 2)

    def channel(v: Value) -> tuple[Node | None, Value] | None:
        """A (C, 1, ...) value: the (C,) vector it reshapes (with the reshape, if used only here)."""
        if v.type.dtype is not dtype or not v.type.is_static or v.type.static_shape() != column:
            return None
        reshape = g.made_by(v, "reshape")
        if reshape is not None and g.used_once(v):
            return reshape, reshape.inputs[0]
        return None, v

    mean = channel(mean_c)
    normed = g.sole_user(centred.output, "multiply")
    if mean is None or normed is None:
        return None
    rstd = _other(normed, centred.output)
    rsqrt = g.made_by(rstd, "rsqrt")
    plus_eps = g.made_by(rsqrt.inputs[0], "add") if rsqrt is not None and g.sole_user(rstd, "multiply") else None
    if rsqrt is None or plus_eps is None or g.sole_user(plus_eps.output, "rsqrt") is None:
        return None
    var_c = next((v for v in plus_eps.inputs if g.scalar_constant(v) is None), None)
    eps = g.scalar_constant(_other(plus_eps, var_c)) if var_c is not None else None
    var = channel(var_c) if var_c is not None else None
    if eps is None or var is None:
        return None
    found: dict[int, tuple[Node | None, Value]] = {}

    def fits(v: Value) -> Value | None:
        ch = channel(v)
        if ch is None:
            return None
        found[id(v)] = ch
        return v

    tail, weight_c, bias_c, result = _affine_tail(g, normed.output, fits)
    vectors = [mean, var, *(found[id(v)] for v in (weight_c, bias_c) if v is not None)]
    nodes = [centred, normed, rsqrt, plus_eps, *tail, *(r for r, _v in vectors if r is not None)]
    if not _float_type([centred.output, normed.output, rsqrt.output, plus_eps.output, *(n.output for n in tail)],
                       dtype):
        return None
    has_w, has_b = weight_c is not None, bias_c is not None
    inputs = [x, *(v for _r, v in vectors)]
    run = native.channel_norm

    def kernel(xs: Sequence[Array], _attrs: Any) -> list[Array]:
        w = _contiguous(xs[3]) if has_w else None
        b = _contiguous(xs[3 + has_w]) if has_b else None
        return [run(_contiguous(xs[0]), _contiguous(xs[1]), _contiguous(xs[2]), w, b, eps)]

    return Fused(nodes, kernel, inputs, [result])


def _single(node: Node, native: NativeKernels) -> Fused | None:
    """softmax and erf nodes of one float type."""
    x = node.inputs[0]
    if x.type.dtype not in FUSABLE or node.output.type.dtype is not x.type.dtype:
        return None
    if node.op == "softmax":
        axis, softmax = attr_int(node.attrs, "axis"), native.softmax
        return Fused([node], lambda xs, _a: [softmax(_contiguous(xs[0]), axis)], [x], [node.output])
    erf = native.erf
    return Fused([node], lambda xs, _a: [erf(_contiguous(xs[0]))], [x], [node.output])


def find_fusions(graph: Graph, native: NativeKernels) -> list[Fused]:
    """The native steps for ``graph``'s static float32/float64 layer norms, eval batch norms,
    softmax and erf nodes; no node is in two of them."""
    g = _Graph(graph)
    fused: list[Fused] = []
    taken: set[int] = set()
    for node in graph.nodes:
        if id(node) in taken:
            continue
        found = None
        if node.op == "var":
            found = _layer_norm(g, node, native)
        elif node.op == "subtract":
            found = _channel_norm(g, node, native)
        elif node.op in ("softmax", "erf") and node.inputs[0].type.is_static:
            found = _single(node, native)
        if found is not None and not any(id(n) in taken for n in found.nodes):
            fused.append(found)
            taken.update(id(n) for n in found.nodes)
    return fused
