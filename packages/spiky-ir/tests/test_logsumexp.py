"""logsumexp over a padded dim: the padding is masked with -inf, so it adds exp(-inf) = 0 to every sum.

The worked example of ``docs/adding-an-op.md``. Its other checks are rows of the shared tables:
HLO on XLA:CPU and the plan in ``test_hlo_xla.py``, torch eager and kernel source in ``test_fx.py``
(``DIRECT``), every rule present in ``test_op_tables.py``. Here: padded runs, with garbage of every
kind (NaN, +inf, huge values) in the padding, equal unpadded runs, in the reference executor and in
the emitted HLO on XLA:CPU.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from spiky_ir import DType, Graph, TensorType, Value, execute, specialize
from spiky_ir.hlo import emit_hlo
from spiky_ir.hlo.xla_cpu import run_hlo
from spiky_ir.padding import pad_graph, unpad

F32, I32 = DType.float32, DType.int32
Build = Callable[[Graph, Value], Value]


def _lse(axes: tuple[int, ...], keepdims: bool = False) -> Build:
    return lambda g, x: g.add_op("logsumexp", [x], {"axes": axes, "keepdims": keepdims})


def _merged(g: Graph, x: Value) -> Value:  # (4, s0) -> (s0, 4) -> (4*s0,): the padded factor comes first
    t = g.add_op("transpose", [x], {"axes": (1, 0)})
    return g.add_op("logsumexp", [g.add_op("reshape", [t], {"shape": ("4*s0",)})], {"axes": (0,), "keepdims": True})


# name → (build on x: [4, s0], input dtype)
CASES: dict[str, tuple[Build, DType]] = {
    "padded_axis": (_lse((1,)), F32),
    "padded_axis_keepdims": (_lse((1,), keepdims=True), F32),
    "all_axes": (_lse((0, 1)), F32),
    "other_axis": (_lse((0,)), F32),  # reduces the static axis: padding stays in the result's padded axis
    "merged_axis": (_merged, F32),
    "int_input": (_lse((1,)), I32),  # masked with the int minimum: exp of it is 0 in float32
}


def _graph(build: Build, dtype: DType) -> Graph:
    g = Graph()
    x = g.add_input("x", TensorType((4, "s0"), dtype))
    g.set_outputs([build(g, x)])
    return g


def _real(dtype: DType, real: int, rng: np.random.Generator) -> np.ndarray:  # type: ignore[type-arg]
    if dtype is I32:
        return rng.integers(-20, 20, (4, real)).astype(np.int32)
    x = rng.standard_normal((4, real)).astype(np.float32) * 3
    x[1] = -np.inf  # a real row of -inf: its logsumexp is -inf, the padding must not change that
    return x


def _garbage(dtype: DType, real: np.ndarray, bucket: int, rng: np.random.Generator) -> np.ndarray:  # type: ignore[type-arg]
    if dtype is I32:
        padded = rng.integers(-2**31, 2**31 - 1, (4, bucket)).astype(np.int32)
    else:
        padded = rng.uniform(-1e30, 1e30, (4, bucket)).astype(np.float32)
        padded[0, real.shape[1]:] = np.nan
        padded[2, real.shape[1]:] = np.inf
    padded[:, : real.shape[1]] = real
    return padded


@pytest.mark.smoke
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # log(0) of the real -inf row, in the unpadded reference
@pytest.mark.parametrize(("real", "bucket"), [(3, 8), (1, 4), (5, 5)])
@pytest.mark.parametrize("name", sorted(CASES))
def test_padded_run_matches_unpadded(name: str, real: int, bucket: int) -> None:
    build, dtype = CASES[name]
    graph = _graph(build, dtype)
    plan = pad_graph(graph, {"s0"})
    assert plan.padded == {"s0"}, plan.exact
    rng = np.random.default_rng(real * 31 + bucket)
    x = _real(dtype, real, rng)
    (expected,) = execute(graph, [x])
    static = specialize(plan.graph, {"s0": bucket})
    inputs = [_garbage(dtype, x, bucket, rng), *(np.array(real, np.int64) for _ in plan.length_symbols)]
    (reference,) = execute(static, inputs)
    (xla,) = run_hlo(emit_hlo(static).proto, inputs)
    for out, rtol in ((reference, 2e-6), (xla, 1e-5)):  # sums of the same terms plus exact zeros
        got = unpad(out, plan.output_layouts[0], plan.padded, {"s0": real}, {"s0": bucket})
        assert got.shape == expected.shape and got.dtype == expected.dtype == np.float32
        np.testing.assert_allclose(got, expected, rtol=rtol, atol=rtol)


def test_padding_rule_masks_with_minus_infinity() -> None:
    plan = pad_graph(_graph(_lse((1,)), F32), {"s0"})
    ops = [n.op for n in plan.graph.nodes]
    assert ops[-2:] == ["where", "logsumexp"] and plan.length_symbols == ["s0"]
    fill = next(n for n in plan.graph.nodes if n.op == "constant" and n.output.type.dtype is F32)
    assert fill.attrs["value"] == float("-inf")
