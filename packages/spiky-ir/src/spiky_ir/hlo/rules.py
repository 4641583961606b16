"""HLO emission rules, one per IR op, registered into ``OpDef.extra["hlo"]``.

A rule receives the :class:`HloContext` (the computation being built), the IR node and the
HLO values of its operands, and returns one HLO value per node result, of exactly the
node's result types. IR ops promote and broadcast implicitly; rules make that explicit
with ``convert`` and ``broadcast`` (:meth:`ComputationBuilder.coerce`), once, here.

Numerics follow the reference executor: elementwise ops, reductions, matmul and conv on
half types compute in float32 and round once (:func:`compute_type`).

Adding an op: write its rule below and add it to :data:`RULES`. ``missing_rules()`` names
registered ops that have none (a test keeps that list empty).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from spiky_ir.dtypes import DType, promote
from spiky_ir.errors import IRError
from spiky_ir.hlo import schema as s
from spiky_ir.hlo.builder import ComputationBuilder, HloValue, array_shape, tuple_shape
from spiky_ir.ir import Node, TensorType
from spiky_ir.ops import all_ops, broadcast_shapes, get_op

I64, F32, BOOL = DType.int64, DType.float32, DType.bool


@dataclass
class HloContext:
    """What a rule builds with: the computation builder, the node, and module-level inputs."""

    b: ComputationBuilder
    node: Node
    replica_groups: Mapping[str, Sequence[Sequence[int]]] = field(default_factory=dict)
    """Process group name → replica groups, for collectives."""

    def result_type(self, index: int = 0) -> tuple[DType, tuple[int, ...]]:
        t: TensorType = self.node.outputs[index].type
        return t.dtype, t.static_shape()

    def fail(self, why: str) -> IRError:
        return IRError(f"cannot emit HLO for node {self.node.describe()}: {why}")

    def int_attr(self, key: str) -> int:
        value = self.node.attrs[key]
        assert isinstance(value, int)
        return value

    def ints(self, key: str) -> tuple[int, ...]:
        value = self.node.attrs[key]
        assert isinstance(value, tuple)
        return tuple(int(v) for v in value)


HloRule = Callable[[HloContext, Node, Sequence[HloValue]], Sequence[HloValue]]


def widen(dtype: DType) -> DType:
    """Half types compute in float32 (as the reference does) and round once at the end."""
    return F32 if dtype in (DType.float16, DType.bfloat16) else dtype


def compute_type(operand: DType, out: DType) -> DType:
    return widen(out) if out.is_floating else operand


def _promoted(xs: Sequence[HloValue]) -> DType:
    dtype = xs[0].dtype
    for x in xs[1:]:
        dtype = promote(dtype, x.dtype)
    return dtype


# --- elementwise ------------------------------------------------------------------------------

Emit = Callable[[ComputationBuilder, list[HloValue]], HloValue]


def _elementwise(emit: Emit, *, compute: Callable[[DType, DType], DType] = compute_type) -> HloRule:
    """A rule that coerces operands to the compute type and result shape, emits, converts to the result."""

    def rule(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
        out, dims = ctx.result_type()
        ctype = compute(_promoted(xs), out)
        args = [ctx.b.coerce(x, ctype, dims) for x in xs]
        return [ctx.b.convert(emit(ctx.b, args), out)]

    return rule


def _opcode(name: str) -> Emit:
    return lambda b, a: b.elementwise(name, a)


def _zero(b: ComputationBuilder, like: HloValue) -> HloValue:
    return b.full(0, like.dtype, like.dims)


def _nonzero(b: ComputationBuilder, x: HloValue) -> HloValue:
    return x if x.dtype is BOOL else b.compare("NE", x, _zero(b, x))


def _arith(opcode: str, on_bool: str | None) -> Emit:
    def emit(b: ComputationBuilder, a: list[HloValue]) -> HloValue:
        if a[0].dtype is BOOL:
            if on_bool is None:
                raise IRError(f"'{opcode}' is not defined on bool (numpy rejects it too)")
            if on_bool == "power":  # x ** y on bools, computed in int32
                ints = [b.convert(x, DType.int32) for x in a]
                return b.convert(b.elementwise("power", ints), BOOL)
            return b.elementwise(on_bool, a)
        return b.elementwise(opcode, a)

    return emit


def _int_division(b: ComputationBuilder, a: list[HloValue], result: HloValue) -> HloValue:
    """numpy gives 0 for an integer division by zero (XLA gives -1 or the dividend)."""
    y = a[1]
    if y.dtype.is_floating:
        return result
    return b.select(b.compare("EQ", y, _zero(b, y)), _zero(b, result), result)


def _floor_divide(b: ComputationBuilder, a: list[HloValue]) -> HloValue:
    x, y = a
    if x.dtype.is_floating:
        return b.elementwise("floor", [b.elementwise("divide", [x, y])])
    q = b.elementwise("divide", [x, y])  # truncates toward zero
    r = b.elementwise("remainder", [x, y])
    signs_differ = b.compare("NE", b.compare("LT", r, _zero(b, r)), b.compare("LT", y, _zero(b, y)))
    adjust = b.elementwise("and", [b.compare("NE", r, _zero(b, r)), signs_differ])
    return _int_division(b, a, b.select(adjust, b.elementwise("subtract", [q, b.full(1, q.dtype, q.dims)]), q))


def _remainder(b: ComputationBuilder, a: list[HloValue]) -> HloValue:
    x, y = a
    r = b.elementwise("remainder", [x, y])  # C fmod: the sign of the dividend
    signs_differ = b.compare("NE", b.compare("LT", r, _zero(b, r)), b.compare("LT", y, _zero(b, y)))
    adjust = b.elementwise("and", [b.compare("NE", r, _zero(b, r)), signs_differ])
    return _int_division(b, a, b.select(adjust, b.elementwise("add", [r, y]), r))


def _fmod(b: ComputationBuilder, a: list[HloValue]) -> HloValue:
    return _int_division(b, a, b.elementwise("remainder", a))


def _int8_for_bool(operand: DType, out: DType) -> DType:
    """Integer division ops on bool compute in int8, as numpy's upcast does."""
    return DType.int8 if operand is BOOL else compute_type(operand, out)


def _compare(direction: str) -> Emit:
    return lambda b, a: b.compare(direction, a[0], a[1])


def _logical(opcode: str) -> Emit:
    return lambda b, a: b.elementwise(opcode, [_nonzero(b, x) for x in a])


def _same_type(operand: DType, _out: DType) -> DType:
    return operand


def _integral_identity(opcode: str) -> Emit:
    """Rounding ops: the identity on ints and bools (numpy agrees), ``opcode`` on floats."""
    return lambda b, a: b.elementwise(opcode, a) if a[0].dtype.is_floating else a[0]


def _trunc(b: ComputationBuilder, a: list[HloValue]) -> HloValue:
    x = a[0]
    if not x.dtype.is_floating:
        return x
    return b.select(b.compare("LT", x, _zero(b, x)), b.elementwise("ceil", [x]), b.elementwise("floor", [x]))


def _sign(b: ComputationBuilder, a: list[HloValue]) -> HloValue:
    x = a[0]
    if x.dtype is BOOL:
        return x
    if x.dtype is DType.uint8:
        return b.convert(_nonzero(b, x), x.dtype)
    return b.elementwise("sign", [x])


def _abs(b: ComputationBuilder, a: list[HloValue]) -> HloValue:
    return a[0] if a[0].dtype in (BOOL, DType.uint8) else b.elementwise("abs", a)  # XLA abs rejects unsigned


def _negative(b: ComputationBuilder, a: list[HloValue]) -> HloValue:
    if a[0].dtype is BOOL:
        raise IRError("'negative' is not defined on bool (numpy rejects it too); use logical_not")
    return b.elementwise("negate", a)


def _reciprocal(b: ComputationBuilder, a: list[HloValue]) -> HloValue:
    return b.elementwise("divide", [b.full(1, a[0].dtype, a[0].dims), a[0]])


def _isnan(b: ComputationBuilder, a: list[HloValue]) -> HloValue:
    x = a[0]
    return b.compare("NE", x, x) if x.dtype.is_floating else b.full(False, BOOL, x.dims)


def _isinf(b: ComputationBuilder, a: list[HloValue]) -> HloValue:
    x = a[0]
    if not x.dtype.is_floating:
        return b.full(False, BOOL, x.dims)
    return b.compare("EQ", b.elementwise("abs", [x]), b.full(math.inf, x.dtype, x.dims))


def _logical_not(b: ComputationBuilder, a: list[HloValue]) -> HloValue:
    return b.elementwise("not", [_nonzero(b, a[0])])


_ELEMENTWISE: dict[str, HloRule] = {
    "add": _elementwise(_arith("add", "or")),
    "subtract": _elementwise(_arith("subtract", None)),
    "multiply": _elementwise(_arith("multiply", "and")),
    "divide": _elementwise(_opcode("divide")),
    "power": _elementwise(_arith("power", "power")),
    "maximum": _elementwise(_arith("maximum", "or")),
    "minimum": _elementwise(_arith("minimum", "and")),
    "floor_divide": _elementwise(_floor_divide, compute=_int8_for_bool),
    "remainder": _elementwise(_remainder, compute=_int8_for_bool),
    "fmod": _elementwise(_fmod, compute=_int8_for_bool),
    "arctan2": _elementwise(_opcode("atan2")),
    **{name: _elementwise(_compare(d), compute=_same_type) for name, d in (
        ("equal", "EQ"), ("not_equal", "NE"), ("less", "LT"), ("less_equal", "LE"), ("greater", "GT"),
        ("greater_equal", "GE"))},
    "logical_and": _elementwise(_logical("and"), compute=_same_type),
    "logical_or": _elementwise(_logical("or"), compute=_same_type),
    "logical_xor": _elementwise(_logical("xor"), compute=_same_type),
    "bitwise_and": _elementwise(_opcode("and")),
    "bitwise_or": _elementwise(_opcode("or")),
    "bitwise_xor": _elementwise(_opcode("xor")),
    "bitwise_not": _elementwise(_opcode("not")),
    "logical_not": _elementwise(_logical_not, compute=_same_type),
    "negative": _elementwise(_negative),
    "abs": _elementwise(_abs),
    "sign": _elementwise(_sign),
    "ceil": _elementwise(_integral_identity("ceil")),
    "floor": _elementwise(_integral_identity("floor")),
    "round": _elementwise(_integral_identity("round-nearest-even")),
    "trunc": _elementwise(_trunc),
    "exp": _elementwise(_opcode("exponential")),
    "expm1": _elementwise(_opcode("exponential-minus-one")),
    "log": _elementwise(_opcode("log")),
    "log1p": _elementwise(_opcode("log-plus-one")),
    "sqrt": _elementwise(_opcode("sqrt")),
    "rsqrt": _elementwise(_opcode("rsqrt")),
    "reciprocal": _elementwise(_reciprocal),
    "sin": _elementwise(_opcode("sine")),
    "cos": _elementwise(_opcode("cosine")),
    "tan": _elementwise(_opcode("tan")),
    "tanh": _elementwise(_opcode("tanh")),
    "sigmoid": _elementwise(_opcode("logistic")),
    "erf": _elementwise(_opcode("erf")),
    "isnan": _elementwise(_isnan, compute=_same_type),
    "isinf": _elementwise(_isinf, compute=_same_type),
}


# --- creation -------------------------------------------------------------------------------------


def _constant(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    dtype, dims = ctx.result_type()
    return [ctx.b.constant(node.attrs["value"], dtype, dims)]


def _dim_value(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    dtype, dims = ctx.result_type()
    value = node.attrs["value"]
    if not isinstance(value, int):
        raise ctx.fail(f"dim_value {value!r} is symbolic; specialize the graph before emitting HLO")
    return [ctx.b.constant(value, dtype, dims)]


def _full(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    dtype, dims = ctx.result_type()
    return [ctx.b.full(node.attrs.get("value", 0), dtype, dims)]


def _iota(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    dtype, dims = ctx.result_type()
    index = ctx.b.iota(I64, dims, ctx.int_attr("axis"))
    return [ctx.b.convert(index, dtype)]


def _arange(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    # start + i * step in double precision, rounded once (as torch and the reference do)
    dtype, dims = ctx.result_type()
    b = ctx.b
    i = b.iota(DType.float64, dims, 0)
    step = b.full(float(node.attrs["step"]), DType.float64, dims)  # type: ignore[arg-type]
    start = b.full(float(node.attrs["start"]), DType.float64, dims)  # type: ignore[arg-type]
    return [b.convert(b.elementwise("add", [start, b.elementwise("multiply", [i, step])]), dtype)]


def _triangle(lower: bool) -> HloRule:
    def rule(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
        b, x = ctx.b, xs[0]
        rank = x.rank
        rows = b.iota(I64, x.dims, rank - 2)
        cols = b.iota(I64, x.dims, rank - 1)
        diag = b.elementwise("add", [rows, b.full(ctx.int_attr("k"), I64, x.dims)])
        keep = b.compare("LE" if lower else "GE", cols, diag)
        return [b.select(keep, x, _zero(b, x))]

    return rule


# --- types and shapes ------------------------------------------------------------------------------


def _astype(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    dtype, _ = ctx.result_type()
    return [ctx.b.convert(xs[0], dtype)]


def _transpose(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    return [ctx.b.transpose(xs[0], ctx.ints("axes"))]


def _reshape_like_result(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    """reshape, expand_dims, squeeze: all row-major reshapes to the result shape."""
    _, dims = ctx.result_type()
    return [ctx.b.reshape(xs[0], dims)]


def _broadcast_to(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    _, dims = ctx.result_type()
    return [ctx.b.broadcast_to(xs[0], dims)]


def _concatenate(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    dtype, dims = ctx.result_type()
    parts = [ctx.b.convert(x, dtype) for x in xs]
    if len(parts) == 1:
        return parts
    return [ctx.b.op("concatenate", parts, dtype, dims, dimensions=[ctx.int_attr("axis")])]


def _split(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    x, axis = xs[0], ctx.int_attr("axis")
    out, offset = [], 0
    for value in node.outputs:
        size = value.type.static_shape()[axis]
        start = [offset if i == axis else 0 for i in range(x.rank)]
        limit = [offset + size if i == axis else d for i, d in enumerate(x.dims)]
        out.append(ctx.b.slice(x, start, limit, [1] * x.rank))
        offset += size
    return out


def _slice(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    return [ctx.b.slice(xs[0], ctx.ints("start"), ctx.ints("stop"), ctx.ints("step"))]


def _pad(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    x = xs[0]
    _, dims = ctx.result_type()
    value = ctx.b.constant(node.attrs["value"], x.dtype)
    config = s.PaddingConfig(dimensions=[
        s.PaddingConfigDimension(edge_padding_low=lo, edge_padding_high=hi)
        for lo, hi in zip(ctx.ints("lo"), ctx.ints("hi"), strict=True)
    ])
    return [ctx.b.op("pad", [x, value], x.dtype, dims, padding_config=config)]


def _flip(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    axes = sorted(ctx.ints("axes"))
    if not axes:
        return [xs[0]]
    return [ctx.b.op("reverse", [xs[0]], xs[0].dtype, xs[0].dims, dimensions=axes)]


def _repeat(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    # np.repeat: (..., d, ...) → (..., d, 1, ...) → broadcast (..., d, n, ...) → (..., d*n, ...)
    x, axis, n = xs[0], ctx.int_attr("axis"), ctx.int_attr("repeats")
    _, dims = ctx.result_type()
    b = ctx.b
    expanded = b.reshape(x, (*x.dims[: axis + 1], 1, *x.dims[axis + 1 :]))
    spread = b.broadcast_to(expanded, (*x.dims[: axis + 1], n, *x.dims[axis + 1 :]))
    return [b.reshape(spread, dims)]


def _tile(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    # np.tile: (d0, d1) → broadcast to (r0, d0, r1, d1) → reshape (r0*d0, r1*d1)
    x, reps = xs[0], ctx.ints("reps")
    _, dims = ctx.result_type()
    interleaved = [v for r, d in zip(reps, x.dims, strict=True) for v in (r, d)]
    spread = ctx.b.broadcast_in_dim(x, interleaved, [2 * i + 1 for i in range(x.rank)])
    return [ctx.b.reshape(spread, dims)]


# --- reductions ------------------------------------------------------------------------------------


def _init(kind: str, dtype: DType) -> float | int | bool:
    if kind == "add":
        return False if dtype is BOOL else 0
    if kind == "mul":
        return True if dtype is BOOL else 1
    if kind in ("max", "min"):
        sign = -1 if kind == "max" else 1
        if dtype.is_floating:
            return sign * math.inf
        if dtype is BOOL:
            return kind == "min"
        info = __import__("numpy").iinfo(dtype.to_numpy())
        return int(info.min if kind == "max" else info.max)
    return kind == "and"  # and: True, or: False


def _reduce_to(ctx: HloContext, x: HloValue, axes: Sequence[int], kind: str, dims: Sequence[int]) -> HloValue:
    """Reduce ``x`` over ``axes`` then reshape to ``dims`` (the keepdims form when asked)."""
    b = ctx.b
    out = b.reduce(x, b.constant(_init(kind, x.dtype), x.dtype), axes, kind)
    return b.reshape(out, dims)


def _reduction(kind: str) -> HloRule:
    def rule(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
        out, dims = ctx.result_type()
        x = _nonzero(ctx.b, xs[0]) if kind in ("and", "or") else ctx.b.convert(xs[0], widen(out))
        return [ctx.b.convert(_reduce_to(ctx, x, ctx.ints("axes"), kind, dims), out)]

    return rule


def _count(x: HloValue, axes: Sequence[int]) -> int:
    return math.prod(x.dims[a] for a in axes)


def _mean(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    out, dims = ctx.result_type()
    b, axes = ctx.b, ctx.ints("axes")
    x = b.convert(xs[0], widen(out))
    total = _reduce_to(ctx, x, axes, "add", dims)
    return [b.convert(b.elementwise("divide", [total, b.full(_count(x, axes), total.dtype, dims)]), out)]


def _var(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    out, dims = ctx.result_type()
    b, axes = ctx.b, ctx.ints("axes")
    correction = float(node.attrs["correction"])  # type: ignore[arg-type]
    x = b.convert(xs[0], widen(out))
    kept = [1 if i in axes else d for i, d in enumerate(x.dims)]
    n = _count(x, axes)
    mean = b.elementwise("divide", [_reduce_to(ctx, x, axes, "add", kept), b.full(n, x.dtype, kept)])
    centered = b.elementwise("subtract", [x, b.broadcast_to(mean, x.dims)])
    squares = _reduce_to(ctx, b.elementwise("multiply", [centered, centered]), axes, "add", dims)
    return [b.convert(b.elementwise("divide", [squares, b.full(n - correction, x.dtype, dims)]), out)]


def _arg_reduce(largest: bool) -> HloRule:
    """argmax/argmin as a variadic reduce over (value, index) pairs: first extremum wins, NaN counts as one."""

    def rule(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
        out, dims = ctx.result_type()
        b, axis = ctx.b, ctx.int_attr("axis")
        x = xs[0]
        vtype = widen(x.dtype) if x.dtype.is_floating else (DType.int32 if x.dtype is BOOL else x.dtype)
        x = b.convert(x, vtype)
        reducer = _arg_reducer(b, vtype, largest)
        index = b.iota(I64, x.dims, axis)
        init_v = b.constant(_init("max" if largest else "min", vtype), vtype)
        init_i = b.constant(0, I64)
        reduced = [d for i, d in enumerate(x.dims) if i != axis]
        pair = b.add("reduce", [x, index, init_v, init_i],
                     tuple_shape([array_shape(vtype, reduced), array_shape(I64, reduced)]),
                     dimensions=[axis], called_computation_ids=[reducer.id])
        return [b.convert(b.reshape(b.get_tuple_element(pair, 1), dims), out)]

    return rule


def _arg_reducer(b: ComputationBuilder, vtype: DType, largest: bool) -> s.Computation:
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


def _softmax(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    out, dims = ctx.result_type()
    b, axis = ctx.b, ctx.int_attr("axis")
    x = b.convert(xs[0], widen(out))
    kept = [1 if i == axis else d for i, d in enumerate(dims)]
    peak = _reduce_to(ctx, x, [axis], "max", kept)
    e = b.elementwise("exponential", [b.elementwise("subtract", [x, b.broadcast_to(peak, dims)])])
    total = _reduce_to(ctx, e, [axis], "add", kept)
    return [b.convert(b.elementwise("divide", [e, b.broadcast_to(total, dims)]), out)]


def _topk(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
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


# --- linalg and convolution ----------------------------------------------------------------------------


def _matmul(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    """NumPy matmul as one batched ``dot``: 1-D operands get a unit dim, batch dims are broadcast."""
    dtype, dims = ctx.result_type()
    b = ctx.b
    compute = DType.int32 if dtype is BOOL else widen(dtype)  # XLA has no dot on pred
    a, w = (b.convert(x, compute) for x in xs)
    if a.rank == 1:
        a = b.reshape(a, (1, a.dims[0]))
    if w.rank == 1:
        w = b.reshape(w, (w.dims[0], 1))
    batch = tuple(int(d) for d in broadcast_shapes(a.dims[:-2], w.dims[:-2]))
    a = b.broadcast_to(a, batch + a.dims[-2:])
    w = b.broadcast_to(w, batch + w.dims[-2:])
    nb = len(batch)
    out = b.dot(a, w, lhs_contracting=[nb + 1], rhs_contracting=[nb],
                lhs_batch=list(range(nb)), rhs_batch=list(range(nb)))
    if dtype is BOOL:
        return [b.reshape(_nonzero(b, out), dims)]
    return [b.convert(b.reshape(out, dims), dtype)]


def _conv(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    """NC(H)(W) input, OI(H)(W) weight: one ``convolution`` with explicit window and dim numbers."""
    out, dims = ctx.result_type()
    b = ctx.b
    x, w = (b.convert(v, widen(out)) for v in xs)
    nd = x.rank - 2
    stride, dilation = ctx.ints("stride"), ctx.ints("dilation")
    lo, hi = ctx.ints("pad_lo"), ctx.ints("pad_hi")
    window = s.Window(dimensions=[
        s.WindowDimension(size=w.dims[2 + i], stride=stride[i], padding_low=lo[i], padding_high=hi[i],
                          window_dilation=dilation[i], base_dilation=1)
        for i in range(nd)
    ])
    spatial = list(range(2, 2 + nd))
    numbers = s.ConvolutionDimensionNumbers(
        input_batch_dimension=0, input_feature_dimension=1, input_spatial_dimensions=spatial,
        kernel_output_feature_dimension=0, kernel_input_feature_dimension=1, kernel_spatial_dimensions=spatial,
        output_batch_dimension=0, output_feature_dimension=1, output_spatial_dimensions=spatial,
    )
    y = b.op("convolution", [x, w], x.dtype, dims, window=window, convolution_dimension_numbers=numbers,
             feature_group_count=ctx.int_attr("groups"), batch_group_count=1)
    return [b.convert(y, out)]


# --- indexing --------------------------------------------------------------------------------------------


def _where(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    dtype, dims = ctx.result_type()
    b = ctx.b
    cond = b.broadcast_to(xs[0], dims)
    return [b.select(cond, b.coerce(xs[1], dtype, dims), b.coerce(xs[2], dtype, dims))]


def _wrapped(b: ComputationBuilder, idx: HloValue, size: int) -> HloValue:
    """Indices as int64 with negative ones wrapped (numpy's take/take_along_axis)."""
    idx = b.convert(idx, I64)
    negative = b.compare("LT", idx, _zero(b, idx))
    return b.select(negative, b.elementwise("add", [idx, b.full(size, I64, idx.dims)]), idx)


def _take(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
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


def _full_indices(b: ComputationBuilder, idx: HloValue, axis: int) -> HloValue:
    """``idx.shape + [rank]`` coordinates: iotas on every dim except ``axis``, which takes ``idx``."""
    columns = []
    for dim in range(idx.rank):
        column = idx if dim == axis else b.iota(I64, idx.dims, dim)
        columns.append(b.reshape(column, (*idx.dims, 1)))
    if len(columns) == 1:
        return columns[0]
    return b.op("concatenate", columns, I64, (*idx.dims, idx.rank), dimensions=[idx.rank])


def _take_along_axis(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    b, x = ctx.b, xs[0]
    axis = ctx.int_attr("axis")
    _, dims = ctx.result_type()
    coords = _full_indices(b, _wrapped(b, xs[1], x.dims[axis]), axis)
    numbers = s.GatherDimensionNumbers(offset_dims=[], collapsed_slice_dims=list(range(x.rank)),
                                       start_index_map=list(range(x.rank)), index_vector_dim=x.rank)
    return [b.op("gather", [x, coords], x.dtype, dims, gather_dimension_numbers=numbers,
                 gather_slice_sizes=[1] * x.rank)]


def _scatter(kind: str) -> HloRule:
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


def _starts(b: ComputationBuilder, xs: Sequence[HloValue]) -> list[HloValue]:
    return [b.convert(v, I64) for v in xs]  # XLA wants one integer type for all starts


def _dynamic_slice(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    x = xs[0]
    sizes = list(ctx.ints("sizes"))
    return [ctx.b.op("dynamic-slice", [x, *_starts(ctx.b, xs[1:])], x.dtype, sizes, dynamic_slice_sizes=sizes)]


def _dynamic_update_slice(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    x = xs[0]
    update = ctx.b.convert(xs[1], x.dtype)
    return [ctx.b.op("dynamic-update-slice", [x, update, *_starts(ctx.b, xs[2:])], x.dtype, x.dims)]


# --- collectives -----------------------------------------------------------------------------------------

_REDUCE_KIND = {"sum": "add", "avg": "add", "product": "mul", "min": "min", "max": "max"}


def _groups(ctx: HloContext) -> Sequence[Sequence[int]]:
    name = str(ctx.node.attrs["group_name"])
    if name not in ctx.replica_groups:
        known = ", ".join(map(repr, ctx.replica_groups)) or "none"
        raise ctx.fail(f"process group {name!r} has no replica groups; pass emit_hlo(..., replica_groups="
                       f"{{{name!r}: [[0, 1, ...]]}}) (known: {known})")
    groups = ctx.replica_groups[name]
    size = ctx.node.attrs.get("group_size")
    if isinstance(size, int) and any(len(g) != size for g in groups):
        raise ctx.fail(f"group_size {size} does not match replica groups {[list(g) for g in groups]}")
    return groups


def _all_reduce(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    b, groups = ctx.b, _groups(ctx)
    op = str(node.attrs["reduce_op"])
    out = b.all_reduce(xs[0], _REDUCE_KIND[op], groups)
    if op == "avg":
        out = b.elementwise("divide", [out, b.full(len(groups[0]), out.dtype, out.dims)])
    return [out]


def _all_gather(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    return [ctx.b.all_gather(xs[0], 0, _groups(ctx))]


def _reduce_scatter(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    b, groups = ctx.b, _groups(ctx)
    op = str(node.attrs["reduce_op"])
    out = b.reduce_scatter(xs[0], _REDUCE_KIND[op], 0, groups)
    if op == "avg":
        out = b.elementwise("divide", [out, b.full(len(groups[0]), out.dtype, out.dims)])
    return [out]


def _broadcast(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    # HLO has no broadcast collective in our opcode subset: gather every rank's tensor
    # along a new leading dim, then keep group rank ``src``'s slice.
    b, groups, x = ctx.b, _groups(ctx), xs[0]
    src = node.attrs["src"]
    assert isinstance(src, int)  # the op registry checked the attribute kind
    if not 0 <= src < len(groups[0]):
        raise ctx.fail(f"broadcast src {src} is outside the group of {len(groups[0])} ranks")
    gathered = b.all_gather(b.reshape(x, (1, *x.dims)), 0, groups)
    picked = b.slice(gathered, [src, *[0] * x.rank], [src + 1, *x.dims], [1] * (x.rank + 1))
    return [b.reshape(picked, x.dims)]


def _all_to_all(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    groups = _groups(ctx)
    for key in ("input_split_sizes", "output_split_sizes"):
        splits = ctx.ints(key)
        if splits and len(set(splits)) != 1:
            raise ctx.fail(f"{key} {list(splits)} are unequal; HLO all-to-all splits dim 0 evenly")
    return [ctx.b.all_to_all(xs[0], 0, groups)]


# --- the table ------------------------------------------------------------------------------------------

RULES: dict[str, HloRule] = {
    **_ELEMENTWISE,
    "constant": _constant, "dim_value": _dim_value, "full": _full, "zeros": _full, "iota": _iota, "arange": _arange,
    "tril": _triangle(lower=True), "triu": _triangle(lower=False),
    "astype": _astype, "transpose": _transpose, "reshape": _reshape_like_result,
    "expand_dims": _reshape_like_result, "squeeze": _reshape_like_result, "broadcast_to": _broadcast_to,
    "concatenate": _concatenate, "split": _split, "slice": _slice, "pad": _pad, "flip": _flip,
    "repeat": _repeat, "tile": _tile,
    "sum": _reduction("add"), "prod": _reduction("mul"), "max": _reduction("max"), "min": _reduction("min"),
    "any": _reduction("or"), "all": _reduction("and"), "mean": _mean, "var": _var,
    "argmax": _arg_reduce(largest=True), "argmin": _arg_reduce(largest=False),
    "softmax": _softmax, "topk": _topk,
    "matmul": _matmul, "dot": _matmul, "conv1d": _conv, "conv2d": _conv,
    "where": _where, "take": _take, "take_along_axis": _take_along_axis,
    "scatter": _scatter("replace"), "scatter_add": _scatter("add"),
    "dynamic_slice": _dynamic_slice, "dynamic_update_slice": _dynamic_update_slice,
    "all_reduce": _all_reduce, "all_gather": _all_gather, "reduce_scatter": _reduce_scatter,
    "all_to_all": _all_to_all, "broadcast": _broadcast,
}
"""IR op name → HLO rule; :func:`register_rules` copies it into the op registry."""


def register_rules() -> None:
    """Attach every rule in :data:`RULES` whose op is registered (idempotent)."""
    registered = all_ops()
    for name, rule in RULES.items():
        if name in registered:
            get_op(name).extra["hlo"] = rule


def missing_rules() -> list[str]:
    """Registered ops without an HLO rule, sorted."""
    register_rules()
    return sorted(name for name, op in all_ops().items() if "hlo" not in op.extra)
