"""The plan's fused steps (spiky_ir.fusion) with the numpy implementation of the kernels: what is
fused, what is left alone, and that a fused plan computes what the unfused one does.

The graphs are the FX lowering's own output (printed from torch.compile of nn.LayerNorm and an
eval nn.BatchNorm2d), so the patterns here are the ones real models produce; spiky-torch's
test_host_kernels.py checks that link from torch and runs the native kernels.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from spiky_ir import Graph, compile_plan, parse_graph
from spiky_ir.testing import NUMPY_KERNELS

LAYER_NORM = """spiky-ir v1
graph main(%w: f32[32], %b: f32[32], %x: f32[4,32]) {
  %mean = mean(%x) {axes=(1), keepdims=true} : f32[4,1]
  %var = var(%x) {axes=(1), correction=0.0, keepdims=true} : f32[4,1]
  %eps = constant() {dtype=f32, value=1e-05} : f32[]
  %plus = add(%var, %eps) : f32[4,1]
  %rstd = rsqrt(%plus) : f32[4,1]
  %centred = subtract(%x, %mean) : f32[4,32]
  %normed = multiply(%centred, %rstd) : f32[4,32]
  %scaled = multiply(%normed, %w) : f32[4,32]
  %out = add(%scaled, %b) : f32[4,32]
  return %out
}
"""

BATCH_NORM = """spiky-ir v1
graph main(%x: f32[2,4,3,3], %mean: f32[4], %var: f32[4], %w: f32[4], %b: f32[4]) {
  %var_c = reshape(%var) {shape=(4,1,1)} : f32[4,1,1]
  %eps = constant() {dtype=f32, value=1e-05} : f32[]
  %plus = add(%var_c, %eps) : f32[4,1,1]
  %rstd = rsqrt(%plus) : f32[4,1,1]
  %mean_c = reshape(%mean) {shape=(4,1,1)} : f32[4,1,1]
  %centred = subtract(%x, %mean_c) : f32[2,4,3,3]
  %normed = multiply(%centred, %rstd) : f32[2,4,3,3]
  %w_c = reshape(%w) {shape=(4,1,1)} : f32[4,1,1]
  %scaled = multiply(%normed, %w_c) : f32[2,4,3,3]
  %b_c = reshape(%b) {shape=(4,1,1)} : f32[4,1,1]
  %out = add(%scaled, %b_c) : f32[2,4,3,3]
  return %out
}
"""


def _inputs(g: Graph, seed: int = 0) -> list[np.ndarray[Any, Any]]:
    rng = np.random.default_rng(seed)
    out = []
    for v in g.inputs:
        a = rng.standard_normal(v.type.static_shape()) * 2 + 0.5
        out.append((np.abs(a) + 0.1 if v.name == "var" else a).astype(v.type.dtype.to_numpy()))
    return out


def _check(text: str, fused: int, bitwise: bool = False) -> None:
    g = parse_graph(text)
    plain, plan = compile_plan(g), compile_plan(g, native=NUMPY_KERNELS)
    assert (plain.fused, plan.fused) == (0, fused)
    xs = _inputs(g)
    for got, want in zip(plan(xs), plain(xs), strict=True):
        assert got.shape == want.shape and got.dtype == want.dtype
        if bitwise:
            assert got.tobytes() == want.tobytes()
        else:
            np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6)


@pytest.mark.smoke
def test_layer_norm_is_one_step() -> None:
    _check(LAYER_NORM, 1)
    assert len(compile_plan(parse_graph(LAYER_NORM), native=NUMPY_KERNELS)._steps) == 1


@pytest.mark.smoke
def test_layer_norm_statistics_used_after_it_are_its_outputs() -> None:
    """The training forward returns the mean and rstd too (reshaped after the norm)."""
    text = LAYER_NORM.replace("  return %out", "  %m = reshape(%mean) {shape=(4)} : f32[4]\n"
                              "  %r = reshape(%rstd) {shape=(4)} : f32[4]\n  return %out, %m, %r, %rstd")
    _check(text, 1)


@pytest.mark.smoke
def test_batch_norm_is_one_step_and_bit_identical() -> None:
    _check(BATCH_NORM, 1, bitwise=True)
    assert len(compile_plan(parse_graph(BATCH_NORM), native=NUMPY_KERNELS)._steps) == 1


@pytest.mark.smoke
def test_batch_norm_reshapes_used_elsewhere_stay() -> None:
    """A reshaped mean that is also an output: the reshape stays a step, the norm still fuses."""
    _check(BATCH_NORM.replace("return %out", "return %out, %mean_c"), 1, bitwise=True)


# Each variant is a computation the fused kernel does not do (or a value it would hide): the plan keeps
# its numpy steps and the results are the unfused plan's.
NOT_FUSED = [
    ("an intermediate is an output", LAYER_NORM, "return %out", "return %out, %centred"),
    ("an intermediate has another user", LAYER_NORM, "  return %out", "  %other = exp(%centred) : f32[4,32]\n"
                                                                     "  return %out, %other"),
    ("unbiased variance", LAYER_NORM, "correction=0.0", "correction=1.0"),
    ("eps is not a constant", LAYER_NORM.replace("%x: f32[4,32])", "%x: f32[4,32], %e: f32[])"),
     "add(%var, %eps)", "add(%var, %e)"),
    ("subtract of something else", LAYER_NORM, "subtract(%x, %mean)", "subtract(%x, %var)"),
    ("mean used before the norm ends", LAYER_NORM, "  %scaled =", "  %early = exp(%mean) : f32[4,1]\n  %scaled ="),
    ("batch norm rstd is an output", BATCH_NORM, "return %out", "return %out, %rstd"),
    ("batch norm eps is an input", BATCH_NORM.replace("%b: f32[4])", "%b: f32[4], %e: f32[])"),
     "add(%var_c, %eps)", "add(%var_c, %e)"),
]


@pytest.mark.smoke
@pytest.mark.parametrize(("why", "base", "old", "new"), NOT_FUSED, ids=[row[0] for row in NOT_FUSED])
def test_other_computations_are_not_fused(why: str, base: str, old: str, new: str) -> None:
    assert old in base
    text = base.replace(old, new)
    g = parse_graph(text)
    plan = compile_plan(g, native=NUMPY_KERNELS)
    assert plan.fused == 0, why
    if "%e" in text:
        return  # the eps input is random: nothing to compare the unfused plan's numerics against
    xs = _inputs(g)
    for got, want in zip(plan(xs), compile_plan(g)(xs), strict=True):
        assert got.tobytes() == want.tobytes(), why


@pytest.mark.smoke
def test_a_normalized_value_used_elsewhere_ends_the_fused_step() -> None:
    """The normalized value feeds another op too: the norm fuses, the weight and bias stay numpy steps."""
    text = LAYER_NORM.replace("  return %out", "  %other = exp(%normed) : f32[4,32]\n  return %out, %other")
    _check(text, 1)
    assert len(compile_plan(parse_graph(text), native=NUMPY_KERNELS)._steps) == 4  # norm, multiply, add, exp


@pytest.mark.smoke
def test_layer_norm_over_a_leading_axis_is_not_fused() -> None:
    text = (LAYER_NORM.replace("axes=(1)", "axes=(0)").replace("f32[4,1]", "f32[1,32]")
            .replace("%w: f32[32], %b: f32[32]", "%w: f32[32], %b: f32[32]"))
    assert compile_plan(parse_graph(text), native=NUMPY_KERNELS).fused == 0


@pytest.mark.smoke
def test_two_layer_norms_sharing_eps_fuse_both() -> None:
    text = LAYER_NORM.replace("  return %out", """  %mean2 = mean(%out) {axes=(1), keepdims=true} : f32[4,1]
  %var2 = var(%out) {axes=(1), correction=0.0, keepdims=true} : f32[4,1]
  %plus2 = add(%eps, %var2) : f32[4,1]
  %rstd2 = rsqrt(%plus2) : f32[4,1]
  %centred2 = subtract(%out, %mean2) : f32[4,32]
  %normed2 = multiply(%rstd2, %centred2) : f32[4,32]
  return %normed2""")
    _check(text, 2)


@pytest.mark.smoke
def test_float16_is_not_fused() -> None:
    text = LAYER_NORM.replace("f32", "f16")
    assert compile_plan(parse_graph(text), native=NUMPY_KERNELS).fused == 0
