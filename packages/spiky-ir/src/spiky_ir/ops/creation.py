"""Creation ops: constants, dense literals, filled tensors, index ramps, and the triangle masks tril/triu.

Each op with all of its rules side by side: shape/dtype rule and numpy reference
(:func:`define_op`), HLO rule, padding rule, kernel-source rule.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from spiky_ir.dtypes import DType
from spiky_ir.errors import ShapeError
from spiky_ir.hlo.builder import HloValue
from spiky_ir.hlo.rules import I64, HloContext, HloRule, hlo_rule, zero
from spiky_ir.ir import Node, Value
from spiky_ir.kernel_source import KernelEmitter, kernel_helper, kernel_rule, lit
from spiky_ir.padding import Layout, PadContext, creation, pad_rule, positionwise
from spiky_ir.registry import (
    Array,
    attr_dims,
    attr_dtype,
    attr_int,
    attr_shape,
    check_axis,
    define_op,
    scalar_array,
    static_dim,
)
from spiky_ir.symbolic import dim_symbols, to_poly
from spiky_ir.types import Attr, DenseArray, TensorType


def _scalar_type(_types: Sequence[TensorType], attrs: Mapping[str, Attr]) -> list[TensorType]:
    return [TensorType((), attr_dtype(attrs))]


def _shaped_type(_types: Sequence[TensorType], attrs: Mapping[str, Attr]) -> list[TensorType]:
    return [TensorType(attr_dims(attrs, "shape"), attr_dtype(attrs))]


def _scalar_source(e: KernelEmitter, node: Node, attrs: Mapping[str, Attr]) -> str:
    """The ``value`` attribute as a rank-0 array of the node's type, in kernel source."""
    return f"np.asarray({lit(attrs['value'])}).astype({e.dt(node.output.type.dtype)})"


# --- constant ---------------------------------------------------------------------------------

define_op("constant", "creation", 0, {"value": "scalar", "dtype": "dtype"}, _scalar_type,
          lambda _xs, attrs: [scalar_array(attrs["value"], attr_dtype(attrs))],
          "a rank-0 constant; broadcasting gives it any shape")


@hlo_rule("constant")
def _constant_hlo(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    dtype, dims = ctx.result_type()
    return [ctx.b.constant(node.attrs["value"], dtype, dims)]


pad_rule("constant")(creation)
kernel_rule("constant")(lambda e, node, _args, attrs: _scalar_source(e, node, attrs))


# --- literal ----------------------------------------------------------------------------------


def _dense(attrs: Mapping[str, Attr]) -> DenseArray:
    value = attrs["value"]
    assert isinstance(value, DenseArray)
    return value


define_op("literal", "creation", 0, {"value": "array"}, lambda _types, attrs: [_dense(attrs).type],
          lambda _xs, attrs: [_dense(attrs).to_numpy()],
          "a dense constant tensor (its data is an attribute: the graph's text and cache key hold it); "
          "e.g. a tensor constant lifted into an FX graph")


@hlo_rule("literal")
def _literal_hlo(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    dense = _dense(node.attrs)
    return [ctx.b.constant(dense.to_numpy(), dense.dtype, dense.shape)]


pad_rule("literal")(creation)


def _element_source(value: bool | int | float) -> str:
    if isinstance(value, float) and not np.isfinite(value):
        return f"float({str(value)!r})"
    return repr(value)


@kernel_rule("literal")
def _literal_kernel(e: KernelEmitter, node: Node, _args: list[str], attrs: Mapping[str, Attr]) -> str:
    """An ``np.array`` of the values: floats are written through float64 (exact for every
    IR float type), so the kernel holds the literal's values bit for bit (NaNs become the
    quiet NaN)."""
    dense = _dense(attrs)
    array = dense.to_numpy()
    python = array.astype(np.float64) if dense.dtype.is_floating else array
    values = ", ".join(_element_source(v) for v in python.reshape(-1).tolist())
    return f"np.array([{values}], dtype={e.dt(dense.dtype)}).reshape({lit(dense.shape)})"


# --- dim_value ----------------------------------------------------------------------------------

define_op("dim_value", "creation", 0, {"value": "dim", "dtype": "dtype"}, _scalar_type,
          lambda _xs, attrs: [scalar_array(static_dim(attrs["value"], "dim_value"), attr_dtype(attrs))],  # type: ignore[arg-type]
          "a size as a rank-0 tensor (e.g. the element count a mean divides by); symbolic until specialized")


@hlo_rule("dim_value")
def _dim_value_hlo(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    dtype, dims = ctx.result_type()
    value = node.attrs["value"]
    if not isinstance(value, int):
        raise ctx.fail(f"dim_value {value!r} is symbolic; specialize the graph before emitting HLO")
    return [ctx.b.constant(value, dtype, dims)]


@pad_rule("dim_value")
def _dim_value_pad(ctx: PadContext, node: Node, inputs: list[Value]) -> tuple[Sequence[Value], Sequence[Layout]]:
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


kernel_rule("dim_value")(lambda e, node, _args, attrs: _scalar_source(e, node, attrs))


# --- full, zeros --------------------------------------------------------------------------------

define_op("full", "creation", 0, {"shape": "dims", "value": "scalar", "dtype": "dtype"}, _shaped_type,
          lambda _xs, attrs: [np.full(attr_shape(attrs, "full"), scalar_array(attrs["value"], attr_dtype(attrs)))],
          "a tensor filled with one value")
define_op("zeros", "creation", 0, {"shape": "dims", "dtype": "dtype"}, _shaped_type,
          lambda _xs, attrs: [np.zeros(attr_shape(attrs, "zeros"), attr_dtype(attrs).to_numpy())],
          "a tensor of zeros")


@hlo_rule("full", "zeros")
def _full_hlo(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    dtype, dims = ctx.result_type()
    return [ctx.b.full(node.attrs.get("value", 0), dtype, dims)]


pad_rule("full", "zeros")(creation)


@kernel_rule("full")
def _full_kernel(e: KernelEmitter, node: Node, _args: list[str], attrs: Mapping[str, Attr]) -> str:
    return f"np.full({lit(attrs['shape'])}, {_scalar_source(e, node, attrs)})"


@kernel_rule("zeros")
def _zeros_kernel(e: KernelEmitter, node: Node, _args: list[str], attrs: Mapping[str, Attr]) -> str:
    return f"np.zeros({lit(attrs['shape'])}, {e.dt(node.output.type.dtype)})"


# --- iota -----------------------------------------------------------------------------------------


def _iota_type(types: Sequence[TensorType], attrs: Mapping[str, Attr]) -> list[TensorType]:
    shape = attr_dims(attrs, "shape")
    check_axis(attr_int(attrs, "axis"), len(shape), "iota")
    return [TensorType(shape, attr_dtype(attrs))]


def _iota_reference(_xs: Sequence[Array], attrs: Mapping[str, Attr]) -> list[Array]:
    shape, axis = attr_shape(attrs, "iota"), attr_int(attrs, "axis")
    line = np.arange(shape[axis]).reshape([-1 if i == axis else 1 for i in range(len(shape))])
    return [np.broadcast_to(line, shape).astype(attr_dtype(attrs).to_numpy())]


define_op("iota", "creation", 0, {"shape": "dims", "axis": "int", "dtype": "dtype"}, _iota_type, _iota_reference,
          "the index along ``axis`` at every position")


@hlo_rule("iota")
def _iota_hlo(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    dtype, dims = ctx.result_type()
    index = ctx.b.iota(I64, dims, ctx.int_attr("axis"))
    return [ctx.b.convert(index, dtype)]


pad_rule("iota")(creation)
kernel_helper('''
def iota(shape, axis, dtype):
    line = np.arange(shape[axis]).reshape([-1 if i == axis else 1 for i in range(len(shape))])
    return np.broadcast_to(line, shape).astype(dtype)
''', name="iota")


@kernel_rule("iota")
def _iota_kernel(e: KernelEmitter, node: Node, _args: list[str], attrs: Mapping[str, Attr]) -> str:
    return f"{e.helper('iota')}({lit(attrs['shape'])}, {attrs['axis']}, {e.dt(node.output.type.dtype)})"


# --- arange ----------------------------------------------------------------------------------------


def _arange_type(_types: Sequence[TensorType], attrs: Mapping[str, Attr]) -> list[TensorType]:
    size = attrs["size"]
    assert isinstance(size, int | str)
    return [TensorType((size,), attr_dtype(attrs))]


def _arange_reference(_xs: Sequence[Array], attrs: Mapping[str, Attr]) -> list[Array]:
    # torch computes start + i * step in double precision, then rounds once.
    size = static_dim(attrs["size"], "arange")  # type: ignore[arg-type]
    start, step = float(attrs["start"]), float(attrs["step"])  # type: ignore[arg-type]
    return [(start + np.arange(size, dtype=np.float64) * step).astype(attr_dtype(attrs).to_numpy())]


define_op("arange", "creation", 0, {"start": "scalar", "step": "scalar", "size": "dim", "dtype": "dtype"},
          _arange_type, _arange_reference, "``start + i * step`` for i in range(size)")


@hlo_rule("arange")
def _arange_hlo(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    # start + i * step in double precision, rounded once (as torch and the reference do)
    dtype, dims = ctx.result_type()
    b = ctx.b
    i = b.iota(DType.float64, dims, 0)
    step = b.full(float(node.attrs["step"]), DType.float64, dims)  # type: ignore[arg-type]
    start = b.full(float(node.attrs["start"]), DType.float64, dims)  # type: ignore[arg-type]
    return [b.convert(b.elementwise("add", [start, b.elementwise("multiply", [i, step])]), dtype)]


pad_rule("arange")(creation)


@kernel_rule("arange")
def _arange_kernel(e: KernelEmitter, node: Node, _args: list[str], attrs: Mapping[str, Attr]) -> str:
    start, step = float(attrs["start"]), float(attrs["step"])  # type: ignore[arg-type]
    return (f"({start!r} + np.arange({attrs['size']}, dtype=np.float64) * {step!r})"
            f".astype({e.dt(node.output.type.dtype)})")


# --- tril, triu ------------------------------------------------------------------------------------


def _triangle_type(types: Sequence[TensorType], _attrs: Mapping[str, Attr]) -> list[TensorType]:
    if types[0].rank < 2:
        raise ShapeError(f"tril/triu need rank >= 2, got {types[0]}")
    return [types[0]]


define_op("tril", "creation", 1, {"k": "int"}, _triangle_type,
          lambda xs, attrs: [np.tril(xs[0], attr_int(attrs, "k"))], "zero above diagonal k of the last two dims")
define_op("triu", "creation", 1, {"k": "int"}, _triangle_type,
          lambda xs, attrs: [np.triu(xs[0], attr_int(attrs, "k"))], "zero below diagonal k of the last two dims")


def _triangle_hlo(lower: bool) -> HloRule:
    def rule(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
        b, x = ctx.b, xs[0]
        rank = x.rank
        rows = b.iota(I64, x.dims, rank - 2)
        cols = b.iota(I64, x.dims, rank - 1)
        diag = b.elementwise("add", [rows, b.full(ctx.int_attr("k"), I64, x.dims)])
        keep = b.compare("LE" if lower else "GE", cols, diag)
        return [b.select(keep, x, zero(b, x))]

    return rule


hlo_rule("tril")(_triangle_hlo(lower=True))
hlo_rule("triu")(_triangle_hlo(lower=False))
pad_rule("tril", "triu")(positionwise)
kernel_rule("tril", "triu")(lambda _e, node, args, attrs: f"np.{node.op}({args[0]}, {attrs['k']})")
