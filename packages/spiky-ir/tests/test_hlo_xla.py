"""Every registered op, emitted as HLO and run on XLA:CPU, against the numpy reference.

One table (:data:`CASES`) of ops x shapes x dtypes, with tolerances per result dtype
(:data:`TOL`) and per op where XLA's math library differs from numpy's (:data:`OP_TOL`).
A test asserts the table covers every op in the registry, so a new op without an HLO
case fails here, by name.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import jax  # noqa: F401  a pinned dev dependency: a missing jax must fail collection, not skip
import numpy as np
import pytest

from spiky_ir import DType, Graph, TensorType, all_ops, execute
from spiky_ir.hlo import emit_hlo, missing_rules
from spiky_ir.hlo.xla_cpu import run_hlo

F32, F16, BF16, F64 = DType.float32, DType.float16, DType.bfloat16, DType.float64
I8, I16, I32, I64, U8, BOOL = DType.int8, DType.int16, DType.int32, DType.int64, DType.uint8, DType.bool

TOL: dict[DType, tuple[float, float]] = {  # (rtol, atol) by result dtype; ints and bools are exact
    F32: (2e-6, 1e-6), F64: (1e-12, 1e-12), F16: (1e-3, 1e-3), BF16: (1e-2, 1e-2),
}
OP_TOL: dict[str, dict[DType, tuple[float, float]]] = {
    # XLA's vectorised exp/tanh/erf/logistic approximations differ from libm by a few ulp.
    name: {F32: (1e-5, 1e-6)} for name in ("exp", "tanh", "erf", "sigmoid", "power", "log", "rsqrt")
}


@dataclass(frozen=True)
class Operand:
    shape: tuple[int, ...]
    dtype: DType
    domain: str = "any"
    """``any`` (floats in [-2, 2], ints in [-5, 5]), ``pos`` ([0.5, 2] / [1, 5]), ``small`` ([0, 3])."""


@dataclass(frozen=True)
class Case:
    op: str
    operands: tuple[Operand, ...]
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        args = ",".join(f"{o.dtype.value}{list(o.shape)}".replace(" ", "") for o in self.operands)
        extra = "".join(f",{k}={v}" for k, v in sorted(self.attrs.items())).replace(" ", "")
        return f"{self.op}({args}{extra})"


def _data(operand: Operand, rng: np.random.Generator) -> np.ndarray[Any, Any]:
    dtype = operand.dtype
    if dtype is BOOL:
        return rng.random(operand.shape) < 0.5
    if dtype.is_floating:
        lo, hi = {"any": (-2.0, 2.0), "pos": (0.5, 2.0), "small": (0.5, 1.5)}[operand.domain]
        return rng.uniform(lo, hi, operand.shape).astype(dtype.to_numpy())
    lo, hi = {"any": (-5, 5), "pos": (1, 5), "small": (0, 3)}[operand.domain]
    if dtype is U8:
        lo = max(lo, 0)
    return rng.integers(lo, hi, operand.shape, endpoint=True).astype(dtype.to_numpy())


# --- the table ------------------------------------------------------------------------------------

BINARY_SHAPES = [((4, 16), (4, 16)), ((2, 1, 5), (4, 1)), ((), (3,))]
# (lhs dtype, rhs dtype): same-type, promotion within and across categories
BINARY_DTYPES = [(F32, F32), (F16, F16), (BF16, F32), (I32, I32), (I32, F16), (U8, I8), (BOOL, BOOL), (I64, I32)]
BOOL_REJECTING = {"subtract"}  # numpy itself rejects these on bool
DOMAINS = {"divide": ("any", "pos"), "power": ("pos", "small"), "log": ("pos",), "sqrt": ("pos",),
           "rsqrt": ("pos",)}
UNARY_SHAPES = [(), (3, 5), (2, 3, 4)]
UNARY_DTYPES = [F32, F16, BF16, I32]


def _elementwise_cases() -> Iterator[Case]:
    for name, op in sorted(all_ops().items()):
        domains = DOMAINS.get(name, ("any", "any"))
        if op.category == "binary":
            for (sa, sb), (da, db) in itertools.product(BINARY_SHAPES, BINARY_DTYPES):
                if BOOL in (da, db) and name in BOOL_REJECTING:
                    continue
                yield Case(name, (Operand(sa, da, domains[0]), Operand(sb, db, domains[1])))
        elif op.category == "unary":
            for shape, dtype in itertools.product(UNARY_SHAPES, UNARY_DTYPES):
                domain = domains[0] if name in DOMAINS else "any"
                yield Case(name, (Operand(shape, dtype, domain),))


EXPLICIT: list[Case] = [
    *(Case("constant", (), {"value": v, "dtype": d})
      for v, d in [(2.5, F32), (-3, I32), (True, BOOL), (0.1, F16), (7, I64), (1.5, BF16)]),
    # float → unsigned of a negative value is undefined in C (numpy wraps, XLA saturates): positive inputs
    *(Case("astype", (Operand((3, 4), src, "pos" if dst is U8 else "any"),), {"dtype": dst})
      for src, dst in itertools.product([F32, F16, I32, BOOL, U8], [F32, BF16, I32, I64, BOOL, U8])
      if src is not dst),
    Case("transpose", (Operand((2, 3, 4), F32),), {"axes": (2, 0, 1)}),
    Case("transpose", (Operand((5, 7), I32),), {"axes": (1, 0)}),
    Case("transpose", (Operand((), F32),), {"axes": ()}),
    Case("reshape", (Operand((2, 3, 4), F32),), {"shape": (6, 4)}),
    Case("reshape", (Operand((6,), BOOL),), {"shape": (1, 2, 3)}),
    Case("reshape", (Operand((), F32),), {"shape": (1, 1)}),
    Case("broadcast_to", (Operand((3, 1), F32),), {"shape": (2, 3, 4)}),
    Case("broadcast_to", (Operand((), I32),), {"shape": (5,)}),
    Case("broadcast_to", (Operand((1, 4), F16),), {"shape": (1, 4)}),
    *(Case("matmul", (Operand(sa, da), Operand(sb, db)))
      for (sa, sb), (da, db) in itertools.product(
          [((4, 3), (3, 5)), ((2, 4, 3), (2, 3, 5)), ((3,), (3, 5)), ((2, 4, 3), (3,)), ((3,), (3,)),
           ((2, 1, 4, 3), (5, 3, 2)), ((4, 3), (2, 3, 5))],
          [(F32, F32), (I32, I32), (F16, F32)])),
    Case("matmul", (Operand((4, 3), BOOL), Operand((3, 2), BOOL))),
]

CASES: list[Case] = [*_elementwise_cases(), *EXPLICIT]


def _graph(case: Case) -> Graph:
    g = Graph()
    inputs = [g.add_input(f"x{i}", TensorType(o.shape, o.dtype)) for i, o in enumerate(case.operands)]
    g.set_outputs([g.add_op(case.op, inputs, case.attrs)])
    return g


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_op_on_xla_cpu_matches_reference(case: Case) -> None:
    graph = _graph(case)
    rng = np.random.default_rng(abs(hash(case.id)) % 2**32)
    arrays = [_data(o, rng) for o in case.operands]
    (expected,) = execute(graph, arrays)
    (actual,) = run_hlo(emit_hlo(graph).proto, arrays)
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, case.id
    out = graph.outputs[0].type.dtype
    if out.is_floating:
        rtol, atol = OP_TOL.get(case.op, {}).get(out, TOL[out])
        np.testing.assert_allclose(actual.astype(np.float64), expected.astype(np.float64), rtol=rtol, atol=atol)
    else:
        np.testing.assert_array_equal(actual, expected)


@pytest.mark.smoke
def test_every_registered_op_has_an_hlo_rule() -> None:
    assert missing_rules() == []


@pytest.mark.smoke
def test_every_registered_op_is_in_the_table() -> None:
    covered = {c.op for c in CASES}
    assert sorted(set(all_ops()) - covered) == []


@pytest.mark.smoke
@pytest.mark.parametrize("op", ["subtract"])
def test_bool_ops_numpy_rejects_are_rejected(op: str) -> None:
    from spiky_ir import IRError

    g = Graph()
    x = g.add_input("x", TensorType((2,), BOOL))
    g.set_outputs([g.add_op(op, [x, x])])
    with pytest.raises(IRError, match=f"'{op}' is not defined on bool"):
        emit_hlo(g)
