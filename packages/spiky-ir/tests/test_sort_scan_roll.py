"""sort, topk, cumsum/cumprod and roll: torch's semantics on every path, and their padding rules.

Every path (the numpy reference, the plan executor, NKIPy kernel source and the HLO on XLA:CPU)
must give what torch eager gives: sort and topk order NaN above every number (last ascending,
first descending) and keep equal values in index order; int64 keys are never rounded through
float64; scans of integers are exact; roll takes negative shifts and shifts beyond the size.

Padding: a prefix scan along an axis whose padding is at its end needs no mask at all (a real
output reads only its own prefix), which the tests prove with NaN and inf in the padding; an axis
whose padding sits between real elements is masked with the identity. roll along a padded axis
wraps at the real length.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the FX lowering needs torch (spiky-ir[torch])")
ml_dtypes = pytest.importorskip("ml_dtypes", reason="bfloat16 arrays need ml_dtypes")

from torch.fx.experimental.proxy_tensor import make_fx  # noqa: E402

from spiky_ir import DType, Graph, TensorType, Value, compile_plan, execute, specialize  # noqa: E402
from spiky_ir.fx import lower_fx  # noqa: E402
from spiky_ir.hlo import emit_hlo  # noqa: E402
from spiky_ir.hlo.xla_cpu import run_hlo  # noqa: E402
from spiky_ir.kernel_source import run_kernel  # noqa: E402
from spiky_ir.padding import pad_graph, unpad  # noqa: E402

Array = np.ndarray[Any, Any]
F32 = DType.float32
NAN, INF = float("nan"), float("inf")


def _np(t: Any) -> Array:
    if t.dtype is torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)  # type: ignore[no-any-return]
    return t.numpy()  # type: ignore[no-any-return]


def _torch(a: Array) -> Any:
    if a.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(np.array(a))  # a writable copy


def _all_paths(graph: Graph, arrays: Sequence[Array]) -> dict[str, list[Array]]:
    """The graph's results from the reference, the plan, kernel source and XLA:CPU."""
    return {
        "reference": execute(graph, arrays),
        "plan": compile_plan(graph)(list(arrays)),
        "kernel": run_kernel(graph, arrays),
        "xla": run_hlo(emit_hlo(graph).proto, list(arrays)),
    }


def _check_paths(fn: Callable[..., Any], inputs: Sequence[Any], *, exact: bool = True,
                 tol: tuple[float, float] = (0.0, 0.0)) -> Graph:
    """Trace ``fn`` without decompositions (the overloads themselves lower), lower, and compare every
    path with torch eager: bit for bit when ``exact``, else within ``tol`` (rtol, atol)."""
    graph = lower_fx(make_fx(fn)(*inputs))
    expected = fn(*inputs)
    expected = list(expected) if isinstance(expected, tuple | list) else [expected]
    for path, outs in _all_paths(graph, [_np(t) for t in inputs]).items():
        assert len(outs) == len(expected), path
        for got, want in zip(outs, expected, strict=True):
            actual = _torch(np.asarray(got))
            assert actual.dtype == want.dtype and tuple(actual.shape) == tuple(want.shape), path
            rtol, atol = (0.0, 0.0) if exact else tol
            torch.testing.assert_close(actual, want, rtol=rtol, atol=atol, equal_nan=True, msg=path)
    return graph


# --- sort and topk: NaN, infinities, ties, every dtype ------------------------------------------------

SPECIALS = [NAN, -INF, 2.0, NAN, 0.0, -0.0, INF, 2.0, -1.0, NAN, 2.0, -INF]


def _specials(dtype: Any) -> Any:
    return torch.tensor([SPECIALS, SPECIALS[::-1], SPECIALS[3:] + SPECIALS[:3]]).to(dtype)


ORDER_INPUTS: dict[str, Callable[[], Any]] = {
    "f32_specials": lambda: _specials(torch.float32),
    "f16_specials": lambda: _specials(torch.float16),
    "bf16_specials": lambda: _specials(torch.bfloat16),
    "i32_ties": lambda: torch.randint(-2, 3, (4, 13), generator=torch.Generator().manual_seed(1)).int(),
    # neighbours that float64 cannot tell apart: the reference once sorted int64 through float64
    "i64_large": lambda: torch.tensor([[2**62 + 1, 2**62, -(2**63), 2**63 - 1, 2**62 + 1, 0, 2**62 - 1]]),
    "u8_ties": lambda: torch.randint(0, 4, (3, 9), generator=torch.Generator().manual_seed(2)).to(torch.uint8),
    "bool": lambda: torch.rand(3, 10, generator=torch.Generator().manual_seed(3)) > 0.5,
}


@pytest.mark.parametrize("descending", [False, True])
@pytest.mark.parametrize("name", sorted(ORDER_INPUTS))
def test_sort_orders_as_torch_stable_sort(name: str, descending: bool) -> None:
    x = ORDER_INPUTS[name]()
    graph = _check_paths(lambda a: torch.sort(a, dim=-1, descending=descending, stable=True), [x])
    assert [n.op for n in graph.nodes] == ["sort"]


@pytest.mark.parametrize("name", sorted(ORDER_INPUTS))
def test_argsort_and_sort_along_dim0(name: str) -> None:
    x = ORDER_INPUTS[name]()
    _check_paths(lambda a: torch.argsort(a, dim=0, descending=True, stable=True), [x])
    _check_paths(lambda a: torch.sort(a, dim=0, stable=True), [x])


@pytest.mark.parametrize("largest", [True, False])
@pytest.mark.parametrize("name", sorted(set(ORDER_INPUTS) - {"bool"}))  # torch has no topk on bool
def test_topk_values_as_torch_indices_as_stable_sort(name: str, largest: bool) -> None:
    """topk's values are torch's; its indices are those of the stable sort (torch leaves the order
    of equal values open, so its own indices may differ among ties)."""
    x = ORDER_INPUTS[name]()
    k = min(5, x.shape[-1])
    graph = lower_fx(make_fx(lambda a: torch.topk(a, k, largest=largest))(x))
    values, _ = torch.topk(x, k, largest=largest)
    stable = torch.sort(x, descending=largest, stable=True).indices[:, :k]
    for path, (got_values, got_indices) in _all_paths(graph, [_np(x)]).items():
        torch.testing.assert_close(_torch(np.asarray(got_values)), values, rtol=0, atol=0, equal_nan=True, msg=path)
        torch.testing.assert_close(_torch(np.asarray(got_indices)), stable, rtol=0, atol=0, msg=path)


def test_sort_of_a_scalar_is_the_scalar_at_index_0() -> None:
    _check_paths(lambda a: torch.sort(a), [torch.tensor(3.5)])


# --- cumsum, cumprod ---------------------------------------------------------------------------------

SCANS: dict[str, tuple[Callable[..., Any], Callable[[], Any], bool]] = {
    # name -> (function, input, exact on every path)
    "cumsum_f32": (lambda a: torch.cumsum(a, 1), lambda: torch.randn(4, 37, generator=torch.Generator()), False),
    "cumsum_f16": (lambda a: torch.cumsum(a, 0), lambda: torch.randn(9, 3).half(), False),
    "cumsum_bf16_3d": (lambda a: torch.cumsum(a, 1), lambda: torch.randn(2, 7, 3).bfloat16(), False),
    "cumsum_i64_large": (lambda a: torch.cumsum(a, 1),
                         lambda: torch.tensor([[2**61, 2**61 + 1, -(2**60), 3, 2**62 - 7]]), True),
    "cumsum_i32_to_i64": (lambda a: torch.cumsum(a, -1), lambda: torch.randint(-2**30, 2**30, (3, 20)).int(), True),
    "cumsum_dtype_i32": (lambda a: torch.cumsum(a, 0, dtype=torch.int32), lambda: torch.randint(-9, 9, (11, 2)), True),
    "cumsum_bool": (lambda a: torch.cumsum(a, 1), lambda: torch.rand(3, 15) > 0.4, True),
    "cumsum_u8": (lambda a: torch.cumsum(a, 1), lambda: torch.randint(0, 255, (2, 9)).to(torch.uint8), True),
    "cumsum_scalar": (lambda a: torch.cumsum(a, 0), lambda: torch.tensor(2.5), True),
    "cumsum_empty": (lambda a: torch.cumsum(a, 1), lambda: torch.zeros(3, 0), True),
    "cumsum_inf_nan": (lambda a: torch.cumsum(a, 1), lambda: torch.tensor([[1.0, INF, -INF, 2.0], [NAN, 1, 2, 3]]),
                       True),
    "cumprod_f32": (lambda a: torch.cumprod(a, 1), lambda: torch.rand(3, 12) + 0.5, False),
    "cumprod_i64": (lambda a: torch.cumprod(a, 0), lambda: torch.randint(-3, 4, (15, 2)), True),
    "cumprod_f16": (lambda a: torch.cumprod(a, 1), lambda: (torch.rand(2, 8) + 0.5).half(), False),
}
SCAN_TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-3), torch.bfloat16: (2e-2, 2e-2)}


@pytest.mark.parametrize("name", sorted(SCANS))
def test_scans_match_torch(name: str) -> None:
    fn, make, exact = SCANS[name]
    torch.manual_seed(zlib.crc32(name.encode()))
    x = make()
    tol = SCAN_TOL.get(fn(x).dtype, (0.0, 0.0))
    _check_paths(fn, [x], exact=exact, tol=tol)


# --- roll ----------------------------------------------------------------------------------------------

ROLLS: dict[str, Callable[[Any], Any]] = {
    "one_dim": lambda a: torch.roll(a, 2, 1),
    "negative": lambda a: torch.roll(a, -3, 0),
    "beyond_size": lambda a: torch.roll(a, 13, 1),
    "two_dims": lambda a: torch.roll(a, (1, -2), (0, 1)),
    "same_dim_twice": lambda a: torch.roll(a, (1, 3), (1, 1)),
    "flattened": lambda a: torch.roll(a, 4),
    "zero_shift": lambda a: torch.roll(a, 0, 0),
    "last_dim_negative_index": lambda a: torch.roll(a, -1, -1),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int64])
@pytest.mark.parametrize("name", sorted(ROLLS))
def test_roll_matches_torch(name: str, dtype: Any) -> None:
    x = torch.arange(35).reshape(5, 7).to(dtype)
    graph = _check_paths(ROLLS[name], [x])
    assert "roll" in [n.op for n in graph.nodes]


# --- padding -------------------------------------------------------------------------------------------

GarbageBuild = Callable[[Graph, Value], list[Value]]


def _padded_vs_unpadded(build: GarbageBuild, shape: tuple[Any, ...], sizes: dict[str, int],
                        buckets: dict[str, int], dtype: DType = F32) -> Graph:
    """Run ``build`` unpadded and padded with NaN/inf/huge garbage, on the reference and XLA:CPU; the
    real parts must agree bit for bit. Returns the padded graph."""
    g = Graph()
    x = g.add_input("x", TensorType(shape, dtype))
    g.set_outputs(build(g, x))
    plan = pad_graph(g, set(sizes))
    assert plan.padded == set(sizes), plan.exact
    rng = np.random.default_rng(zlib.crc32(repr((shape, sizes, buckets)).encode()))
    real_shape = tuple(sizes[d] if isinstance(d, str) else int(d) for d in shape)
    bucket_shape = tuple(buckets[d] if isinstance(d, str) else int(d) for d in shape)
    real = rng.integers(-3, 4, real_shape).astype(dtype.to_numpy())
    if dtype.is_floating:
        padded = rng.choice(np.array([np.nan, np.inf, -np.inf, 1e30], np.float32), bucket_shape).astype(
            dtype.to_numpy())
    else:
        padded = rng.integers(-(2**40), 2**40, bucket_shape).astype(dtype.to_numpy())
    padded[tuple(slice(0, n) for n in real_shape)] = real
    expected = execute(g, [real])
    static = specialize(plan.graph, buckets)
    args = [padded, *(np.array(sizes[s], np.int64) for s in plan.length_symbols)]
    for path, outs in (("reference", execute(static, args)), ("xla", run_hlo(emit_hlo(static).proto, args))):
        for out, want, layout in zip(outs, expected, plan.output_layouts, strict=True):
            got = unpad(out, layout, plan.padded, sizes, buckets)
            np.testing.assert_array_equal(got, want, err_msg=f"{path} {sizes} in {buckets}")
    return plan.graph


def _op(name: str, **attrs: Any) -> GarbageBuild:
    return lambda g, x: list(g.add_node(name, [x], attrs).outputs)


def _flat(op: GarbageBuild) -> GarbageBuild:
    return lambda g, x: op(g, g.add_op("reshape", [x], {"shape": ("s0*s1",)}))


SIZES = [({"s0": 3, "s1": 17}, {"s0": 4, "s1": 32}), ({"s0": 1, "s1": 33}, {"s0": 2, "s1": 64}),
         ({"s0": 17, "s1": 1}, {"s0": 32, "s1": 2}), ({"s0": 33, "s1": 3}, {"s0": 64, "s1": 4})]


@pytest.mark.smoke
@pytest.mark.parametrize("op", ["cumsum", "cumprod"])
def test_scan_along_a_padded_tail_needs_no_mask(op: str) -> None:
    """The proof that the shortcut is safe: the rewritten graph is the scan alone (no where, no
    length input), yet with NaN and inf in the padding every real output equals the unpadded one."""
    for sizes, buckets in SIZES:
        graph = _padded_vs_unpadded(_op(op, axis=1), ("s0", "s1"), sizes, buckets)
        assert [n.op for n in graph.nodes] == [op] and [v.name for v in graph.inputs] == ["x"]


@pytest.mark.parametrize("dtype", [F32, DType.int64])
@pytest.mark.parametrize("op", ["cumsum", "cumprod"])
def test_scan_along_a_reordering_axis_masks_the_padding_with_the_identity(op: str, dtype: DType) -> None:
    for sizes, buckets in SIZES:
        graph = _padded_vs_unpadded(_flat(_op(op, axis=0)), ("s0", "s1"), sizes, buckets, dtype)
        assert "where" in [n.op for n in graph.nodes]


@pytest.mark.parametrize("shifts", [(2,), (-3,), (37,), (0,), (-100,)])
@pytest.mark.parametrize("flat", [False, True])
def test_roll_along_a_padded_axis_wraps_at_the_real_length(flat: bool, shifts: tuple[int, ...]) -> None:
    roll = _op("roll", shifts=shifts, axes=(0 if flat else 1,))
    for sizes, buckets in SIZES:
        _padded_vs_unpadded(_flat(roll) if flat else roll, ("s0", "s1"), sizes, buckets)


def test_roll_of_padded_and_unpadded_axes_at_once() -> None:
    roll = _op("roll", shifts=(1, -2, 5), axes=(0, 1, 1))
    for sizes, buckets in SIZES:
        _padded_vs_unpadded(roll, (3, "s1"), {"s1": sizes["s1"]}, {"s1": buckets["s1"]})
        _padded_vs_unpadded(_op("roll", shifts=(1, -2), axes=(0, 1)), ("s0", 5), {"s0": sizes["s0"]},
                            {"s0": buckets["s0"]})


@pytest.mark.parametrize("fn", [lambda a: torch.roll(a, (2, -1), (0, 1)), lambda a: torch.roll(a, 5),
                                lambda a: torch.cumsum(a.t(), 1), lambda a: torch.sort(a.flatten(), descending=True)])
def test_symbolic_trace_lowers_pads_and_matches_eager_at_every_size(fn: Callable[[Any], Any]) -> None:
    """Traced with symbolic sizes and without decompositions (torch's roll decomposition builds
    ``Mod(s0 + 1, s0)`` sizes, which spiky-ir dims do not express), the op itself is lowered; the
    padded graph then serves sizes 1..33 from buckets with garbage in the padding."""
    graph = lower_fx(make_fx(fn, tracing_mode="symbolic")(torch.randn(5, 6)))
    symbols = {s for s in graph.inputs[0].type.shape if isinstance(s, str)}
    plan = pad_graph(graph, symbols)
    assert plan.padded == symbols and len(symbols) == 2, plan.exact
    rows_sym, cols_sym = graph.inputs[0].type.shape
    assert isinstance(rows_sym, str) and isinstance(cols_sym, str)
    for rows, cols in [(3, 17), (17, 3), (33, 2), (2, 33)]:
        x = torch.randn(rows, cols)
        sizes = {rows_sym: rows, cols_sym: cols}
        buckets = {s: 1 << n.bit_length() for s, n in sizes.items()}
        padded = torch.full((buckets[rows_sym], buckets[cols_sym]), NAN)
        padded[:rows, :cols] = x
        static = specialize(plan.graph, buckets)
        outs = execute(static, [padded.numpy(), *(np.array(sizes[s], np.int64) for s in plan.length_symbols)])
        expected = fn(x)
        expected = list(expected) if isinstance(expected, tuple) else [expected]
        for out, want, layout in zip(outs, expected, plan.output_layouts, strict=True):
            got = torch.from_numpy(unpad(out, layout, plan.padded, sizes, buckets))
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6, msg=f"{rows}x{cols}")
