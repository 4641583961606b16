"""Every registered op, emitted as HLO and run on XLA:CPU, against the numpy reference.

The same table checks the plan executor (:func:`spiky_ir.compile_plan`) against the
reference: it runs the same numpy code, so results must be identical, bit for bit.

One table (:data:`CASES`) of ops x shapes x dtypes, with tolerances per result dtype
(:data:`TOL`) and per op where XLA's math library differs from numpy's (:data:`OP_TOL`).
A test asserts the table covers every op in the registry, so a new op without an HLO
case fails here, by name.
"""

from __future__ import annotations

import itertools
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import jax  # noqa: F401  a pinned dev dependency: a missing jax must fail collection, not skip
import numpy as np
import pytest

from spiky_ir import DType, Graph, IRError, ShapeError, TensorType, all_ops, compile_plan, execute
from spiky_ir.hlo import emit_hlo, missing_rules
from spiky_ir.hlo.emit import pack_layout
from spiky_ir.hlo.narrow import INT32_MAX, INT32_MIN, has_int64, narrow_int64
from spiky_ir.hlo.xla_cpu import SCRATCH_BYTES, VOLATILE_COPIES, OutputLayout, compile_hlo, run_hlo
from spiky_ir.types import DenseArray

F32, F16, BF16, F64 = DType.float32, DType.float16, DType.bfloat16, DType.float64
I8, I16, I32, I64, U8, BOOL = DType.int8, DType.int16, DType.int32, DType.int64, DType.uint8, DType.bool

TOL: dict[DType, tuple[float, float]] = {  # (rtol, atol) by result dtype; ints and bools are exact
    F32: (2e-6, 1e-6), F64: (1e-12, 1e-12), F16: (1e-3, 1e-3), BF16: (1e-2, 1e-2),
}
OP_TOL: dict[str, dict[DType, tuple[float, float]]] = {
    # XLA's vectorised exp/tanh/erf/logistic approximations differ from libm by a few ulp.
    **{name: {F32: (1e-5, 1e-6)} for name in ("exp", "tanh", "erf", "sigmoid", "power", "log", "rsqrt")},
    # Accumulations: XLA sums in another order than numpy (tree vs pairwise, blocked dots).
    **{name: {F32: (1e-5, 1e-5)} for name in ("matmul", "dot", "conv1d", "conv2d", "sum", "mean", "var",
                                              "softmax", "prod", "scatter_add", "logsumexp", "conv3d",
                                              "conv_transpose1d", "conv_transpose2d", "conv_transpose3d")},
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
    lo, hi = {"any": (-5, 5), "pos": (1, 5), "small": (0, 3), "big": (7, 9),
              "idx4": (-4, 3), "idx5": (-5, 4)}[operand.domain]
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
    Case("matmul", (Operand((4, 8), BF16), Operand((8, 2), BF16))),
    *(Case("dot", (Operand((7,), d), Operand((7,), d))) for d in (F32, I32, F16)),
    # creation
    *(Case("full", (), {"shape": (2, 3), "value": v, "dtype": d}) for v, d in [(1.5, F32), (-2, I64), (True, BOOL)]),
    *(Case("dim_value", (), {"value": v, "dtype": d}) for v, d in [(24, F32), (7, I64)]),
    *(Case("literal", (), {"value": DenseArray.from_numpy(np.asarray(v, d.to_numpy()))}) for v, d in [
        ([[1.5, -0.0, np.inf], [-np.inf, 3.25, 1e-30]], F32), ([0.1, -2.0], F16), ([1.5, -7.0, 0.0078125], BF16),
        ([[1, -2], [3, 2**40]], I64), ([5, -3], I32), ([True, False, True], BOOL), ([200, 3], U8), (2.5, F64),
        (np.zeros((0, 2)), F32)]),
    *(Case("zeros", (), {"shape": sh, "dtype": d}) for sh, d in [((3,), F16), ((2, 2), I32)]),
    *(Case("iota", (), {"shape": (3, 4), "axis": a, "dtype": d}) for a, d in [(0, I64), (1, F32), (1, BF16)]),
    *(Case("arange", (), {"start": st, "step": sp, "size": 6, "dtype": d})
      for st, sp, d in [(0, 1, I64), (0.5, 0.25, F32), (10, -3, I32), (1, 0.1, F16)]),
    *(Case(op, (Operand(sh, d),), {"k": k}) for op in ("tril", "triu")
      for sh, d, k in [((4, 5), F32, 0), ((2, 3, 3), I32, -1), ((3, 4), BOOL, 1)]),
    # transforms
    *(Case("expand_dims", (Operand((2, 3), F32),), {"axis": a}) for a in (0, 1, 2)),
    Case("squeeze", (Operand((1, 3, 1), I32),), {"axes": (0, 2)}),
    *(Case("concatenate", ops, {"axis": a}) for ops, a in [
        ((Operand((2, 3), F32), Operand((4, 3), F32)), 0),
        ((Operand((2, 1), I32), Operand((2, 2), F16), Operand((2, 3), F32)), 1),
        ((Operand((5,), BOOL),), 0)]),
    *(Case("split", (Operand((6, 4), F32),), {"sizes": sz, "axis": a}) for sz, a in [((2, 4), 0), ((1, 1, 2), 1)]),
    *(Case("slice", (Operand((6, 7), F32),), {"start": st, "stop": sp, "step": stp}) for st, sp, stp in [
        ((1, 0), (5, 7), (1, 1)), ((0, 2), (6, 7), (2, 3)), ((3, 3), (3, 5), (1, 1))]),
    *(Case("pad", (Operand(sh, d),), {"lo": lo, "hi": hi, "value": v}) for sh, d, lo, hi, v in [
        ((2, 3), F32, (1, 0), (2, 1), 0.0), ((4,), I32, (3,), (0,), -7), ((2, 2), BOOL, (1, 1), (1, 1), True)]),
    *(Case("flip", (Operand((3, 4, 2), F32),), {"axes": ax}) for ax in ((0,), (1, 2), ())),
    *(Case("repeat", (Operand((2, 3), d),), {"repeats": r, "axis": a}) for d, r, a in [(F32, 2, 0), (I32, 3, 1)]),
    *(Case("tile", (Operand((2, 3), F32),), {"reps": r}) for r in ((2, 1), (1, 3), (2, 2))),
    # reductions
    *(Case(op, (Operand((3, 4, 5), d, "pos" if op == "prod" else "any"),), {"axes": ax, "keepdims": kd})
      for op in ("sum", "prod", "max", "min", "mean", "any", "all")
      for d in (F32, F16, I32, BOOL)
      for ax, kd in [((1,), False), ((0, 2), True), ((), False), ((0, 1, 2), False)]),
    *(Case("var", (Operand((4, 6), d),), {"axes": ax, "keepdims": kd, "correction": c})
      for d, ax, kd, c in [(F32, (1,), False, 1.0), (F16, (0, 1), True, 0.0), (I32, (0,), False, 1.0)]),
    *(Case("logsumexp", (Operand((3, 4, 5), d),), {"axes": ax, "keepdims": kd})
      for d in (F32, F16, BF16, I32) for ax, kd in [((1,), False), ((0, 2), True), ((0, 1, 2), False)]),
    *(Case(op, (Operand((4, 7), d),), {"axis": a, "keepdims": kd}) for op in ("argmax", "argmin")
      for d, a, kd in [(F32, 1, False), (I32, 0, True), (BF16, 1, False), (BOOL, 1, False)]),
    # nn
    *(Case("softmax", (Operand((3, 8), d),), {"axis": a}) for d, a in [(F32, 1), (F16, 0), (BF16, 1), (I32, 1)]),
    *(Case("topk", (Operand((3, 8), d),), {"k": k, "axis": a, "largest": lg})
      for d, k, a, lg in [(F32, 3, 1, True), (F32, 2, 0, False), (I32, 8, 1, True), (F16, 1, 1, False)]),
    *(Case(op, (Operand(sh, d, dom),), {"axis": a}) for op in ("cumsum", "cumprod")
      for sh, d, dom, a in [((3, 9), F32, "small", 1), ((5, 4), F16, "small", 0), ((2, 3, 6), I32, "any", 2),
                            ((4, 5), BOOL, "any", 1), ((7,), I64, "any", 0), ((3, 4), BF16, "small", 1)]),
    *(Case("roll", (Operand((4, 7), d),), {"shifts": sh, "axes": ax})
      for d, sh, ax in [(F32, (2,), (1,)), (I32, (-1, 3), (0, 1)), (BF16, (9,), (0,)), (BOOL, (1, 1), (1, 1)),
                        (F32, (0,), (0,))]),
    *(Case("sort", (Operand(sh, d, dom),), {"axis": a, "descending": desc})
      for sh, d, dom, a, desc in [((3, 8), F32, "any", 1, False), ((3, 8), F32, "any", 0, True),
                                  ((4, 9), I32, "small", 1, True), ((4, 9), I64, "small", 0, False),
                                  ((2, 5), BF16, "small", 1, True), ((6,), F16, "small", 0, False),
                                  ((3, 7), BOOL, "any", 1, True), ((3, 7), U8, "small", 1, True)]),
    *(Case("conv2d", (Operand((2, 4, 9, 8), d), Operand((6, 4 // g, 3, 2), d)),
           {"stride": st, "pad_lo": lo, "pad_hi": hi, "dilation": dil, "groups": g})
      for d, st, lo, hi, dil, g in [(F32, (1, 1), (0, 0), (0, 0), (1, 1), 1), (F32, (2, 1), (1, 0), (1, 1), (1, 2), 2),
                                    (F16, (1, 2), (2, 1), (0, 1), (2, 1), 1)]),
    *(Case("conv1d", (Operand((2, 3, 10), F32), Operand((4, 3, 3), F32)),
           {"stride": st, "pad_lo": lo, "pad_hi": hi, "dilation": dil, "groups": 1})
      for st, lo, hi, dil in [((1,), (1,), (1,), (1,)), ((3,), (0,), (2,), (2,))]),
    *(Case("conv3d", (Operand((2, 4, 5, 4, 6), d), Operand((6, 4 // g, 2, 3, 2), d)),
           {"stride": st, "pad_lo": lo, "pad_hi": hi, "dilation": dil, "groups": g})
      for d, st, lo, hi, dil, g in [(F32, (1, 1, 1), (0, 1, 0), (1, 1, 0), (1, 1, 1), 1),
                                    (F16, (2, 1, 2), (1, 0, 1), (0, 2, 1), (1, 2, 1), 2)]),
    # transposed: weight (in, out / groups, *kernel); pad_lo/pad_hi crop, negative pad_hi extends
    *(Case("conv_transpose1d", (Operand((2, 4, 7), d), Operand((4, 3, 3), d)),
           {"stride": st, "pad_lo": lo, "pad_hi": hi, "dilation": dil, "groups": g})
      for d, st, lo, hi, dil, g in [(F32, (2,), (1,), (0,), (1,), 1), (F32, (3,), (4,), (2,), (2,), 2),
                                    (BF16, (1,), (0,), (-1,), (1,), 1)]),
    *(Case("conv_transpose2d", (Operand((2, 6, 4, 5), d), Operand((6, 2, 3, 2), d)),
           {"stride": st, "pad_lo": lo, "pad_hi": hi, "dilation": dil, "groups": g})
      for d, st, lo, hi, dil, g in [(F32, (2, 1), (1, 0), (0, 0), (1, 2), 1),
                                    (F16, (2, 2), (3, 1), (2, 1), (2, 1), 3)]),
    Case("conv_transpose3d", (Operand((1, 2, 3, 4, 3), F32), Operand((2, 3, 2, 3, 2), F32)),
         {"stride": (1, 2, 2), "pad_lo": (0, 1, 1), "pad_hi": (0, 0, 1), "dilation": (1, 1, 1), "groups": 1}),
    # indexing
    *(Case("where", (Operand(sc, BOOL), Operand(sa, da), Operand(sb, db))) for sc, sa, sb, da, db in [
        ((4, 5), (4, 5), (4, 5), F32, F32), ((4, 1), (5,), (), I32, F16), ((3,), (2, 3), (1, 3), BOOL, I64)]),
    *(Case("take", (Operand((5, 4), F32), Operand(si, di, f"idx{(5, 4)[a]}")), {"axis": a}) for si, di, a in [
        ((3,), I64, 0), ((2, 2), I32, 1), ((), I64, 0)]),
    *(Case("take_along_axis", (Operand((4, 5), F32), Operand((4, 3), I64, "idx5")), {"axis": 1}),
      Case("take_along_axis", (Operand((4, 5), I32), Operand((2, 5), I64, "idx4")), {"axis": 0})),
    Case("scatter", (Operand((4, 5), F32), Operand((4, 1), I64, "idx5"), Operand((4, 2), F32)), {"axis": 1}),
    Case("scatter", (Operand((4, 5), I32), Operand((1, 5), I64, "idx4"), Operand((1, 5), I32)), {"axis": 0}),
    *(Case("scatter_add", (Operand((4, 5), d), Operand((4, 6), I64, "idx5"), Operand((4, 6), d)), {"axis": 1})
      for d in (F32, I32, F16)),
    Case("dynamic_slice", (Operand((6, 5), F32), Operand((), I64, "small"), Operand((), I32, "small")),
         {"sizes": (3, 2)}),
    Case("dynamic_slice", (Operand((6, 5), F32), Operand((), I64, "big"), Operand((), I64, "any")), {"sizes": (4, 4)}),
    Case("dynamic_update_slice", (Operand((6, 5), F32), Operand((2, 3), F16), Operand((), I64, "small"),
                                  Operand((), I64, "big"))),
]

# Collectives run on one replica (groups of one rank): each is the identity, but the HLO
# carries replica groups and reducer computations that XLA must accept.
COLLECTIVES: list[Case] = [c for c in [
    *(Case("all_reduce", (Operand((4, 3), d),), {"reduce_op": op, "group_name": "g"})
      for op, d in [("sum", F32), ("avg", F32), ("product", I32), ("min", F16), ("max", I32)]),
    Case("all_gather", (Operand((4, 3), F32),), {"group_size": 1, "group_name": "g"}),
    Case("reduce_scatter", (Operand((4, 3), F32),), {"reduce_op": "sum", "group_size": 1, "group_name": "g"}),
    Case("all_to_all", (Operand((4, 3), F32),), {"output_split_sizes": (4,), "input_split_sizes": (4,),
                                                  "group_name": "g"}),
    Case("broadcast", (Operand((4, 3), F32),), {"src": 0, "group_name": "g"}),
] if c.op in all_ops()]

def _graph(case: Case) -> Graph:
    g = Graph()
    inputs = [g.add_input(f"x{i}", TensorType(o.shape, o.dtype)) for i, o in enumerate(case.operands)]
    g.set_outputs(list(g.add_node(case.op, inputs, case.attrs).outputs))
    return g


def _valid(case: Case) -> bool:
    """Cases whose operand types the op's own shape rule rejects (bitwise ops on floats) are not programs."""
    try:
        _graph(case)
    except ShapeError:
        return False
    return True


# Cases of ops not registered (yet) are dropped; the coverage test checks the other direction.
CASES: list[Case] = [c for c in [*_elementwise_cases(), *EXPLICIT] if c.op in all_ops() and _valid(c)]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_op_on_xla_cpu_matches_reference(case: Case) -> None:
    graph = _graph(case)
    rng = np.random.default_rng(zlib.crc32(case.id.encode()))  # str hash() is salted per process
    arrays = [_data(o, rng) for o in case.operands]
    expected = execute(graph, arrays)
    actual = run_hlo(emit_hlo(graph).proto, arrays)
    assert len(actual) == len(expected)
    for got, want, value in zip(actual, expected, graph.outputs, strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape, case.id
        out = value.type.dtype
        if out.is_floating:
            rtol, atol = OP_TOL.get(case.op, {}).get(out, TOL[out])
            np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=rtol, atol=atol)
        else:
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_plan_matches_reference_exactly(case: Case) -> None:
    graph = _graph(case)
    rng = np.random.default_rng(zlib.crc32(case.id.encode()))
    arrays = [_data(o, rng) for o in case.operands]
    expected = execute(graph, arrays)
    actual = compile_plan(graph)(arrays)
    for got, want in zip(actual, expected, strict=True):
        assert type(got) is np.ndarray and got.flags.c_contiguous and got.flags.owndata, case.id
        assert got.dtype == want.dtype and got.shape == want.shape, case.id
        assert got.tobytes() == want.tobytes(), case.id  # bit for bit, NaNs of every dtype included


@pytest.mark.smoke
def test_every_registered_op_has_an_hlo_rule() -> None:
    assert missing_rules() == []


@pytest.mark.smoke
def test_every_registered_op_is_in_the_table() -> None:
    covered = {c.op for c in [*CASES, *COLLECTIVES]}
    assert sorted(set(all_ops()) - covered) == []


@pytest.mark.smoke
@pytest.mark.parametrize("op", ["subtract"])
def test_bool_ops_numpy_rejects_are_rejected(op: str) -> None:

    g = Graph()
    x = g.add_input("x", TensorType((2,), BOOL))
    g.set_outputs([g.add_op(op, [x, x])])
    with pytest.raises(IRError, match=f"'{op}' is not defined on bool"):
        emit_hlo(g)


@pytest.mark.parametrize("case", COLLECTIVES, ids=[c.id for c in COLLECTIVES])
def test_collective_on_one_replica_is_identity(case: Case) -> None:
    graph = _graph(case)
    (x,) = [_data(o, np.random.default_rng(0)) for o in case.operands]
    art = emit_hlo(graph, replica_groups={"g": [[0]]})
    assert "replica_groups={{0}}" in art.text
    (out,) = run_hlo(art.proto, [x])
    np.testing.assert_array_equal(out, x)


@pytest.mark.smoke
def test_collective_without_replica_groups_says_what_to_pass() -> None:
    from spiky_ir import IRError

    graph = _graph(COLLECTIVES[0])
    with pytest.raises(IRError, match=r"process group 'g' has no replica groups; pass emit_hlo"):
        emit_hlo(graph)


def _at_offset(shape: tuple[int, ...], offset: int) -> np.ndarray:  # type: ignore[type-arg]
    """A float32 array whose data starts ``offset`` bytes past a 64-byte boundary."""
    count = int(np.prod(shape))
    raw = np.zeros(count * 4 + 128, np.uint8)
    start = (-raw.ctypes.data) % 64 + offset
    return raw[start:start + count * 4].view(np.float32).reshape(shape)


@pytest.mark.smoke
@pytest.mark.parametrize("offset", [0, 4])
def test_inputs_at_one_address_reuse_their_xla_buffer_and_see_new_contents(offset: int) -> None:
    g = Graph()
    x = g.add_input("x", TensorType((2, 8), F32))
    g.set_outputs([g.add_op("exp", [x])])
    exe = compile_hlo(emit_hlo(g).proto, [((2, 8), np.dtype(np.float32))])
    a = _at_offset((2, 8), offset)
    for value in (0.0, 1.0, -2.0):
        a[...] = value  # same memory, new contents: XLA must read them, not a stale copy
        np.testing.assert_allclose(exe([a])[0], np.exp(a), rtol=1e-6)
    if offset == 0:  # aliased: the buffer of the first call is reused (by identity, then by address)
        assert exe._last[0] is not None and exe._last[0][0] is a and exe._last[0][1] == a.ctypes.data
        buffer = exe._last[0][2]
        again = a[...]  # another array object over the same memory
        np.testing.assert_allclose(exe([again])[0], np.exp(a), rtol=1e-6)
        assert exe._last[0][0] is again and exe._last[0][2] is buffer
    else:  # unaligned: XLA copied it, so nothing may be reused
        assert exe._last[0] is None
    b = _at_offset((2, 8), offset)
    b[...] = 3.0
    np.testing.assert_allclose(exe([b])[0], np.exp(b), rtol=1e-6)
    np.testing.assert_allclose(exe([a])[0], np.exp(a), rtol=1e-6)


def test_a_buffer_xla_did_not_alias_is_never_reused() -> None:
    """Whether XLA aliased an input is checked when a later call would reuse its buffer: a copy (here
    a stand-in buffer at another address) is dropped and the input put again (an input too large to be
    copied into the executable's own memory)."""
    shape = (SCRATCH_BYTES // 256 + 1, 64)
    g = Graph()
    x = g.add_input("x", TensorType(shape, F32))
    g.set_outputs([g.add_op("exp", [x])])
    exe = compile_hlo(emit_hlo(g).proto, [(shape, np.dtype(np.float32))])
    a = _at_offset(shape, 0)
    a[...] = 1.0
    exe([a])
    entry = exe._last[0]
    assert entry is not None and entry[3] is False  # not asked yet

    class Copied:
        def unsafe_buffer_pointer(self) -> int:
            return 0

    exe._last[0] = (entry[0], entry[1], Copied(), False)
    a[...] = 2.0
    np.testing.assert_allclose(exe([a])[0], np.exp(a), rtol=1e-6)  # put again, not the stand-in
    again = exe._last[0]
    assert again is not None and not isinstance(again[2], Copied)
    np.testing.assert_allclose(exe([a])[0], np.exp(a), rtol=1e-6)
    assert exe._last[0] is not None and exe._last[0][3] is True  # the real buffer, checked once


def test_saved_activations_in_new_memory_are_copied_not_put() -> None:
    """A 16 KiB input in new memory every call (a backward's saved activation) goes through the
    executable's own memory (a copy, cheaper than a device put), with each call's own values."""
    g = Graph()
    x = g.add_input("x", TensorType((64, 64), F32))
    g.set_outputs([g.add_op("exp", [x])])
    exe = compile_hlo(emit_hlo(g).proto, [((64, 64), np.dtype(np.float32))])
    rng = np.random.default_rng(0)
    for _ in range(3):
        a = _at_offset((64, 64), 0)
        a[...] = rng.standard_normal((64, 64))
        np.testing.assert_allclose(exe([a])[0], np.exp(a), rtol=1e-6)
    assert exe._scratch[0] is not None and exe._last[0] is None


def test_an_input_in_new_memory_at_every_call_is_copied_without_asking_its_address() -> None:
    """After VOLATILE_COPIES calls in a row at new addresses, an input is copied into the executable's own
    memory without its address being read. Each call still computes with its own values, an array that
    then stays put and changes in place is read again, and a wrong input is refused by name, the next
    good call unharmed."""
    g = Graph()
    x = g.add_input("x", TensorType((8, 8), F32))
    g.set_outputs([g.add_op("exp", [x])])
    exe = compile_hlo(emit_hlo(g).proto, [((8, 8), np.dtype(np.float32))])
    rng = np.random.default_rng(1)
    alive = []  # all kept alive, so each call's array is at an address of its own
    for _ in range(VOLATILE_COPIES + 4):
        a = rng.standard_normal((8, 8)).astype(np.float32)
        alive.append(a)
        np.testing.assert_allclose(exe([a])[0], np.exp(a), rtol=1e-6)
    assert exe._moves[0] >= VOLATILE_COPIES and exe._last[0] is None
    stays = np.zeros((8, 8), np.float32)
    for value in (0.5, -2.0, 1.25):
        stays[...] = value  # the same array object, changed in place between calls
        np.testing.assert_allclose(exe([stays])[0], np.exp(stays), rtol=1e-6)
    with pytest.raises(IRError, match=r"float32\[4, 16\].*expected C-contiguous float32\[8, 8\]"):
        exe([np.zeros((4, 16), np.float32)])
    with pytest.raises(IRError, match="C-contiguous: False"):
        exe([np.zeros((8, 16), np.float32)[:, ::2]])
    np.testing.assert_allclose(exe([alive[0]])[0], np.exp(alive[0]), rtol=1e-6)


def test_an_input_that_moved_once_and_stays_is_aliased_again() -> None:
    """Weights staged at a new address once (a first call through another path) are copied that once;
    from the next call at the same address on they are aliased, not copied every call."""
    g = Graph()
    x = g.add_input("x", TensorType((8, 8), F32))
    g.set_outputs([g.add_op("exp", [x])])
    exe = compile_hlo(emit_hlo(g).proto, [((8, 8), np.dtype(np.float32))])
    first, moved = _at_offset((8, 8), 0), _at_offset((8, 8), 0)
    first[...], moved[...] = 1.0, 2.0
    exe([first])
    np.testing.assert_allclose(exe([moved])[0], np.exp(moved), rtol=1e-6)  # new memory: copied
    assert exe._last[0] is None
    np.testing.assert_allclose(exe([moved])[0], np.exp(moved), rtol=1e-6)  # stayed: aliased from now on
    entry = exe._last[0]
    assert entry is not None and entry[0] is moved
    moved[...] = 3.0  # changed in place: XLA reads the memory it aliases
    np.testing.assert_allclose(exe([moved])[0], np.exp(moved), rtol=1e-6)
    again = exe._last[0]
    assert again is not None and again[2] is entry[2]  # the same XLA buffer, not a new put or copy


@pytest.mark.smoke
def test_small_inputs_in_new_memory_go_through_the_executables_own_memory() -> None:
    """A scalar arriving in new memory every call (Dynamo's float arguments) is copied into memory one
    XLA buffer aliases; an array changed in place is read again, and concurrent calls keep their values."""
    g = Graph()
    x = g.add_input("x", TensorType((3,), F32))
    k = g.add_input("k", TensorType((), F64))
    g.set_outputs([g.add_op("multiply", [x, g.add_op("astype", [k], attrs={"dtype": F32})])])
    exe = compile_hlo(emit_hlo(g).proto, [((3,), np.dtype(np.float32)), ((), np.dtype(np.float64))])
    x_value = np.arange(3, dtype=np.float32)
    scalars = [np.array(value) for value in (2.0, -1.5, 7.0)]  # all alive: three addresses
    for scalar in scalars:
        np.testing.assert_array_equal(exe([x_value, scalar])[0], x_value * np.float32(scalar))
    assert exe._scratch[1] is not None and exe._last[1] is None  # moved after the first call: copied
    same = np.array(3.0)
    exe([x_value, same])
    same[...] = 5.0  # the same array object, changed in place: must be read again
    np.testing.assert_array_equal(exe([x_value, same])[0], x_value * 5)
    errors: list[str] = []

    def worker(value: float) -> None:
        for _ in range(200):
            got = exe([x_value, np.array(value)])[0]
            if not np.array_equal(got, x_value * np.float32(value)):
                errors.append(f"{value}: {got}")

    threads = [threading.Thread(target=worker, args=(float(v),)) for v in range(1, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


# --- the neuron target's int64 narrowing ------------------------------------------------------------
# Every case whose module holds an s64 anywhere (int64 operands or results, and the s64 values HLO rules
# make themselves: index normalisation, argmax/sort iotas, dynamic-slice starts), with every s64 narrowed
# to s32 as neuronx-cc does without --native-int64=enabled: the module still compiles on XLA:CPU and gives
# the reference's values as int32: computed values wrap (a 60-element int product overflows, as on hardware)
# and literals saturate (the literal case's 2**40).
NARROWED = [c for c in CASES if has_int64(emit_hlo(_graph(c)))]


@pytest.mark.parametrize("case", NARROWED, ids=[c.id for c in NARROWED])
def test_int64_narrowed_module_matches_reference(case: Case) -> None:
    graph = _graph(case)
    rng = np.random.default_rng(zlib.crc32(case.id.encode()))
    arrays = [_data(o, rng) for o in case.operands]
    expected = execute(graph, arrays)
    narrowed = narrow_int64(emit_hlo(graph))
    assert not has_int64(narrowed) and "s64" not in narrowed.text
    wide = {np.dtype(np.int64): np.int32}
    actual = run_hlo(narrowed.proto, [a.astype(wide.get(a.dtype, a.dtype)) for a in arrays])
    for got, want, value in zip(actual, expected, graph.outputs, strict=True):
        assert got.dtype == np.dtype(wide.get(want.dtype, want.dtype)) and got.shape == want.shape, case.id
        out = value.type.dtype
        if out.is_floating:
            rtol, atol = OP_TOL.get(case.op, {}).get(out, TOL[out])
            np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=rtol, atol=atol)
        else:
            as_int32 = want
            if want.dtype == np.int64:
                as_int32 = np.clip(want, INT32_MIN, INT32_MAX) if case.op == "literal" else want.astype(np.int32)
            np.testing.assert_array_equal(got, as_int32)


def test_int64_narrowing_saturates_literals_and_keeps_the_rest() -> None:
    g = Graph()
    x = g.add_input("x", TensorType((3,), I64))
    low = g.add_op("full", [], {"value": -(2**63), "dtype": I64, "shape": (3,)})
    g.set_outputs([g.add_op("maximum", [x, low]), g.add_op("add", [x, x])])
    narrowed = narrow_int64(emit_hlo(g))
    assert "s64" not in narrowed.text and "-2147483648" in narrowed.text
    assert narrowed.input_names == ("x",) and narrowed.output_names == ("output0", "output1")
    got = run_hlo(narrowed.proto, [np.array([-(2**31), 5, 2**30], np.int32)])
    np.testing.assert_array_equal(got[0], [-(2**31), 5, 2**30])
    np.testing.assert_array_equal(got[1], np.array([0, 10, -(2**31)], np.int32))  # 2**31 wraps, as on hardware


# --- packed outputs: small outputs leave XLA:CPU as bytes of one buffer -------------------------------

PACKED_TYPES = [DType.float32, DType.bfloat16, DType.float16, DType.float64, DType.int64, DType.int32,
                DType.int16, DType.int8, DType.uint8]


def _many_outputs() -> Graph:
    """One output per packable type (odd sizes, a scalar), a bare input, a repeated output, a bool one."""
    g = Graph()
    x = g.add_input("x", TensorType((3, 5), F32))
    outs = [g.add_op("astype", [g.add_op("multiply", [x, x])], attrs={"dtype": d}) for d in PACKED_TYPES]
    total = g.add_op("sum", [x], {"axes": (0, 1), "keepdims": False})
    positive = g.add_op("greater", [x, g.add_op("constant", [], {"value": 0.0, "dtype": F32})])
    g.set_outputs([*outs, total, x, outs[0], positive])
    return g


@pytest.mark.smoke
@pytest.mark.parametrize("packed", [list(range(12)), [0, 3, 9], [1, 10], [10, 11], [9],
                                    [0, 10, 11], [1], [4]])  # these three: one dtype, packed in it
def test_packed_outputs_are_the_unpacked_bits(packed: list[int]) -> None:
    g = _many_outputs()
    x = np.random.default_rng(3).uniform(-4, 4, (3, 5)).astype(np.float32)
    want = compile_hlo(emit_hlo(g).proto)([x])
    types = [v.type for v in g.outputs]
    layout = OutputLayout(len(types), tuple(
        (i, offset, tuple(types[i].static_shape()), np.dtype(types[i].dtype.to_numpy()))
        for i, offset, _ in pack_layout(types, packed)))
    spec = [((3, 5), np.dtype(np.float32))]
    exe = compile_hlo(emit_hlo(g, packed_outputs=packed).proto, spec, layout)
    got = exe([x])
    assert len(got) == len(want) == len(g.outputs)
    for index, (a, b) in enumerate(zip(got, want, strict=True)):
        assert a.dtype == b.dtype and a.shape == b.shape, index
        assert a.tobytes() == b.tobytes(), index  # bit for bit
        if index in packed:
            assert a.ctypes.data % 64 == 0  # each packed output starts on a 64-byte boundary
    buffer = exe.call_packed([x])[-1]  # what a runtime host model takes: bytes, whatever the module packed
    assert buffer.dtype == np.uint8 and buffer.ndim == 1


def test_packing_names_what_it_cannot_pack() -> None:
    g = _many_outputs()
    with pytest.raises(IRError, match=r"output 12 .*bool.* cannot be packed"):
        emit_hlo(g, packed_outputs=[0, 12])
    with pytest.raises(IRError, match="packed output 13 is not an output"):
        emit_hlo(g, packed_outputs=[13])
