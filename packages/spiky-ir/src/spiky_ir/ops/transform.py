"""Type conversion and data movement: astype, transpose, reshape, broadcast_to, expand_dims,
squeeze, concatenate, split, slice, pad, flip, roll, repeat, tile.

Each op with all of its rules side by side: shape/dtype rule and numpy reference
(:func:`define_op`), HLO rule, padding rule, kernel-source rule.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import numpy as np

from spiky_ir.dtypes import DType, promote
from spiky_ir.errors import ShapeError
from spiky_ir.hlo import schema as s
from spiky_ir.hlo.builder import HloValue
from spiky_ir.hlo.rules import HloContext, hlo_rule
from spiky_ir.ir import Node, Value
from spiky_ir.kernel_source import KernelEmitter, input_types, kernel_rule, lit
from spiky_ir.padding import (
    Factors,
    Layout,
    PadContext,
    PadRule,
    UnpaddableError,
    axis_attr,
    axis_factors,
    fresh_layout,
    has_padded,
    merge_axis,
    not_along_padded,
    pad_rule,
    padded_syms,
    positionwise,
    single_padded,
)
from spiky_ir.plan import Kernel, plan_rule
from spiky_ir.registry import (
    Array,
    attr_dims,
    attr_dtype,
    attr_int,
    attr_ints,
    attr_shape,
    broadcast_shapes,
    cast,
    check_axis,
    define_op,
    dtype_of,
    scalar_array,
    static_dim,
)
from spiky_ir.symbolic import Dim, dim_add, dim_eval, dim_floor, dim_mul, dim_sub, dim_symbols, dims_product, is_derived
from spiky_ir.types import Attr, TensorType

PadResult = tuple[Sequence[Value], Sequence[Layout]]


@kernel_rule("transpose", "reshape", "broadcast_to", "expand_dims", "squeeze", "flip", "tile")
def _numpy_call_kernel(_e: KernelEmitter, node: Node, args: list[str], attrs: Mapping[str, Attr]) -> str:
    """Ops that are ``np.<op>(x, <their one attribute>)``."""
    (value,) = attrs.values()
    return f"np.{node.op}({args[0]}, {lit(value)})"


# --- astype -----------------------------------------------------------------------------------


def _astype_reference(xs: Sequence[Array], attrs: Mapping[str, Attr]) -> list[Array]:
    with np.errstate(invalid="ignore", over="ignore"):
        return [xs[0].astype(attr_dtype(attrs).to_numpy())]


define_op("astype", "transform", 1, {"dtype": "dtype"},
          lambda types, attrs: [TensorType(types[0].shape, attr_dtype(attrs))], _astype_reference,
          "element type conversion (C-style truncation for float → int)")


@hlo_rule("astype")
def _astype_hlo(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    dtype, _ = ctx.result_type()
    return [ctx.b.convert(xs[0], dtype)]


pad_rule("astype")(positionwise)
kernel_rule("astype")(lambda e, node, args, _attrs: f"{args[0]}.astype({e.dt(node.output.type.dtype)})")


# --- transpose -------------------------------------------------------------------------------


def _transpose_type(types: Sequence[TensorType], attrs: Mapping[str, Attr]) -> list[TensorType]:
    axes = attr_ints(attrs, "axes")
    shape = types[0].shape
    if sorted(axes) != list(range(len(shape))):
        raise ShapeError(f"transpose axes {axes} are not a permutation of the {len(shape)} dims")
    return [TensorType(tuple(shape[a] for a in axes), types[0].dtype)]


define_op("transpose", "transform", 1, {"axes": "ints"}, _transpose_type,
          lambda xs, attrs: [np.transpose(xs[0], attr_ints(attrs, "axes"))],
          "permute dims: result dim i is operand dim axes[i]")
hlo_rule("transpose")(lambda ctx, node, xs: [ctx.b.transpose(xs[0], ctx.ints("axes"))])


@pad_rule("transpose")
def _transpose_pad(ctx: PadContext, node: Node, inputs: list[Value]) -> PadResult:
    layout = ctx.layout(inputs[0])
    return ctx.copy(node, inputs), [tuple(layout[a] for a in attr_ints(node.attrs, "axes"))]


# --- reshape, expand_dims, squeeze: row-major reshapes ---------------------------------------------


def _reshape_type(types: Sequence[TensorType], attrs: Mapping[str, Attr]) -> list[TensorType]:
    shape = attr_dims(attrs, "shape")
    if any(isinstance(d, int) and d < 0 for d in shape):
        raise ShapeError(f"reshape target {shape} has a negative dim; resolve -1 before building IR")
    src = types[0]
    before, after = dims_product(src.shape), dims_product(shape)
    # With a floor division in a size (s0 // s1) the counts can be equal for the sizes torch guarded on
    # without being equal polynomials: they are compared once the graph is specialised.
    if before != after and not any(is_derived(s) for d in (before, after) for s in dim_symbols(d)):
        raise ShapeError(f"cannot reshape {src} to {shape}: element counts differ")
    return [TensorType(shape, src.dtype)]


define_op("reshape", "transform", 1, {"shape": "dims"}, _reshape_type,
          lambda xs, attrs: [np.reshape(xs[0], attr_shape(attrs, "reshape"))], "row-major reshape")


@hlo_rule("reshape", "expand_dims", "squeeze")
def _reshape_hlo(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    """reshape, expand_dims, squeeze: all row-major reshapes to the result shape."""
    _, dims = ctx.result_type()
    return [ctx.b.reshape(xs[0], dims)]


@pad_rule("reshape")
def _reshape_pad(ctx: PadContext, node: Node, inputs: list[Value]) -> PadResult:
    """Regroup the row-major factors of the input into the output dims (merge, or split static).

    Where that fails, the reshape is cut into runs of input factors and output dims with equal
    products (:func:`_reshape_runs`): each run reshapes on its own, so a run without a padded factor
    may regroup freely (``4*s0 -> (s0, 4)`` with ``s0`` exact next to a padded axis, as attention
    heads are split off a merged batch*heads axis) and the others follow the rule above."""
    (x,) = inputs
    outs = ctx.copy(node, inputs)
    flat = [f for axis in ctx.layout(x) for f in axis if f != 1]
    syms = padded_syms(ctx.layout(x), ctx.padded)
    if not syms:  # nothing padded flows through: any regrouping is fine, symbolic splits included
        return outs, [fresh_layout(outs[0].type, ctx.padded)]
    shape = outs[0].type.shape
    try:
        return outs, [_regroup(flat, shape, ctx.padded, syms, x.type, outs[0].type)]
    except UnpaddableError:
        runs = _reshape_runs(flat, shape)
        if runs is None or len(runs) < 2:
            raise
    layout: list[Factors] = [(1,)] * len(shape)
    for factors, axes in runs:
        if has_padded(tuple(factors), ctx.padded):
            groups = _regroup(factors, [shape[a] for a in axes], ctx.padded, syms, x.type, outs[0].type)
        else:
            groups = tuple((shape[a],) for a in axes)
        for axis, group in zip(axes, groups, strict=True):
            layout[axis] = group
    return outs, [tuple(layout)]


def _regroup(flat: list[Dim], shape: Sequence[Dim], padded: Collection[str], syms: set[str],
             src: TensorType, dst: TensorType) -> tuple[Factors, ...]:
    """The factors of each output dim of ``shape``, taken in order from ``flat`` (merges, static splits)."""
    flat = list(flat)
    out_layout: list[Factors] = []
    pos = 0
    for dim in shape:
        if dim == 1:
            out_layout.append((1,))
            continue
        group: list[Dim] = []
        while dims_product(group) != dim:
            if pos >= len(flat):
                raise UnpaddableError(syms, f"reshape {src} -> {dst} regroups a padded axis")
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
                raise UnpaddableError(syms, f"reshape {src} -> {dst} splits a padded axis")
        if has_padded(tuple(group), padded) or len(group) > 1:
            out_layout.append(tuple(group))
        else:
            out_layout.append((dim,))
    if pos != len(flat) and any(f != 1 for f in flat[pos:]):
        raise UnpaddableError(syms, f"reshape {src} -> {dst} regroups a padded axis")
    return tuple(out_layout)


def _reshape_runs(flat: list[Dim], shape: Sequence[Dim]) -> list[tuple[list[Dim], list[int]]] | None:
    """A row-major reshape of the factors ``flat`` to ``shape`` cut into independent runs: consecutive
    factors and consecutive output axes (size-1 axes left out) whose products are equal, so that each
    run is a reshape of its own. None when the products never line up or a size is a floor division.

    The walk compares sizes under one binding of large distinct values (where a product falls short, it
    takes more); every run it closes is checked equal as polynomials, so a coincidence of that binding
    cannot cut a run wrongly."""
    axes = [a for a, d in enumerate(shape) if d != 1]
    names = sorted({sym for d in [*flat, *(shape[a] for a in axes)] for sym in dim_symbols(d)})
    if any(is_derived(sym) for sym in names):
        return None
    probe = {sym: 1009 + 2 * k for k, sym in enumerate(names)}

    def size(dims: Sequence[Dim]) -> int:
        value = dim_eval(dims_product(dims), probe)
        assert isinstance(value, int)
        return value

    runs: list[tuple[list[Dim], list[int]]] = []
    factors: list[Dim] = []
    run_axes: list[int] = []
    i = j = 0
    while i < len(flat) or j < len(axes):
        left, right = size(factors), size([shape[a] for a in run_axes])
        if factors and run_axes and left == right:
            if dims_product(factors) != dims_product([shape[a] for a in run_axes]):
                return None
            runs.append((factors, run_axes))
            factors, run_axes = [], []
        elif (left <= right or j >= len(axes)) and i < len(flat):
            factors.append(flat[i])
            i += 1
        elif j < len(axes):
            run_axes.append(axes[j])
            j += 1
        else:
            return None
    if factors or run_axes:
        if not (factors and run_axes) or dims_product(factors) != dims_product([shape[a] for a in run_axes]):
            return None
        runs.append((factors, run_axes))
    return runs


def _expand_dims_type(types: Sequence[TensorType], attrs: Mapping[str, Attr]) -> list[TensorType]:
    t, axis = types[0], attr_int(attrs, "axis")
    check_axis(axis, t.rank + 1, "expand_dims")
    return [TensorType((*t.shape[:axis], 1, *t.shape[axis:]), t.dtype)]


define_op("expand_dims", "transform", 1, {"axis": "int"}, _expand_dims_type,
          lambda xs, attrs: [np.expand_dims(xs[0], attr_int(attrs, "axis"))], "insert a size-1 dim at ``axis``")


@pad_rule("expand_dims")
def _expand_dims_pad(ctx: PadContext, node: Node, inputs: list[Value]) -> PadResult:
    layout = list(ctx.layout(inputs[0]))
    layout.insert(axis_attr(node), (1,))
    return ctx.copy(node, inputs), [tuple(layout)]


def _squeeze_type(types: Sequence[TensorType], attrs: Mapping[str, Attr]) -> list[TensorType]:
    t, axes = types[0], attr_ints(attrs, "axes")
    for a in axes:
        check_axis(a, t.rank, "squeeze")
        if t.shape[a] != 1:
            raise ShapeError(f"squeeze axis {a} of {t} has size {t.shape[a]}, not 1")
    return [TensorType(tuple(d for i, d in enumerate(t.shape) if i not in axes), t.dtype)]


define_op("squeeze", "transform", 1, {"axes": "ints"}, _squeeze_type,
          lambda xs, attrs: [np.squeeze(xs[0], attr_ints(attrs, "axes"))], "drop size-1 dims ``axes``")


@pad_rule("squeeze")
def _squeeze_pad(ctx: PadContext, node: Node, inputs: list[Value]) -> PadResult:
    axes = attr_ints(node.attrs, "axes")
    return ctx.copy(node, inputs), [tuple(f for i, f in enumerate(ctx.layout(inputs[0])) if i not in axes)]


# --- broadcast_to ---------------------------------------------------------------------------------


def _broadcast_to_type(types: Sequence[TensorType], attrs: Mapping[str, Attr]) -> list[TensorType]:
    shape = attr_dims(attrs, "shape")
    try:
        fits = broadcast_shapes(types[0].shape, shape) == shape
    except ShapeError:
        fits = False
    if not fits:
        raise ShapeError(f"cannot broadcast {types[0]} to {shape}")
    return [TensorType(shape, types[0].dtype)]


define_op("broadcast_to", "transform", 1, {"shape": "dims"}, _broadcast_to_type,
          lambda xs, attrs: [np.broadcast_to(xs[0], attr_shape(attrs, "broadcast_to"))],
          "NumPy broadcast to a larger shape")


@hlo_rule("broadcast_to")
def _broadcast_to_hlo(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    _, dims = ctx.result_type()
    return [ctx.b.broadcast_to(xs[0], dims)]


@pad_rule("broadcast_to")
def _broadcast_to_pad(ctx: PadContext, node: Node, inputs: list[Value]) -> PadResult:
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


# --- concatenate -----------------------------------------------------------------------------------


def _concatenate_type(types: Sequence[TensorType], attrs: Mapping[str, Attr]) -> list[TensorType]:
    first, axis = types[0], attr_int(attrs, "axis")
    check_axis(axis, first.rank, "concatenate")
    size: Dim = 0
    dtype = first.dtype
    for t in types:
        if t.rank != first.rank or any(
            a != b for i, (a, b) in enumerate(zip(t.shape, first.shape, strict=True)) if i != axis
        ):
            raise ShapeError(f"concatenate operands {first} and {t} differ outside axis {axis}")
        size = dim_add(size, t.shape[axis])
        dtype = promote(dtype, t.dtype)
    return [TensorType((*first.shape[:axis], size, *first.shape[axis + 1:]), dtype)]


def _concatenate_reference(xs: Sequence[Array], attrs: Mapping[str, Attr]) -> list[Array]:
    dtype = dtype_of(xs[0])
    for x in xs[1:]:
        dtype = promote(dtype, dtype_of(x))
    return [np.concatenate([cast(x, dtype) for x in xs], axis=attr_int(attrs, "axis"))]


define_op("concatenate", "transform", None, {"axis": "int"}, _concatenate_type, _concatenate_reference,
          "join operands along ``axis`` (types promote)", min_arity=1)


@hlo_rule("concatenate")
def _concatenate_hlo(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    dtype, dims = ctx.result_type()
    parts = [ctx.b.convert(x, dtype) for x in xs]
    if len(parts) == 1:
        return parts
    return [ctx.b.op("concatenate", parts, dtype, dims, dimensions=[ctx.int_attr("axis")])]


@pad_rule("concatenate")
def _concatenate_pad(ctx: PadContext, node: Node, inputs: list[Value]) -> PadResult:
    """Along a padded axis one operand may be padded, its axis one padded factor ``s+c``.

    Last, its garbage simply stays at the end. Anywhere else (a KV cache grows as
    ``cat([past, new])``), the operands after it are moved back to where its real part ends,
    one ``take`` along the axis: the result's real part is again a prefix, of length
    ``len(s) + c`` plus the other operands' sizes, and what follows it is padding."""
    axis = axis_attr(node)
    outs = ctx.copy(node, inputs)
    out = outs[0].type
    layouts = [ctx.layout(v) for v in inputs]
    along = [lay[axis] for lay in layouts]
    syms = {s for lay in layouts for s in padded_syms(lay, ctx.padded, [axis])}
    padded_at = [i for i, factors in enumerate(along) if has_padded(factors, ctx.padded)]
    axes: list[Factors] = []
    for i in range(out.rank):
        if i == axis:
            axes.append(axis_factors(out.shape[i], ctx.padded) if padded_at else (out.shape[i],))
            continue
        cands = [(v.type.shape[i], lay[i]) for v, lay in zip(inputs, layouts, strict=True)]
        axes.append(merge_axis(cands, out.shape[i], ctx.padded, node.op))
    if not padded_at:
        return outs, [tuple(axes)]
    k = padded_at[0]
    if len(padded_at) > 1 or not single_padded(along[k], ctx.padded) or not single_padded(axes[axis], ctx.padded):
        raise UnpaddableError(syms, f"concatenate along padded axis {axis} would put padding in the middle")
    if k == len(inputs) - 1:
        return outs, [tuple(axes)]
    # Bucket position j of the result takes: j itself up to the end of the real part of operand k;
    # then j - len + bucket (the operands after k, concatenated after its padding); then padding.
    before: Dim = 0
    for v in inputs[:k]:
        before = dim_add(before, v.type.shape[axis])
    length = ctx.length(along[k][0])
    iota, _shape = ctx.axis_iota(outs[0], axis)
    real_end = ctx.op("add", ctx.size(before), length)
    shifted = ctx.op("add", ctx.op("subtract", iota, length), ctx.size(along[k][0]))
    last = ctx.op("subtract", ctx.size(out.shape[axis]), ctx.const(1, DType.int64))
    source = ctx.op("where", ctx.op("less", iota, real_end), iota, ctx.op("minimum", shifted, last))
    return [ctx.op("take", outs[0], source, attrs={"axis": axis})], [tuple(axes)]


@kernel_rule("concatenate")
def _concatenate_kernel(e: KernelEmitter, node: Node, args: list[str], attrs: Mapping[str, Attr]) -> str:
    out = node.output.type.dtype
    parts = [e.cast(a, t, out) for a, t in zip(args, input_types(node), strict=True)]
    return f"np.concatenate([{', '.join(parts)}], axis={attrs['axis']})"


# --- split ------------------------------------------------------------------------------------------


def _split_type(types: Sequence[TensorType], attrs: Mapping[str, Attr]) -> list[TensorType]:
    t, axis, sizes = types[0], attr_int(attrs, "axis"), attr_dims(attrs, "sizes")
    check_axis(axis, t.rank, "split")
    total: Dim = 0
    for size in sizes:
        total = dim_add(total, size)
    if total != t.shape[axis]:
        raise ShapeError(f"split sizes {sizes} add up to {total}, but axis {axis} of {t} is {t.shape[axis]}")
    return [TensorType((*t.shape[:axis], size, *t.shape[axis + 1:]), t.dtype) for size in sizes]


def _split_reference(xs: Sequence[Array], attrs: Mapping[str, Attr]) -> list[Array]:
    sizes = [static_dim(d, "split") for d in attr_dims(attrs, "sizes")]
    cuts = np.cumsum(sizes)[:-1].tolist()
    return list(np.split(xs[0], cuts, axis=attr_int(attrs, "axis")))


define_op("split", "transform", 1, {"sizes": "dims", "axis": "int"}, _split_type, _split_reference,
          "cut along ``axis`` into pieces of ``sizes`` (one result each)")


@hlo_rule("split")
def _split_hlo(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    x, axis = xs[0], ctx.int_attr("axis")
    out, offset = [], 0
    for value in node.outputs:
        size = value.type.static_shape()[axis]
        start = [offset if i == axis else 0 for i in range(x.rank)]
        limit = [offset + size if i == axis else d for i, d in enumerate(x.dims)]
        out.append(ctx.b.slice(x, start, limit, [1] * x.rank))
        offset += size
    return out


@pad_rule("split")
def _split_pad(ctx: PadContext, node: Node, inputs: list[Value]) -> PadResult:
    (x,) = inputs
    axis = axis_attr(node)
    layout = ctx.layout(x)
    outs = ctx.copy(node, inputs)
    if has_padded(layout[axis], ctx.padded):
        syms = padded_syms(layout, ctx.padded, [axis])
        if not single_padded(layout[axis], ctx.padded) or any(
                not isinstance(v.type.shape[axis], int) for v in outs[:-1]):
            raise UnpaddableError(syms, f"split along padded axis {axis} of {x.type} cuts into the padding")
    return outs, [tuple(axis_factors(v.type.shape[i], ctx.padded) if i == axis else f
                        for i, f in enumerate(layout)) for v in outs]


@kernel_rule("split")
def _split_kernel(_e: KernelEmitter, _node: Node, args: list[str], attrs: Mapping[str, Attr]) -> str:
    cuts = np.cumsum(attr_ints(attrs, "sizes"))[:-1].tolist()
    return f"np.split({args[0]}, {cuts}, axis={attrs['axis']})"


# --- slice ------------------------------------------------------------------------------------------


def _slice_type(types: Sequence[TensorType], attrs: Mapping[str, Attr]) -> list[TensorType]:
    t = types[0]
    start, stop, step = attr_dims(attrs, "start"), attr_dims(attrs, "stop"), attr_ints(attrs, "step")
    if not len(start) == len(stop) == len(step) == t.rank:
        raise ShapeError(f"slice of {t} needs start/stop/step of length {t.rank}, got {start}, {stop}, {step}")
    out: list[Dim] = []
    for axis, (lo, hi, st, dim) in enumerate(zip(start, stop, step, t.shape, strict=True)):
        if st < 1:
            raise ShapeError(f"slice step {st} on axis {axis} must be >= 1")
        if isinstance(lo, int) and isinstance(hi, int) and isinstance(dim, int):
            if not 0 <= lo <= hi <= dim:
                raise ShapeError(f"slice [{lo}:{hi}] on axis {axis} is outside 0..{dim} of {t}")
            out.append(-(-(hi - lo) // st))
        elif st == 1:
            out.append(dim_sub(hi, lo))
        else:
            out.append(dim_floor(dim_add(dim_sub(hi, lo), st - 1), st))
    return [TensorType(tuple(out), t.dtype)]


def _slice_reference(xs: Sequence[Array], attrs: Mapping[str, Attr]) -> list[Array]:
    index = tuple(
        slice(static_dim(lo, "slice"), static_dim(hi, "slice"), st)
        for lo, hi, st in zip(attr_dims(attrs, "start"), attr_dims(attrs, "stop"), attr_ints(attrs, "step"),
                              strict=True)
    )
    return [xs[0][index]]


define_op("slice", "transform", 1, {"start": "dims", "stop": "dims", "step": "ints"}, _slice_type, _slice_reference,
          "``x[start:stop:step]`` on every axis (static bounds, in range)")
hlo_rule("slice")(lambda ctx, node, xs: [ctx.b.slice(xs[0], ctx.ints("start"), ctx.ints("stop"), ctx.ints("step"))])


@pad_rule("slice")
def _slice_pad(ctx: PadContext, node: Node, inputs: list[Value]) -> PadResult:
    """Slices keep a padded axis' real part a prefix when they start at an offset fixed within a bucket
    (static, or over exact symbols: ``x[:, -s2:]``) with step 1."""
    (x,) = inputs
    start, stop, step = node.attrs["start"], node.attrs["stop"], node.attrs["step"]
    assert isinstance(start, tuple) and isinstance(stop, tuple) and isinstance(step, tuple)
    outs = ctx.copy(node, inputs)
    layout: list[Factors] = []
    for i, factors in enumerate(ctx.layout(x)):
        dim = outs[0].type.shape[i]
        if not has_padded(factors, ctx.padded):
            layout.append((dim,) if dim != x.type.shape[i] else factors)
            continue
        syms = padded_syms(ctx.layout(x), ctx.padded, [i])
        if start[i] == 0 and stop[i] == x.type.shape[i] and step[i] == 1:
            layout.append(factors)
        elif len(factors) == 1 and not dim_symbols(start[i]) & ctx.padded and step[i] == 1:
            layout.append(axis_factors(dim, ctx.padded))
        else:
            raise UnpaddableError(syms, f"slice {start[i]}:{stop[i]}:{step[i]} of padded axis {i} of {x.type}")
    return outs, [tuple(layout)]


@kernel_rule("slice")
def _slice_kernel(_e: KernelEmitter, node: Node, args: list[str], attrs: Mapping[str, Attr]) -> str:
    parts = []
    for lo, hi, st, dim in zip(attr_dims(attrs, "start"), attr_dims(attrs, "stop"), attr_ints(attrs, "step"),
                               node.inputs[0].type.shape, strict=True):
        parts.append(f"{lo or ''}:{'' if hi == dim else hi}" + (f":{st}" if st != 1 else ""))
    return f"{args[0]}[{', '.join(parts)}]"


# --- pad --------------------------------------------------------------------------------------------


def _pad_type(types: Sequence[TensorType], attrs: Mapping[str, Attr]) -> list[TensorType]:
    t, lo, hi = types[0], attr_ints(attrs, "lo"), attr_ints(attrs, "hi")
    if len(lo) != t.rank or len(hi) != t.rank or min(lo + hi, default=0) < 0:
        raise ShapeError(f"pad of {t} needs non-negative lo/hi of length {t.rank}, got {lo}, {hi}")
    return [TensorType(tuple(dim_add(dim_add(d, a), b) for d, a, b in zip(t.shape, lo, hi, strict=True)), t.dtype)]


def _pad_reference(xs: Sequence[Array], attrs: Mapping[str, Attr]) -> list[Array]:
    widths = list(zip(attr_ints(attrs, "lo"), attr_ints(attrs, "hi"), strict=True))
    fill = scalar_array(attrs["value"], dtype_of(xs[0]))
    return [np.pad(xs[0], widths, constant_values=fill)]


define_op("pad", "transform", 1, {"lo": "ints", "hi": "ints", "value": "scalar"}, _pad_type, _pad_reference,
          "constant padding: ``lo[i]`` before and ``hi[i]`` after axis i")


@hlo_rule("pad")
def _pad_hlo(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    x = xs[0]
    _, dims = ctx.result_type()
    value = ctx.b.constant(node.attrs["value"], x.dtype)
    config = s.PaddingConfig(dimensions=[
        s.PaddingConfigDimension(edge_padding_low=lo, edge_padding_high=hi)
        for lo, hi in zip(ctx.ints("lo"), ctx.ints("hi"), strict=True)
    ])
    return [ctx.b.op("pad", [x, value], x.dtype, dims, padding_config=config)]


@pad_rule("pad")
def _pad_pad(ctx: PadContext, node: Node, inputs: list[Value]) -> PadResult:
    (x,) = inputs
    lo, hi = attr_ints(node.attrs, "lo"), attr_ints(node.attrs, "hi")
    outs = ctx.copy(node, inputs)
    layout: list[Factors] = []
    for i, factors in enumerate(ctx.layout(x)):
        dim = outs[0].type.shape[i]
        if not has_padded(factors, ctx.padded):
            layout.append((dim,) if lo[i] or hi[i] else factors)
        elif len(factors) == 1 and hi[i] == 0:
            layout.append((dim,))
        else:
            raise UnpaddableError(padded_syms(ctx.layout(x), ctx.padded, [i]),
                                  f"pad after padded axis {i} of {x.type} lands inside the bucket's padding")
    return outs, [tuple(layout)]


@kernel_rule("pad")
def _pad_kernel(e: KernelEmitter, node: Node, args: list[str], attrs: Mapping[str, Attr]) -> str:
    widths = list(zip(attr_ints(attrs, "lo"), attr_ints(attrs, "hi"), strict=True))
    fill = f"np.asarray({lit(attrs['value'])}).astype({e.dt(node.output.type.dtype)})"
    return f"np.pad({args[0]}, {widths}, constant_values={fill})"


# --- flip, repeat, tile: fine along unpadded axes only -----------------------------------------------


def _along_unpadded(touched: str) -> PadRule:
    """A padding rule for ops that move data along the axes named by attribute ``touched``."""

    def rule(ctx: PadContext, node: Node, inputs: list[Value]) -> PadResult:
        x = inputs[0]
        axes: Sequence[int]
        if touched == "reps":
            axes = [i for i, r in enumerate(attr_ints(node.attrs, "reps")) if r != 1]
        else:
            axes = attr_ints(node.attrs, touched) if isinstance(node.attrs[touched], tuple) else [axis_attr(node)]
        not_along_padded(ctx, node, x, axes)
        outs = ctx.copy(node, inputs)
        return outs, [tuple((d,) if i in axes else f
                            for i, (f, d) in enumerate(zip(ctx.layout(x), outs[0].type.shape, strict=True)))]

    return rule


def _flip_type(types: Sequence[TensorType], attrs: Mapping[str, Attr]) -> list[TensorType]:
    for a in attr_ints(attrs, "axes"):
        check_axis(a, types[0].rank, "flip")
    return [types[0]]


define_op("flip", "transform", 1, {"axes": "ints"}, _flip_type,
          lambda xs, attrs: [np.flip(xs[0], attr_ints(attrs, "axes"))], "reverse the order along ``axes``")


@hlo_rule("flip")
def _flip_hlo(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    axes = sorted(ctx.ints("axes"))
    if not axes:
        return [xs[0]]
    return [ctx.b.op("reverse", [xs[0]], xs[0].dtype, xs[0].dims, dimensions=axes)]


pad_rule("flip")(_along_unpadded("axes"))


# --- roll: a cyclic shift along axes, which along a padded axis wraps at the real length -------------


def _roll_type(types: Sequence[TensorType], attrs: Mapping[str, Attr]) -> list[TensorType]:
    shifts, axes = attr_ints(attrs, "shifts"), attr_ints(attrs, "axes")
    if len(shifts) != len(axes):
        raise ShapeError(f"roll needs one shift per axis, got shifts {shifts} and axes {axes}")
    for a in axes:
        check_axis(a, types[0].rank, "roll")
    return [types[0]]


define_op("roll", "transform", 1, {"shifts": "ints", "axes": "ints"}, _roll_type,
          lambda xs, attrs: [np.roll(xs[0], attr_ints(attrs, "shifts"), attr_ints(attrs, "axes"))],
          "cyclic shift by ``shifts[i]`` along ``axes[i]`` (np.roll; an axis may repeat, shifts add up)")


def _roll_shifts(node: Node) -> dict[int, int]:
    """Axis → total shift (an axis named twice shifts by the sum, as in np.roll)."""
    total: dict[int, int] = {}
    for shift, axis in zip(attr_ints(node.attrs, "shifts"), attr_ints(node.attrs, "axes"), strict=True):
        total[axis] = total.get(axis, 0) + shift
    return total


@hlo_rule("roll")
def _roll_hlo(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    """Per axis, the last ``shift`` elements moved to the front: a concatenate of two slices."""
    x, b = xs[0], ctx.b
    for axis, shift in _roll_shifts(node).items():
        n = x.dims[axis]
        cut = n - shift % n if n else 0
        if cut in (0, n):
            continue
        one, zero = [1] * x.rank, [0] * x.rank
        tail = b.slice(x, [cut if i == axis else 0 for i in range(x.rank)], list(x.dims), one)
        head = b.slice(x, zero, [cut if i == axis else d for i, d in enumerate(x.dims)], one)
        x = b.op("concatenate", [tail, head], x.dtype, x.dims, dimensions=[axis])
    return [x]


@pad_rule("roll")
def _roll_pad(ctx: PadContext, node: Node, inputs: list[Value]) -> PadResult:
    """Unpadded axes roll as they are. A padded axis wraps at its real length: real position p takes
    the element at real position (p - shift) mod n, n the real count (a gather along the axis,
    positions converted when the axis reorders)."""
    (x,) = inputs
    layout = ctx.layout(x)
    shifts = _roll_shifts(node)
    plain = {a: sh for a, sh in shifts.items() if not has_padded(layout[a], ctx.padded)}
    out = x
    if plain:
        out = ctx.op("roll", out, attrs={"shifts": tuple(plain.values()), "axes": tuple(plain)})
    for axis, shift in shifts.items():
        if axis in plain:
            continue
        factors = layout[axis]
        dim = x.type.shape[axis]
        position = ctx.real_position(factors, ctx.op("iota", attrs={"shape": (dim,), "axis": 0,
                                                                     "dtype": DType.int64}))
        source = ctx.op("remainder", ctx.op("subtract", position, ctx.const(shift, DType.int64)),
                        ctx.real_count(factors))
        out = ctx.op("take", out, ctx.bucket_position(factors, source), attrs={"axis": axis})
    return [out], [layout]


kernel_rule("roll")(lambda _e, _node, args, attrs: f"np.roll({args[0]}, {lit(attrs['shifts'])}, {lit(attrs['axes'])})")


def _repeat_type(types: Sequence[TensorType], attrs: Mapping[str, Attr]) -> list[TensorType]:
    t, axis, n = types[0], attr_int(attrs, "axis"), attr_int(attrs, "repeats")
    check_axis(axis, t.rank, "repeat")
    return [TensorType((*t.shape[:axis], dim_mul(t.shape[axis], n), *t.shape[axis + 1:]), t.dtype)]


define_op("repeat", "transform", 1, {"repeats": "int", "axis": "int"}, _repeat_type,
          lambda xs, attrs: [np.repeat(xs[0], attr_int(attrs, "repeats"), axis=attr_int(attrs, "axis"))],
          "repeat each element ``repeats`` times along ``axis`` (np.repeat)")


@hlo_rule("repeat")
def _repeat_hlo(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    # np.repeat: (..., d, ...) → (..., d, 1, ...) → broadcast (..., d, n, ...) → (..., d*n, ...)
    x, axis, n = xs[0], ctx.int_attr("axis"), ctx.int_attr("repeats")
    _, dims = ctx.result_type()
    b = ctx.b
    expanded = b.reshape(x, (*x.dims[: axis + 1], 1, *x.dims[axis + 1 :]))
    spread = b.broadcast_to(expanded, (*x.dims[: axis + 1], n, *x.dims[axis + 1 :]))
    return [b.reshape(spread, dims)]


pad_rule("repeat")(_along_unpadded("repeats"))
kernel_rule("repeat")(lambda _e, _node, args, attrs: f"np.repeat({args[0]}, {attrs['repeats']}, axis={attrs['axis']})")


def _tile_type(types: Sequence[TensorType], attrs: Mapping[str, Attr]) -> list[TensorType]:
    t, reps = types[0], attr_ints(attrs, "reps")
    if len(reps) != t.rank:
        raise ShapeError(f"tile reps {reps} must have one entry per dim of {t}")
    return [TensorType(tuple(dim_mul(d, r) for d, r in zip(t.shape, reps, strict=True)), t.dtype)]


define_op("tile", "transform", 1, {"reps": "ints"}, _tile_type,
          lambda xs, attrs: [np.tile(xs[0], attr_ints(attrs, "reps"))],
          "repeat the whole tensor ``reps`` times per dim")


@hlo_rule("tile")
def _tile_hlo(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    # np.tile: (d0, d1) → broadcast to (r0, d0, r1, d1) → reshape (r0*d0, r1*d1)
    x, reps = xs[0], ctx.ints("reps")
    _, dims = ctx.result_type()
    interleaved = [v for r, d in zip(reps, x.dims, strict=True) for v in (r, d)]
    spread = ctx.b.broadcast_in_dim(x, interleaved, [2 * i + 1 for i in range(x.rank)])
    return [ctx.b.reshape(spread, dims)]


pad_rule("tile")(_along_unpadded("reps"))


# --- plan kernels: the attributes read and the shapes derived once per node -----------------------


@plan_rule("reshape", "expand_dims", "squeeze")
def _reshape_plan(node: Node) -> Kernel:
    """A reshape to the node's static result shape (expand_dims and squeeze are reshapes too)."""
    shape = node.output.type.static_shape()
    return lambda xs, _attrs: [xs[0].reshape(shape)]


@plan_rule("transpose")
def _transpose_plan(node: Node) -> Kernel:
    axes = attr_ints(node.attrs, "axes")
    return lambda xs, _attrs: [xs[0].transpose(axes)]


@plan_rule("slice")
def _slice_plan(node: Node) -> Kernel:
    index = tuple(slice(static_dim(lo, "slice"), static_dim(hi, "slice"), st) for lo, hi, st in zip(
        attr_dims(node.attrs, "start"), attr_dims(node.attrs, "stop"), attr_ints(node.attrs, "step"), strict=True))
    return lambda xs, _attrs: [xs[0][index]]


@plan_rule("broadcast_to")
def _broadcast_to_plan(node: Node) -> Kernel:
    shape = node.output.type.static_shape()
    return lambda xs, _attrs: [np.broadcast_to(xs[0], shape)]


@plan_rule("astype")
def _astype_plan(node: Node) -> Kernel:
    """The conversion the reference makes (the plan's one ``errstate`` covers its warnings)."""
    dtype = attr_dtype(node.attrs).to_numpy()
    return lambda xs, _attrs: [xs[0].astype(dtype)]
