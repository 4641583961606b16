"""The HLO rule table, what a rule builds with, and the helpers rules share.

A rule receives the :class:`HloContext` (the computation being built), the IR node and the
HLO values of its operands, and returns one HLO value per node result, of exactly the
node's result types. IR ops promote and broadcast implicitly; rules make that explicit
with ``convert`` and ``broadcast`` (:meth:`ComputationBuilder.coerce`).

Numerics follow the reference executor: elementwise ops, reductions, matmul and conv on
half types compute in float32 and round once (:func:`compute_type`).

The rules themselves live with their ops (:mod:`spiky_ir.ops`), which register them here
with :func:`hlo_rule` when the op family is imported; this module owns the table
(:data:`HLO_RULES`). :func:`missing_rules` names registered ops that have no rule and do
not record why (a test keeps that list empty).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from spiky_ir.dtypes import DType, promote
from spiky_ir.errors import IRError
from spiky_ir.hlo.builder import ComputationBuilder, HloValue
from spiky_ir.ir import Node
from spiky_ir.registry import RuleTable, all_ops, widen

__all__ = [
    "BOOL", "F32", "HLO_RULES", "I64", "RULES", "ComputeRule", "Emit", "HloContext", "HloRule", "compute_type",
    "elementwise_rule", "hlo_rule", "init_value", "missing_rules", "nonzero", "opcode", "promoted", "reduce_to",
    "widen", "zero",
]

I64, F32, BOOL = DType.int64, DType.float32, DType.bool


@dataclass
class HloContext:
    """What a rule builds with: the computation builder, the node, and module-level inputs."""

    b: ComputationBuilder
    node: Node
    replica_groups: Mapping[str, Sequence[Sequence[int]]] = field(default_factory=dict)
    """Process group name → replica groups, for collectives."""

    def result_type(self, index: int = 0) -> tuple[DType, tuple[int, ...]]:
        t = self.node.outputs[index].type
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

HLO_RULES: RuleTable[HloRule] = RuleTable("HLO")
"""IR op name → HLO rule, filled by the op families (:mod:`spiky_ir.ops`) as they are imported."""
RULES = HLO_RULES
"""The same table under its earlier name."""
hlo_rule = HLO_RULES.register
"""``@hlo_rule("op", ...)`` registers the decorated function as the HLO rule of each op."""


def missing_rules() -> list[str]:
    """Registered ops without an HLO rule that do not record why (``OpDef.no_rule["hlo"]``), sorted."""
    return sorted(name for name, op in all_ops().items() if name not in HLO_RULES and "hlo" not in op.no_rule)


# --- types -----------------------------------------------------------------------------------


def compute_type(operand: DType, out: DType) -> DType:
    return widen(out) if out.is_floating else operand


def promoted(xs: Sequence[HloValue]) -> DType:
    dtype = xs[0].dtype
    for x in xs[1:]:
        dtype = promote(dtype, x.dtype)
    return dtype


# --- elementwise -----------------------------------------------------------------------------

Emit = Callable[[ComputationBuilder, list[HloValue]], HloValue]
"""Emits an elementwise computation on operands already of the compute type and result shape."""
ComputeRule = Callable[[DType, DType], DType]
"""(promoted operand type, result type) → the type an elementwise op computes in."""


def elementwise_rule(emit: Emit, compute: ComputeRule = compute_type) -> HloRule:
    """A rule that coerces operands to the compute type and result shape, emits, converts to the result."""

    def rule(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
        out, dims = ctx.result_type()
        ctype = compute(promoted(xs), out)
        args = [ctx.b.coerce(x, ctype, dims) for x in xs]
        return [ctx.b.convert(emit(ctx.b, args), out)]

    return rule


def opcode(name: str) -> Emit:
    """The HLO elementwise instruction ``name`` applied to the operands."""
    return lambda b, a: b.elementwise(name, a)


def zero(b: ComputationBuilder, like: HloValue) -> HloValue:
    return b.full(0, like.dtype, like.dims)


def nonzero(b: ComputationBuilder, x: HloValue) -> HloValue:
    return x if x.dtype is BOOL else b.compare("NE", x, zero(b, x))


# --- reductions ----------------------------------------------------------------------------------


def init_value(kind: str, dtype: DType) -> float | int | bool:
    """The identity of reducer ``kind`` (add, mul, max, min, and, or) in ``dtype``."""
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
        info = np.iinfo(dtype.to_numpy())
        return int(info.min if kind == "max" else info.max)
    return kind == "and"  # and: True, or: False


def reduce_to(ctx: HloContext, x: HloValue, axes: Sequence[int], kind: str, dims: Sequence[int]) -> HloValue:
    """Reduce ``x`` over ``axes`` then reshape to ``dims`` (the keepdims form when asked)."""
    b = ctx.b
    out = b.reduce(x, b.constant(init_value(kind, x.dtype), x.dtype), axes, kind)
    return b.reshape(out, dims)
