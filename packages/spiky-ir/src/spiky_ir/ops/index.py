"""Selection and indexing: where, take, take_along_axis, scatter, scatter_add, dynamic_slice,
dynamic_update_slice.

Each op with all of its rules side by side: shape/dtype rule and numpy reference
(:func:`define_op`), HLO rule, padding rule (or the recorded reason it has none),
kernel-source rule.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from spiky_ir.dtypes import DType, promote
from spiky_ir.errors import ShapeError
from spiky_ir.hlo import schema as s
from spiky_ir.hlo.builder import ComputationBuilder, HloValue
from spiky_ir.hlo.rules import I64, HloContext, HloRule, hlo_rule, widen, zero
from spiky_ir.ir import Node, Value
from spiky_ir.kernel_source import KernelEmitter, input_types, kernel_helper, kernel_rule, lit
from spiky_ir.padding import (
    Layout,
    PadContext,
    UnpaddableError,
    axis_attr,
    not_along_padded,
    pad_rule,
    padded_syms,
    positionwise,
)
from spiky_ir.registry import (
    Array,
    attr_int,
    attr_ints,
    broadcast_shapes,
    cast,
    check_axis,
    define_op,
    dtype_of,
)
from spiky_ir.types import Attr, TensorType

_GATHERS_PADDING = ("indices may point into the padded region of the operand (padded along the gathered axis, or "
                    "elsewhere where the indices are not padded alike); the symbols it touches are compiled exactly")
_SCATTERS_PADDING = ("garbage indices in padded rows would write into the real region; the symbols it touches "
                     "are compiled exactly")
_CLAMPS_TO_BUCKET = ("run-time starts are clamped to the bucket's size, not the real one, so a window near the "
                     "end would reach into the padding; the symbols it touches are compiled exactly")


def _check_indices(t: TensorType, what: str) -> None:
    if not t.dtype.is_integer:
        raise ShapeError(f"{what} indices must be integers, got {t}")


def _wrapped(b: ComputationBuilder, idx: HloValue, size: int) -> HloValue:
    """Indices as int64 with negative ones wrapped (numpy's take/take_along_axis)."""
    idx = b.convert(idx, I64)
    negative = b.compare("LT", idx, zero(b, idx))
    return b.select(negative, b.elementwise("add", [idx, b.full(size, I64, idx.dims)]), idx)


# --- where ---------------------------------------------------------------------------------------


def _where_type(types: Sequence[TensorType], _attrs: Mapping[str, Attr]) -> list[TensorType]:
    cond, a, b = types
    if cond.dtype is not DType.bool:
        raise ShapeError(f"where condition must be bool, got {cond}")
    shape = broadcast_shapes(broadcast_shapes(cond.shape, a.shape), b.shape)
    return [TensorType(shape, promote(a.dtype, b.dtype))]


def _where_reference(xs: Sequence[Array], _attrs: Mapping[str, Attr]) -> list[Array]:
    out = promote(dtype_of(xs[1]), dtype_of(xs[2]))
    return [np.where(xs[0], cast(xs[1], out), cast(xs[2], out))]


define_op("where", "indexing", 3, {}, _where_type, _where_reference,
          "select ``a`` where ``cond`` else ``b`` (broadcasting)")


@hlo_rule("where")
def _where_hlo(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    dtype, dims = ctx.result_type()
    b = ctx.b
    cond = b.broadcast_to(xs[0], dims)
    return [b.select(cond, b.coerce(xs[1], dtype, dims), b.coerce(xs[2], dtype, dims))]


pad_rule("where")(positionwise)


@kernel_rule("where")
def _where_kernel(e: KernelEmitter, node: Node, args: list[str], _attrs: Mapping[str, Attr]) -> str:
    out = node.output.type.dtype
    a, b = (e.cast(x, t, out) for x, t in zip(args[1:], input_types(node)[1:], strict=True))
    return f"np.where({args[0]}, {a}, {b})"


# --- take ------------------------------------------------------------------------------------------


def _take_type(types: Sequence[TensorType], attrs: Mapping[str, Attr]) -> list[TensorType]:
    x, idx = types
    axis = check_axis(attr_int(attrs, "axis"), x.rank, "take")
    _check_indices(idx, "take")
    return [TensorType(x.shape[:axis] + idx.shape + x.shape[axis + 1:], x.dtype)]


define_op("take", "indexing", 2, {"axis": "int"}, _take_type,
          lambda xs, attrs: [np.take(xs[0], xs[1], axis=attr_int(attrs, "axis"))],
          "``np.take``: rows of ``axis`` picked by an index tensor (negative indices wrap)")


@hlo_rule("take")
def _take_hlo(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    b, x = ctx.b, xs[0]
    axis = ctx.int_attr("axis")
    _, dims = ctx.result_type()
    idx = _wrapped(b, xs[1], x.dims[axis])
    n_idx = idx.rank
    numbers = s.GatherDimensionNumbers(
        offset_dims=[*range(axis), *range(axis + n_idx, n_idx + x.rank - 1)],
        collapsed_slice_dims=[axis], start_index_map=[axis], index_vector_dim=n_idx,
    )
    sizes = [1 if i == axis else d for i, d in enumerate(x.dims)]
    return [b.op("gather", [x, idx], x.dtype, dims, gather_dimension_numbers=numbers, gather_slice_sizes=sizes)]


@pad_rule("take")
def _take_pad(ctx: PadContext, node: Node, inputs: list[Value]) -> tuple[Sequence[Value], Sequence[Layout]]:
    """Fine along other axes of the operand; the index tensor's layout replaces ``axis``."""
    x, idx = inputs
    axis = axis_attr(node)
    not_along_padded(ctx, node, x, [axis])
    layout = ctx.layout(x)
    return ctx.copy(node, inputs), [layout[:axis] + ctx.layout(idx) + layout[axis + 1:]]


kernel_rule("take")(lambda _e, _node, args, attrs: f"np.take({args[0]}, {args[1]}, axis={attrs['axis']})")


# --- take_along_axis, scatter, scatter_add --------------------------------------------------------------


def _along_type(types: Sequence[TensorType], attrs: Mapping[str, Attr]) -> list[TensorType]:
    x, idx = types[0], types[1]
    check_axis(attr_int(attrs, "axis"), x.rank, "take_along_axis")
    _check_indices(idx, "take_along_axis")
    if idx.rank != x.rank:
        raise ShapeError(f"indices {idx} must have the rank of {x}")
    if len(types) == 3 and types[2].rank != x.rank:
        raise ShapeError(f"updates {types[2]} must have the rank of {x}")
    return [TensorType(idx.shape, x.dtype)] if len(types) == 2 else [x]


def _crop(x: Array, shape: Sequence[int], skip: int | None = None) -> Array:
    return x[tuple(slice(None) if i == skip else slice(0, s) for i, s in enumerate(shape))]


def _scatter_index(idx: Array, axis: int) -> tuple[Array, ...]:
    grid: list[Array] = list(np.indices(idx.shape, sparse=True))
    grid[axis] = idx
    return tuple(np.broadcast_arrays(*grid))


def _full_indices(b: ComputationBuilder, idx: HloValue, axis: int) -> HloValue:
    """``idx.shape + [rank]`` coordinates: iotas on every dim except ``axis``, which takes ``idx``."""
    columns = []
    for dim in range(idx.rank):
        column = idx if dim == axis else b.iota(I64, idx.dims, dim)
        columns.append(b.reshape(column, (*idx.dims, 1)))
    if len(columns) == 1:
        return columns[0]
    return b.op("concatenate", columns, I64, (*idx.dims, idx.rank), dimensions=[idx.rank])


kernel_helper('''
def _crop(x, shape, skip=None):
    return x[tuple(slice(None) if i == skip else slice(0, s) for i, s in enumerate(shape))]
''', name="_crop")
kernel_helper('''
def _scatter_index(idx, axis):
    grid = list(np.indices(idx.shape, sparse=True))
    grid[axis] = idx
    return tuple(np.broadcast_arrays(*grid))
''', name="_scatter_index")


@kernel_rule("take_along_axis", "scatter")
def _along_kernel(e: KernelEmitter, node: Node, args: list[str], attrs: Mapping[str, Attr]) -> str:
    return f"{e.helper(node.op)}({', '.join(args)}, {attrs['axis']})"


def _take_along_reference(xs: Sequence[Array], attrs: Mapping[str, Attr]) -> list[Array]:
    x, idx, axis = xs[0], xs[1], attr_int(attrs, "axis")
    return [np.take_along_axis(_crop(x, idx.shape, axis), idx, axis=axis)]


define_op("take_along_axis", "indexing", 2, {"axis": "int"}, _along_type, _take_along_reference,
          "torch.gather: ``out[i][j] = x[i][idx[i][j]]`` for axis 1 (result has the indices' shape)")


@pad_rule("take_along_axis")
def _take_along_pad(ctx: PadContext, node: Node, inputs: list[Value]) -> tuple[Sequence[Value], Sequence[Layout]]:
    """Indices padded anywhere (BERT's ``token_type_ids`` buffer gathered at ``position_ids``, DeBERTa's
    relative positions ``[heads, q, k]`` into ``[heads, q, 2*span]`` scores): their padded rows become 0,
    so every gather stays in range, and the result has the indices' layout (its padded rows are padding).
    The operand may be padded on an axis other than ``axis`` where the indices' axis has the very same
    layout: position i of the result reads position i of the operand there, so real rows read real rows.
    Not along ``axis`` itself: real indices would not know where the padding is."""
    x, idx = inputs
    axis = axis_attr(node)
    x_layout, idx_layout = ctx.layout(x), ctx.layout(idx)
    refused = padded_syms(x_layout, ctx.padded, [axis])
    for other in range(x.type.rank):
        if other != axis and x_layout[other] != idx_layout[other]:
            refused |= padded_syms(x_layout, ctx.padded, [other]) | padded_syms(idx_layout, ctx.padded, [other])
    if refused:
        raise UnpaddableError(refused, _GATHERS_PADDING)
    safe = ctx.masked(idx, list(range(idx.type.rank)), 0)
    return ctx.copy(node, [x, safe]), [idx_layout]


@hlo_rule("take_along_axis")
def _take_along_hlo(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    b, x = ctx.b, xs[0]
    axis = ctx.int_attr("axis")
    _, dims = ctx.result_type()
    coords = _full_indices(b, _wrapped(b, xs[1], x.dims[axis]), axis)
    numbers = s.GatherDimensionNumbers(offset_dims=[], collapsed_slice_dims=list(range(x.rank)),
                                       start_index_map=list(range(x.rank)), index_vector_dim=x.rank)
    return [b.op("gather", [x, coords], x.dtype, dims, gather_dimension_numbers=numbers,
                 gather_slice_sizes=[1] * x.rank)]


kernel_helper('''
def take_along_axis(x, idx, axis):
    return np.take_along_axis(_crop(x, idx.shape, axis), idx, axis=axis)
''', name="take_along_axis", deps=["_crop"])


def _scatter_reference(xs: Sequence[Array], attrs: Mapping[str, Attr]) -> list[Array]:
    x, idx, upd, axis = xs[0], xs[1], xs[2], attr_int(attrs, "axis")
    out = x.copy()
    out[_scatter_index(idx, axis)] = cast(_crop(upd, idx.shape), dtype_of(x))
    return [out]


def _scatter_add_reference(xs: Sequence[Array], attrs: Mapping[str, Attr]) -> list[Array]:
    x, idx, upd, axis = xs[0], xs[1], xs[2], attr_int(attrs, "axis")
    dtype = dtype_of(x)
    out = cast(x, widen(dtype)).copy()
    np.add.at(out, _scatter_index(idx, axis), cast(_crop(upd, idx.shape), widen(dtype)))
    return [cast(out, dtype)]


define_op("scatter", "indexing", 3, {"axis": "int"}, _along_type, _scatter_reference,
          "torch.scatter: a copy of x with ``out[i][idx[i][j]] = upd[i][j]`` for axis 1",
          no_rule={"padding": _SCATTERS_PADDING})
define_op("scatter_add", "indexing", 3, {"axis": "int"}, _along_type, _scatter_add_reference,
          "torch.scatter_add: like scatter but accumulating repeated indices", no_rule={"padding": _SCATTERS_PADDING})


def _scatter_hlo(kind: str) -> HloRule:
    def rule(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
        b, x = ctx.b, xs[0]
        axis = ctx.int_attr("axis")
        idx = _wrapped(b, xs[1], x.dims[axis])
        compute = widen(x.dtype) if kind == "add" else x.dtype
        updates = b.slice(b.convert(xs[2], compute), [0] * idx.rank, list(idx.dims), [1] * idx.rank)
        coords = _full_indices(b, idx, axis)
        reducer = b.module.reducer(kind, compute)
        numbers = s.ScatterDimensionNumbers(update_window_dims=[], inserted_window_dims=list(range(x.rank)),
                                            scatter_dims_to_operand_dims=list(range(x.rank)),
                                            index_vector_dim=x.rank)
        out = b.op("scatter", [b.convert(x, compute), coords, updates], compute, x.dims,
                   scatter_dimension_numbers=numbers, called_computation_ids=[reducer.id])
        return [b.convert(out, x.dtype)]

    return rule


hlo_rule("scatter")(_scatter_hlo("replace"))
hlo_rule("scatter_add")(_scatter_hlo("add"))
kernel_helper('''
def scatter(x, idx, upd, axis):
    out = x.copy()
    out[_scatter_index(idx, axis)] = _crop(upd, idx.shape).astype(x.dtype)
    return out
''', name="scatter", deps=["_crop", "_scatter_index"])
kernel_helper('''
def scatter_add(x, idx, upd, axis, compute):
    out = x.astype(compute).copy()
    np.add.at(out, _scatter_index(idx, axis), _crop(upd, idx.shape).astype(compute))
    return out.astype(x.dtype)
''', name="scatter_add", deps=["_crop", "_scatter_index"])


@kernel_rule("scatter_add")
def _scatter_add_kernel(e: KernelEmitter, node: Node, args: list[str], attrs: Mapping[str, Attr]) -> str:
    compute = e.dt(widen(node.output.type.dtype))
    return f"{e.helper('scatter_add')}({', '.join(args)}, {attrs['axis']}, {compute})"


# --- dynamic_slice, dynamic_update_slice ----------------------------------------------------------------


def _dynamic_starts(types: Sequence[TensorType], rank: int, what: str) -> None:
    if len(types) != rank:
        raise ShapeError(f"{what} needs {rank} start operand(s), one per dim, got {len(types)}")
    for t in types:
        if t.rank != 0 or not t.dtype.is_integer:
            raise ShapeError(f"{what} starts must be integer scalars, got {t}")


def _clamped_starts(xs: Sequence[Array], shape: Sequence[int], sizes: Sequence[int]) -> list[int]:
    # XLA semantics: starts are clamped so that the window fits.
    return [min(max(int(s), 0), d - n) for s, d, n in zip(xs, shape, sizes, strict=True)]


def _starts_hlo(b: ComputationBuilder, xs: Sequence[HloValue]) -> list[HloValue]:
    return [b.convert(v, I64) for v in xs]  # XLA wants one integer type for all starts


def _dynamic_slice_type(types: Sequence[TensorType], attrs: Mapping[str, Attr]) -> list[TensorType]:
    x, sizes = types[0], attr_ints(attrs, "sizes")
    _dynamic_starts(types[1:], x.rank, "dynamic_slice")
    if len(sizes) != x.rank:
        raise ShapeError(f"dynamic_slice sizes {sizes} need one entry per dim of {x}")
    return [TensorType(sizes, x.dtype)]


def _dynamic_slice_reference(xs: Sequence[Array], attrs: Mapping[str, Attr]) -> list[Array]:
    x, sizes = xs[0], attr_ints(attrs, "sizes")
    starts = _clamped_starts(xs[1:], x.shape, sizes)
    return [x[tuple(slice(s, s + n) for s, n in zip(starts, sizes, strict=True))]]


define_op("dynamic_slice", "indexing", None, {"sizes": "ints"}, _dynamic_slice_type, _dynamic_slice_reference,
          "a ``sizes`` window at run-time starts (one int scalar operand per dim, clamped)", min_arity=1,
          no_rule={"padding": _CLAMPS_TO_BUCKET})


@hlo_rule("dynamic_slice")
def _dynamic_slice_hlo(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    x = xs[0]
    sizes = list(ctx.ints("sizes"))
    return [ctx.b.op("dynamic-slice", [x, *_starts_hlo(ctx.b, xs[1:])], x.dtype, sizes, dynamic_slice_sizes=sizes)]


kernel_helper('''
def dynamic_slice(x, starts, sizes):
    starts = [min(max(int(s), 0), d - n) for s, d, n in zip(starts, x.shape, sizes)]
    return x[tuple(slice(s, s + n) for s, n in zip(starts, sizes))]
''', name="dynamic_slice")


@kernel_rule("dynamic_slice")
def _dynamic_slice_kernel(e: KernelEmitter, _node: Node, args: list[str], attrs: Mapping[str, Attr]) -> str:
    return f"{e.helper('dynamic_slice')}({args[0]}, [{', '.join(args[1:])}], {lit(attrs['sizes'])})"


def _dynamic_update_type(types: Sequence[TensorType], _attrs: Mapping[str, Attr]) -> list[TensorType]:
    x, upd = types[0], types[1]
    _dynamic_starts(types[2:], x.rank, "dynamic_update_slice")
    if upd.rank != x.rank:
        raise ShapeError(f"dynamic_update_slice update {upd} must have the rank of {x}")
    return [x]


def _dynamic_update_reference(xs: Sequence[Array], _attrs: Mapping[str, Attr]) -> list[Array]:
    x, upd = xs[0], xs[1]
    starts = _clamped_starts(xs[2:], x.shape, upd.shape)
    out = x.copy()
    out[tuple(slice(s, s + n) for s, n in zip(starts, upd.shape, strict=True))] = cast(upd, dtype_of(x))
    return [out]


define_op("dynamic_update_slice", "indexing", None, {}, _dynamic_update_type, _dynamic_update_reference,
          "a copy of x with ``update`` written at run-time starts (clamped)", min_arity=2,
          no_rule={"padding": _CLAMPS_TO_BUCKET})


@hlo_rule("dynamic_update_slice")
def _dynamic_update_hlo(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    x = xs[0]
    update = ctx.b.convert(xs[1], x.dtype)
    return [ctx.b.op("dynamic-update-slice", [x, update, *_starts_hlo(ctx.b, xs[2:])], x.dtype, x.dims)]


kernel_helper('''
def dynamic_update_slice(x, update, starts):
    starts = [min(max(int(s), 0), d - n) for s, d, n in zip(starts, x.shape, update.shape)]
    out = x.copy()
    out[tuple(slice(s, s + n) for s, n in zip(starts, update.shape))] = update.astype(x.dtype)
    return out
''', name="dynamic_update_slice")


@kernel_rule("dynamic_update_slice")
def _dynamic_update_kernel(e: KernelEmitter, _node: Node, args: list[str], _attrs: Mapping[str, Attr]) -> str:
    return f"{e.helper('dynamic_update_slice')}({args[0]}, {args[1]}, [{', '.join(args[2:])}])"
