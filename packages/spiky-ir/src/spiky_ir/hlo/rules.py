"""HLO emission rules, one per IR op, registered into ``OpDef.extra["hlo"]``.

A rule receives the :class:`HloContext` (the computation being built), the IR node and the
HLO values of its operands, and returns one HLO value per node result, of exactly the
node's result types. IR ops promote and broadcast implicitly; rules make that explicit
with ``convert`` and ``broadcast`` (:meth:`ComputationBuilder.coerce`), once, here.

Adding an op: write its rule below and add it to :data:`RULES`. ``missing_rules()`` names
registered ops that have none (a test keeps that list empty).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from spiky_ir.dtypes import DType, promote
from spiky_ir.errors import IRError
from spiky_ir.hlo.builder import ComputationBuilder, HloValue
from spiky_ir.ir import Node, TensorType
from spiky_ir.ops import all_ops, get_op


@dataclass
class HloContext:
    """What a rule builds with: the computation builder and the node being emitted."""

    b: ComputationBuilder
    node: Node

    def result_type(self, index: int = 0) -> tuple[DType, tuple[int, ...]]:
        t: TensorType = self.node.outputs[index].type
        return t.dtype, t.static_shape()

    def fail(self, why: str) -> IRError:
        return IRError(f"cannot emit HLO for node {self.node.describe()}: {why}")


def _ints(node: Node, key: str) -> tuple[int, ...]:
    value = node.attrs[key]
    assert isinstance(value, tuple)
    return tuple(int(v) for v in value)


HloRule = Callable[[HloContext, Node, Sequence[HloValue]], Sequence[HloValue]]


# --- elementwise ------------------------------------------------------------------------------

_ARITHMETIC = {
    "add": "add", "subtract": "subtract", "multiply": "multiply", "divide": "divide",
    "power": "power", "maximum": "maximum", "minimum": "minimum",
}
# On bool, numpy's add/multiply/maximum/minimum are logical; XLA has no arithmetic on pred.
_BOOL_ARITHMETIC = {"add": "or", "multiply": "and", "maximum": "or", "minimum": "and"}
_COMPARE = {
    "equal": "EQ", "not_equal": "NE", "less": "LT", "less_equal": "LE",
    "greater": "GT", "greater_equal": "GE",
}
_UNARY = {
    "exp": "exponential", "log": "log", "sqrt": "sqrt", "rsqrt": "rsqrt", "tanh": "tanh",
    "sigmoid": "logistic", "erf": "erf",
}


def _arithmetic(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    dtype, dims = ctx.result_type()
    a, b = (ctx.b.coerce(x, dtype, dims) for x in xs)
    if dtype is DType.bool:
        if node.op == "power":  # x ** y on bools: computed in int32 like numpy's int upcast
            a, b = ctx.b.convert(a, DType.int32), ctx.b.convert(b, DType.int32)
            return [ctx.b.convert(ctx.b.elementwise("power", [a, b]), DType.bool)]
        if node.op not in _BOOL_ARITHMETIC:
            raise ctx.fail(f"'{node.op}' is not defined on bool (numpy rejects it too)")
        return [ctx.b.elementwise(_BOOL_ARITHMETIC[node.op], [a, b])]
    return [ctx.b.elementwise(_ARITHMETIC[node.op], [a, b])]


def _compare(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    _, dims = ctx.result_type()
    operand = promote(xs[0].dtype, xs[1].dtype)
    a, b = (ctx.b.coerce(x, operand, dims) for x in xs)
    return [ctx.b.compare(_COMPARE[node.op], a, b)]


def _float_unary(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    dtype, _ = ctx.result_type()
    return [ctx.b.elementwise(_UNARY[node.op], [ctx.b.convert(xs[0], dtype)])]


def _negative(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    if xs[0].dtype is DType.bool:
        raise ctx.fail("negative is not defined on bool (numpy rejects it too); use logical not")
    return [ctx.b.elementwise("negate", xs)]


def _abs(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    if xs[0].dtype in (DType.bool, DType.uint8):  # already non-negative; XLA abs rejects unsigned
        return [xs[0]]
    return [ctx.b.elementwise("abs", xs)]


# --- creation, types, transforms -----------------------------------------------------------------


def _constant(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    dtype, dims = ctx.result_type()
    return [ctx.b.constant(node.attrs["value"], dtype, dims)]


def _astype(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    dtype, _ = ctx.result_type()
    return [ctx.b.convert(xs[0], dtype)]


def _transpose(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    return [ctx.b.transpose(xs[0], _ints(node, "axes"))]


def _reshape(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    _, dims = ctx.result_type()
    return [ctx.b.reshape(xs[0], dims)]


def _broadcast_to(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    _, dims = ctx.result_type()
    return [ctx.b.broadcast_to(xs[0], dims)]


# --- linalg -------------------------------------------------------------------------------------


def _matmul(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    """NumPy matmul as one batched ``dot``: 1-D operands get a unit dim, batch dims are broadcast."""
    dtype, dims = ctx.result_type()
    b = ctx.b
    compute = DType.int32 if dtype is DType.bool else dtype  # XLA has no dot on pred
    a, w = (b.convert(x, compute) for x in xs)
    if a.rank == 1:
        a = b.reshape(a, (1, a.dims[0]))
    if w.rank == 1:
        w = b.reshape(w, (w.dims[0], 1))
    batch = _broadcast_batch(a.dims[:-2], w.dims[:-2])
    a = b.broadcast_to(a, batch + a.dims[-2:])
    w = b.broadcast_to(w, batch + w.dims[-2:])
    nb = len(batch)
    out = b.dot(a, w, lhs_contracting=[nb + 1], rhs_contracting=[nb],
                lhs_batch=list(range(nb)), rhs_batch=list(range(nb)))
    if dtype is DType.bool:
        out = b.compare("NE", out, b.broadcast_to(b.constant(0, compute), out.dims))
    return [b.reshape(out, dims)]


def _broadcast_batch(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    from spiky_ir.ops import broadcast_shapes

    out = broadcast_shapes(a, b)
    return tuple(int(d) for d in out)


# --- the table ------------------------------------------------------------------------------------

RULES: dict[str, HloRule] = {
    **dict.fromkeys(_ARITHMETIC, _arithmetic),
    **dict.fromkeys(_COMPARE, _compare),
    **dict.fromkeys(_UNARY, _float_unary),
    "negative": _negative,
    "abs": _abs,
    "constant": _constant,
    "astype": _astype,
    "transpose": _transpose,
    "reshape": _reshape,
    "broadcast_to": _broadcast_to,
    "matmul": _matmul,
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
