"""Padding safety: run a symbolic graph on inputs padded to a bucket without changing any result.

A dynamic dim is served by compiling its graph at a bucket size and padding inputs up to it.
The rows of padding hold arbitrary values ("garbage"). Position-wise ops keep garbage in the
padded region, so the real region of their results is untouched; ops that *mix data along* a
padded dim (reductions, softmax, matmul contraction, norms via mean/var, topk, convolution
windows) would pull garbage in. :func:`pad_graph` rewrites such ops with the op's padding rule
from the registry (``OpDef.extra["pad"]``): mask the padded region with the op's neutral value
(0 for sum, 1 for prod, -inf for max/softmax/topk, False for any, ...), divide by the real
element count for mean/var, mask both operands of a matmul contraction. The real lengths enter
the graph as extra int64 scalar inputs (``%len_s0``), one per padded symbol that needs one.

Layouts: each value's axis is described by its *factors* in row-major order, e.g. a
``(s0, s1, 32)`` tensor reshaped to ``(s1*s0, 32)`` has axis 0 = ``(s0, s1)``. A padded
factor is ``s`` or ``s+c`` (one padded symbol, coefficient 1: its real part is a prefix of
length ``L+c``). Layouts are tracked symbolically, so an output whose size merely equals the
bucket is never taken for a padded one.

An op without a rule, or a case a rule cannot handle (a flip or a concat along a padded dim,
a gather indexing into one, ...), makes the symbols involved *exact*: they are compiled at
their exact sizes instead of padded. Never silently wrong.

>>> from spiky_ir import DType, Graph, TensorType
>>> g = Graph()
>>> x = g.add_input("x", TensorType(("s0", 4), DType.float32))
>>> g.set_outputs([g.add_op("sum", [x], {"axes": (0,), "keepdims": False})])
>>> plan = pad_graph(g, {"s0"})
>>> sorted(plan.padded), plan.length_symbols
(['s0'], ['s0'])
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from spiky_ir.dtypes import DType
from spiky_ir.errors import IRError
from spiky_ir.ir import Attr, Graph, Node, TensorType, Value
from spiky_ir.ops import all_ops, get_op
from spiky_ir.symbolic import Dim, dim_eval, dim_sub, dim_symbols, dims_product, to_poly

Factors = tuple[Dim, ...]
"""One axis: its row-major factors (static ints, plain dims, padded ``s+c``)."""
Layout = tuple[Factors, ...]
"""One value: the factors of each axis."""


class UnpaddableError(IRError):
    """Padding ``symbols`` could change a result at some node; they are compiled exactly."""

    def __init__(self, symbols: Collection[str], reason: str) -> None:
        super().__init__(reason)
        self.symbols = frozenset(symbols)
        self.reason = reason


@dataclass
class PaddedGraph:
    """The result of :func:`pad_graph`."""

    graph: Graph
    """The rewritten symbolic graph: the original inputs, then one int64 scalar per ``length_symbols``."""
    padded: frozenset[str]
    """Symbols that may be padded (graph results do not depend on the padding)."""
    exact: dict[str, str]
    """Symbols that must be compiled at exact sizes → why (the first reason found)."""
    length_symbols: list[str]
    """The symbols whose real length the graph takes as extra scalar inputs, in input order."""
    output_layouts: list[Layout]
    """Per output, the factors of each axis (how to unpad it)."""

    def output_real_shape(self, index: int, lengths: Mapping[str, int], buckets: Mapping[str, int]) -> tuple[
            tuple[int, ...], tuple[int, ...] | None]:
        """``(real shape, factor shape)`` of output ``index``: the factor shape is the bucket-sized
        shape with composite axes split into factors (None when no axis is composite)."""
        return _real_shape(self.output_layouts[index], self.padded, lengths, buckets)


# --- factors ---------------------------------------------------------------------------------


def _is_padded_factor(factor: Dim, padded: Collection[str]) -> str | None:
    """The padded symbol of ``factor`` (which must be ``s+c``), or None for a plain factor."""
    if isinstance(factor, int):
        return None
    symbols = dim_symbols(factor) & set(padded)
    if not symbols:
        return None
    poly = to_poly(factor)
    if len(symbols) == 1 and len(dim_symbols(factor)) == 1:
        (sym,) = symbols
        if poly.get((sym,), 0) == 1 and set(poly) <= {(sym,), ()}:
            return sym
    raise UnpaddableError(symbols, f"dim {factor!r} is not a padded size plus a constant")


def axis_factors(dim: Dim, padded: Collection[str]) -> Factors:
    """The factors of a dim seen without history (a graph input, a creation op)."""
    _is_padded_factor(dim, padded)
    return (dim,)


def _padded_syms(layout: Layout, padded: Collection[str], axes: Sequence[int] | None = None) -> set[str]:
    out: set[str] = set()
    for i, factors in enumerate(layout):
        if axes is None or i in axes:
            for f in factors:
                sym = _is_padded_factor(f, padded)
                if sym:
                    out.add(sym)
    return out


def _has_padded(factors: Factors, padded: Collection[str]) -> bool:
    return any(_is_padded_factor(f, padded) for f in factors)


def _merge_axis(candidates: Sequence[tuple[Dim, Factors]], out_dim: Dim, padded: Collection[str],
                what: str) -> Factors:
    """The layout of one broadcast axis from its operands' (dim, factors)."""
    chosen: Factors | None = None
    for dim, factors in candidates:
        if dim == 1 and out_dim != 1:
            continue
        if not _has_padded(factors, padded):
            continue
        if chosen is not None and chosen != factors:
            syms = {s for f in chosen + factors if (s := _is_padded_factor(f, padded))}
            raise UnpaddableError(syms, f"{what}: operands lay out a padded axis differently ({chosen} vs {factors})")
        chosen = factors
    return chosen if chosen is not None else (out_dim,)


def _broadcast_layout(layouts: Sequence[Layout], types: Sequence[TensorType], out: TensorType,
                      padded: Collection[str], what: str) -> Layout:
    rank = out.rank
    axes: list[Factors] = []
    for i in range(rank):
        cands: list[tuple[Dim, Factors]] = []
        for layout, t in zip(layouts, types, strict=True):
            j = i - (rank - t.rank)
            if j >= 0:
                cands.append((t.shape[j], layout[j]))
        axes.append(_merge_axis(cands, out.shape[i], padded, what))
    return tuple(axes)


def _fresh_layout(t: TensorType, padded: Collection[str]) -> Layout:
    return tuple(axis_factors(d, padded) for d in t.shape)


# --- the rewrite context -------------------------------------------------------------------------


class PadContext:
    """State of one rewrite: the new graph, value layouts, real-length inputs, mask builders."""

    def __init__(self, source: Graph, padded: frozenset[str]) -> None:
        self.graph = Graph(name=source.name)
        self.padded = padded
        self.layouts: dict[int, Layout] = {}
        self.lengths: dict[str, Value] = {}
        self._masks: dict[tuple[int, tuple[int, ...]], Value | None] = {}
        self.node: Node | None = None

    def layout(self, value: Value) -> Layout:
        return self.layouts[id(value)]

    # -- building --

    def op(self, name: str, *inputs: Value, attrs: Mapping[str, Attr] | None = None) -> Value:
        source = self.node.source if self.node is not None else None
        return self.graph.add_node(name, inputs, attrs, name=f"pad_{name}", source=source).output

    def const(self, value: bool | int | float, dtype: DType) -> Value:
        if dtype is DType.bool:
            value = bool(value)
        elif dtype.is_integer:
            value = int(value)
        else:
            value = float(value)
        return self.op("constant", attrs={"value": value, "dtype": dtype})

    def astype(self, value: Value, dtype: DType) -> Value:
        return value if value.type.dtype is dtype else self.op("astype", value, attrs={"dtype": dtype})

    def copy(self, node: Node, inputs: Sequence[Value]) -> tuple[Value, ...]:
        return self.graph.add_node(node.op, inputs, dict(node.attrs), source=node.source,
                                   result_names=[v.name for v in node.outputs]).outputs

    def length(self, factor: Dim) -> Value:
        """The real length of a padded factor ``s+c`` as an int64 scalar."""
        sym = _is_padded_factor(factor, self.padded)
        assert sym is not None
        if sym not in self.lengths:
            self.lengths[sym] = self.graph.add_input(f"len_{sym}", TensorType((), DType.int64))
        const = dim_eval(dim_sub(factor, sym), {})
        base = self.lengths[sym]
        return base if const == 0 else self.op("add", base, self.const(int(const), DType.int64))

    def mask(self, value: Value, axes: Sequence[int]) -> Value | None:
        """A bool tensor broadcastable to ``value``: True where every axis in ``axes`` is inside
        its real region; None when none of them is padded."""
        layout = self.layout(value)
        key = (id(value), tuple(sorted(axes)))
        if key in self._masks:
            return self._masks[key]
        rank = value.type.rank
        out: Value | None = None
        for axis in sorted(axes):
            factors = layout[axis]
            if not _has_padded(factors, self.padded):
                continue
            axis_mask: Value | None = None
            for j, f in enumerate(factors):
                if not _is_padded_factor(f, self.padded):
                    continue
                pos = self.op("iota", attrs={"shape": tuple(factors), "axis": j, "dtype": DType.int64})
                inside = self.op("less", pos, self.length(f))
                axis_mask = inside if axis_mask is None else self.op("logical_and", axis_mask, inside)
            assert axis_mask is not None
            shape = tuple(value.type.shape[axis] if i == axis else 1 for i in range(rank))
            axis_mask = self.op("reshape", axis_mask, attrs={"shape": shape})
            out = axis_mask if out is None else self.op("logical_and", out, axis_mask)
        self._masks[key] = out
        return out

    def masked(self, value: Value, axes: Sequence[int], fill: bool | int | float, like: Value | None = None) -> Value:
        """``value`` with its padded region along ``axes`` replaced by ``fill`` (``where``, so
        that inf/NaN garbage never leaks through a multiplication). ``like``: a value of the same
        shape whose layout ``value`` shares (for intermediates the rules build)."""
        m = self.mask(like if like is not None else value, axes)
        if m is None:
            return value
        return self.op("where", m, value, self.const(fill, value.type.dtype))

    def padded_in(self, value: Value, axes: Sequence[int]) -> bool:
        return bool(_padded_syms(self.layout(value), self.padded, axes))


PadRule = Callable[[PadContext, Node, list[Value]], tuple[Sequence[Value], Sequence[Layout]]]
"""A padding rule: rewrite ``node`` on its new inputs; return its results and their layouts."""


# --- neutral values ------------------------------------------------------------------------------


def _lowest(dtype: DType) -> bool | int | float:
    if dtype is DType.bool:
        return False
    if dtype.is_integer:
        return int(np.iinfo(dtype.to_numpy()).min)
    return float("-inf")


def _highest(dtype: DType) -> bool | int | float:
    if dtype is DType.bool:
        return True
    if dtype.is_integer:
        return int(np.iinfo(dtype.to_numpy()).max)
    return float("inf")


# --- rules -----------------------------------------------------------------------------------------


def _positionwise(ctx: PadContext, node: Node, inputs: list[Value]) -> tuple[Sequence[Value], Sequence[Layout]]:
    """Elementwise ops (and where, astype, tril/triu): broadcast layouts, no masking needed."""
    outs = ctx.copy(node, inputs)
    layout = _broadcast_layout([ctx.layout(v) for v in inputs], [v.type for v in inputs], outs[0].type,
                               ctx.padded, node.op)
    return outs, [layout]


def _creation(ctx: PadContext, node: Node, inputs: list[Value]) -> tuple[Sequence[Value], Sequence[Layout]]:
    """Values that depend only on positions: valid wherever the real computation has them."""
    outs = ctx.copy(node, inputs)
    return outs, [_fresh_layout(v.type, ctx.padded) for v in outs]


def _dim_value(ctx: PadContext, node: Node, inputs: list[Value]) -> tuple[Sequence[Value], Sequence[Layout]]:
    """A size used as a number must be the real size: rebuild it from the real lengths of the
    padded symbols it contains (sum of monomials); unpadded symbols stay symbolic."""
    value, dtype = node.attrs["value"], node.output.type.dtype
    assert isinstance(value, int | str) and isinstance(dtype, DType)
    if isinstance(value, int) or not dim_symbols(value) & ctx.padded:
        return ctx.copy(node, inputs), [()]
    total: Value | None = None
    for monomial, coefficient in to_poly(value).items():
        term = ctx.const(int(coefficient), DType.int64)
        for sym in monomial:
            factor = ctx.length(sym) if sym in ctx.padded else ctx.op(
                "dim_value", attrs={"value": sym, "dtype": DType.int64})
            term = ctx.op("multiply", term, factor)
        total = term if total is None else ctx.op("add", total, term)
    assert total is not None
    return [ctx.astype(total, dtype)], [()]


def _reduce_axes(node: Node) -> tuple[int, ...]:
    if "axes" in node.attrs:
        axes = node.attrs["axes"]
        assert isinstance(axes, tuple)
        return tuple(int(a) for a in axes)
    axis = node.attrs["axis"]
    assert isinstance(axis, int)
    return (axis,)


def _reduced_layout(layout: Layout, axes: Sequence[int], keepdims: bool) -> Layout:
    if keepdims:
        return tuple((1,) if i in axes else f for i, f in enumerate(layout))
    return tuple(f for i, f in enumerate(layout) if i not in axes)


def _masking_reduce(neutral: Callable[[DType], bool | int | float]) -> PadRule:
    """sum/prod/max/min/any/all/argmax/argmin: pad with the op's neutral element."""

    def rule(ctx: PadContext, node: Node, inputs: list[Value]) -> tuple[Sequence[Value], Sequence[Layout]]:
        (x,) = inputs
        axes = _reduce_axes(node)
        masked = ctx.masked(x, axes, neutral(x.type.dtype))
        outs = ctx.copy(node, [masked])
        return outs, [_reduced_layout(ctx.layout(x), axes, bool(node.attrs["keepdims"]))]

    return rule


def _count(ctx: PadContext, x: Value, axes: Sequence[int], keepdims: bool, dtype: DType) -> Value:
    """The number of real elements reduced over ``axes``, shaped like the reduction's result."""
    m = ctx.mask(x, axes)
    assert m is not None
    ones = ctx.op("where", m, ctx.const(1, dtype), ctx.const(0, dtype))
    full = tuple(d if i in axes else 1 for i, d in enumerate(x.type.shape))
    ones = ctx.op("broadcast_to", ones, attrs={"shape": full})
    return ctx.op("sum", ones, attrs={"axes": tuple(axes), "keepdims": keepdims})


def _mean(ctx: PadContext, node: Node, inputs: list[Value]) -> tuple[Sequence[Value], Sequence[Layout]]:
    """mean: masked sum divided by the real element count."""
    (x,) = inputs
    axes, keepdims = _reduce_axes(node), bool(node.attrs["keepdims"])
    layout = _reduced_layout(ctx.layout(x), axes, keepdims)
    if not ctx.padded_in(x, axes):
        return ctx.copy(node, inputs), [layout]
    out_type = node.outputs[0].type.dtype
    total = ctx.op("sum", ctx.masked(ctx.astype(x, out_type), axes, 0, like=x),
                   attrs={"axes": axes, "keepdims": keepdims})
    mean = ctx.op("divide", total, _count(ctx, x, axes, keepdims, out_type))
    return [ctx.astype(mean, out_type)], [layout]


def _var(ctx: PadContext, node: Node, inputs: list[Value]) -> tuple[Sequence[Value], Sequence[Layout]]:
    """var: masked mean, masked squared deviations, divided by (real count - correction)."""
    (x,) = inputs
    axes, keepdims = _reduce_axes(node), bool(node.attrs["keepdims"])
    layout = _reduced_layout(ctx.layout(x), axes, keepdims)
    if not ctx.padded_in(x, axes):
        return ctx.copy(node, inputs), [layout]
    out_type = node.outputs[0].type.dtype
    correction = node.attrs["correction"]
    assert isinstance(correction, float | int)
    xf = ctx.astype(x, out_type)
    total = ctx.op("sum", ctx.masked(xf, axes, 0, like=x), attrs={"axes": axes, "keepdims": True})
    mean = ctx.op("divide", total, _count(ctx, x, axes, True, out_type))
    dev = ctx.masked(ctx.op("subtract", xf, mean), axes, 0, like=x)
    squares = ctx.op("sum", ctx.op("multiply", dev, dev), attrs={"axes": axes, "keepdims": keepdims})
    denom = ctx.op("subtract", _count(ctx, x, axes, keepdims, out_type), ctx.const(float(correction), out_type))
    return [ctx.astype(ctx.op("divide", squares, denom), out_type)], [layout]


def _softmax(ctx: PadContext, node: Node, inputs: list[Value]) -> tuple[Sequence[Value], Sequence[Layout]]:
    """softmax: padded logits become -inf, so they get probability 0 and change no sum."""
    (x,) = inputs
    axis = node.attrs["axis"]
    assert isinstance(axis, int)
    xf = ctx.astype(x, node.outputs[0].type.dtype)
    outs = ctx.copy(node, [ctx.masked(xf, (axis,), float("-inf"), like=x)])
    return outs, [ctx.layout(inputs[0])]


def _topk(ctx: PadContext, node: Node, inputs: list[Value]) -> tuple[Sequence[Value], Sequence[Layout]]:
    """topk: padded entries rank last (-inf for largest, +inf for smallest); ties keep index order."""
    (x,) = inputs
    axis, k = node.attrs["axis"], node.attrs["k"]
    assert isinstance(axis, int) and isinstance(k, int)
    fill = _lowest(x.type.dtype) if node.attrs["largest"] else _highest(x.type.dtype)
    outs = ctx.copy(node, [ctx.masked(x, (axis,), fill)])
    layout = tuple((k,) if i == axis else f for i, f in enumerate(ctx.layout(x)))
    return outs, [layout, layout]


def _matmul(ctx: PadContext, node: Node, inputs: list[Value]) -> tuple[Sequence[Value], Sequence[Layout]]:
    """matmul/dot: zero both operands along a padded contraction axis (both: 0 * inf is NaN)."""
    a, b = inputs
    la, lb = ctx.layout(a), ctx.layout(b)
    ka = a.type.rank - 1
    kb = b.type.rank - 2 if b.type.rank >= 2 else 0
    if _has_padded(la[ka], ctx.padded) or _has_padded(lb[kb], ctx.padded):
        if la[ka] != lb[kb]:
            syms = _padded_syms(la, ctx.padded, [ka]) | _padded_syms(lb, ctx.padded, [kb])
            raise UnpaddableError(syms, f"{node.op}: contraction axes laid out differently ({la[ka]} vs {lb[kb]})")
        a, b = ctx.masked(a, (ka,), 0), ctx.masked(b, (kb,), 0)
    outs = ctx.copy(node, [a, b])
    out = outs[0].type
    if node.op == "dot":
        return outs, [()]
    batch_a, batch_b = la[:-2], lb[:-2]
    n_batch = out.rank - (1 if a.type.rank >= 2 else 0) - (1 if b.type.rank >= 2 else 0)
    batch_t = TensorType(out.shape[:n_batch], out.dtype)
    batch = _broadcast_layout([batch_a, batch_b], [TensorType(a.type.shape[:len(batch_a)], a.type.dtype),
                                                   TensorType(b.type.shape[:len(batch_b)], b.type.dtype)],
                              batch_t, ctx.padded, node.op)
    rows: Layout = (la[-2],) if a.type.rank >= 2 else ()
    cols: Layout = (lb[-1],) if b.type.rank >= 2 else ()
    return outs, [batch + rows + cols]


def _transpose(ctx: PadContext, node: Node, inputs: list[Value]) -> tuple[Sequence[Value], Sequence[Layout]]:
    axes = node.attrs["axes"]
    assert isinstance(axes, tuple)
    layout = ctx.layout(inputs[0])
    return ctx.copy(node, inputs), [tuple(layout[int(a)] for a in axes)]


def _reshape(ctx: PadContext, node: Node, inputs: list[Value]) -> tuple[Sequence[Value], Sequence[Layout]]:
    """Regroup the row-major factors of the input into the output dims (merge, or split static)."""
    (x,) = inputs
    outs = ctx.copy(node, inputs)
    flat = [f for axis in ctx.layout(x) for f in axis if f != 1]
    syms = _padded_syms(ctx.layout(x), ctx.padded)
    out_layout: list[Factors] = []
    pos = 0
    for dim in outs[0].type.shape:
        if dim == 1:
            out_layout.append((1,))
            continue
        group: list[Dim] = []
        while dims_product(group) != dim:
            if pos >= len(flat):
                raise UnpaddableError(syms, f"reshape {x.type} -> {outs[0].type} regroups a padded axis")
            f = flat[pos]
            rest = dim_eval(dims_product(group), {})
            if isinstance(f, int) and isinstance(rest, int) and isinstance(dim, int) and f * rest > dim \
                    and dim % rest == 0 and f % (dim // rest) == 0:
                # split a static factor: take what this dim needs, leave the rest
                need = dim // rest
                group.append(need)
                flat[pos] = f // need
                continue
            group.append(f)
            pos += 1
            total = dims_product(group)
            if isinstance(total, int) and isinstance(dim, int) and total > dim:
                raise UnpaddableError(syms, f"reshape {x.type} -> {outs[0].type} splits a padded axis")
        if _has_padded(tuple(group), ctx.padded) or len(group) > 1:
            out_layout.append(tuple(group))
        else:
            out_layout.append((dim,))
    if pos != len(flat) and any(f != 1 for f in flat[pos:]):
        raise UnpaddableError(syms, f"reshape {x.type} -> {outs[0].type} regroups a padded axis")
    return outs, [tuple(out_layout)]


def _expand_dims(ctx: PadContext, node: Node, inputs: list[Value]) -> tuple[Sequence[Value], Sequence[Layout]]:
    axis = node.attrs["axis"]
    assert isinstance(axis, int)
    layout = list(ctx.layout(inputs[0]))
    layout.insert(axis, (1,))
    return ctx.copy(node, inputs), [tuple(layout)]


def _squeeze(ctx: PadContext, node: Node, inputs: list[Value]) -> tuple[Sequence[Value], Sequence[Layout]]:
    axes = node.attrs["axes"]
    assert isinstance(axes, tuple)
    layout = tuple(f for i, f in enumerate(ctx.layout(inputs[0])) if i not in axes)
    return ctx.copy(node, inputs), [layout]


def _broadcast_to(ctx: PadContext, node: Node, inputs: list[Value]) -> tuple[Sequence[Value], Sequence[Layout]]:
    (x,) = inputs
    outs = ctx.copy(node, inputs)
    out = outs[0].type
    layout = ctx.layout(x)
    new: list[Factors] = []
    for i, dim in enumerate(out.shape):
        j = i - (out.rank - x.type.rank)
        if j >= 0 and x.type.shape[j] != 1:
            new.append(layout[j])
        else:  # broadcast copies: the same value everywhere, valid wherever the dim is
            new.append(axis_factors(dim, ctx.padded))
    return outs, [tuple(new)]


def _axis_attr(node: Node) -> int:
    axis = node.attrs["axis"]
    assert isinstance(axis, int)
    return axis


def _single_padded(factors: Factors, padded: Collection[str]) -> bool:
    return len(factors) == 1 and _is_padded_factor(factors[0], padded) is not None


def _concatenate(ctx: PadContext, node: Node, inputs: list[Value]) -> tuple[Sequence[Value], Sequence[Layout]]:
    """Along a padded axis only the last operand may be padded (its garbage stays at the end)."""
    axis = _axis_attr(node)
    outs = ctx.copy(node, inputs)
    out = outs[0].type
    layouts = [ctx.layout(v) for v in inputs]
    along = [lay[axis] for lay in layouts]
    syms = {s for lay in layouts for s in _padded_syms(lay, ctx.padded, [axis])}
    if syms and (any(_has_padded(f, ctx.padded) for f in along[:-1]) or not _single_padded(along[-1], ctx.padded)):
        raise UnpaddableError(syms, f"concatenate along padded axis {axis} would put padding in the middle")
    axes: list[Factors] = []
    for i in range(out.rank):
        if i == axis:
            axes.append((out.shape[i],))
            continue
        cands = [(v.type.shape[i], lay[i]) for v, lay in zip(inputs, layouts, strict=True)]
        axes.append(_merge_axis(cands, out.shape[i], ctx.padded, node.op))
    return outs, [tuple(axes)]


def _split(ctx: PadContext, node: Node, inputs: list[Value]) -> tuple[Sequence[Value], Sequence[Layout]]:
    (x,) = inputs
    axis = _axis_attr(node)
    layout = ctx.layout(x)
    outs = ctx.copy(node, inputs)
    if _has_padded(layout[axis], ctx.padded):
        syms = _padded_syms(layout, ctx.padded, [axis])
        if not _single_padded(layout[axis], ctx.padded) or any(
                not isinstance(v.type.shape[axis], int) for v in outs[:-1]):
            raise UnpaddableError(syms, f"split along padded axis {axis} of {x.type} cuts into the padding")
    return outs, [tuple(axis_factors(v.type.shape[i], ctx.padded) if i == axis else f
                        for i, f in enumerate(layout)) for v in outs]


def _slice(ctx: PadContext, node: Node, inputs: list[Value]) -> tuple[Sequence[Value], Sequence[Layout]]:
    """Slices keep a padded axis' real part a prefix when they start at a static offset with step 1."""
    (x,) = inputs
    start, stop, step = node.attrs["start"], node.attrs["stop"], node.attrs["step"]
    assert isinstance(start, tuple) and isinstance(stop, tuple) and isinstance(step, tuple)
    outs = ctx.copy(node, inputs)
    layout: list[Factors] = []
    for i, factors in enumerate(ctx.layout(x)):
        dim = outs[0].type.shape[i]
        if not _has_padded(factors, ctx.padded):
            layout.append((dim,) if dim != x.type.shape[i] else factors)
            continue
        syms = _padded_syms(ctx.layout(x), ctx.padded, [i])
        if start[i] == 0 and stop[i] == x.type.shape[i] and step[i] == 1:
            layout.append(factors)
        elif len(factors) == 1 and isinstance(start[i], int) and step[i] == 1:
            layout.append(axis_factors(dim, ctx.padded))
        else:
            raise UnpaddableError(syms, f"slice {start[i]}:{stop[i]}:{step[i]} of padded axis {i} of {x.type}")
    return outs, [tuple(layout)]


def _pad(ctx: PadContext, node: Node, inputs: list[Value]) -> tuple[Sequence[Value], Sequence[Layout]]:
    (x,) = inputs
    lo, hi = node.attrs["lo"], node.attrs["hi"]
    assert isinstance(lo, tuple) and isinstance(hi, tuple)
    outs = ctx.copy(node, inputs)
    layout: list[Factors] = []
    for i, factors in enumerate(ctx.layout(x)):
        dim = outs[0].type.shape[i]
        if not _has_padded(factors, ctx.padded):
            layout.append((dim,) if lo[i] or hi[i] else factors)
        elif len(factors) == 1 and hi[i] == 0:
            layout.append((dim,))
        else:
            raise UnpaddableError(_padded_syms(ctx.layout(x), ctx.padded, [i]),
                             f"pad after padded axis {i} of {x.type} lands inside the bucket's padding")
    return outs, [tuple(layout)]


def _unpadded_axes_only(param: str) -> PadRule:
    """flip/repeat/tile/take: fine on other axes, not along a padded one."""

    def rule(ctx: PadContext, node: Node, inputs: list[Value]) -> tuple[Sequence[Value], Sequence[Layout]]:
        x = inputs[0]
        layout = ctx.layout(x)
        value = node.attrs[param]
        if param == "reps":
            assert isinstance(value, tuple)
            touched = [i for i, r in enumerate(value) if r != 1]
        elif isinstance(value, tuple):
            touched = [int(a) for a in value]
        else:
            assert isinstance(value, int)
            touched = [_axis_attr(node)]
        syms = _padded_syms(layout, ctx.padded, touched)
        if syms:
            raise UnpaddableError(syms, f"{node.op} along a padded axis of {x.type} moves the padding")
        outs = ctx.copy(node, inputs)
        if node.op == "take":
            axis = _axis_attr(node)
            idx = ctx.layout(inputs[1])
            return outs, [layout[:axis] + idx + layout[axis + 1:]]
        return outs, [tuple((d,) if i in touched else f
                            for i, (f, d) in enumerate(zip(layout, outs[0].type.shape, strict=True)))]

    return rule


def _conv(ctx: PadContext, node: Node, inputs: list[Value]) -> tuple[Sequence[Value], Sequence[Layout]]:
    """Convolution: padded batch passes through; a padded spatial axis (stride 1) is zeroed, as the
    real computation's own zero padding beyond the end."""
    x, w = inputs
    lx, lw = ctx.layout(x), ctx.layout(w)
    stride = node.attrs["stride"]
    assert isinstance(stride, tuple)
    bad = _padded_syms(lx, ctx.padded, [1]) | _padded_syms(lw, ctx.padded)
    spatial = [i for i in range(2, x.type.rank) if _has_padded(lx[i], ctx.padded)]
    for i in spatial:
        if stride[i - 2] != 1 or not _single_padded(lx[i], ctx.padded):
            bad |= _padded_syms(lx, ctx.padded, [i])
    if bad:
        raise UnpaddableError(bad, f"{node.op} mixes a padded channel, weight, or strided spatial axis")
    outs = ctx.copy(node, [ctx.masked(x, spatial, 0), w])
    out = outs[0].type
    layout = (lx[0], (out.shape[1],), *(axis_factors(d, ctx.padded) for d in out.shape[2:]))
    return outs, [layout]


# --- the table -------------------------------------------------------------------------------------

PAD_RULES: dict[str, PadRule] = {
    "sum": _masking_reduce(lambda _t: 0),
    "prod": _masking_reduce(lambda _t: 1),
    "max": _masking_reduce(_lowest),
    "min": _masking_reduce(_highest),
    "any": _masking_reduce(lambda _t: False),
    "all": _masking_reduce(lambda _t: True),
    "argmax": _masking_reduce(_lowest),
    "argmin": _masking_reduce(_highest),
    "mean": _mean,
    "var": _var,
    "softmax": _softmax,
    "topk": _topk,
    "matmul": _matmul,
    "dot": _matmul,
    "transpose": _transpose,
    "reshape": _reshape,
    "expand_dims": _expand_dims,
    "squeeze": _squeeze,
    "broadcast_to": _broadcast_to,
    "concatenate": _concatenate,
    "split": _split,
    "slice": _slice,
    "pad": _pad,
    "flip": _unpadded_axes_only("axes"),
    "repeat": _unpadded_axes_only("repeats"),
    "tile": _unpadded_axes_only("reps"),
    "take": _unpadded_axes_only("axis"),
    "conv1d": _conv,
    "conv2d": _conv,
    "where": _positionwise,
    "astype": _positionwise,
    "tril": _positionwise,
    "triu": _positionwise,
    "all_reduce": _positionwise,
    "constant": _creation,
    "dim_value": _dim_value,
    "full": _creation,
    "zeros": _creation,
    "iota": _creation,
    "arange": _creation,
}
"""Op name → padding rule; also installed as ``OpDef.extra["pad"]``. Ops absent here (gathers,
scatters, dynamic slices, most collectives) make any padded symbol they touch exact."""


def _install() -> None:
    for name, opdef in all_ops().items():
        rule = PAD_RULES.get(name)
        if rule is None and opdef.category in ("unary", "binary"):
            rule = _positionwise
        if rule is not None:
            opdef.extra["pad"] = rule


_install()


# --- the pass ----------------------------------------------------------------------------------------


def _rewrite(graph: Graph, padded: frozenset[str]) -> PaddedGraph:
    ctx = PadContext(graph, padded)
    env: dict[int, Value] = {}
    for value in graph.inputs:
        new = ctx.graph.add_input(value.name, value.type, exact=True)
        ctx.layouts[id(new)] = _fresh_layout(value.type, padded)
        env[id(value)] = new
    for node in graph.nodes:
        ctx.node = node
        inputs = [env[id(v)] for v in node.inputs]
        rule: PadRule | None = get_op(node.op).extra.get("pad")
        if rule is None:
            touched = {s for v in inputs for s in _padded_syms(ctx.layout(v), padded)}
            touched |= {s for v in node.outputs for d in v.type.shape for s in dim_symbols(d) & padded}
            if touched:
                raise UnpaddableError(touched, f"op '{node.op}' has no padding rule ({node.describe()})")
            outs: Sequence[Value] = ctx.copy(node, inputs)
            layouts: Sequence[Layout] = [_fresh_layout(v.type, padded) for v in outs]
        else:
            try:
                outs, layouts = rule(ctx, node, inputs)
            except UnpaddableError as exc:
                raise UnpaddableError(exc.symbols, f"{exc.reason} ({node.describe()})") from None
        for old, new, layout in zip(node.outputs, outs, layouts, strict=True):
            if new.type.shape != old.type.shape:
                raise IRError(f"padding rule of '{node.op}' changed {old.type} to {new.type}: a spiky-ir bug")
            env[id(old)] = new
            ctx.layouts[id(new)] = layout
    outputs = [env[id(v)] for v in graph.outputs]
    ctx.graph.set_outputs(outputs)
    return PaddedGraph(ctx.graph, padded, {}, list(ctx.lengths), [ctx.layout(v) for v in outputs])


def pad_graph(graph: Graph, symbols: Collection[str]) -> PaddedGraph:
    """Decide which of ``symbols`` may be padded in ``graph`` and rewrite it so that they can.

    Symbols for which some op has no (applicable) padding rule move to ``exact``, with the
    reason; the rewrite is redone without them until it succeeds.
    """
    padded = frozenset(symbols)
    exact: dict[str, str] = {}
    while True:
        try:
            result = _rewrite(graph, padded)
        except UnpaddableError as exc:
            culprits = exc.symbols & padded
            if not culprits:  # cannot happen: every UnpaddableError names padded symbols
                raise IRError(f"padding analysis blamed no padded symbol: {exc.reason}") from None
            for sym in sorted(culprits):
                exact.setdefault(sym, exc.reason)
            padded -= culprits
            continue
        result.exact = exact
        return result


def _real_shape(layout: Layout, padded: Collection[str], lengths: Mapping[str, int],
                buckets: Mapping[str, int]) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    real: list[int] = []
    factor_shape: list[int] = []
    composite = False
    for factors in layout:
        axis_real = 1
        for f in factors:
            bucket = dim_eval(f, buckets)
            assert isinstance(bucket, int)
            sym = _is_padded_factor(f, padded)
            size = dim_eval(f, lengths) if sym else bucket
            assert isinstance(size, int)
            axis_real *= size
            factor_shape.append(bucket)
        composite = composite or len(factors) > 1
        real.append(axis_real)
    return tuple(real), (tuple(factor_shape) if composite else None)


def unpad(array: Any, layout: Layout, padded: Collection[str], lengths: Mapping[str, int],
          buckets: Mapping[str, int]) -> Any:
    """Crop a bucket-sized output (numpy array) to its real region, axis factors included."""
    real, factor_shape = _real_shape(layout, padded, lengths, buckets)
    if tuple(array.shape) == real:
        return array
    if factor_shape is None:
        return array[tuple(slice(0, n) for n in real)]
    split = array.reshape(factor_shape)
    index: list[slice] = []
    for factors in layout:
        for f in factors:
            sym = _is_padded_factor(f, padded)
            size = dim_eval(f, lengths if sym else buckets)
            assert isinstance(size, int)
            index.append(slice(0, size))
    return np.ascontiguousarray(split[tuple(index)]).reshape(real)


__all__ = ["PAD_RULES", "Layout", "PadContext", "PadRule", "PaddedGraph", "UnpaddableError", "axis_factors",
           "pad_graph", "unpad"]
