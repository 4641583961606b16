"""Reductions over ``axes`` (sum, prod, max, min, any, all, mean, var, logsumexp), the scans
cumsum/cumprod and the arg reductions argmax/argmin along one ``axis``.

:func:`reduction` defines a reduction over ``axes`` with ``keepdims`` from its numpy function
and result-type rule, and registers its HLO rule, padding rule and kernel-source rule (the
same numpy call, or the function's own source when numpy has none); ``aten`` names the ATen
overloads whose ``(self, dim, keepdim, dtype)`` arguments lower onto it one to one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from spiky_ir.dtypes import DType
from spiky_ir.errors import ShapeError
from spiky_ir.hlo import schema as s
from spiky_ir.hlo.builder import ComputationBuilder, HloValue, array_shape, tuple_shape
from spiky_ir.hlo.rules import BOOL, I64, HloContext, HloRule, hlo_rule, init_value, nonzero, reduce_to, widen
from spiky_ir.ir import Node, Value
from spiky_ir.kernel_source import KernelEmitter, KernelRule, kernel_helper, kernel_rule, lit
from spiky_ir.padding import (
    Layout,
    PadContext,
    PadRule,
    highest,
    lowest,
    masking_reduce,
    pad_rule,
    reduce_axes,
    reduced_layout,
)
from spiky_ir.plan import Kernel, as_type, plan_rule
from spiky_ir.registry import (
    Array,
    DTypeRule,
    OpDef,
    attr_bool,
    attr_int,
    attr_ints,
    cast,
    check_axis,
    define_op,
    dtype_of,
    same,
    to_bool,
    to_float,
)
from spiky_ir.symbolic import Dim
from spiky_ir.types import Attr, TensorType

PadResult = tuple[Sequence[Value], Sequence[Layout]]


def reduced_shape(t: TensorType, axes: tuple[int, ...], keepdims: bool, what: str) -> tuple[Dim, ...]:
    for a in axes:
        check_axis(a, t.rank, what)
    if len(set(axes)) != len(axes):
        raise ShapeError(f"{what} axes {axes} repeat an axis")
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(t.shape))
    return tuple(d for i, d in enumerate(t.shape) if i not in axes)


def _compute(out: DType) -> DType:
    """Float reductions compute in float32 for half types; others in the result type."""
    return widen(out) if out.is_floating else out


def reduction(name: str, fn: Callable[..., Array], result: DTypeRule, *, hlo: HloRule, pad: PadRule, doc: str,
              aten: Sequence[str] = (), extra_attrs: Mapping[str, str] | None = None,
              kernel: KernelRule | None = None) -> OpDef:
    """Define and register a reduction over ``axes`` (with ``keepdims``) with all of its rules.

    ``fn(x, axis=axes, keepdims=keepdims, **extra attributes)`` computes it in numpy on the
    operand cast to the compute type; the result is cast to ``result(operand type)``.
    """
    extra = dict(extra_attrs or {})

    def shape_rule(types: Sequence[TensorType], attrs: Mapping[str, Attr]) -> list[TensorType]:
        t = types[0]
        return [TensorType(reduced_shape(t, attr_ints(attrs, "axes"), attr_bool(attrs, "keepdims"), name),
                           result(t.dtype))]

    def reference(xs: Sequence[Array], attrs: Mapping[str, Attr]) -> list[Array]:
        out = result(dtype_of(xs[0]))
        compute = _compute(out)
        x = cast(xs[0], compute) if compute is not DType.bool else xs[0]
        kwargs = {k: attrs[k] for k in extra}
        with np.errstate(all="ignore"):
            r = fn(x, axis=attr_ints(attrs, "axes"), keepdims=attr_bool(attrs, "keepdims"), **kwargs)
        return [cast(r, out)]

    def prepared(node: Node) -> Kernel:
        out = node.output.type.dtype
        compute = _compute(out)
        to_compute = None if compute is DType.bool or node.inputs[0].type.dtype is compute else compute.to_numpy()
        kwargs = {"axis": attr_ints(node.attrs, "axes"), "keepdims": attr_bool(node.attrs, "keepdims"),
                  **{k: node.attrs[k] for k in extra}}
        result = as_type(out.to_numpy())
        run = _direct(fn, node.inputs[0].type.static_shape(), kwargs) or (lambda x: fn(x, **kwargs))
        if to_compute is None:
            return lambda xs, _attrs: [result(run(xs[0]))]
        return lambda xs, _attrs: [result(run(xs[0].astype(to_compute)))]

    opdef = define_op(name, "reduce", 1, {"axes": "ints", "keepdims": "bool", **extra}, shape_rule, reference, doc,
                      aten=aten)
    plan_rule(name)(prepared)
    hlo_rule(name)(hlo)
    pad_rule(name)(pad)
    if kernel is None:
        kernel_helper(fn)
    kernel_rule(name)(kernel or _kernel(fn))
    return opdef


_UFUNCS: dict[Callable[..., Any], np.ufunc] = {
    np.sum: np.add, np.prod: np.multiply, np.max: np.maximum, np.min: np.minimum, np.any: np.logical_or,
    np.all: np.logical_and,
}
"""numpy's reductions are these ufuncs' ``reduce`` behind a Python-level wrapper (argument checks,
method lookup: 2-6 µs a call, more than the reduction of a small array)."""


def _direct(fn: Callable[..., Array], shape: tuple[int, ...],
            kwargs: Mapping[str, Any]) -> Callable[[Array], Any] | None:
    """``fn(x, **kwargs)`` for operands of ``shape`` as the ufunc calls numpy's wrapper makes
    (numpy/_core/_methods.py for mean and var), with the element count decided once: the same
    operations in the same order, so the same bits (the op table's plan-vs-reference test checks
    it for every reduction). None where there is no such form."""
    axis, keepdims = kwargs["axis"], kwargs["keepdims"]
    ufunc = _UFUNCS.get(fn)
    if ufunc is not None:
        return lambda x: ufunc.reduce(x, axis=axis, keepdims=keepdims)
    count = np.intp(math.prod(shape[a] for a in axis))
    if fn is np.mean:
        return lambda x: _divided(np.add.reduce(x, axis=axis, keepdims=keepdims), count)
    if fn is _var:
        divisor = np.maximum(count - kwargs["correction"], 0)

        def var(x: Array) -> Any:
            mean = _divided(np.add.reduce(x, axis=axis, keepdims=True), count)
            deviation = np.subtract(x, mean)
            np.square(deviation, out=deviation)
            return _divided(np.add.reduce(deviation, axis=axis, keepdims=keepdims), divisor)

        return var
    return None


def _divided(total: Any, count: Any) -> Any:
    """``total / count`` as numpy's mean and var divide: in place into an array sum, in the sum's
    own type for a scalar one."""
    if type(total) is np.ndarray:
        return np.true_divide(total, count, out=total, casting="unsafe")
    return total.dtype.type(total / count)


def _kernel(fn: Callable[..., Array]) -> KernelRule:
    """The reference's numpy call (or ``fn``'s own source) on the operand in the compute type."""

    def rule(e: KernelEmitter, node: Node, args: list[str], attrs: Mapping[str, Attr]) -> str:
        out = node.output.type.dtype
        compute = _compute(out)
        x = args[0] if compute is DType.bool else e.cast(args[0], node.inputs[0].type.dtype, compute)
        call = f"{e.function(fn)}({x}, axis={lit(attrs['axes'])}, keepdims={attrs['keepdims']})"
        return f"np.asarray({call}).astype({e.dt(out)})"

    return rule


def _hlo(kind: str) -> HloRule:
    """One HLO reduce with reducer ``kind`` (add, mul, max, min, and, or)."""

    def rule(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
        out, dims = ctx.result_type()
        x = nonzero(ctx.b, xs[0]) if kind in ("and", "or") else ctx.b.convert(xs[0], widen(out))
        return [ctx.b.convert(reduce_to(ctx, x, ctx.ints("axes"), kind, dims), out)]

    return rule


def _sum_type(dtype: DType) -> DType:
    return dtype if dtype.is_floating else DType.int64


# --- sum, prod, max, min, any, all -------------------------------------------------------------------

reduction("sum", np.sum, _sum_type, hlo=_hlo("add"), pad=masking_reduce(lambda _t: 0),
          aten=("aten.sum.dim_IntList", "aten.sum.default"),
          doc="sum over ``axes`` (ints and bool sum to int64, as in torch)")
reduction("prod", np.prod, _sum_type, hlo=_hlo("mul"), pad=masking_reduce(lambda _t: 1),
          aten=("aten.prod.dim_int", "aten.prod.default"), doc="product over ``axes``")
reduction("max", np.max, same, hlo=_hlo("max"), pad=masking_reduce(lowest),
          aten=("aten.amax.default", "aten.max.default"), doc="NaN-propagating maximum over ``axes``")
reduction("min", np.min, same, hlo=_hlo("min"), pad=masking_reduce(highest),
          aten=("aten.amin.default", "aten.min.default"), doc="NaN-propagating minimum over ``axes``")
reduction("any", np.any, to_bool, hlo=_hlo("or"), pad=masking_reduce(lambda _t: False),
          aten=("aten.any.dim", "aten.any.dims", "aten.any.default"), doc="logical or over ``axes``")
reduction("all", np.all, to_bool, hlo=_hlo("and"), pad=masking_reduce(lambda _t: True),
          aten=("aten.all.dim", "aten.all.dims", "aten.all.default"), doc="logical and over ``axes``")


# --- mean, var: divide by the element count -----------------------------------------------------------


def _count(x: HloValue, axes: Sequence[int]) -> int:
    return math.prod(x.dims[a] for a in axes)


def _mean_hlo(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    out, dims = ctx.result_type()
    b, axes = ctx.b, ctx.ints("axes")
    x = b.convert(xs[0], widen(out))
    total = reduce_to(ctx, x, axes, "add", dims)
    return [b.convert(b.elementwise("divide", [total, b.full(_count(x, axes), total.dtype, dims)]), out)]


def _real_count(ctx: PadContext, x: Value, axes: Sequence[int], keepdims: bool, dtype: DType) -> Value:
    """The number of real elements reduced over ``axes``, shaped like the reduction's result."""
    m = ctx.mask(x, axes)
    assert m is not None
    ones = ctx.op("where", m, ctx.const(1, dtype), ctx.const(0, dtype))
    full = tuple(d if i in axes else 1 for i, d in enumerate(x.type.shape))
    ones = ctx.op("broadcast_to", ones, attrs={"shape": full})
    return ctx.op("sum", ones, attrs={"axes": tuple(axes), "keepdims": keepdims})


def _counting_pad(rewrite: Callable[[PadContext, Node, Value, tuple[int, ...], bool, DType], Value]) -> PadRule:
    """A padding rule for statistics that divide by the element count: the node as it is when no
    reduced axis is padded, else ``rewrite(ctx, node, x, axes, keepdims, result type)``."""

    def rule(ctx: PadContext, node: Node, inputs: list[Value]) -> PadResult:
        (x,) = inputs
        axes, keepdims = reduce_axes(node), attr_bool(node.attrs, "keepdims")
        layout = reduced_layout(ctx.layout(x), axes, keepdims)
        if not ctx.padded_in(x, axes):
            return ctx.copy(node, inputs), [layout]
        out_type = node.outputs[0].type.dtype
        return [ctx.astype(rewrite(ctx, node, x, axes, keepdims, out_type), out_type)], [layout]

    return rule


@_counting_pad
def _mean_pad(ctx: PadContext, node: Node, x: Value, axes: tuple[int, ...], keepdims: bool, out: DType) -> Value:
    """mean: masked sum divided by the real element count."""
    total = ctx.op("sum", ctx.masked(ctx.astype(x, out), axes, 0, like=x), attrs={"axes": axes, "keepdims": keepdims})
    return ctx.op("divide", total, _real_count(ctx, x, axes, keepdims, out))


reduction("mean", np.mean, to_float, hlo=_mean_hlo, pad=_mean_pad, aten=("aten.mean.dim", "aten.mean.default"),
          doc="arithmetic mean over ``axes``")


def _var(x: Array, axis: tuple[int, ...], keepdims: bool, correction: float) -> Array:
    return np.var(x, axis=axis, keepdims=keepdims, ddof=correction)  # type: ignore[no-any-return]


def _var_hlo(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    out, dims = ctx.result_type()
    b, axes = ctx.b, ctx.ints("axes")
    correction = float(node.attrs["correction"])  # type: ignore[arg-type]
    x = b.convert(xs[0], widen(out))
    kept = [1 if i in axes else d for i, d in enumerate(x.dims)]
    n = _count(x, axes)
    mean = b.elementwise("divide", [reduce_to(ctx, x, axes, "add", kept), b.full(n, x.dtype, kept)])
    centered = b.elementwise("subtract", [x, b.broadcast_to(mean, x.dims)])
    squares = reduce_to(ctx, b.elementwise("multiply", [centered, centered]), axes, "add", dims)
    return [b.convert(b.elementwise("divide", [squares, b.full(n - correction, x.dtype, dims)]), out)]


@_counting_pad
def _var_pad(ctx: PadContext, node: Node, x: Value, axes: tuple[int, ...], keepdims: bool, out: DType) -> Value:
    """var: masked mean, masked squared deviations, divided by (real count - correction)."""
    correction = node.attrs["correction"]
    assert isinstance(correction, float | int)
    xf = ctx.astype(x, out)
    total = ctx.op("sum", ctx.masked(xf, axes, 0, like=x), attrs={"axes": axes, "keepdims": True})
    mean = ctx.op("divide", total, _real_count(ctx, x, axes, True, out))
    dev = ctx.masked(ctx.op("subtract", xf, mean), axes, 0, like=x)
    squares = ctx.op("sum", ctx.op("multiply", dev, dev), attrs={"axes": axes, "keepdims": keepdims})
    denom = ctx.op("subtract", _real_count(ctx, x, axes, keepdims, out), ctx.const(float(correction), out))
    return ctx.op("divide", squares, denom)


def _var_kernel(e: KernelEmitter, node: Node, args: list[str], attrs: Mapping[str, Attr]) -> str:
    out = node.output.type.dtype
    x = e.cast(args[0], node.inputs[0].type.dtype, _compute(out))
    return (f"np.asarray(np.var({x}, axis={lit(attrs['axes'])}, keepdims={attrs['keepdims']}, "
            f"ddof={attrs['correction']!r})).astype({e.dt(out)})")


reduction("var", _var, to_float, hlo=_var_hlo, pad=_var_pad, kernel=_var_kernel, extra_attrs={"correction": "float"},
          doc="variance with ``correction`` (0 biased, 1 unbiased)")


# --- logsumexp ---------------------------------------------------------------------------------------


def logsumexp(x: Array, axis: tuple[int, ...], keepdims: bool) -> Array:
    """log(sum(exp(x))) over ``axis``, shifted by the max; an infinite max shifts by 0, as in torch."""
    peak = np.max(x, axis=axis, keepdims=True)
    peak = np.where(np.isinf(peak), np.zeros_like(peak), peak)
    total = np.sum(np.exp(x - peak), axis=axis, keepdims=keepdims)
    return np.log(total) + (peak if keepdims else np.squeeze(peak, axis))  # type: ignore[no-any-return]


def _logsumexp_hlo(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    out, dims = ctx.result_type()
    b, axes = ctx.b, ctx.ints("axes")
    x = b.convert(xs[0], widen(out))
    kept = [1 if i in axes else d for i, d in enumerate(x.dims)]
    peak = reduce_to(ctx, x, axes, "max", kept)
    infinite = b.compare("EQ", b.elementwise("abs", [peak]), b.full(math.inf, peak.dtype, kept))
    peak = b.select(infinite, b.full(0, peak.dtype, kept), peak)
    e = b.elementwise("exponential", [b.elementwise("subtract", [x, b.broadcast_to(peak, x.dims)])])
    total = reduce_to(ctx, e, axes, "add", dims)
    return [b.convert(b.elementwise("add", [b.elementwise("log", [total]), b.reshape(peak, dims)]), out)]


reduction("logsumexp", logsumexp, to_float, hlo=_logsumexp_hlo, pad=masking_reduce(lowest),
          aten=("aten.logsumexp.default",), doc="numerically stable log(sum(exp(x))) over ``axes``")


# --- cumsum, cumprod: inclusive prefix scans along one axis -------------------------------------------


def _scan(name: str, fn: Callable[..., Array], kind: str, neutral: int) -> None:
    """Define ``name``, the inclusive scan ``fn`` (np.cumsum, np.cumprod) along ``axis``.

    Result types as sum/prod (ints and bool give int64); half types accumulate in float32 and
    round once per element, as torch's CPU kernels do.
    """

    def shape_rule(types: Sequence[TensorType], attrs: Mapping[str, Attr]) -> list[TensorType]:
        t = types[0]
        check_axis(attr_int(attrs, "axis"), t.rank, name)
        return [TensorType(t.shape, _sum_type(t.dtype))]

    def reference(xs: Sequence[Array], attrs: Mapping[str, Attr]) -> list[Array]:
        out = _sum_type(dtype_of(xs[0]))
        with np.errstate(all="ignore"):
            return [cast(fn(cast(xs[0], _compute(out)), axis=attr_int(attrs, "axis")), out)]

    define_op(name, "reduce", 1, {"axis": "int"}, shape_rule, reference,
              f"inclusive {'sum' if kind == 'add' else 'product'} scan along ``axis`` (ints and bool give int64)")

    @hlo_rule(name)
    def hlo(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
        """One ``reduce-window``: output i reduces the window of the n inputs ending at i (n - 1
        low padding with the identity), so every output reads its own prefix only."""
        out, _ = ctx.result_type()
        b, axis = ctx.b, ctx.int_attr("axis")
        x = b.convert(xs[0], _compute(out))
        n = x.dims[axis]
        if n == 0:
            return [b.convert(x, out)]
        window = s.Window(dimensions=[
            s.WindowDimension(size=n if i == axis else 1, stride=1, padding_low=n - 1 if i == axis else 0,
                              padding_high=0, window_dilation=1, base_dilation=1)
            for i in range(x.rank)
        ])
        reducer = b.module.reducer(kind, x.dtype)
        init = b.constant(init_value(kind, x.dtype), x.dtype)
        scanned = b.op("reduce-window", [x, init], x.dtype, x.dims, window=window,
                       called_computation_ids=[reducer.id])
        return [b.convert(scanned, out)]

    @pad_rule(name)
    def pad(ctx: PadContext, node: Node, inputs: list[Value]) -> PadResult:
        """A prefix scan along an axis whose padding is at its end needs nothing: output i reads
        inputs 0..i only, so no real output reads the padding. When the padding sits between
        real elements (a padded factor after the first), it becomes the identity (0 for a sum,
        1 for a product) and adds nothing to the real prefixes that run past it."""
        (x,) = inputs
        axis = attr_int(node.attrs, "axis")
        if ctx.reorders(ctx.layout(x)[axis]):
            x = ctx.masked(x, (axis,), neutral)
        return ctx.copy(node, [x]), [ctx.layout(inputs[0])]

    @kernel_rule(name)
    def kernel(e: KernelEmitter, node: Node, args: list[str], attrs: Mapping[str, Attr]) -> str:
        out = node.output.type.dtype
        x = e.cast(args[0], node.inputs[0].type.dtype, _compute(out))
        return e.cast(f"np.{fn.__name__}({x}, axis={attrs['axis']})", _compute(out), out)


_scan("cumsum", np.cumsum, "add", 0)
_scan("cumprod", np.cumprod, "mul", 1)


# --- argmax, argmin ---------------------------------------------------------------------------------


def _arg_reducer(b: ComputationBuilder, vtype: DType, largest: bool) -> s.Computation:
    """(value, index) pairs: the first extremum wins, NaN counts as the extremum."""
    module = b.module
    key = ("argmax" if largest else "argmin", vtype)
    cached = module.extra_computations.get(key)
    if cached is not None:
        return cached
    c = ComputationBuilder(module, f"{key[0]}_{vtype.value}")
    acc_v, acc_i = c.parameter(0, vtype, (), "acc_value"), c.parameter(1, I64, (), "acc_index")
    x_v, x_i = c.parameter(2, vtype, (), "value"), c.parameter(3, I64, (), "index")
    x_nan, a_nan = c.compare("NE", x_v, x_v), c.compare("NE", acc_v, acc_v)
    better = c.compare("GT" if largest else "LT", x_v, acc_v)
    tie = c.elementwise("or", [c.compare("EQ", x_v, acc_v), c.elementwise("and", [x_nan, a_nan])])
    earlier = c.compare("LT", x_i, acc_i)
    pick = c.elementwise("or", [
        c.elementwise("and", [x_nan, c.elementwise("not", [a_nan])]),
        c.elementwise("or", [c.elementwise("and", [c.elementwise("not", [a_nan]), better]),
                             c.elementwise("and", [tie, earlier])]),
    ])
    root = c.tuple([c.select(pick, x_v, acc_v), c.select(pick, x_i, acc_i)])
    built = c.finish(root)
    module.reducers.append(built)
    module.extra_computations[key] = built
    return built


def _arg_hlo(largest: bool) -> HloRule:
    """argmax/argmin as a variadic reduce over (value, index) pairs."""

    def rule(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
        out, dims = ctx.result_type()
        b, axis = ctx.b, ctx.int_attr("axis")
        x = xs[0]
        vtype = widen(x.dtype) if x.dtype.is_floating else (DType.int32 if x.dtype is BOOL else x.dtype)
        x = b.convert(x, vtype)
        reducer = _arg_reducer(b, vtype, largest)
        index = b.iota(I64, x.dims, axis)
        init_v = b.constant(init_value("max" if largest else "min", vtype), vtype)
        init_i = b.constant(0, I64)
        reduced = [d for i, d in enumerate(x.dims) if i != axis]
        pair = b.add("reduce", [x, index, init_v, init_i],
                     tuple_shape([array_shape(vtype, reduced), array_shape(I64, reduced)]),
                     dimensions=[axis], called_computation_ids=[reducer.id])
        return [b.convert(b.reshape(b.get_tuple_element(pair, 1), dims), out)]

    return rule


def _arg_reduce(name: str, fn: Callable[..., Array], largest: bool) -> None:
    def shape_rule(types: Sequence[TensorType], attrs: Mapping[str, Attr]) -> list[TensorType]:
        shape = reduced_shape(types[0], (attr_int(attrs, "axis"),), attr_bool(attrs, "keepdims"), name)
        return [TensorType(shape, DType.int64)]

    def reference(xs: Sequence[Array], attrs: Mapping[str, Attr]) -> list[Array]:
        x = xs[0]
        if dtype_of(x) is DType.bfloat16:
            x = x.astype(np.float32)  # exact, and every numpy version can compare it
        return [np.asarray(fn(x, axis=attr_int(attrs, "axis"), keepdims=attr_bool(attrs, "keepdims"))).astype(np.int64)]

    define_op(name, "reduce", 1, {"axis": "int", "keepdims": "bool"}, shape_rule, reference,
              f"index of the first {name[3:]} along ``axis`` (int64)")
    hlo_rule(name)(_arg_hlo(largest))
    pad_rule(name)(_arg_pad(largest))


def _arg_pad(largest: bool) -> PadRule:
    """argmax/argmin: padded entries become the lowest (highest) value, so they never win, and the
    axis is linearized first when it reorders (see :meth:`PadContext.linearized`): the index is then
    counted in real positions, and a tie with the fill value still goes to the first real entry."""

    def rule(ctx: PadContext, node: Node, inputs: list[Value]) -> PadResult:
        (x,) = inputs
        axis = attr_int(node.attrs, "axis")
        fill = lowest(x.type.dtype) if largest else highest(x.type.dtype)
        outs = ctx.copy(node, [ctx.linearized(x, axis, fill)])
        return outs, [reduced_layout(ctx.layout(x), (axis,), attr_bool(node.attrs, "keepdims"))]

    return rule


_arg_reduce("argmax", np.argmax, largest=True)
_arg_reduce("argmin", np.argmin, largest=False)


@kernel_rule("argmax", "argmin")
def _arg_kernel(e: KernelEmitter, node: Node, args: list[str], attrs: Mapping[str, Attr]) -> str:
    x = e.cast(args[0], DType.bfloat16, DType.float32) if node.inputs[0].type.dtype is DType.bfloat16 else args[0]
    return f"np.asarray(np.{node.op}({x}, axis={attrs['axis']}, keepdims={attrs['keepdims']})).astype(np.int64)"
