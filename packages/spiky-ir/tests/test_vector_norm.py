"""aten.linalg_vector_norm: every order, dims, keepdim and dtype against torch; and under padding,
garbage (NaN, ±inf, huge values) in the padded region does not change a result."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

from spiky_ir import execute, specialize
from spiky_ir.dtypes import DType
from spiky_ir.errors import LoweringError
from spiky_ir.fx import ir_dtype, lower_fx, lower_fx_graph
from spiky_ir.padding import pad_graph, unpad
from spiky_ir.specialize import rename_symbols

ORDERS = [2, 1, math.inf, -math.inf, 0, 3.0, 0.5, -1.5]
# (dim, keepdim)
REDUCTIONS: list[tuple[Any, bool]] = [(None, False), (1, True), ((0, 2), False), (-1, False), ([], True)]


def _norm(order: float, dim: Any, keepdim: bool, dtype: torch.dtype | None = None) -> Any:
    def fn(x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten.linalg_vector_norm.default(x, order, dim, keepdim, dtype=dtype)

    return fn


def _input(shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(shape, generator=g)
    x[0, 0] = 0.0  # zeros count for ord=0 and are the edge of negative orders' powers
    return x.to(dtype)


@pytest.mark.parametrize(("dim", "keepdim"), REDUCTIONS)
@pytest.mark.parametrize("order", ORDERS)
def test_matches_torch(order: float, dim: Any, keepdim: bool) -> None:
    fn = _norm(order, dim, keepdim)
    x = _input((3, 4, 5)) + (0.0 if order >= 0 or order == -math.inf else 1e-3)
    graph = lower_fx(make_fx(fn)(x))
    (out,) = execute(graph, [x.numpy()])
    expected = fn(x)
    assert out.shape == tuple(expected.shape) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected.numpy(), rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize(("given", "cast"), [(torch.float16, None), (torch.bfloat16, None),
                                              (torch.float16, torch.float32), (torch.float32, torch.float64)])
def test_dtypes(given: torch.dtype, cast: torch.dtype | None) -> None:
    fn = _norm(2, 1, False, cast)
    x = _input((4, 64), given) * 40  # float16 sums of squares would overflow without float32 accumulation
    graph = lower_fx(make_fx(fn)(x))
    expected = fn(x)
    assert graph.outputs[0].type.dtype is ir_dtype(expected.dtype)
    arg = x.float().numpy().astype(DType.bfloat16.to_numpy()) if given is torch.bfloat16 else x.numpy()
    (out,) = execute(graph, [arg])
    np.testing.assert_allclose(np.asarray(out, np.float64), expected.double().numpy(), rtol=1e-2)


def test_integer_input_is_a_clear_error() -> None:
    gm = make_fx(_norm(2, None, False))(torch.ones(3))
    for node in gm.graph.nodes:  # the same graph with its input traced as int64 (torch itself refuses one)
        if node.op == "placeholder":
            node.meta["val"] = torch.ones(3, dtype=torch.int64)
    with pytest.raises(LoweringError, match=r"linalg_vector_norm of a int64 tensor.*dtype=torch.float32"):
        lower_fx(gm)


@pytest.mark.parametrize("order", ORDERS)
def test_padding_garbage_does_not_change_results(order: float) -> None:
    """The graph over (s0, s1), padded along both, run with NaN/inf/huge garbage in the padding."""
    fn = _norm(order, (0, 1) if order in (2, 0) else 1, False)
    x = _input((5, 6)) + (1e-3 if order < 0 and order != -math.inf else 0.0)
    gm = make_fx(fn, tracing_mode="symbolic")(x)
    lowered = lower_fx_graph(gm).graph
    symbols = sorted({d for v in lowered.inputs for d in v.type.shape if isinstance(d, str)})
    graph = rename_symbols(lowered, {s: f"s{i}" for i, s in enumerate(symbols)})
    plan = pad_graph(graph, {"s0", "s1"})
    assert plan.padded == {"s0", "s1"}, plan.exact  # padded, not dodged by compiling exact sizes
    real, bucket = {"s0": 5, "s1": 6}, {"s0": 8, "s1": 16}
    rng = np.random.default_rng(3)
    padded = rng.choice(np.array([np.nan, np.inf, -np.inf, 3e30, -3e30, 0.0], np.float32), (8, 16))
    padded[:5, :6] = x.numpy()
    static = specialize(plan.graph, bucket)
    (out,) = execute(static, [padded, *(np.array(real[s], np.int64) for s in plan.length_symbols)])
    out = unpad(out, plan.output_layouts[0], plan.padded, real, bucket)
    np.testing.assert_allclose(out, fn(x).numpy(), rtol=2e-6, atol=1e-6)
