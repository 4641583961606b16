"""Padding safety: run a symbolic graph on inputs padded to a bucket without changing any result.

A dynamic dim is served by compiling its graph at a bucket size and padding inputs up to it.
The rows of padding hold arbitrary values ("garbage"). Position-wise ops keep garbage in the
padded region, so the real region of their results is untouched; ops that *mix data along* a
padded dim (reductions, softmax, matmul contraction, norms via mean/var, topk, convolution
windows) would pull garbage in. :func:`pad_graph` rewrites such ops with the op's padding rule:
mask the padded region with the op's neutral value (0 for sum, 1 for prod, -inf for
max/softmax/topk, False for any, ...), divide by the real element count for mean/var, mask both
operands of a matmul contraction. The real lengths enter the graph as extra int64 scalar inputs
(``%len_s0``), one per padded symbol that needs one.

This module owns the padding-rule table (:data:`PAD_RULES`), the rewrite context rules build with
(:class:`PadContext`) and the rule builders families share (:func:`positionwise`,
:func:`masking_reduce`, ...). Each op's rule is written next to the op in :mod:`spiky_ir.ops` and
registered with :func:`pad_rule`; an op without one records why (``OpDef.no_rule["padding"]``).

Layouts: each value's axis is described by its *factors* in row-major order, e.g. a
``(s0, s1, 32)`` tensor reshaped to ``(s1*s0, 32)`` has axis 0 = ``(s0, s1)``. A padded
factor is ``s`` or ``s+c`` (one padded symbol, coefficient 1: its real part is a prefix of
length ``L+c``). The offset ``c`` may also be an expression over *exact* symbols, fixed within a
bucket: ``x[:, -s2:]`` with ``s2`` an int argument (transformers' ``logits_to_keep``) leaves an axis
``s1+s2`` whose real part is the prefix of length ``L+s2``. Layouts are tracked symbolically, so an
output whose size merely equals the bucket is never taken for a padded one.

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
from spiky_ir.ir import Graph, Node, Value
from spiky_ir.registry import RuleTable, get_op
from spiky_ir.symbolic import Dim, dim_eval, dim_sub, dim_symbols, to_poly
from spiky_ir.types import Attr, TensorType

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
    """The padded symbol of ``factor`` (which must be ``s+c``, ``c`` a constant or an expression over
    symbols that are not padded), or None for a plain factor."""
    if isinstance(factor, int):
        return None
    symbols = dim_symbols(factor) & set(padded)
    if not symbols:
        return None
    if len(symbols) == 1:
        (sym,) = symbols
        poly = to_poly(factor)
        if poly.get((sym,), 0) == 1 and all(term == (sym,) or sym not in term for term in poly):
            return sym
    raise UnpaddableError(symbols, f"dim {factor!r} is not a padded size plus an offset")


def axis_factors(dim: Dim, padded: Collection[str]) -> Factors:
    """The factors of a dim seen without history (a graph input, a creation op)."""
    _is_padded_factor(dim, padded)
    return (dim,)


def padded_syms(layout: Layout, padded: Collection[str], axes: Sequence[int] | None = None) -> set[str]:
    out: set[str] = set()
    for i, factors in enumerate(layout):
        if axes is None or i in axes:
            for f in factors:
                sym = _is_padded_factor(f, padded)
                if sym:
                    out.add(sym)
    return out


def has_padded(factors: Factors, padded: Collection[str]) -> bool:
    return any(_is_padded_factor(f, padded) for f in factors)


def merge_axis(candidates: Sequence[tuple[Dim, Factors]], out_dim: Dim, padded: Collection[str],
                what: str) -> Factors:
    """The layout of one broadcast axis from its operands' (dim, factors)."""
    chosen: Factors | None = None
    for dim, factors in candidates:
        if dim == 1 and out_dim != 1:
            continue
        if not has_padded(factors, padded):
            continue
        if chosen is not None and chosen != factors:
            syms = {s for f in chosen + factors if (s := _is_padded_factor(f, padded))}
            raise UnpaddableError(syms, f"{what}: operands lay out a padded axis differently ({chosen} vs {factors})")
        chosen = factors
    return chosen if chosen is not None else (out_dim,)


def broadcast_layout(layouts: Sequence[Layout], types: Sequence[TensorType], out: TensorType,
                      padded: Collection[str], what: str) -> Layout:
    rank = out.rank
    axes: list[Factors] = []
    for i in range(rank):
        cands: list[tuple[Dim, Factors]] = []
        for layout, t in zip(layouts, types, strict=True):
            j = i - (rank - t.rank)
            if j >= 0:
                cands.append((t.shape[j], layout[j]))
        axes.append(merge_axis(cands, out.shape[i], padded, what))
    return tuple(axes)


def fresh_layout(t: TensorType, padded: Collection[str]) -> Layout:
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
        """The real length of a padded factor ``s+c`` as an int64 scalar (``c`` over exact symbols:
        their bucket values, which are their real ones)."""
        sym = _is_padded_factor(factor, self.padded)
        assert sym is not None
        if sym not in self.lengths:
            self.lengths[sym] = self.graph.add_input(f"len_{sym}", TensorType((), DType.int64))
        offset = dim_sub(factor, sym)
        base = self.lengths[sym]
        return base if offset == 0 else self.op("add", base, self.size(offset))

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
            if not has_padded(factors, self.padded):
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
        return bool(padded_syms(self.layout(value), self.padded, axes))

    # -- positions along an axis: bucket order and real order --
    #
    # An axis with factors (f0, ..., fn) holds element (p0, ..., pn) at bucket position
    # sum(p_j * bucket stride_j) and, when every p_j is inside its real part, at real position
    # sum(p_j * real stride_j). The two agree (and the real elements form a prefix) unless a
    # factor after the first is padded: then the padding sits between real elements, and an
    # index into the axis means something else in each coordinate system.

    def reorders(self, factors: Factors) -> bool:
        """Whether bucket and real positions along an axis with ``factors`` differ: some factor
        after the first is padded (``(s0, s1)`` with s1 padded; not ``(s0, 4)``)."""
        return any(_is_padded_factor(f, self.padded) for f in factors[1:])

    def size(self, dim: Dim) -> Value:
        """A size as an int64 scalar; symbolic sizes are the bucket's (bound when specialized)."""
        if isinstance(dim, int):
            return self.const(dim, DType.int64)
        return self.op("dim_value", attrs={"value": dim, "dtype": DType.int64})

    def real_size(self, factor: Dim) -> Value:
        """The real size of one factor as an int64 scalar (at least 1, so that it may divide)."""
        if not _is_padded_factor(factor, self.padded):
            return self.size(factor)
        return self.op("maximum", self.length(factor), self.const(1, DType.int64))

    def real_count(self, factors: Factors) -> Value:
        """The number of real elements along an axis with ``factors`` (int64 scalar)."""
        total: Value | None = None
        for f in factors:
            term = self.real_size(f)
            total = term if total is None else self.op("multiply", total, term)
        return total if total is not None else self.const(1, DType.int64)

    def _convert_positions(self, factors: Factors, index: Value, to_real: bool) -> Value:
        """Digit by digit: split ``index`` into per-factor positions with one system's sizes and
        recombine them with the other's strides."""
        split = [self.real_size(f) if not to_real else self.size(f) for f in factors]
        join = [self.size(f) if not to_real else self.real_size(f) for f in factors]
        rest = index
        digits: list[Value] = []
        for j in range(len(factors) - 1, 0, -1):
            digits.append(self.op("remainder", rest, split[j]))
            rest = self.op("floor_divide", rest, split[j])
        digits.append(rest)
        digits.reverse()
        out = digits[-1]
        stride: Value | None = None
        for j in range(len(factors) - 2, -1, -1):
            stride = join[j + 1] if stride is None else self.op("multiply", stride, join[j + 1])
            out = self.op("add", out, self.op("multiply", digits[j], stride))
        return out

    def real_position(self, factors: Factors, index: Value) -> Value:
        """Bucket positions (int64 tensor ``index``) along an axis with ``factors`` → real positions.

        Exact for real elements; a padded element maps to some position not above its bucket
        position (so still a valid index into the axis)."""
        return self._convert_positions(factors, index, True) if self.reorders(factors) else index

    def bucket_position(self, factors: Factors, index: Value) -> Value:
        """Real positions (int64 tensor ``index``, each below the real count) → bucket positions."""
        return self._convert_positions(factors, index, False) if self.reorders(factors) else index

    def axis_iota(self, value: Value, axis: int) -> tuple[Value, tuple[int | str, ...]]:
        """Positions 0..n-1 along ``axis`` (1-D int64) and the shape that broadcasts a vector
        along ``axis`` against ``value``."""
        dim = value.type.shape[axis]
        iota = self.op("iota", attrs={"shape": (dim,), "axis": 0, "dtype": DType.int64})
        return iota, tuple(dim if i == axis else 1 for i in range(value.type.rank))

    def linearized(self, value: Value, axis: int, fill: bool | int | float) -> Value:
        """``value`` with its real elements along ``axis`` first, in real order, and ``fill`` after
        them: an axis whose real part is a prefix, so that ops which rank, scan or index along it
        (argmax, topk, sort, ...) see the real elements in real order and return real positions.

        Without a reordering factor this is just :meth:`masked`; otherwise a gather along the
        axis (real position j takes the element at bucket position ``bucket_position(j)``)."""
        factors = self.layout(value)[axis]
        if not self.reorders(factors):
            return self.masked(value, (axis,), fill)
        iota, shape = self.axis_iota(value, axis)
        count = self.real_count(factors)
        last = self.op("subtract", count, self.const(1, DType.int64))
        source = self.bucket_position(factors, self.op("minimum", iota, last))
        gathered = self.op("take", value, source, attrs={"axis": axis})
        inside = self.op("reshape", self.op("less", iota, count), attrs={"shape": shape})
        return self.op("where", inside, gathered, self.const(fill, value.type.dtype))

    def delinearized(self, value: Value, axis: int, factors: Factors) -> Value:
        """The inverse of :meth:`linearized` for a result of the same length along ``axis``:
        each real bucket position takes the element at its real position (padded positions
        take some element; they are padding)."""
        if not self.reorders(factors):
            return value
        iota, _shape = self.axis_iota(value, axis)
        return self.op("take", value, self.real_position(factors, iota), attrs={"axis": axis})


PadRule = Callable[[PadContext, Node, list[Value]], tuple[Sequence[Value], Sequence[Layout]]]
"""A padding rule: rewrite ``node`` on its new inputs; return its results and their layouts."""


# --- neutral values ------------------------------------------------------------------------------


def lowest(dtype: DType) -> bool | int | float:
    if dtype is DType.bool:
        return False
    if dtype.is_integer:
        return int(np.iinfo(dtype.to_numpy()).min)
    return float("-inf")


def highest(dtype: DType) -> bool | int | float:
    if dtype is DType.bool:
        return True
    if dtype.is_integer:
        return int(np.iinfo(dtype.to_numpy()).max)
    return float("inf")


# --- rules every op family uses -------------------------------------------------------------------


def positionwise(ctx: PadContext, node: Node, inputs: list[Value]) -> tuple[Sequence[Value], Sequence[Layout]]:
    """Elementwise ops (and where, astype, tril/triu): broadcast layouts, no masking needed."""
    outs = ctx.copy(node, inputs)
    layout = broadcast_layout([ctx.layout(v) for v in inputs], [v.type for v in inputs], outs[0].type,
                              ctx.padded, node.op)
    return outs, [layout]


def creation(ctx: PadContext, node: Node, inputs: list[Value]) -> tuple[Sequence[Value], Sequence[Layout]]:
    """Values that depend only on positions: valid wherever the real computation has them."""
    outs = ctx.copy(node, inputs)
    return outs, [fresh_layout(v.type, ctx.padded) for v in outs]


def axis_attr(node: Node) -> int:
    axis = node.attrs["axis"]
    assert isinstance(axis, int)
    return axis


def reduce_axes(node: Node) -> tuple[int, ...]:
    """The reduced axes of a reduction: its ``axes``, or its single ``axis`` (argmax, softmax)."""
    if "axes" in node.attrs:
        axes = node.attrs["axes"]
        assert isinstance(axes, tuple)
        return tuple(int(a) for a in axes)
    return (axis_attr(node),)


def reduced_layout(layout: Layout, axes: Sequence[int], keepdims: bool) -> Layout:
    if keepdims:
        return tuple((1,) if i in axes else f for i, f in enumerate(layout))
    return tuple(f for i, f in enumerate(layout) if i not in axes)


def masking_reduce(neutral: Callable[[DType], bool | int | float]) -> PadRule:
    """Reductions (sum, max, argmax, ...): pad with the op's neutral element, e.g. 0 for sum,
    :func:`lowest` for max."""

    def rule(ctx: PadContext, node: Node, inputs: list[Value]) -> tuple[Sequence[Value], Sequence[Layout]]:
        (x,) = inputs
        axes = reduce_axes(node)
        masked = ctx.masked(x, axes, neutral(x.type.dtype))
        outs = ctx.copy(node, [masked])
        return outs, [reduced_layout(ctx.layout(x), axes, bool(node.attrs["keepdims"]))]

    return rule


def not_along_padded(ctx: PadContext, node: Node, x: Value, axes: Sequence[int]) -> None:
    """Refuse ``node`` (flip, repeat, take, ...) when it works along a padded axis of ``x``: it
    would move the padding into the real region."""
    syms = padded_syms(ctx.layout(x), ctx.padded, axes)
    if syms:
        raise UnpaddableError(syms, f"{node.op} along a padded axis of {x.type} moves the padding")


def single_padded(factors: Factors, padded: Collection[str]) -> bool:
    """The axis is exactly one padded factor ``s+c`` (its real part is a prefix)."""
    return len(factors) == 1 and _is_padded_factor(factors[0], padded) is not None


# --- the table ---------------------------------------------------------------------------------------

PAD_RULES: RuleTable[PadRule] = RuleTable("padding")
"""Op name → padding rule, filled by the op families (:mod:`spiky_ir.ops`) as they are imported.
Ops without one record why in ``OpDef.no_rule["padding"]``; pad_graph makes any padded symbol
they touch exact."""
pad_rule = PAD_RULES.register
"""``@pad_rule("op", ...)`` registers the decorated function as the padding rule of each op."""


# --- the pass ----------------------------------------------------------------------------------------


def _rewrite(graph: Graph, padded: frozenset[str]) -> PaddedGraph:
    ctx = PadContext(graph, padded)
    env: dict[int, Value] = {}
    for value in graph.inputs:
        new = ctx.graph.add_input(value.name, value.type, exact=True)
        ctx.layouts[id(new)] = fresh_layout(value.type, padded)
        env[id(value)] = new
    for node in graph.nodes:
        ctx.node = node
        inputs = [env[id(v)] for v in node.inputs]
        rule = PAD_RULES.get(node.op)
        if rule is None:
            touched = {s for v in inputs for s in padded_syms(ctx.layout(v), padded)}
            touched |= {s for v in node.outputs for d in v.type.shape for s in dim_symbols(d) & padded}
            if touched:
                why = get_op(node.op).no_rule.get("padding", "it records no reason")
                raise UnpaddableError(touched, f"op '{node.op}' has no padding rule: {why} ({node.describe()})")
            outs: Sequence[Value] = ctx.copy(node, inputs)
            layouts: Sequence[Layout] = [fresh_layout(v.type, padded) for v in outs]
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
    lengths = {**buckets, **lengths}  # the symbols not padded have their bucket value as real size
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
    real_sizes = {**buckets, **lengths}
    for factors in layout:
        for f in factors:
            size = dim_eval(f, real_sizes if _is_padded_factor(f, padded) else buckets)
            assert isinstance(size, int)
            index.append(slice(0, size))
    return np.ascontiguousarray(split[tuple(index)]).reshape(real)


__all__ = [
    "PAD_RULES", "Factors", "Layout", "PadContext", "PadRule", "PaddedGraph", "UnpaddableError", "axis_attr",
    "axis_factors", "broadcast_layout", "creation", "fresh_layout", "has_padded", "highest", "lowest",
    "masking_reduce", "merge_axis", "not_along_padded", "pad_graph", "pad_rule", "padded_syms", "positionwise",
    "reduce_axes", "reduced_layout", "single_padded", "unpad",
]
