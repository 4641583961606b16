"""The padding safety pass: padded runs (garbage in the padding) match unpadded runs, op by op."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from spiky_ir import DType, Graph, TensorType, Value, execute, specialize
from spiky_ir.hlo import emit_hlo
from spiky_ir.hlo.xla_cpu import run_hlo
from spiky_ir.padding import PAD_RULES, PaddedGraph, pad_graph, unpad
from spiky_ir.specialize import rename_symbols
from spiky_ir.symbolic import dim_eval, dim_rename, dims_product

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


def _concat_grow(g: Graph, x: Value) -> Value:  # a KV cache: [x, new(4, 1)] along the padded axis, itself an output
    new = g.add_op("full", [], {"shape": (4, 1), "value": 7.0, "dtype": F32})
    return g.add_op("concatenate", [x, new], {"axis": 1})


def _concat_middle(g: Graph, x: Value) -> Value:  # [zeros(4, 2), x, ones(4, 3)] along the padded axis, then softmax
    z = g.add_op("zeros", [], {"shape": (4, 2), "dtype": F32})
    o = g.add_op("full", [], {"shape": (4, 3), "value": 1.0, "dtype": F32})
    return g.add_op("softmax", [g.add_op("concatenate", [z, x, o], {"axis": 1})], {"axis": 1})


def _concat_two_padded(g: Graph, x: Value) -> Value:  # [x, x]: two padded parts
    return g.add_op("concatenate", [x, x], {"axis": 1})


def _gather_from_table(g: Graph, x: Value) -> Value:  # a static table gathered at indices derived from x
    table = g.add_op("iota", [], {"shape": (4, 6), "axis": 1, "dtype": F32})
    index = g.add_op("astype", [g.add_op("floor", [g.add_op("multiply", [x, g.add_op("constant", [], {
        "value": 2.9, "dtype": F32})])])], {"dtype": DType.int64})  # x in [0.5, 2): indices 1..5, garbage anywhere
    return g.add_op("take_along_axis", [table, index], {"axis": 1})


def _gather_rows_of_padded_operand(g: Graph, x: Value) -> Value:  # rows of x (4, s0) picked along the static axis
    rows = g.add_op("slice", [x], {"start": (0, 0), "stop": (3, "s0"), "step": (1, 1)})
    index = g.add_op("astype", [g.add_op("floor", [g.add_op("multiply", [rows, g.add_op("constant", [], {
        "value": 1.9, "dtype": F32})])])], {"dtype": DType.int64})  # 0..3 in the real region, garbage elsewhere
    picked = g.add_op("take_along_axis", [x, index], {"axis": 0})  # (3, s0): both padded alike on axis 1
    return g.add_op("sum", [picked], {"axes": (1,), "keepdims": False})


def _gather_relative_positions(g: Graph, x: Value) -> Value:  # DeBERTa's c2p: scores (s0, 6) at clipped j - i
    scores = g.add_op("matmul", [g.add_op("transpose", [x], {"axes": (1, 0)}), g.add_op("iota", [], {
        "shape": (4, 6), "axis": 1, "dtype": F32})])  # (s0, 6), padded along axis 0
    col = g.add_op("iota", [], {"shape": ("s0", "s0"), "axis": 1, "dtype": DType.int64})
    row = g.add_op("iota", [], {"shape": ("s0", "s0"), "axis": 0, "dtype": DType.int64})
    def const(value: int) -> Value:
        return g.add_op("constant", [], {"value": value, "dtype": DType.int64})

    rel = g.add_op("add", [g.add_op("subtract", [col, row]), const(3)])
    index = g.add_op("minimum", [g.add_op("maximum", [rel, const(0)]), const(5)])
    attention = g.add_op("take_along_axis", [scores, index], {"axis": 1})  # (s0, s0)
    return g.add_op("softmax", [attention], {"axis": 1})


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
    "sort_descending": (lambda g, x: g.add_node("sort", [x], {"axis": 1, "descending": True}).outputs[0], True),
    "cumsum": (lambda g, x: g.add_op("cumsum", [x], {"axis": 1}), True),
    "cumprod_other_axis": (lambda g, x: g.add_op("cumprod", [x], {"axis": 0}), True),
    "roll_padded_axis": (lambda g, x: g.add_op("roll", [x], {"shifts": (-3, 1), "axes": (1, 0)}), True),
    "matmul_contraction": (_matmul_contract, True),
    "reshape_merge": (_merge_rows, True),
    "concat_tail": (_concat_tail, True),
    "concat_grow": (_concat_grow, True),
    "concat_middle": (_concat_middle, True),
    "concat_two_padded_exact": (_concat_two_padded, False),
    "slice_tail": (_slice_tail, True),
    "log_sum": (_log_then_sum, True),
    "exp2_sum": (lambda g, x: g.add_op("sum", [g.add_op("exp2", [x])], {"axes": (1,), "keepdims": False}), True),
    "sum_over_symbolic_count": (_sum_over_count, True),
    "flip_exact": (_flip, False),
    "gather_exact": (lambda g, x: g.add_op("take_along_axis", [x, g.add_op("zeros", [], {
        "shape": (4, "s0"), "dtype": DType.int64})], {"axis": 1}), False),
    "gather_from_static_table": (_gather_from_table, True),
    "gather_rows_of_padded_operand": (_gather_rows_of_padded_operand, True),
    "gather_relative_positions": (_gather_relative_positions, True),
    "gather_crop_of_padded_operand_exact": (lambda g, x: g.add_op("take_along_axis", [x, g.add_op("zeros", [], {
        "shape": (2, 3), "dtype": DType.int64})], {"axis": 0}), False),  # x's padded axis 1 cropped to a static 3
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
              "sort", "cumsum", "cumprod", "roll", "matmul", "dot", "conv1d", "conv2d", "conv3d", "conv_transpose1d",
              "conv_transpose2d", "conv_transpose3d"}
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


# Reshapes of a padded tensor whose other axes split or merge exact symbols: (input shape, output shape,
# reduced output axis). The padded symbol is s0; s1 is exact (not a candidate), e.g. attention heads
# split off a batch*heads axis while the sequence axis is padded.
REGROUP_CASES: dict[str, tuple[tuple[Any, ...], tuple[Any, ...], int]] = {
    "split_exact_composite": (("4*s1", "s0", 3), ("s1", 4, "s0", 3), 2),
    "merge_exact_then_padded": (("s1", 4, "s0"), ("4*s1", "s0"), 1),
    "split_static_around_padded": ((6, "s0", "2*s1"), (2, 3, "s0", "s1", 2), 2),
    "merge_trailing_statics": (("s0", 2, 3, "s1"), ("s0", "6*s1"), 0),
}


@pytest.mark.parametrize("name", sorted(REGROUP_CASES))
@pytest.mark.parametrize(("real", "bucket"), [(3, 8), (5, 5)])
def test_reshape_regrouping_exact_axes_beside_a_padded_one_pads(name: str, real: int, bucket: int) -> None:
    """The padded axis keeps its own factor while exact and static axes around it split or merge: s0
    stays padded and the result matches the unpadded graph (garbage, NaN included, in the padding)."""
    src, dst, axis = REGROUP_CASES[name]
    g = Graph()
    x = g.add_input("x", TensorType(src, F32))
    y = g.add_op("reshape", [x], {"shape": dst})
    g.set_outputs([g.add_op("softmax", [y], {"axis": axis}),
                   g.add_op("sum", [y], {"axes": (axis,), "keepdims": False})])
    plan = pad_graph(g, {"s0"})
    assert plan.padded == {"s0"}, plan.exact
    exact = {"s0": real, "s1": 2}
    rng = np.random.default_rng(real)
    data = rng.standard_normal(_static(src, exact)).astype(np.float32)
    big = rng.uniform(-1e6, 1e6, _static(src, {"s0": bucket, "s1": 2})).astype(np.float32)
    if bucket > real:
        big[tuple(slice(None) if d != "s0" else slice(real, None) for d in src)] = np.nan
    big[tuple(slice(0, n) for n in data.shape)] = data
    expected = execute(g, [data])
    outs = execute(specialize(plan.graph, {"s0": bucket, "s1": 2}),
                   [big, *(np.array(real, np.int64) for _ in plan.length_symbols)])
    for out, exp, layout in zip(outs, expected, plan.output_layouts, strict=True):
        got = unpad(out, layout, plan.padded, exact, {"s0": bucket, "s1": 2})
        np.testing.assert_allclose(got, exp, rtol=1e-5, atol=1e-5)


def test_reshape_mixing_a_padded_axis_with_an_exact_one_stays_exact() -> None:
    """(s1, s0) -> (s0, s1) reorders the padded rows among real ones: not paddable, s0 compiles exact."""
    g = Graph()
    x = g.add_input("x", TensorType(("s1", "s0"), F32))
    g.set_outputs([g.add_op("reshape", [x], {"shape": ("s0", "s1")})])
    plan = pad_graph(g, {"s0"})
    assert plan.padded == set() and "regroups" in plan.exact["s0"]


def test_rename_symbols() -> None:
    g = Graph()
    x = g.add_input("x", TensorType(("s77", "s27"), F32))
    g.set_outputs([g.add_op("reshape", [x], {"shape": ("s27*s77",)})])
    renamed = rename_symbols(g, {"s77": "s0", "s27": "s1"})
    assert renamed.inputs[0].type.shape == ("s0", "s1") and renamed.outputs[0].type.shape == ("s0*s1",)
    assert dim_rename("s77+1", {"s77": "s0"}) == "s0+1"


# --- ranking along padded axes: indices in real positions, ties and special values ---------------------
#
# argmax/argmin/topk/sort return positions along an axis. When the axis merges several factors and one
# after the first is padded (a flattened (s0, s1), a transposed one), the padding sits between real
# elements: the rewrite must count positions in real coordinates, and a real value equal to the
# padding's fill (-inf, int min, NaN) must still win over the padding. Each case runs padded (garbage
# of every kind in the padding) and unpadded, and the results must be identical, bit for bit.

View = Callable[[Graph, Value], tuple[Value, int]]


def _flat(g: Graph, x: Value) -> Value:
    return g.add_op("reshape", [x], {"shape": (dims_product(x.type.shape),)})


def _transposed(g: Graph, x: Value) -> Value:
    return g.add_op("transpose", [x], {"axes": tuple(reversed(range(x.type.rank)))})


# name → (input shape, the value ranked and its axis); every input has both symbols s0 and s1
VIEWS: dict[str, tuple[tuple[Any, ...], View]] = {
    "flatten": (("s0", "s1"), lambda g, x: (_flat(g, x), 0)),
    "transpose_flatten": (("s0", "s1"), lambda g, x: (_flat(g, _transposed(g, x)), 0)),
    "flatten_static_middle": (("s0", 3, "s1"), lambda g, x: (_flat(g, x), 0)),
    "merge_last_two": ((2, "s0", "s1"), lambda g, x: (g.add_op("reshape", [x], {"shape": (2, "s0*s1")}), 1)),
    "transpose_merge": (("s0", 2, "s1"), lambda g, x: (g.add_op("reshape", [
        g.add_op("transpose", [x], {"axes": (1, 2, 0)})], {"shape": (2, "s0*s1")}), 1)),
    "plain_axis": (("s1", "s0"), lambda g, x: (x, 1)),
    "transposed_axis": (("s0", "s1"), lambda g, x: (_transposed(g, x), 0)),
}

Rank = Callable[[Graph, Value, int], list[Value]]


def _arg(op: str, keepdims: bool) -> Rank:
    return lambda g, v, axis: [g.add_op(op, [v], {"axis": axis, "keepdims": keepdims})]


def _topk_rank(k: int, largest: bool) -> Rank:
    return lambda g, v, axis: list(g.add_node("topk", [v], {"k": k, "axis": axis, "largest": largest}).outputs)


def _sort_rank(descending: bool) -> Rank:
    return lambda g, v, axis: list(g.add_node("sort", [v], {"axis": axis, "descending": descending}).outputs)


# name → (the ranking op on (graph, value, axis), elements it needs along the axis)
RANKS: dict[str, tuple[Rank, int]] = {
    "argmax": (_arg("argmax", False), 1),
    "argmin_keepdims": (_arg("argmin", True), 1),
    "topk1_largest": (_topk_rank(1, True), 1),
    "topk1_smallest": (_topk_rank(1, False), 1),
    "topk3_largest": (_topk_rank(3, True), 3),
    "topk3_smallest": (_topk_rank(3, False), 3),
    "sort_ascending": (_sort_rank(False), 1),
    "sort_descending": (_sort_rank(True), 1),
}

RANK_SIZES = [(1, 33), (3, 17), (17, 3), (33, 1)]  # (s0, s1), real: each size on each symbol
F16, I32 = DType.float16, DType.int32


def _static(shape: tuple[Any, ...], sizes: dict[str, int]) -> tuple[int, ...]:
    out = tuple(dim_eval(d, sizes) for d in shape)
    assert all(isinstance(d, int) for d in out)
    return out  # type: ignore[return-value]


def _bucket(n: int) -> int:
    """The next power of two above ``n``: every size gets some padding."""
    return 1 << n.bit_length()


def _rank_data(kind: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray[Any, Any]:
    if kind == "ties":  # few distinct values: ties everywhere
        return rng.integers(-2, 3, shape).astype(np.float32)
    if kind == "specials":  # -inf ties the fill of argmax/topk largest, NaN that of sort ascending
        return rng.choice(np.array([-np.inf, np.inf, np.nan, -1.0, 0.0, 1.0], np.float32), shape)
    if kind == "all_lowest":
        return np.full(shape, -np.inf, np.float32)
    if kind == "all_nan":
        return np.full(shape, np.nan, np.float32)
    if kind == "f16_ties":
        return rng.integers(-1, 2, shape).astype(np.float16)
    info = np.iinfo(np.int32)  # int_extremes: the fills of int rankings are int min and int max
    return rng.choice(np.array([info.min, info.max, 0, 1], np.int32), shape)


RANK_DATA = {"ties": F32, "specials": F32, "all_lowest": F32, "all_nan": F32, "f16_ties": F16,
             "int_extremes": I32}


def _garbage(dtype: DType, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray[Any, Any]:
    if dtype.is_floating:
        pool = np.array([np.nan, np.inf, -np.inf, 3e4, -3e4, 2.0, -2.0], np.float32)
        return rng.choice(pool, shape).astype(dtype.to_numpy())
    info = np.iinfo(dtype.to_numpy())
    return rng.choice(np.array([info.min, info.max, 0, 7], dtype.to_numpy()), shape)


def _rank_graph(view: str, rank: str, dtype: DType) -> Graph:
    shape, make = VIEWS[view]
    g = Graph()
    x = g.add_input("x", TensorType(shape, dtype))
    value, axis = make(g, x)
    g.set_outputs(RANKS[rank][0](g, value, axis))
    return g


def _run_padded(graph: Graph, plan: PaddedGraph, real: np.ndarray[Any, Any], sizes: dict[str, int],
                rng: np.random.Generator, on_xla: bool = False) -> list[np.ndarray[Any, Any]]:
    """``plan`` (the padded ``graph``) run on ``real`` padded with garbage, cropped to the real region."""
    assert plan.padded == set(sizes), plan.exact  # padded, not dodged by compiling exact sizes
    buckets = {s: _bucket(n) for s, n in sizes.items()}
    x = graph.inputs[0]
    padded = _garbage(x.type.dtype, _static(x.type.shape, buckets), rng)
    padded[tuple(slice(0, n) for n in real.shape)] = real
    static = specialize(plan.graph, buckets)
    args = [padded, *(np.array(sizes[s], np.int64) for s in plan.length_symbols)]
    outs = run_hlo(emit_hlo(static).proto, args) if on_xla else execute(static, args)
    return [unpad(o, lay, plan.padded, sizes, buckets) for o, lay in zip(outs, plan.output_layouts, strict=True)]


def _ranked_size(graph: Graph, sizes: dict[str, int]) -> int:
    ranked = graph.nodes[-1]
    axis = ranked.attrs["axis"]
    assert isinstance(axis, int)
    size = dim_eval(ranked.inputs[0].type.shape[axis], sizes)
    assert isinstance(size, int)
    return size


@pytest.mark.parametrize("rank", sorted(RANKS))
@pytest.mark.parametrize("view", sorted(VIEWS))
def test_ranking_along_padded_axes_returns_real_positions(view: str, rank: str) -> None:
    checked = 0
    for kind, dtype in RANK_DATA.items():
        graph = _rank_graph(view, rank, dtype)
        plan = pad_graph(graph, {"s0", "s1"})
        for n0, n1 in RANK_SIZES:
            sizes = {"s0": n0, "s1": n1}
            if _ranked_size(graph, sizes) < RANKS[rank][1]:
                continue  # topk k=3 needs three elements (torch refuses k > size too)
            rng = np.random.default_rng(zlib.crc32(f"{view}{rank}{n0},{n1}{kind}".encode()))
            real = _rank_data(kind, _static(graph.inputs[0].type.shape, sizes), rng)
            got, expected = _run_padded(graph, plan, real, sizes, rng), execute(graph, [real])
            for g_out, e_out in zip(got, expected, strict=True):
                assert g_out.dtype == e_out.dtype and g_out.shape == e_out.shape, (n0, n1, kind)
                np.testing.assert_array_equal(g_out, e_out, err_msg=f"s0={n0} s1={n1} {kind}")
            checked += 1
    assert checked >= 18


XLA_RANKINGS = sorted({(v, "topk3_smallest") for v in VIEWS} | {("transpose_flatten", r) for r in RANKS})


@pytest.mark.parametrize(("view", "rank"), XLA_RANKINGS)
def test_ranking_along_padded_axes_on_xla(view: str, rank: str) -> None:
    """The rewritten graph's HLO (gathers, integer position arithmetic) on XLA:CPU, one size."""
    graph = _rank_graph(view, rank, F32)
    rng = np.random.default_rng(zlib.crc32(f"{view}{rank}".encode()))
    sizes = {"s0": 3, "s1": 17}
    real = _rank_data("specials", _static(graph.inputs[0].type.shape, sizes), rng)
    got = _run_padded(graph, pad_graph(graph, set(sizes)), real, sizes, rng, on_xla=True)
    for g_out, e_out in zip(got, execute(graph, [real]), strict=True):
        np.testing.assert_array_equal(g_out, e_out)


@pytest.mark.parametrize("name", ["concat_grow", "concat_middle", "gather_from_static_table",
                                  "gather_rows_of_padded_operand", "gather_relative_positions"])
@pytest.mark.parametrize(("real", "bucket"), [(3, 8), (1, 4), (5, 5)])
def test_moved_and_masked_padding_on_xla(name: str, real: int, bucket: int) -> None:
    """The take that moves a concatenation's later operands back, and the masked gather indices,
    as HLO on XLA:CPU (what neuronx-cc compiles), against the unpadded reference."""
    graph = _graph(CASES[name][0])
    plan = pad_graph(graph, {"s0"})
    rng = np.random.default_rng(real * 7 + bucket)
    x = rng.uniform(0.5, 2.0, (4, real)).astype(np.float32)
    garbage = rng.uniform(-1e6, 1e6, (4, bucket)).astype(np.float32)
    garbage[:, :real] = x
    static = specialize(plan.graph, {"s0": bucket})
    (out,) = run_hlo(emit_hlo(static).proto, [garbage, *(np.array(real, np.int64) for _ in plan.length_symbols)])
    out = unpad(out, plan.output_layouts[0], plan.padded, {"s0": real}, {"s0": bucket})
    (expected,) = execute(graph, [x])
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("on_xla", [False, True], ids=["reference", "xla"])
@pytest.mark.parametrize(("real", "start", "bucket"), [(5, 2, 8), (3, 0, 4), (6, 5, 8), (5, 2, 5)])
def test_slice_from_an_exact_symbol_offset_pads(real: int, start: int, bucket: int, on_xla: bool) -> None:
    """``x[:, s1:]`` with s1 exact (an int argument, fixed per bucket): the result's axis is ``s0-s1``, a
    padded size plus an offset over exact symbols. Its real part is the prefix of length ``L-s1``, which
    the softmax masks by and the mean divides by (garbage and NaN in the padding)."""
    g = Graph()
    x = g.add_input("x", TensorType((4, "s0"), F32))
    g.add_input("offsets", TensorType(("s1",), F32))  # carries s1 only
    kept = g.add_op("slice", [x], {"start": (0, "s1"), "stop": (4, "s0"), "step": (1, 1)})
    g.set_outputs([kept, g.add_op("softmax", [kept], {"axis": 1}),
                   g.add_op("mean", [kept], {"axes": (1,), "keepdims": False})])
    plan = pad_graph(g, {"s0"})
    assert plan.padded == {"s0"}, plan.exact
    assert plan.output_layouts[0] == ((4,), ("s0-s1",))
    rng = np.random.default_rng(real * 13 + start)
    data = rng.uniform(-2.0, 2.0, (4, real)).astype(np.float32)
    big = rng.uniform(-1e6, 1e6, (4, bucket)).astype(np.float32)
    big[:, real:] = np.nan if bucket > real + 1 else big[:, real:]
    big[:, :real] = data
    offsets = np.zeros(start, np.float32)
    expected = execute(g, [data, offsets])
    static = specialize(plan.graph, {"s0": bucket, "s1": start})
    args = [big, offsets, *(np.array(real, np.int64) for _ in plan.length_symbols)]
    outs = run_hlo(emit_hlo(static).proto, args) if on_xla else execute(static, args)
    for out, want, layout in zip(outs, expected, plan.output_layouts, strict=True):
        got = unpad(out, layout, plan.padded, {"s0": real}, {"s0": bucket, "s1": start})
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6)


def test_an_offset_that_scales_or_pads_twice_stays_exact() -> None:
    """The offset may not involve the padded symbol (``2*s0``) or another padded one (``s0+s1``)."""
    for shape, padded in ((("2*s0",), {"s0"}), (("s0+s1",), {"s0", "s1"})):
        g = Graph()
        x = g.add_input("x", TensorType(shape, F32))
        g.set_outputs([g.add_op("sum", [x], {"axes": (0,), "keepdims": False})])
        plan = pad_graph(g, padded)
        assert not plan.padded and "plus an offset" in next(iter(plan.exact.values())), plan.exact


@pytest.mark.smoke
def test_flattened_argmax_counts_real_positions() -> None:
    """The bug this guards against: argmax of a flattened (s0, s1) returned 106 for real index 61."""
    g = Graph()
    x = g.add_input("x", TensorType(("s0", "s1"), F32))
    g.set_outputs([g.add_op("argmax", [_flat(g, x)], {"axis": 0, "keepdims": False})])
    real = np.zeros((5, 20), np.float32)
    real[3, 1] = 1.0  # real flat index 61; bucket (8, 32) flat index 3 * 32 + 1 = 97
    sizes = {"s0": 5, "s1": 20}
    (got,) = _run_padded(g, pad_graph(g, set(sizes)), real, sizes, np.random.default_rng(0))
    (expected,) = execute(g, [real])
    assert int(expected) == 61 and int(got) == 61


@pytest.mark.smoke
def test_symbolic_split_of_an_unpadded_axis_is_no_error() -> None:
    """arange(2*s0*s1).reshape(s0, 2, s1): the sizes make both symbols exact (a padded symbol must be
    a factor s+c of its axis), and the reshape, which splits symbolically, must not fail the pass."""
    g = Graph()
    x = g.add_input("x", TensorType(("s0", 2, "s1"), F32))
    ramp = g.add_op("arange", [], {"start": 0, "step": 1, "size": "2*s0*s1", "dtype": F32})
    g.set_outputs([g.add_op("add", [x, g.add_op("reshape", [ramp], {"shape": ("s0", 2, "s1")})])])
    plan = pad_graph(g, {"s0", "s1"})
    assert plan.padded == frozenset() and set(plan.exact) == {"s0", "s1"}
    assert "2*s0*s1" in plan.exact["s0"]
