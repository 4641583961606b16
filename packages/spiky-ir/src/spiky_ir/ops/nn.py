"""Neural-network ops that are more than a reduction: softmax, sort and topk.

Each op with all of its rules side by side: shape/dtype rule and numpy reference
(:func:`define_op`), HLO rule, padding rule, kernel-source rule. The numpy functions
:func:`softmax`, :func:`sort_order`, :func:`sort` and :func:`topk` serve the reference and are
copied into kernel source.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from spiky_ir.dtypes import DType
from spiky_ir.errors import ShapeError
from spiky_ir.hlo import schema as s
from spiky_ir.hlo.builder import ComputationBuilder, HloValue, array_shape, tuple_shape
from spiky_ir.hlo.rules import BOOL, F32, I64, HloContext, hlo_rule, reduce_to, widen
from spiky_ir.ir import Node, Value
from spiky_ir.kernel_source import KernelEmitter, kernel_helper, kernel_rule
from spiky_ir.padding import Layout, PadContext, highest, lowest, pad_rule
from spiky_ir.plan import Kernel, as_type, plan_rule
from spiky_ir.registry import Array, attr_bool, attr_int, cast, check_axis, define_op, dtype_of, to_float
from spiky_ir.types import Attr, TensorType

PadResult = tuple[Sequence[Value], Sequence[Layout]]


# --- softmax ---------------------------------------------------------------------------------------


def _softmax_type(types: Sequence[TensorType], attrs: Mapping[str, Attr]) -> list[TensorType]:
    check_axis(attr_int(attrs, "axis"), types[0].rank, "softmax")
    return [TensorType(types[0].shape, to_float(types[0].dtype))]


def softmax(x: Array, axis: int) -> Array:
    """Numerically stable softmax (subtracts the max first)."""
    shifted = x - np.max(x, axis=axis, keepdims=True)
    e = np.exp(shifted)
    return e / np.sum(e, axis=axis, keepdims=True)  # type: ignore[no-any-return]


def _softmax_reference(xs: Sequence[Array], attrs: Mapping[str, Attr]) -> list[Array]:
    out = to_float(dtype_of(xs[0]))
    with np.errstate(all="ignore"):
        return [cast(softmax(cast(xs[0], widen(out)), attr_int(attrs, "axis")), out)]


define_op("softmax", "nn", 1, {"axis": "int"}, _softmax_type, _softmax_reference, "stable softmax along ``axis``")


@plan_rule("softmax")
def _softmax_plan(node: Node) -> Kernel:
    out = node.output.type.dtype
    compute, axis, result = widen(out).to_numpy(), attr_int(node.attrs, "axis"), as_type(out.to_numpy())
    max_, sum_, exp = np.maximum.reduce, np.add.reduce, np.exp

    def kernel(xs: Sequence[Array], _attrs: Mapping[str, Attr]) -> list[Array]:
        x = xs[0].astype(compute, copy=False)
        e = exp(x - max_(x, axis=axis, keepdims=True))
        return [result(e / sum_(e, axis=axis, keepdims=True))]

    return kernel


@hlo_rule("softmax")
def _softmax_hlo(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    out, dims = ctx.result_type()
    b, axis = ctx.b, ctx.int_attr("axis")
    x = b.convert(xs[0], widen(out))
    kept = [1 if i == axis else d for i, d in enumerate(dims)]
    peak = reduce_to(ctx, x, [axis], "max", kept)
    e = b.elementwise("exponential", [b.elementwise("subtract", [x, b.broadcast_to(peak, dims)])])
    total = reduce_to(ctx, e, [axis], "add", kept)
    return [b.convert(b.elementwise("divide", [e, b.broadcast_to(total, dims)]), out)]


@pad_rule("softmax")
def _softmax_pad(ctx: PadContext, node: Node, inputs: list[Value]) -> PadResult:
    """softmax: padded logits become -inf, so they get probability 0 and change no sum."""
    (x,) = inputs
    xf = ctx.astype(x, node.outputs[0].type.dtype)
    outs = ctx.copy(node, [ctx.masked(xf, (attr_int(node.attrs, "axis"),), float("-inf"), like=x)])
    return outs, [ctx.layout(inputs[0])]


kernel_helper(softmax)


@kernel_rule("softmax")
def _softmax_kernel(e: KernelEmitter, node: Node, args: list[str], attrs: Mapping[str, Attr]) -> str:
    out = node.output.type.dtype
    x = e.cast(args[0], node.inputs[0].type.dtype, widen(out))
    return e.cast(f"{e.function(softmax)}({x}, {attrs['axis']})", widen(out), out)


# --- sort, topk: one ordering ------------------------------------------------------------------------
#
# Both order values as torch does: stable (equal values keep their index order), NaN above every
# number (last ascending, first descending). topk is the first k of that sort (descending for the
# largest, ascending for the smallest), which is also what torch returns, ties aside: torch does not
# promise an order among equal values in topk, we keep index order.


def sort_order(x: Array, axis: int, descending: bool) -> Array:
    """Indices that sort ``x`` along ``axis``: stable, NaN last ascending and first descending."""
    if x.dtype.kind not in "biuf":
        x = x.astype(np.float32)  # bfloat16: exact in float32, which every numpy can compare
    if not descending:
        return np.argsort(x, axis=axis, kind="stable")
    if x.dtype.kind == "f":
        return np.lexsort((-x, ~np.isnan(x)), axis=axis)
    if x.dtype.kind == "b":
        x = x.astype(np.int8)
    return np.argsort(~x, axis=axis, kind="stable")  # ~x = -1 - x reverses the order of any int, no overflow


def topk(x: Array, k: int, axis: int, largest: bool) -> tuple[Array, Array]:
    """Top ``k`` values and their int64 indices along ``axis``, in sort order."""
    idx = np.take(sort_order(x, axis, largest), np.arange(k), axis=axis).astype(np.int64)
    return np.take_along_axis(x, idx, axis=axis), idx


def sort(x: Array, axis: int, descending: bool) -> tuple[Array, Array]:
    """Sorted values and their int64 indices along ``axis`` (stable, torch's NaN order)."""
    idx = sort_order(x, axis, descending).astype(np.int64)
    return np.take_along_axis(x, idx, axis=axis), idx


def _topk_type(types: Sequence[TensorType], attrs: Mapping[str, Attr]) -> list[TensorType]:
    t, k = types[0], attr_int(attrs, "k")
    axis = check_axis(attr_int(attrs, "axis"), t.rank, "topk")
    size = t.shape[axis]
    if isinstance(size, int) and not 0 <= k <= size:
        raise ShapeError(f"topk k={k} is outside 0..{size} for {t}")
    shape = (*t.shape[:axis], k, *t.shape[axis + 1:])
    return [TensorType(shape, t.dtype), TensorType(shape, DType.int64)]


def _sort_type(types: Sequence[TensorType], attrs: Mapping[str, Attr]) -> list[TensorType]:
    t = types[0]
    check_axis(attr_int(attrs, "axis"), t.rank, "sort")
    return [t, TensorType(t.shape, DType.int64)]


define_op("topk", "nn", 1, {"k": "int", "axis": "int", "largest": "bool"}, _topk_type,
          lambda xs, attrs: list(topk(xs[0], attr_int(attrs, "k"), attr_int(attrs, "axis"),
                                      attr_bool(attrs, "largest"))),
          "the k largest (or smallest) values along ``axis`` and their int64 indices, in sort order")
define_op("sort", "nn", 1, {"axis": "int", "descending": "bool"}, _sort_type,
          lambda xs, attrs: list(sort(xs[0], attr_int(attrs, "axis"), attr_bool(attrs, "descending"))),
          "stable sort along ``axis``: values and their int64 indices (NaN last ascending, first descending)")


def _comparator(b: ComputationBuilder, key_type: DType, descending: bool) -> s.Computation:
    """``lhs`` sorts before ``rhs``: a strict weak order on (key, index) pairs that puts NaN above
    every number; the index parameters only ride along (the sort is stable)."""
    cached = b.module.extra_computations.get(("sort_descending" if descending else "sort_ascending", key_type))
    if cached is not None:
        return cached
    c = ComputationBuilder(b.module, f"{'descending' if descending else 'ascending'}_{key_type.value}")
    lhs, rhs = c.parameter(0, key_type, (), "lhs"), c.parameter(1, key_type, (), "rhs")
    c.parameter(2, I64, (), "lhs_index")
    c.parameter(3, I64, (), "rhs_index")
    before = c.compare("GT" if descending else "LT", lhs, rhs)
    if key_type.is_floating:
        first, second = (lhs, rhs) if descending else (rhs, lhs)  # the NaN one goes first (last)
        nan_first = c.elementwise("and", [c.compare("NE", first, first),
                                          c.elementwise("not", [c.compare("NE", second, second)])])
        before = c.elementwise("or", [before, nan_first])
    built = c.finish(before)
    b.module.reducers.append(built)
    b.module.extra_computations[("sort_descending" if descending else "sort_ascending", key_type)] = built
    return built


def _sorted(ctx: HloContext, x: HloValue, axis: int, descending: bool) -> tuple[HloValue, HloValue]:
    """(values, int64 indices) of ``x`` sorted along ``axis`` by one stable HLO ``sort``."""
    b = ctx.b
    key_type = F32 if x.dtype is BOOL else widen(x.dtype)  # exact: half types and bools round-trip
    keys = b.convert(x, key_type)
    index = b.iota(I64, x.dims, axis)
    shape = tuple_shape([array_shape(key_type, x.dims), array_shape(I64, x.dims)])
    ordered = b.add("sort", [keys, index], shape, dimensions=[axis], is_stable=True,
                    called_computation_ids=[_comparator(b, key_type, descending).id])
    return b.convert(b.get_tuple_element(ordered, 0), x.dtype), b.get_tuple_element(ordered, 1)


@hlo_rule("sort")
def _sort_hlo(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    return list(_sorted(ctx, xs[0], ctx.int_attr("axis"), bool(node.attrs["descending"])))


@hlo_rule("topk")
def _topk_hlo(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    """The first k of the sort (descending for the largest)."""
    x, axis, k = xs[0], ctx.int_attr("axis"), ctx.int_attr("k")
    values, indices = _sorted(ctx, x, axis, bool(node.attrs["largest"]))
    limit = [k if i == axis else d for i, d in enumerate(x.dims)]
    zero, one = [0] * x.rank, [1] * x.rank
    return [ctx.b.slice(values, zero, limit, one), ctx.b.slice(indices, zero, limit, one)]


def _sort_fill(dtype: DType, descending: bool) -> bool | int | float:
    """A value every real value sorts before, ties kept in index order: the lowest descending, NaN
    ascending (NaN sorts above every number, +inf included)."""
    if descending:
        return lowest(dtype)
    return float("nan") if dtype.is_floating else highest(dtype)


@pad_rule("topk")
def _topk_pad(ctx: PadContext, node: Node, inputs: list[Value]) -> PadResult:
    """topk: padded entries sort after every real one (after the axis is linearized when it
    reorders, so that indices are real positions); the result axis is k, unpadded."""
    (x,) = inputs
    axis, k = attr_int(node.attrs, "axis"), attr_int(node.attrs, "k")
    fill = _sort_fill(x.type.dtype, bool(node.attrs["largest"]))
    outs = ctx.copy(node, [ctx.linearized(x, axis, fill)])
    layout = tuple((k,) if i == axis else f for i, f in enumerate(ctx.layout(x)))
    return outs, [layout, layout]


@pad_rule("sort")
def _sort_pad(ctx: PadContext, node: Node, inputs: list[Value]) -> PadResult:
    """sort: padded entries sort after every real one, so the real sorted values (and their real
    indices) fill the real part of the axis; an axis that reorders is linearized first and the
    results put back in bucket positions."""
    (x,) = inputs
    axis = attr_int(node.attrs, "axis")
    factors = ctx.layout(x)[axis]
    fill = _sort_fill(x.type.dtype, bool(node.attrs["descending"]))
    values, indices = ctx.copy(node, [ctx.linearized(x, axis, fill)])
    outs = [ctx.delinearized(values, axis, factors), ctx.delinearized(indices, axis, factors)]
    return outs, [ctx.layout(x), ctx.layout(x)]


kernel_helper(sort_order)
kernel_helper(topk, deps=["sort_order"])
kernel_helper(sort, deps=["sort_order"])


kernel_rule("topk")(lambda e, _node, args, attrs:
                    f"{e.helper('topk')}({args[0]}, {attrs['k']}, {attrs['axis']}, {attrs['largest']})")
kernel_rule("sort")(lambda e, _node, args, attrs:
                    f"{e.helper('sort')}({args[0]}, {attrs['axis']}, {attrs['descending']})")
