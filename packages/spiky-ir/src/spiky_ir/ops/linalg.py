"""Linear algebra: matmul (NumPy semantics, batched) and dot (two vectors).

Each op with all of its rules side by side: shape/dtype rule and numpy reference
(:func:`define_op`), HLO rule, padding rule, kernel-source rule.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from spiky_ir.dtypes import DType, promote
from spiky_ir.errors import ShapeError
from spiky_ir.hlo.builder import HloValue
from spiky_ir.hlo.rules import BOOL, HloContext, hlo_rule, nonzero, widen
from spiky_ir.ir import Node, Value
from spiky_ir.kernel_source import KernelEmitter, input_types, kernel_rule
from spiky_ir.padding import Layout, PadContext, UnpaddableError, broadcast_layout, has_padded, pad_rule, padded_syms
from spiky_ir.plan import Kernel, as_type, plan_rule
from spiky_ir.registry import Array, broadcast_shapes, cast, define_op, dtype_of
from spiky_ir.symbolic import Dim
from spiky_ir.types import Attr, TensorType


def _matmul_type(types: Sequence[TensorType], _attrs: Mapping[str, Attr]) -> list[TensorType]:
    a, b = types
    if a.rank == 0 or b.rank == 0:
        raise ShapeError(f"matmul needs operands of rank >= 1, got {a} and {b}")
    ka = a.shape[-1]
    kb = b.shape[-2] if b.rank >= 2 else b.shape[0]
    if ka != kb:
        raise ShapeError(f"matmul contraction dims differ: {a} @ {b} ({ka} vs {kb})")
    batch = broadcast_shapes(a.shape[:-2], b.shape[:-2])
    rows: tuple[Dim, ...] = (a.shape[-2],) if a.rank >= 2 else ()
    cols: tuple[Dim, ...] = (b.shape[-1],) if b.rank >= 2 else ()
    return [TensorType(batch + rows + cols, promote(a.dtype, b.dtype))]


def _dot_type(types: Sequence[TensorType], _attrs: Mapping[str, Attr]) -> list[TensorType]:
    a, b = types
    if a.rank != 1 or b.rank != 1 or a.shape != b.shape:
        raise ShapeError(f"dot needs two vectors of one length, got {a} and {b}")
    return [TensorType((), promote(a.dtype, b.dtype))]


def _matmul_reference(xs: Sequence[Array], _attrs: Mapping[str, Attr]) -> list[Array]:
    out = promote(dtype_of(xs[0]), dtype_of(xs[1]))
    a, b = (cast(x, widen(out)) for x in xs)
    return [cast(np.matmul(a, b), out)]


define_op("matmul", "linalg", 2, {}, _matmul_type, _matmul_reference,
          "NumPy matmul: batched over leading dims, 1-D operands promoted; half types accumulate in f32",
          aten=("aten.mm.default", "aten.bmm.default", "aten.matmul.default", "aten.dot.default"))
define_op("dot", "linalg", 2, {}, _dot_type, _matmul_reference, "inner product of two vectors")


@plan_rule("matmul", "dot")
def _matmul_plan(node: Node) -> Kernel:
    """The reference with its casts decided from the node's types: a bare ``np.matmul`` when none is needed."""
    out = node.output.type.dtype
    compute, result = widen(out).to_numpy(), as_type(out.to_numpy())
    if all(v.type.dtype is widen(out) for v in node.inputs):
        return lambda xs, _attrs: [result(np.matmul(xs[0], xs[1]))]
    return lambda xs, _attrs: [result(np.matmul(xs[0].astype(compute, copy=False), xs[1].astype(compute, copy=False)))]


@hlo_rule("matmul", "dot")
def _matmul_hlo(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
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
        return [b.reshape(nonzero(b, out), dims)]
    return [b.convert(b.reshape(out, dims), dtype)]


@pad_rule("matmul", "dot")
def _matmul_pad(ctx: PadContext, node: Node, inputs: list[Value]) -> tuple[Sequence[Value], Sequence[Layout]]:
    """matmul/dot: zero both operands along a padded contraction axis (both: 0 * inf is NaN)."""
    a, b = inputs
    la, lb = ctx.layout(a), ctx.layout(b)
    ka = a.type.rank - 1
    kb = b.type.rank - 2 if b.type.rank >= 2 else 0
    if has_padded(la[ka], ctx.padded) or has_padded(lb[kb], ctx.padded):
        if la[ka] != lb[kb]:
            syms = padded_syms(la, ctx.padded, [ka]) | padded_syms(lb, ctx.padded, [kb])
            raise UnpaddableError(syms, f"{node.op}: contraction axes laid out differently ({la[ka]} vs {lb[kb]})")
        a, b = ctx.masked(a, (ka,), 0), ctx.masked(b, (kb,), 0)
    outs = ctx.copy(node, [a, b])
    out = outs[0].type
    if node.op == "dot":
        return outs, [()]
    batch_a, batch_b = la[:-2], lb[:-2]
    n_batch = out.rank - (1 if a.type.rank >= 2 else 0) - (1 if b.type.rank >= 2 else 0)
    batch_t = TensorType(out.shape[:n_batch], out.dtype)
    batch = broadcast_layout([batch_a, batch_b], [TensorType(a.type.shape[:len(batch_a)], a.type.dtype),
                                                  TensorType(b.type.shape[:len(batch_b)], b.type.dtype)],
                             batch_t, ctx.padded, node.op)
    rows: Layout = (la[-2],) if a.type.rank >= 2 else ()
    cols: Layout = (lb[-1],) if b.type.rank >= 2 else ()
    return outs, [batch + rows + cols]


@kernel_rule("matmul", "dot")
def _matmul_kernel(e: KernelEmitter, node: Node, args: list[str], _attrs: Mapping[str, Attr]) -> str:
    out = node.output.type.dtype
    compute = widen(out)
    a, b = (e.cast(x, t, compute) for x, t in zip(args, input_types(node), strict=True))
    return e.cast(f"np.matmul({a}, {b})", compute, out)
