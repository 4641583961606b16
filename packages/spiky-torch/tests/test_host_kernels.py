"""The numpy plan's native fused steps (spiky_runtime.host_kernels, spiky_ir.fusion).

- torch modules whose lowering the plan fuses, compiled on the numpy executor: results against
  eager, and how many fused steps the plan runs (so a change of the lowering that breaks a pattern
  shows here instead of silently making the plan slow again);
- the native kernels against the numpy implementation of the same protocol, over a table of
  shapes and dtypes, and their error paths;
- a fused plan against the unfused plan of the same graph, with NaN and infinities.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import spiky.torch
import spiky_runtime as rt
from spiky.torch import host_executors as he
from spiky_ir import Plan, compile_plan
from spiky_ir.testing import NUMPY_KERNELS

K = rt.host_kernels


@pytest.fixture
def plans(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[list[Plan]]:
    """The plans the numpy executor builds during the test."""
    built: list[Plan] = []

    def spy(graph: Any, native: Any = None) -> Plan:
        plan = compile_plan(graph, native)
        built.append(plan)
        return plan

    monkeypatch.setattr(he, "compile_plan", spy)
    spiky.torch.init_nkipy_backend(nkipy_cache=tmp_path / "cache", target="host", host_executor="numpy")
    yield built
    spiky.torch.reset_nkipy_backend()


def _norm_params(m: nn.Module) -> nn.Module:
    """Weights, biases and running stats away from their defaults (1, 0), so each one matters."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in m.parameters():
            p.uniform_(-1.5, 1.5)
        for name, b in m.named_buffers():
            if b.dtype.is_floating_point:
                b.uniform_(0.5, 2.0) if "var" in name else b.uniform_(-1.0, 1.0)
    return m


class _Gelu(nn.Module):
    def __init__(self, approximate: str) -> None:
        super().__init__()
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.gelu(x, approximate=self.approximate)


# (name, module factory, input shape, dtype, fused steps, tolerance against eager)
FUSED_MODULES: list[tuple[str, Callable[[], nn.Module], tuple[int, ...], torch.dtype, int, float]] = [
    ("layer_norm", lambda: nn.LayerNorm(32), (4, 32), torch.float32, 1, 2e-6),
    ("layer_norm_2_axes", lambda: nn.LayerNorm([4, 8]), (3, 4, 8), torch.float32, 1, 2e-6),
    ("layer_norm_no_affine", lambda: nn.LayerNorm(16, elementwise_affine=False), (5, 16), torch.float32, 1, 2e-6),
    ("layer_norm_no_bias", lambda: nn.LayerNorm(16, bias=False), (2, 3, 16), torch.float32, 1, 2e-6),
    ("layer_norm_f64", lambda: nn.LayerNorm(24).double(), (3, 24), torch.float64, 1, 1e-12),
    ("batch_norm_2d_eval", lambda: nn.BatchNorm2d(4).eval(), (2, 4, 3, 5), torch.float32, 1, 2e-6),
    ("batch_norm_1d_eval", lambda: nn.BatchNorm1d(6).eval(), (3, 6), torch.float32, 1, 2e-6),
    ("batch_norm_3d_eval_no_affine", lambda: nn.BatchNorm3d(3, affine=False).eval(), (1, 3, 2, 2, 2),
     torch.float32, 1, 2e-6),
    ("softmax_last", lambda: nn.Softmax(-1), (4, 32), torch.float32, 1, 1e-6),
    ("softmax_middle", lambda: nn.Softmax(1), (2, 5, 3), torch.float32, 1, 1e-6),
    ("gelu_erf", lambda: _Gelu("none"), (4, 32), torch.float32, 1, 1e-6),
    ("gelu_tanh_not_fused", lambda: _Gelu("tanh"), (4, 32), torch.float32, 0, 1e-6),
    ("layer_norm_bf16_core_only", lambda: nn.LayerNorm(32).to(torch.bfloat16), (4, 32), torch.bfloat16, 1, 1e-2),
    ("softmax_f16_not_fused", lambda: nn.Softmax(-1), (4, 8), torch.float16, 0, 1e-3),
]


@pytest.mark.smoke
@pytest.mark.parametrize(("name", "make", "shape", "dtype", "fused", "tol"), FUSED_MODULES,
                         ids=[row[0] for row in FUSED_MODULES])
def test_fused_modules_match_eager(plans: list[Plan], name: str, make: Callable[[], nn.Module],
                                   shape: tuple[int, ...], dtype: torch.dtype, fused: int, tol: float) -> None:
    model = _norm_params(make())
    x = (torch.randn(shape, dtype=torch.float64) * 3 + 0.5).to(dtype)
    with torch.no_grad():
        want = model(x)
        got = torch.compile(model, backend="nkipy")(x)
    assert [p.fused for p in plans] == [fused], name
    scale = want.abs().max().item()
    assert (got.double() - want.double()).abs().max().item() <= tol * max(scale, 1.0), name


@pytest.mark.smoke
def test_layer_norm_training_uses_the_fused_statistics(plans: list[Plan]) -> None:
    """Training: the forward also returns the mean and rstd the backward reads; the fused step gives them."""
    torch.manual_seed(0)
    model = _norm_params(nn.LayerNorm(16))
    x = torch.randn(3, 16, requires_grad=True)
    ref = nn.LayerNorm(16)
    ref.load_state_dict(model.state_dict())
    x_ref = x.detach().clone().requires_grad_(True)
    torch.compile(model, backend="nkipy")(x).square().sum().backward()
    ref(x_ref).square().sum().backward()
    assert plans[0].fused == 1
    assert x.grad is not None and x_ref.grad is not None
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-5)
    for a, b in zip(model.parameters(), ref.parameters(), strict=True):
        assert a.grad is not None and b.grad is not None
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-5)


# -- the native kernels against the numpy implementation of the protocol ---------------------------

SHAPES = [(1, 1), (4, 32), (3, 5, 7), (2, 1000)]


def _rand(shape: tuple[int, ...], dtype: type[np.floating[Any]], seed: int = 0) -> np.ndarray[Any, Any]:
    return (np.random.default_rng(seed).standard_normal(shape) * 4 + 1).astype(dtype)


@pytest.mark.smoke
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_native_kernels_match_numpy(shape: tuple[int, ...], dtype: type[np.floating[Any]]) -> None:
    tol = 2e-6 if dtype is np.float32 else 1e-13
    x = _rand(shape, dtype)
    for axes in range(1, len(shape) + 1):
        inner = shape[len(shape) - axes:]
        w, b = _rand(inner, dtype, 1), _rand(inner, dtype, 2)
        for weight, bias in ((w, b), (None, None), (w, None)):
            got, want = K.layer_norm(x, axes, weight, bias, 1e-5), NUMPY_KERNELS.layer_norm(x, axes, weight, bias, 1e-5)
            for g, r in zip(got, want, strict=True):
                assert g.dtype == x.dtype and g.shape == r.shape
                np.testing.assert_allclose(g, r, rtol=tol, atol=tol * 10)
    for axis in range(len(shape)):
        np.testing.assert_allclose(K.softmax(x, axis), NUMPY_KERNELS.softmax(x, axis), rtol=tol, atol=tol)
    assert K.erf(x).tobytes() == NUMPY_KERNELS.erf(x).tobytes()  # both: erf in double, rounded once
    channels = shape[1]
    mean, var = _rand((channels,), dtype, 3), np.abs(_rand((channels,), dtype, 4)) + 0.1
    w, b = _rand((channels,), dtype, 5), _rand((channels,), dtype, 6)
    for weight, bias in ((w, b), (None, None), (None, b)):
        got_c = K.channel_norm(x, mean, var, weight, bias, 1e-3)
        assert got_c.tobytes() == NUMPY_KERNELS.channel_norm(x, mean, var, weight, bias, 1e-3).tobytes()


@pytest.mark.smoke
def test_native_kernels_keep_nan_and_inf() -> None:
    x = np.array([[0.0, np.nan, 1.0], [np.inf, 1.0, 2.0], [-np.inf, 0.0, 0.0], [1e30, -1e30, 0.0]], np.float32)
    with np.errstate(all="ignore"):
        pairs = ((K.softmax(x, 1), NUMPY_KERNELS.softmax(x, 1)),
                 (K.layer_norm(x, 1, None, None, 1e-5)[0], NUMPY_KERNELS.layer_norm(x, 1, None, None, 1e-5)[0]))
    for got, want in pairs:
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_allclose(got[~np.isnan(got)], want[~np.isnan(want)], rtol=1e-6)


@pytest.mark.smoke
@pytest.mark.parametrize(("call", "message"), [
    (lambda: K.softmax(np.zeros((2, 3), np.float16), 1), r"x is float16.*float32 or float64"),
    (lambda: K.softmax(np.zeros((2, 3), np.int64), 1), r"x is int64"),
    (lambda: K.softmax(np.zeros((3, 2), np.float32).T, 1), r"x is not C-contiguous.*ascontiguousarray"),
    (lambda: K.softmax(np.zeros((2, 3), np.float32), 2), r"axis=2 for a rank-2 x; pass 0 to 1"),
    (lambda: K.layer_norm(np.zeros((2, 3), np.float32), 3, None, None, 1e-5), r"axes=3 for a rank-2 x"),
    (lambda: K.layer_norm(np.zeros((2, 3), np.float32), 1, np.zeros(2, np.float32), None, 1e-5),
     r"weight has 2 elements, expected 3"),
    (lambda: K.layer_norm(np.zeros((2, 3), np.float32), 1, None, np.zeros(3, np.float64), 1e-5),
     r"bias has another type than x"),
    (lambda: K.channel_norm(np.zeros(3, np.float32), np.zeros(3, np.float32), np.zeros(3, np.float32), None, None,
                            1e-5), r"rank 1; it normalizes \(N, C, \.\.\.\)"),
    (lambda: K.channel_norm(np.zeros((1, 3), np.float32), np.zeros(2, np.float32), np.zeros(3, np.float32), None,
                            None, 1e-5), r"mean has 2 elements, expected 3"),
])
def test_native_kernels_name_what_is_wrong(call: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.smoke
def test_disabled_fusion_gives_the_plain_plan(plans: list[Plan], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(he, "NATIVE_FUSION", False)
    with torch.no_grad():
        torch.compile(nn.LayerNorm(8), backend="nkipy")(torch.randn(2, 8))
    assert [p.fused for p in plans] == [0]
