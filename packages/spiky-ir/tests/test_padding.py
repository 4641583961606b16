"""The padding safety pass: padded runs (garbage in the padding) match unpadded runs, op by op."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from spiky_ir import DType, Graph, TensorType, Value, execute, specialize
from spiky_ir.padding import PAD_RULES, pad_graph, unpad
from spiky_ir.specialize import rename_symbols
from spiky_ir.symbolic import dim_rename

F32 = DType.float32
Build = Callable[[Graph, Value], Value]


def _red(op: str, axes: tuple[int, ...], keepdims: bool = False, **attrs: Any) -> Build:
    return lambda g, x: g.add_op(op, [x], {"axes": axes, "keepdims": keepdims, **attrs})


def _matmul_contract(g: Graph, x: Value) -> Value:  # (4, s0) @ (s0, 4)
    return g.add_op("matmul", [x, g.add_op("transpose", [x], {"axes": (1, 0)})])


def _merge_rows(g: Graph, x: Value) -> Value:  # (s0, 4) -> (4*s0,) -> sum
    flat = g.add_op("reshape", [x], {"shape": ("4*s0",)})
    return g.add_op("sum", [flat], {"axes": (0,), "keepdims": False})


def _concat_tail(g: Graph, x: Value) -> Value:  # [zeros(4, 2), x] along the padded axis, then max
    z = g.add_op("zeros", [], {"shape": (4, 2), "dtype": F32})
    cat = g.add_op("concatenate", [z, x], {"axis": 1})
    return g.add_op("max", [cat], {"axes": (1,), "keepdims": False})


def _slice_tail(g: Graph, x: Value) -> Value:  # x[:, 1:] then mean
    s = g.add_op("slice", [x], {"start": (0, 1), "stop": (4, "s0"), "step": (1, 1)})
    return g.add_op("mean", [s], {"axes": (1,), "keepdims": False})


def _flip(g: Graph, x: Value) -> Value:
    return g.add_op("flip", [x], {"axes": (1,)})


def _topk(g: Graph, x: Value) -> Value:
    return g.add_node("topk", [x], {"k": 2, "axis": 1, "largest": True}).outputs[1]


def _log_then_sum(g: Graph, x: Value) -> Value:  # garbage may become inf/NaN: masking must use where
    return g.add_op("sum", [g.add_op("log", [x])], {"axes": (1,), "keepdims": False})


def _sum_over_count(g: Graph, x: Value) -> Value:  # a mean written as sum / numel (SymInt count)
    total = g.add_op("sum", [x], {"axes": (0, 1), "keepdims": False})
    count = g.add_op("dim_value", [], {"value": "4*s0+s0*s0", "dtype": F32})  # 4*s0 + s0^2 elements
    return g.add_op("divide", [total, count])


# name → (build on x: f32[4, s0], expected padded?)
CASES: dict[str, tuple[Build, bool]] = {
    "sum": (_red("sum", (1,)), True),
    "prod": (_red("prod", (1,)), True),
    "max": (_red("max", (1,)), True),
    "min": (_red("min", (0, 1)), True),
    "mean": (_red("mean", (1,), True), True),
    "var_unbiased": (_red("var", (1,), correction=1.0), True),
    "var_all": (_red("var", (0, 1), correction=0.0), True),
    "argmax": (lambda g, x: g.add_op("argmax", [x], {"axis": 1, "keepdims": False}), True),
    "argmin": (lambda g, x: g.add_op("argmin", [x], {"axis": 1, "keepdims": True}), True),
    "any": (lambda g, x: g.add_op("any", [g.add_op("greater", [x, g.add_op("constant", [], {
        "value": 1.5, "dtype": F32})])], {"axes": (1,), "keepdims": False}), True),
    "softmax": (lambda g, x: g.add_op("softmax", [x], {"axis": 1}), True),
    "softmax_other_axis": (lambda g, x: g.add_op("softmax", [x], {"axis": 0}), True),
    "topk": (_topk, True),
    "matmul_contraction": (_matmul_contract, True),
    "reshape_merge": (_merge_rows, True),
    "concat_tail": (_concat_tail, True),
    "slice_tail": (_slice_tail, True),
    "log_sum": (_log_then_sum, True),
    "exp2_sum": (lambda g, x: g.add_op("sum", [g.add_op("exp2", [x])], {"axes": (1,), "keepdims": False}), True),
    "sum_over_symbolic_count": (_sum_over_count, True),
    "flip_exact": (_flip, False),
    "gather_exact": (lambda g, x: g.add_op("take_along_axis", [x, g.add_op("zeros", [], {
        "shape": (4, "s0"), "dtype": DType.int64})], {"axis": 1}), False),
}


def _graph(build: Build) -> Graph:
    g = Graph()
    x = g.add_input("x", TensorType((4, "s0"), F32))
    g.set_outputs([build(g, x)])
    return g


@pytest.mark.smoke
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the unpadded reference itself: var of 1 element
@pytest.mark.parametrize(
    ("name", "real", "bucket"),
    # topk k=2 needs at least 2 real elements (torch refuses k > size too)
    [(n, r, b) for n in sorted(CASES) for r, b in [(3, 8), (1, 4), (5, 5)] if not (n == "topk" and r < 2)],
)
def test_padded_run_matches_unpadded(name: str, real: int, bucket: int) -> None:
    build, paddable = CASES[name]
    graph = _graph(build)
    plan = pad_graph(graph, {"s0"})
    assert (plan.padded == {"s0"}) == paddable, plan.exact
    if not paddable:
        assert plan.exact.get("s0")
        return
    rng = np.random.default_rng(real * 31 + bucket)
    x = rng.uniform(0.5, 2.0, (4, real)).astype(np.float32)
    (expected,) = execute(graph, [x])
    garbage = rng.uniform(-1e6, 1e6, (4, bucket)).astype(np.float32)
    garbage[:, : bucket // 2] = np.nan if bucket > real + 1 else garbage[:, : bucket // 2]
    garbage[:, :real] = x
    static = specialize(plan.graph, {"s0": bucket})
    lengths = [np.array(real, np.int64) for _ in plan.length_symbols]
    (out,) = execute(static, [garbage, *lengths])
    out = unpad(out, plan.output_layouts[0], plan.padded, {"s0": real}, {"s0": bucket})
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, rtol=2e-6, atol=1e-6)


def test_every_reduction_and_mixing_op_has_a_rule() -> None:
    mixing = {"sum", "prod", "max", "min", "mean", "var", "any", "all", "argmax", "argmin", "softmax", "topk",
              "matmul", "dot", "conv1d", "conv2d"}
    assert mixing <= set(PAD_RULES)


def test_output_equal_to_bucket_by_coincidence_is_not_cropped() -> None:
    g = Graph()
    x = g.add_input("x", TensorType(("s0", 8), F32))
    g.set_outputs([g.add_op("sum", [x], {"axes": (0,), "keepdims": False}), g.add_op("exp", [x])])
    plan = pad_graph(g, {"s0"})
    assert plan.output_layouts == [((8,),), (("s0",), (8,))]
    reduced = np.ones(8, np.float32)  # bucket 8 == static size 8: still not a padded dim
    assert unpad(reduced, plan.output_layouts[0], plan.padded, {"s0": 3}, {"s0": 8}).shape == (8,)
    assert unpad(np.ones((8, 8)), plan.output_layouts[1], plan.padded, {"s0": 3}, {"s0": 8}).shape == (3, 8)


def test_two_symbols_merged_axis_unpads_through_factors() -> None:
    g = Graph()
    x = g.add_input("x", TensorType(("s0", "s1", 2), F32))
    flat = g.add_op("reshape", [x], {"shape": ("s0*s1", 2)})
    g.set_outputs([g.add_op("softmax", [flat], {"axis": 1}), g.add_op("mean", [x], {"axes": (1,), "keepdims": False})])
    plan = pad_graph(g, {"s0", "s1"})
    assert plan.padded == {"s0", "s1"} and plan.output_layouts[0][0] == ("s0", "s1")
    rng = np.random.default_rng(0)
    real = rng.standard_normal((2, 3, 2)).astype(np.float32)
    padded = rng.standard_normal((4, 8, 2)).astype(np.float32) * 100
    padded[:2, :3] = real
    expected = execute(g, [real])
    outs = execute(specialize(plan.graph, {"s0": 4, "s1": 8}),
                   [padded, *(np.array({"s0": 2, "s1": 3}[s], np.int64) for s in plan.length_symbols)])
    for out, exp, layout in zip(outs, expected, plan.output_layouts, strict=True):
        got = unpad(out, layout, plan.padded, {"s0": 2, "s1": 3}, {"s0": 4, "s1": 8})
        np.testing.assert_allclose(got, exp, rtol=1e-5, atol=1e-6)


def test_rename_symbols() -> None:
    g = Graph()
    x = g.add_input("x", TensorType(("s77", "s27"), F32))
    g.set_outputs([g.add_op("reshape", [x], {"shape": ("s27*s77",)})])
    renamed = rename_symbols(g, {"s77": "s0", "s27": "s1"})
    assert renamed.inputs[0].type.shape == ("s0", "s1") and renamed.outputs[0].type.shape == ("s0*s1",)
    assert dim_rename("s77+1", {"s77": "s0"}) == "s0+1"
