"""The plan executor's own contract: what it does once, what it copies, what it refuses.

Numerics against the reference are checked op by op in ``test_hlo_xla.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

from spiky_ir import DType, Graph, IRError, TensorType, compile_plan, execute

F32 = DType.float32


def _chain() -> Graph:
    """(x + 1) * x, with a constant, returning the sum and x itself twice."""
    g = Graph()
    x = g.add_input("x", TensorType((2, 3), F32))
    one = g.add_op("full", [], {"shape": (2, 3), "value": 1.0, "dtype": F32})
    y = g.add_op("multiply", [g.add_op("add", [x, one]), x])
    g.set_outputs([y, x, x, one, g.add_op("transpose", [y], {"axes": (1, 0)})])
    return g


@pytest.mark.smoke
def test_matches_execute_and_returns_fresh_arrays() -> None:
    g = _chain()
    plan = compile_plan(g)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    got, want = plan([x]), execute(g, [x])
    for a, b in zip(got, want, strict=True):
        assert a.tobytes() == b.tobytes() and a.shape == b.shape and a.dtype == b.dtype
        assert a.flags.c_contiguous and a.flags.owndata  # no views of inputs, constants or each other
    assert len({id(a) for a in got}) == len(got)
    assert not any(np.shares_memory(a, x) for a in got)


@pytest.mark.smoke
def test_mutating_outputs_does_not_change_the_next_call() -> None:
    plan = compile_plan(_chain())
    x = np.ones((2, 3), np.float32)
    first = plan([x])
    for out in first:
        out[...] = 99.0
    again = plan([x])
    assert again[3].tolist() == [[1.0] * 3] * 2  # the precomputed constant was copied out, not handed out
    assert again[0].tolist() == [[2.0] * 3] * 2


@pytest.mark.smoke
def test_zero_operand_nodes_run_once() -> None:
    g = _chain()
    plan = compile_plan(g)
    assert len(plan._steps) == 3  # add, multiply, transpose; the full is computed at build time


@pytest.mark.smoke
def test_generated_run_handles_multi_output_steps_and_graphs_without_inputs() -> None:
    # The plan runs as generated straight-line code: a step with two results unpacks both, a
    # graph without inputs still runs, and the results are execute's.
    g = Graph()
    x = g.add_input("x", TensorType((2, 5), F32))
    values, indices = g.add_node("topk", [x], {"k": 2, "axis": 1, "largest": True}).outputs
    g.set_outputs([indices, g.add_op("add", [values, values])])
    x_in = np.array([[3, 1, 4, 1, 5], [9, 2, 6, 5, 3]], np.float32)
    for got, want in zip(compile_plan(g)([x_in]), execute(g, [x_in]), strict=True):
        assert got.tolist() == want.tolist() and got.dtype == want.dtype
    empty = Graph()
    empty.set_outputs([empty.add_op("full", [], {"shape": (2,), "value": 7.0, "dtype": F32})])
    (seven,) = compile_plan(empty)([])
    assert seven.tolist() == [7.0, 7.0]


@pytest.mark.smoke
@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.ones((3, 2), np.float32), r"input %x of graph 'main' expects f32\[2, 3\], got float32\[3, 2\]"),
        (np.ones((2, 3), np.float64), r"expects f32\[2, 3\], got float64\[2, 3\]"),
    ],
)
def test_bad_inputs_name_the_input(array: np.ndarray, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(IRError, match=message):
        compile_plan(_chain())([array])


@pytest.mark.smoke
def test_wrong_input_count() -> None:
    with pytest.raises(IRError, match="takes 1 inputs, got 2"):
        compile_plan(_chain())([np.ones((2, 3), np.float32)] * 2)


@pytest.mark.smoke
def test_symbolic_graphs_are_refused_with_what_to_do() -> None:
    g = Graph()
    x = g.add_input("x", TensorType(("s0", 3), F32))
    g.set_outputs([g.add_op("exp", [x])])
    with pytest.raises(IRError, match=r"needs static shapes; input %x is f32\[s0,3\].*specialize"):
        compile_plan(g)


@pytest.mark.smoke
def test_zero_dim_elementwise_gives_arrays() -> None:
    g = Graph()
    a = g.add_input("a", TensorType((), DType.float16))
    b = g.add_input("b", TensorType((), DType.int32))
    g.set_outputs([g.add_op("add", [a, b])])
    out = compile_plan(g)([np.array(1.5, np.float16), np.array(2, np.int32)])[0]
    assert type(out) is np.ndarray and out.dtype == np.float16 and out.shape == () and float(out) == 3.5


# -- prepared kernels (plan rules): bit for bit with the reference, for every type mix ------------

F16, BF16, I32, I64, BOOL = DType.float16, DType.bfloat16, DType.int32, DType.int64, DType.bool
AXES = {"axes": (1,), "keepdims": False}
CONV = {"stride": (1,), "pad_lo": (1,), "pad_hi": (0,), "dilation": (1,), "groups": 1}
PREPARED = [  # (op, operand types, attrs)
    ("matmul", [((3, 4), F32), ((4, 5), F32)], {}),
    ("matmul", [((2, 3, 4), F16), ((4,), F16)], {}),
    ("matmul", [((3, 4), I32), ((4, 2), I64)], {}),
    ("dot", [((4,), F32), ((4,), F32)], {}),
    ("sum", [((3, 4), F32)], AXES),
    ("sum", [((3, 4), BOOL)], AXES),
    ("sum", [((3, 4), F16)], {"axes": (0, 1), "keepdims": True}),
    ("max", [((3, 4), I32)], AXES),
    ("mean", [((3, 4), BF16)], AXES),
    ("var", [((3, 4), F32)], {**AXES, "correction": 1.0}),
    ("any", [((3, 4), F32)], AXES),
    ("logsumexp", [((3, 4), F16)], AXES),
    ("softmax", [((3, 4), F32)], {"axis": 1}),
    ("softmax", [((3, 4), BF16)], {"axis": 0}),
    ("conv1d", [((2, 3, 5), F32), ((4, 3, 2), F32)], CONV),
    ("conv1d", [((2, 3, 5), F16), ((4, 3, 2), F16)], CONV),
    ("conv_transpose1d", [((2, 4, 5), F32), ((4, 3, 2), F32)], CONV),
]


@pytest.mark.parametrize(("op", "operands", "attrs"), PREPARED, ids=lambda v: v if isinstance(v, str) else "")
def test_prepared_kernels_match_the_reference(op: str, operands: list[tuple[tuple[int, ...], DType]],
                                              attrs: dict[str, object]) -> None:
    from spiky_ir.plan import PLAN_RULES

    assert op in PLAN_RULES
    g = Graph()
    xs = [g.add_input(f"x{i}", TensorType(shape, dtype)) for i, (shape, dtype) in enumerate(operands)]
    g.set_outputs([g.add_op(op, xs, attrs)])  # type: ignore[arg-type]
    rng = np.random.default_rng(0)
    arrays = [(rng.standard_normal(shape) * 3).astype(dtype.to_numpy()) for shape, dtype in operands]
    got, want = compile_plan(g)(arrays)[0], execute(g, arrays)[0]
    assert got.dtype == want.dtype and got.shape == want.shape
    assert got.tobytes() == want.tobytes()


@pytest.mark.smoke
@pytest.mark.parametrize("numpy_keeps_a_context_variable", [True, False])
def test_floating_point_errors_are_ignored_for_the_call_only(monkeypatch: pytest.MonkeyPatch,
                                                             numpy_keeps_a_context_variable: bool) -> None:
    """Inside a call numpy warns about nothing; after it, the caller's error state is back. Without
    numpy 2's context variable (older numpy), the plan falls back to ``np.errstate``."""
    from spiky_ir import plan as plan_module

    if not numpy_keeps_a_context_variable:
        monkeypatch.delattr(np._core.umath, "_extobj_contextvar")
    ignore, restore = plan_module._fp_error_switch()
    before = np.geterr()
    token = ignore()
    try:
        assert set(np.geterr().values()) == {"ignore"}
    finally:
        restore(token)
    assert np.geterr() == before
    g = Graph()
    x = g.add_input("x", TensorType((2,), F32))
    g.set_outputs([g.add_op("log", [x])])
    with np.errstate(all="raise"):
        out = compile_plan(g)([np.array([0.0, -1.0], np.float32)])[0]
        assert np.geterr()["invalid"] == "raise"
    assert out[0] == -np.inf and np.isnan(out[1])
