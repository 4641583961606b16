"""Neural-network ops that are more than a reduction: softmax and topk.

Each op with all of its rules side by side: shape/dtype rule and numpy reference
(:func:`define_op`), HLO rule, padding rule, kernel-source rule. The numpy functions
:func:`softmax` and :func:`topk` serve the reference and are copied into kernel source.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from spiky_ir.dtypes import DType
from spiky_ir.errors import ShapeError
from spiky_ir.hlo.builder import ComputationBuilder, HloValue, array_shape, tuple_shape
from spiky_ir.hlo.rules import BOOL, F32, I64, HloContext, hlo_rule, reduce_to, widen
from spiky_ir.ir import Node, Value
from spiky_ir.kernel_source import KernelEmitter, kernel_helper, kernel_rule
from spiky_ir.padding import Layout, PadContext, highest, lowest, pad_rule
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


# --- topk ------------------------------------------------------------------------------------------


def _topk_type(types: Sequence[TensorType], attrs: Mapping[str, Attr]) -> list[TensorType]:
    t, k = types[0], attr_int(attrs, "k")
    axis = check_axis(attr_int(attrs, "axis"), t.rank, "topk")
    size = t.shape[axis]
    if isinstance(size, int) and not 0 <= k <= size:
        raise ShapeError(f"topk k={k} is outside 0..{size} for {t}")
    shape = (*t.shape[:axis], k, *t.shape[axis + 1:])
    return [TensorType(shape, t.dtype), TensorType(shape, DType.int64)]


def topk(x: Array, k: int, axis: int, largest: bool) -> tuple[Array, Array]:
    """Top ``k`` values and their indices along ``axis``, sorted; ties keep index order."""
    key = x.astype(np.float64)
    order = np.argsort(-key if largest else key, axis=axis, kind="stable")
    idx = np.take(order, np.arange(k), axis=axis)
    return np.take_along_axis(x, idx, axis=axis), idx.astype(np.int64)


define_op("topk", "nn", 1, {"k": "int", "axis": "int", "largest": "bool"}, _topk_type,
          lambda xs, attrs: list(topk(xs[0], attr_int(attrs, "k"), attr_int(attrs, "axis"),
                                      attr_bool(attrs, "largest"))),
          "the k largest (or smallest) values along ``axis`` and their int64 indices")


@hlo_rule("topk")
def _topk_hlo(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    """A stable sort of (value, index) along the axis with a value comparator, then the first k."""
    b, x = ctx.b, xs[0]
    axis, k, largest = ctx.int_attr("axis"), ctx.int_attr("k"), bool(node.attrs["largest"])
    key_type = F32 if x.dtype is BOOL else widen(x.dtype)
    keys = b.convert(x, key_type)
    index = b.iota(I64, x.dims, axis)
    c = ComputationBuilder(b.module, f"{'greater' if largest else 'less'}_{key_type.value}_{b.module.new_id()}")
    lhs, rhs = c.parameter(0, key_type, (), "lhs"), c.parameter(1, key_type, (), "rhs")
    c.parameter(2, I64, (), "lhs_index")
    c.parameter(3, I64, (), "rhs_index")
    comparator = c.finish(c.compare("GT" if largest else "LT", lhs, rhs))
    b.module.reducers.append(comparator)
    shape = tuple_shape([array_shape(key_type, x.dims), array_shape(I64, x.dims)])
    ordered = b.add("sort", [keys, index], shape, dimensions=[axis], is_stable=True,
                    called_computation_ids=[comparator.id])
    limit = [k if i == axis else d for i, d in enumerate(x.dims)]
    zero, one = [0] * x.rank, [1] * x.rank
    values = b.slice(b.get_tuple_element(ordered, 0), zero, limit, one)
    indices = b.slice(b.get_tuple_element(ordered, 1), zero, limit, one)
    return [b.convert(values, x.dtype), indices]


@pad_rule("topk")
def _topk_pad(ctx: PadContext, node: Node, inputs: list[Value]) -> PadResult:
    """topk: padded entries rank last (-inf for largest, +inf for smallest); ties keep index order."""
    (x,) = inputs
    axis, k = attr_int(node.attrs, "axis"), attr_int(node.attrs, "k")
    fill = lowest(x.type.dtype) if node.attrs["largest"] else highest(x.type.dtype)
    outs = ctx.copy(node, [ctx.masked(x, (axis,), fill)])
    layout = tuple((k,) if i == axis else f for i, f in enumerate(ctx.layout(x)))
    return outs, [layout, layout]


kernel_helper(topk)
kernel_rule("topk")(lambda e, _node, args, attrs:
                    f"{e.function(topk)}({args[0]}, {attrs['k']}, {attrs['axis']}, {attrs['largest']})")
