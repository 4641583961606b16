"""FX → IR lowering, op by op against torch eager: one table of ATen ops x shapes x dtypes.

Each case is traced to core ATen (``make_fx`` + ``core_aten_decompositions``), lowered,
run by the numpy reference executor and compared with eager at the case dtype's
tolerance (:data:`TOLERANCE`). The same graph also runs as emitted NKIPy kernel source,
which must agree with the reference bit for bit, and round-trips through the text form.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the FX lowering needs torch (spiky-ir[torch])")
ml_dtypes = pytest.importorskip("ml_dtypes", reason="bfloat16 arrays need ml_dtypes")

from torch._decomp import core_aten_decompositions  # noqa: E402
from torch.fx.experimental.proxy_tensor import make_fx  # noqa: E402

from spiky_ir import LoweringError, execute, get_op, parse_graph, print_graph, verify  # noqa: E402
from spiky_ir.fx import LOWERINGS, lower_fx, lower_fx_graph  # noqa: E402
from spiky_ir.kernel_source import run_kernel  # noqa: E402

F = torch.nn.functional
F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
FLOATS = (F32, F16, BF16)

# (rtol, atol) per result dtype; fp16/bf16 results of composites round several times.
TOLERANCE: dict[torch.dtype, tuple[float, float]] = {
    F32: (1e-5, 1e-5), F16: (2e-3, 2e-3), BF16: (2e-2, 2e-2), torch.float64: (1e-9, 1e-9),
}


@dataclass(frozen=True)
class Arg:
    """One input: a shape and a value domain; ``dtype=None`` takes the case dtype."""

    shape: tuple[int, ...]
    domain: str = "any"  # any | pos | int:<high> | bool | perm
    dtype: torch.dtype | None = None

    def make(self, dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
        if self.domain.startswith("int:"):
            return torch.randint(0, int(self.domain[4:]), self.shape, generator=gen, dtype=self.dtype or torch.int64)
        if self.domain == "perm":  # a permutation of 0 .. n-1
            return torch.randperm(self.shape[0], generator=gen)
        if self.domain == "bool":
            return torch.rand(self.shape, generator=gen) < 0.5
        dt = self.dtype or dtype
        if not dt.is_floating_point:
            return torch.randint(-5, 6, self.shape, generator=gen).to(dt)
        x = torch.randn(self.shape, generator=gen, dtype=torch.float32)
        if self.domain == "pos":
            x = x.abs() + 0.5
        return x.to(dt)


@dataclass(frozen=True)
class Case:
    name: str
    fn: Callable[..., Any]
    args: tuple[Arg, ...]
    dtypes: tuple[torch.dtype, ...] = FLOATS
    tol: dict[torch.dtype, tuple[float, float]] = field(default_factory=dict)
    """Per-dtype overrides of :data:`TOLERANCE` for this case."""


def _a(*shape: int, domain: str = "any", dtype: torch.dtype | None = None) -> Arg:
    return Arg(tuple(shape), domain, dtype)


def _minus_inf_rows(x: torch.Tensor) -> torch.Tensor:
    """x with its first three rows -inf (max-pool windows over them and the padding hold only -inf)."""
    return torch.cat([x[..., :3, :] * 0 - math.inf, x[..., 3:, :]], -2)


UNARY = {
    "abs": torch.abs, "neg": torch.neg, "exp": torch.exp, "expm1": torch.expm1, "exp2": torch.exp2, "tanh": torch.tanh,
    "sigmoid": torch.sigmoid, "sin": torch.sin, "cos": torch.cos, "erf": torch.erf, "ceil": torch.ceil,
    "floor": torch.floor, "round": torch.round, "trunc": torch.trunc, "sign": torch.sign,
    "relu": F.relu, "silu": F.silu, "gelu": F.gelu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "hardtanh": F.hardtanh, "leaky_relu": lambda x: F.leaky_relu(x, 0.1), "elu": F.elu,
    "softplus": F.softplus, "mish": F.mish, "hardswish": F.hardswish, "square": torch.square,
    "clamp": lambda x: torch.clamp(x, -0.5, 0.7), "clamp_min": lambda x: x.clamp(min=0.1),
    "isnan": torch.isnan, "logical_not": torch.logical_not, "nan_to_num": torch.nan_to_num,
}
POSITIVE_UNARY = {
    "log": torch.log, "log1p": torch.log1p, "sqrt": torch.sqrt, "rsqrt": torch.rsqrt,
    "reciprocal": torch.reciprocal, "log2": torch.log2, "log10": torch.log10, "pow_half": lambda x: x**0.5,
}
BINARY = {
    "add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div, "maximum": torch.maximum,
    "minimum": torch.minimum, "eq": torch.eq, "ne": torch.ne, "lt": torch.lt, "le": torch.le, "gt": torch.gt,
    "ge": torch.ge, "atan2": torch.atan2, "add_alpha": lambda a, b: torch.add(a, b, alpha=3),
    "sub_alpha": lambda a, b: torch.sub(a, b, alpha=0.5), "where_gt": lambda a, b: torch.where(a > b, a, b),
    "pow": lambda a, b: torch.pow(a.abs() + 0.5, b), "lerp": lambda a, b: torch.lerp(a, b, 0.3),
    "floor_divide": lambda a, b: torch.div(a, b.abs() + 0.5, rounding_mode="floor"),
}
UNARY_SHAPES = [(4, 16), (1,), (2, 1, 3)]
BINARY_SHAPES = [((4, 16), (4, 16)), ((2, 1, 5), (4, 1)), ((1,), (3, 1)), ((4, 16), ())]

_REL_TOL = {F16: (5e-3, 5e-3), BF16: (3e-2, 3e-2)}  # composites with several roundings


def _generated() -> Iterator[Case]:
    for (name, fn), shape in itertools.product(UNARY.items(), UNARY_SHAPES):
        yield Case(f"{name}{list(shape)}", fn, (_a(*shape),), tol=_REL_TOL)
    for (name, fn), shape in itertools.product(POSITIVE_UNARY.items(), UNARY_SHAPES):
        yield Case(f"{name}{list(shape)}", fn, (_a(*shape, domain="pos"),), tol=_REL_TOL)
    for (name, fn), (sa, sb) in itertools.product(BINARY.items(), BINARY_SHAPES):
        yield Case(f"{name}{list(sa)}{list(sb)}", fn, (_a(*sa), _a(*sb)), tol=_REL_TOL)


EXPLICIT: list[Case] = [
    # scalars and mixed types
    Case("add_scalar", lambda a: a + 2.5, (_a(3, 5),)),
    Case("rsub_scalar", lambda a: 1 - a, (_a(7),)),
    Case("mul_int_tensor_float_scalar", lambda a: a * 2.5, (_a(6, dtype=torch.int32),), (F32,)),
    Case("div_int_int", lambda a, b: a / (b.abs() + 1), (_a(6, dtype=torch.int64), _a(6, dtype=torch.int64)), (F32,)),
    Case("div_trunc_int", lambda a, b: torch.div(a, b.abs() + 1, rounding_mode="trunc"),
         (_a(8, dtype=torch.int32), _a(8, dtype=torch.int32)), (F32,)),
    Case("remainder", lambda a: torch.remainder(a, 3), (_a(9, dtype=torch.int64),), (F32,)),
    Case("bitwise", lambda a, b: (a & b) | (a ^ 3) | ~b, (_a(9, dtype=torch.int32), _a(9, dtype=torch.int32)), (F32,)),
    Case("mixed_f16_f32", lambda a, b: a * b, (_a(4, 3, dtype=F16), _a(4, 3, dtype=F32)), (F32,)),
    Case("masked_fill", lambda a, m: a.masked_fill(m, -1e4), (_a(4, 5), _a(4, 5, domain="bool"))),
    Case("where_scalar", lambda a: torch.where(a > 0, a, 0.0), (_a(3, 4),)),
    Case("to_dtype", lambda a: a.to(torch.int32) + a.to(torch.float64), (_a(5),), (F32,)),
    Case("to_half", lambda a: a.half() * 3, (_a(5),), (F32,), {F32: (1e-3, 1e-3)}),
    # reductions
    *(Case(f"sum_{d}", lambda a, d=d: a.sum(dim=d), (_a(3, 4, 5),), tol=_REL_TOL) for d in (0, -1, (0, 2))),
    Case("sum_all", lambda a: a.sum(), (_a(4, 6),), tol=_REL_TOL),
    Case("sum_keepdim", lambda a: a.sum(1, keepdim=True), (_a(2, 7),), tol=_REL_TOL),
    Case("sum_int", lambda a: a.sum(0), (_a(4, 3, dtype=torch.int32),), (F32,)),
    Case("mean", lambda a: a.mean(-1), (_a(3, 8),), tol=_REL_TOL),
    Case("mean_all", lambda a: a.mean(), (_a(1, 8),), tol=_REL_TOL),
    Case("amax", lambda a: a.amax(1), (_a(3, 5),)),
    Case("amin_keepdim", lambda a: a.amin(0, keepdim=True), (_a(3, 5),)),
    Case("max_dim", lambda a: torch.max(a, 1), (_a(4, 6),)),
    Case("min_dim", lambda a: torch.min(a, 0), (_a(4, 6),)),
    Case("max_all", lambda a: a.max(), (_a(4, 6),)),
    Case("prod", lambda a: a.prod(1), (_a(3, 4),), tol=_REL_TOL),
    Case("var", lambda a: a.var(1), (_a(3, 9),), tol=_REL_TOL),
    Case("var_biased", lambda a: a.var(0, unbiased=False), (_a(5, 2),), tol=_REL_TOL),
    Case("var_dim", lambda a: torch.ops.aten.var.dim(a, [1], False, True), (_a(3, 5),), tol=_REL_TOL),
    Case("fill", lambda a: torch.ops.aten.fill.Scalar(a, 1.5) * a, (_a(3, 5),)),
    Case("std", lambda a: a.std(-1, keepdim=True), (_a(3, 9),), tol=_REL_TOL),
    Case("argmax", lambda a: a.argmax(-1), (_a(4, 7),)),
    Case("argmax_all", lambda a: a.argmax(), (_a(4, 7),)),
    Case("argmin_keepdim", lambda a: a.argmin(0, keepdim=True), (_a(4, 7),)),
    Case("any_all", lambda a: torch.stack([(a > 1).any(1), (a > -3).all(1)]), (_a(3, 4),), (F32,)),
    Case("logsumexp", lambda a: torch.logsumexp(a, 1), (_a(3, 6),), tol=_REL_TOL),
    # linalg
    Case("mm", torch.mm, (_a(4, 8), _a(8, 3)), tol=_REL_TOL),
    Case("bmm", torch.bmm, (_a(2, 4, 8), _a(2, 8, 3)), tol=_REL_TOL),
    Case("matmul_broadcast", torch.matmul, (_a(2, 1, 4, 8), _a(3, 8, 5)), tol=_REL_TOL),
    Case("matmul_vec", torch.matmul, (_a(4, 8), _a(8)), tol=_REL_TOL),
    Case("dot", torch.dot, (_a(8), _a(8)), tol=_REL_TOL),
    Case("addmm", lambda b, x, w: torch.addmm(b, x, w), (_a(3), _a(4, 8), _a(8, 3)), tol=_REL_TOL),
    Case("addmm_scaled", lambda b, x, w: torch.addmm(b, x, w, beta=0.5, alpha=2), (_a(4, 3), _a(4, 8), _a(8, 3)),
         tol=_REL_TOL),
    Case("baddbmm", lambda b, x, w: torch.baddbmm(b, x, w), (_a(2, 4, 3), _a(2, 4, 8), _a(2, 8, 3)), tol=_REL_TOL),
    Case("linear", F.linear, (_a(4, 32), _a(64, 32), _a(64)), tol=_REL_TOL),
    Case("linear_3d", F.linear, (_a(2, 4, 32), _a(64, 32)), tol=_REL_TOL),
    Case("outer", torch.outer, (_a(5), _a(3))),
    Case("einsum", lambda a, b: torch.einsum("bij,bjk->bik", a, b), (_a(2, 3, 4), _a(2, 4, 5)), tol=_REL_TOL),
    # shapes and layout
    Case("permute", lambda a: a.permute(2, 0, 1), (_a(2, 3, 4),)),
    Case("t", lambda a: a.t(), (_a(3, 4),)),
    Case("transpose", lambda a: a.transpose(0, 2), (_a(2, 3, 4),)),
    Case("view", lambda a: a.view(-1, 8), (_a(4, 16),)),
    Case("reshape_of_transpose", lambda a: a.t().reshape(64), (_a(4, 16),)),
    Case("flatten", lambda a: a.flatten(1), (_a(2, 3, 4),)),
    Case("unsqueeze_squeeze", lambda a: a.unsqueeze(1).squeeze(-1), (_a(3, 1),)),
    Case("expand", lambda a: a.expand(2, 3, 4), (_a(3, 1),)),
    Case("cat", lambda a, b: torch.cat([a, b, a], dim=1), (_a(2, 3), _a(2, 5))),
    Case("stack", lambda a, b: torch.stack([a, b], dim=-1), (_a(2, 3), _a(2, 3))),
    Case("split", lambda a: a.split(3, dim=1), (_a(2, 8),)),
    Case("chunk", lambda a: a.chunk(2, dim=0), (_a(4, 3),)),
    Case("split_sizes", lambda a: a.split([1, 4, 2], dim=-1), (_a(3, 7),)),
    Case("slice", lambda a: a[1:, ::2, -3:], (_a(3, 6, 5),)),
    Case("slice_negative_end", lambda a: a[:, 1:-1], (_a(3, 6),)),
    Case("select", lambda a: a[:, 2] + a[-1], (_a(4, 4),)),
    Case("narrow", lambda a: a.narrow(1, 1, 2), (_a(3, 5),)),
    Case("flip", lambda a: a.flip(0, 2), (_a(2, 3, 4),)),
    Case("roll", lambda a: a.roll(2, 1), (_a(3, 5),)),
    Case("repeat", lambda a: a.repeat(2, 1, 3), (_a(3, 2),)),
    Case("repeat_interleave", lambda a: a.repeat_interleave(2, dim=0), (_a(3, 2),)),
    Case("pad", lambda a: F.pad(a, (1, 2, 0, 1), value=0.5), (_a(2, 3, 4),)),
    Case("pad_negative", lambda a: F.pad(a, (-1, 2)), (_a(2, 5),)),
    Case("tril_triu", lambda a: a.tril(-1) + a.triu(1), (_a(2, 4, 4),)),
    Case("clone_contiguous", lambda a: a.t().contiguous() * 2, (_a(3, 4),)),
    # creation
    Case("zeros_ones_full", lambda a: a + torch.zeros(3, 4) + torch.ones(4) + torch.full((3, 1), 2.0), (_a(3, 4),),
         (F32,)),
    Case("zeros_like", lambda a: torch.zeros_like(a) + torch.ones_like(a) * a, (_a(3, 4),)),
    Case("arange", lambda a: a * torch.arange(4, dtype=a.dtype), (_a(3, 4),)),
    Case("arange_step", lambda a: a + torch.arange(1, 9, 2).float(), (_a(4),), (F32,)),
    Case("new_full", lambda a: a.new_full((2, 3), 7.0) * 2, (_a(3),)),
    Case("causal_mask", lambda a: a.masked_fill(torch.ones(4, 4, dtype=torch.bool).triu(1), float("-inf")),
         (_a(4, 4),)),
    # indexing
    Case("embedding", F.embedding, (_a(4, 3, domain="int:10"), _a(10, 5))),
    Case("index_select", lambda a, i: a.index_select(1, i), (_a(3, 6), _a(4, domain="int:6"))),
    Case("index_tensor", lambda a, i: a[i], (_a(6, 3), _a(2, 2, domain="int:6"))),
    Case("index_tensor_dim1", lambda a, i: a[:, i], (_a(3, 6), _a(4, domain="int:6"))),
    Case("index_two", lambda a, i, j: a[i, j], (_a(4, 5), _a(3, domain="int:4"), _a(3, domain="int:5"))),
    Case("gather", lambda a, i: a.gather(1, i), (_a(3, 5), _a(3, 2, domain="int:5"))),
    Case("scatter", lambda a, i, s: a.scatter(1, i, s), (_a(3, 5), _a(3, 1, domain="int:5"), _a(3, 1))),
    Case("scatter_add", lambda a, i, s: a.scatter_add(0, i, s), (_a(3, 4), _a(5, 4, domain="int:3"), _a(5, 4)),
         tol=_REL_TOL),
    Case("index_put_accumulate", lambda a, i, v: a.index_put((i,), v, accumulate=True),
         (_a(5, 3), _a(6, domain="int:5"), _a(6, 3)), tol=_REL_TOL),
    Case("index_put", lambda a, i, v: a.index_put((i,), v), (_a(5, 3), _a(2, domain="int:5"), _a(3,))),
    Case("slice_scatter", lambda a, s: torch.slice_scatter(a, s, 1, 1, 5, 2), (_a(3, 6), _a(3, 2))),
    # step 1 at static bounds: a dynamic_update_slice (test_slice_scatter_forms)
    Case("slice_scatter_window", lambda a, s: torch.slice_scatter(a, s, 1, 2, 5), (_a(3, 6), _a(3, 3))),
    Case("slice_scatter_negative_dim0", lambda a, s: torch.slice_scatter(a, s, 0, -3), (_a(5, 2, 4), _a(3, 2, 4))),
    Case("slice_scatter_whole", lambda a, s: torch.slice_scatter(a, s, -1), (_a(3, 4), _a(3, 4))),
    Case("slice_scatter_into_zeros", lambda s: torch.slice_scatter(torch.zeros(2, 7, dtype=s.dtype), s, 1, 4),
         (_a(2, 3),)),
    Case("select_scatter", lambda a, s: torch.select_scatter(a, s, 0, -1), (_a(3, 4), _a(4))),
    Case("topk", lambda a: torch.topk(a, 3, dim=-1), (_a(4, 8),)),
    Case("topk_smallest", lambda a: torch.topk(a, 2, dim=0, largest=False), (_a(5, 3),)),
    Case("sort", lambda a: torch.sort(a, stable=True), (_a(4, 9),)),
    Case("sort_descending_dim0", lambda a: torch.sort(a, dim=0, descending=True, stable=True), (_a(6, 3),)),
    Case("sort_ties_int", lambda a: torch.sort(a, dim=1, descending=True, stable=True),
         (_a(3, 12, dtype=torch.int32),), (F32,)),
    Case("argsort_stable", lambda a: torch.argsort(a, dim=-1, descending=True, stable=True), (_a(5, 7),)),
    Case("cumsum", lambda a: torch.cumsum(a, 1), (_a(3, 17),), tol=_REL_TOL),
    Case("cumsum_dim0_3d", lambda a: torch.cumsum(a, 0), (_a(5, 2, 3),), tol=_REL_TOL),
    Case("cumsum_int_to_int64", lambda a: torch.cumsum(a, -1), (_a(4, 9, dtype=torch.int32),), (F32,)),
    Case("cumsum_bool", lambda a: torch.cumsum(a > 0, 1), (_a(4, 9),), (F32,)),
    Case("cumsum_dtype", lambda a: torch.cumsum(a, 1, dtype=torch.float64), (_a(3, 8),)),
    Case("cumprod", lambda a: torch.cumprod(a, 1), (_a(3, 6, domain="pos"),), tol=_REL_TOL),
    Case("cumprod_int", lambda a: torch.cumprod(a, 0), (_a(6, 3, dtype=torch.int64),), (F32,)),
    # nn
    Case("softmax", lambda a: torch.softmax(a, -1), (_a(4, 16),), tol=_REL_TOL),
    Case("softmax_dim0", lambda a: torch.softmax(a, 0), (_a(1, 5),), tol=_REL_TOL),
    Case("softmax_half_to_float", lambda a: torch.softmax(a, -1, dtype=torch.float32), (_a(3, 7),), (F16, BF16),
         {F16: (1e-3, 1e-4), BF16: (1e-3, 1e-4)}),
    Case("log_softmax", lambda a: torch.log_softmax(a, 1), (_a(3, 10),), tol=_REL_TOL),
    Case("layer_norm", lambda x, w, b: F.layer_norm(x, (8,), w, b), (_a(2, 3, 8), _a(8), _a(8)), tol=_REL_TOL),
    Case("layer_norm_2d_no_affine", lambda x: F.layer_norm(x, (3, 8)), (_a(2, 3, 8),), tol=_REL_TOL),
    Case("rms_norm_in_torch", lambda x, w: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w,
         (_a(2, 3, 8), _a(8)), tol=_REL_TOL),
    Case("batch_norm_eval", lambda x, m, v, w, b: F.batch_norm(x, m, v, w, b, training=False),
         (_a(2, 4, 3, 3), _a(4), _a(4, domain="pos"), _a(4), _a(4)), tol=_REL_TOL),
    Case("group_norm", lambda x, w, b: F.group_norm(x, 2, w, b), (_a(2, 4, 3, 3), _a(4), _a(4)), tol=_REL_TOL),
    Case("conv2d", lambda x, w, b: F.conv2d(x, w, b, padding=1), (_a(2, 3, 6, 6), _a(4, 3, 3, 3), _a(4)),
         tol=_REL_TOL),
    Case("conv2d_stride_dilation_groups", lambda x, w: F.conv2d(x, w, stride=2, dilation=2, groups=2),
         (_a(1, 4, 9, 9), _a(6, 2, 2, 3)), tol=_REL_TOL),
    Case("conv1d", lambda x, w, b: F.conv1d(x, w, b, stride=2, padding=2), (_a(2, 3, 10), _a(5, 3, 3), _a(5)),
         tol=_REL_TOL),
    Case("max_pool2d", lambda x: F.max_pool2d(x, 2), (_a(2, 3, 6, 6),)),
    Case("max_pool2d_indices", lambda x: F.max_pool2d(x, 3, 2, 1, return_indices=True), (_a(1, 2, 7, 7),)),
    Case("max_pool2d_ceil", lambda x: F.max_pool2d(x, 2, ceil_mode=True), (_a(1, 2, 5, 5),)),
    # windows whose inside values are all -inf: torch's index is the first inside tap, never padding
    Case("max_pool2d_minus_inf_windows", lambda x: F.max_pool2d(_minus_inf_rows(x), 3, 2, 1, return_indices=True),
         (_a(1, 2, 7, 6),)),
    Case("avg_pool2d", lambda x: F.avg_pool2d(x, 2), (_a(2, 3, 6, 6),), tol=_REL_TOL),
    Case("avg_pool2d_pad", lambda x: F.avg_pool2d(x, 3, 2, 1), (_a(1, 2, 7, 7),), tol=_REL_TOL),
    Case("avg_pool2d_pad_exclude", lambda x: F.avg_pool2d(x, 3, 2, 1, count_include_pad=False), (_a(1, 2, 7, 7),),
         tol=_REL_TOL),
    Case("avg_pool2d_pad_unused_high", lambda x: F.avg_pool2d(x, 3, 2, 1), (_a(1, 2, 4, 4),), tol=_REL_TOL),
    Case("adaptive_avg_pool2d", lambda x: F.adaptive_avg_pool2d(x, 2), (_a(2, 3, 4, 6),), tol=_REL_TOL),
    Case("sdpa", lambda q, k, v: F.scaled_dot_product_attention(q, k, v), (_a(2, 2, 5, 8), _a(2, 2, 5, 8),
         _a(2, 2, 5, 8)), tol=_REL_TOL),
    Case("sdpa_causal", lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
         (_a(1, 2, 6, 4), _a(1, 2, 6, 4), _a(1, 2, 6, 4)), tol=_REL_TOL),
    Case("sdpa_mask", lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m),
         (_a(1, 2, 3, 4), _a(1, 2, 5, 4), _a(1, 2, 5, 4), _a(3, 5, domain="bool")), tol=_REL_TOL),
    Case("cross_entropy", lambda x, t: F.cross_entropy(x, t), (_a(4, 6), _a(4, domain="int:6")), tol=_REL_TOL),
    Case("mse_loss", F.mse_loss, (_a(4, 6), _a(4, 6)), tol=_REL_TOL),
    # backward-only ATen ops, reached through autograd.grad inside the traced function
    Case("threshold_backward", lambda x: torch.autograd.grad(F.relu(x).sum(), x)[0], (_a(4, 5),), (F32,)),
    Case("tanh_sigmoid_backward", lambda x: torch.autograd.grad((torch.tanh(x) * torch.sigmoid(x)).sum(), x)[0],
         (_a(4, 5),), (F32,)),
    Case("softmax_backward", lambda x: torch.autograd.grad((torch.softmax(x, -1) ** 2).sum(), x)[0], (_a(3, 5),),
         (F32,)),
    Case("log_softmax_backward", lambda x: torch.autograd.grad((torch.log_softmax(x, -1) ** 2).sum(), x)[0],
         (_a(3, 5),), (F32,)),
    Case("layer_norm_backward", lambda x: torch.autograd.grad((F.layer_norm(x, (6,)) ** 2).sum(), x)[0],
         (_a(3, 6),), (F32,), {F32: (1e-4, 1e-5)}),
    Case("max_pool2d_backward", lambda x: torch.autograd.grad(F.max_pool2d(x, 2).sum(), x)[0], (_a(1, 2, 4, 4),),
         (F32,)),
    Case("max_pool2d_backward_minus_inf_windows",
         lambda x: torch.autograd.grad(F.max_pool2d(_minus_inf_rows(x), 3, 2, 1).sum(), x)[0], (_a(1, 2, 7, 6),),
         (F32,)),
    Case("embedding_backward", lambda w, i: torch.autograd.grad((F.embedding(i, w) ** 2).sum(), w)[0],
         (_a(6, 3), _a(2, 4, domain="int:6")), (F32,)),
    # histograms and the grouped matmul of mixture-of-experts layers
    Case("histc", lambda a: torch.histc(a, bins=7, min=-1.5, max=2.0), (_a(5, 40),), (F32,)),
    Case("histc_bin_edges", lambda a: torch.histc(torch.round(a * 10) / 10, bins=7, min=0.1, max=2.9),  # on 0.1 steps
         (_a(1000),), (F32,)),
    Case("histc_data_range", lambda a: torch.histc(a, bins=5), (_a(3, 11),), (F32,)),
    Case("histc_one_value", lambda a: torch.histc(a * 0 + 2, bins=4), (_a(6),), (F32,)),
    Case("histc_expert_ids", lambda e: torch.histc(e.float(), bins=4, min=0, max=3), (_a(12, domain="int:6"),),
         (F32,)),
    Case("grouped_mm", lambda x, w, e: torch._grouped_mm(
        x, w, offs=torch.cumsum(torch.histc(e.float(), bins=3, min=0, max=2), 0, dtype=torch.int32)),
        (_a(10, 8), _a(3, 8, 4), _a(10, domain="int:3")), (F32,), {F32: (1e-5, 1e-5)}),
    Case("empty_like_scatter", lambda p: torch.empty_like(p).index_put((p,), torch.arange(p.numel())),
         (_a(6, domain="perm"),), (F32,)),
]

CASES = {f"{c.name}": c for c in [*_generated(), *EXPLICIT]}
PARAMS = [
    pytest.param(name, dtype, id=f"{name}-{str(dtype).removeprefix('torch.')}",
                 marks=[pytest.mark.smoke] if dtype is F32 else [])
    for name, case in CASES.items() for dtype in case.dtypes
]


def to_numpy(t: torch.Tensor) -> np.ndarray[Any, Any]:
    if t.dtype is torch.bfloat16:
        return t.detach().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.detach().numpy()


def _outputs(out: Any) -> list[torch.Tensor]:
    return [o for o in (out if isinstance(out, tuple | list) else [out]) if isinstance(o, torch.Tensor)]


def _trace(case: Case, inputs: Sequence[torch.Tensor]) -> Any:
    def fn(*args: torch.Tensor) -> Any:
        return case.fn(*args)

    # Functionalized (no in-place ops), as aot_autograd hands graphs over; autograd.grad
    # does not compose with functionalize, and the backward cases are functional already.
    traced = fn if "backward" in case.name else torch.func.functionalize(fn)
    return make_fx(traced, decomposition_table=core_aten_decompositions())(*inputs)


@pytest.mark.parametrize(("name", "dtype"), PARAMS)
def test_lowering_matches_eager(name: str, dtype: torch.dtype) -> None:
    case = CASES[name]
    gen = torch.Generator().manual_seed(0)
    inputs = [arg.make(dtype, gen) for arg in case.args]
    if "backward" in case.name:
        inputs = [x.requires_grad_() if x.is_floating_point() else x for x in inputs]
    _check_against_eager(lower_fx(_trace(case, inputs)), case, inputs)


def _check_against_eager(graph: Any, case: Case, inputs: Sequence[torch.Tensor]) -> None:
    """The lowered graph, run by the reference executor, matches eager; its kernel source matches bit for bit."""
    verify(graph)
    arrays = [to_numpy(t) for t in inputs]
    assert len(graph.inputs) == len(arrays)
    outputs = execute(graph, arrays)
    expected = _outputs(case.fn(*inputs))
    assert len(outputs) == len(expected)
    for out, exp in zip(outputs, expected, strict=True):
        assert out.shape == tuple(exp.shape)
        bf16 = exp.dtype is BF16
        actual = torch.from_numpy(out.view(np.int16)).view(BF16) if bf16 else torch.from_numpy(out)
        assert actual.dtype == exp.dtype
        rtol, atol = case.tol.get(exp.dtype, TOLERANCE.get(exp.dtype, (0.0, 0.0)))
        torch.testing.assert_close(actual, exp.detach(), rtol=rtol, atol=atol, equal_nan=True)
    # The emitted NKIPy kernel computes exactly what the reference executor computes.
    for kernel_out, ref_out in zip(run_kernel(graph, arrays), outputs, strict=True):
        assert kernel_out.dtype == ref_out.dtype
        np.testing.assert_array_equal(kernel_out, ref_out)
    assert print_graph(parse_graph(print_graph(graph))) == print_graph(graph)


_LSE = torch.ops.aten.logsumexp.default

# ATen overloads declared on an op (OpDef.aten), traced without decompositions so that the overload
# itself reaches the lowering: (case, the overload, the IR op it must become).
DIRECT: list[tuple[Case, Any, str]] = [
    (Case("exp2", torch.exp2, (_a(3, 5),)), torch.ops.aten.exp2.default, "exp2"),
    (Case("exp2_int", torch.exp2, (_a(7, dtype=torch.int32),), (F32,)), torch.ops.aten.exp2.default, "exp2"),
    # core ATen decomposes logsumexp; traced as it is, it lowers onto the reduction
    (Case("logsumexp", lambda a: torch.logsumexp(a, 1), (_a(3, 6),), tol=_REL_TOL), _LSE, "logsumexp"),
    (Case("logsumexp_dims_keepdim", lambda a: torch.logsumexp(a, (0, 2), keepdim=True), (_a(2, 3, 4),),
          tol=_REL_TOL), _LSE, "logsumexp"),
    (Case("logsumexp_all_dims", lambda a: torch.logsumexp(a, (0, 1)), (_a(2, 5),), (F32,)), _LSE, "logsumexp"),
    (Case("logsumexp_int", lambda a: torch.logsumexp(a, -1), (_a(4, 5, dtype=torch.int64),), (F32,)), _LSE,
     "logsumexp"),
    # a row of -inf gives -inf and a +inf entry gives inf (the max shifts by 0), as in torch
    (Case("logsumexp_infinities", lambda a: torch.logsumexp(torch.cat([a, a[:1] * 0 - math.inf, a[:1] * 0 + math.inf]),
          1), (_a(3, 4),), (F32,)), _LSE, "logsumexp"),
    (Case("logsumexp_large", lambda a: torch.logsumexp(a * 1000, 1), (_a(3, 8),), (F32,), {F32: (1e-5, 1e-3)}),
     _LSE, "logsumexp"),
]


@pytest.mark.parametrize(("case", "overload", "op"), [
    pytest.param(c, o, op, id=f"{c.name}-{str(d).removeprefix('torch.')}", marks=[pytest.mark.smoke])
    for c, o, op in DIRECT for d in c.dtypes[:1]
])
def test_declared_aten_overload_lowers_onto_its_op(case: Case, overload: Any, op: str) -> None:
    assert overload in LOWERINGS and str(overload) in get_op(op).aten
    for dtype in case.dtypes:
        gen = torch.Generator().manual_seed(1)
        inputs = [arg.make(dtype, gen) for arg in case.args]
        gm = make_fx(case.fn)(*inputs)
        assert overload in [n.target for n in gm.graph.nodes]
        graph = lower_fx(gm)
        assert op in [n.op for n in graph.nodes], print_graph(graph)
        _check_against_eager(graph, case, inputs)


@pytest.mark.smoke
def test_unsupported_op_names_aten_op_and_node() -> None:
    def fn(a: Any) -> Any:
        return torch.special.bessel_j0(a) + 1

    gm = make_fx(fn, decomposition_table=core_aten_decompositions())(torch.randn(3))
    message = r"aten\.special_bessel_j0\.default \(node 'special_bessel_j0'\).*no spiky-ir lowering"
    with pytest.raises(LoweringError, match=message):
        lower_fx(gm)


@pytest.mark.smoke
def test_boolean_mask_index_is_refused_with_advice() -> None:
    gm = make_fx(lambda a, m: a.index_put((m,), torch.zeros(())),
                 decomposition_table=core_aten_decompositions())(torch.randn(4), torch.rand(4) > 0.5)
    with pytest.raises(LoweringError, match=r"boolean-mask indexing.*use torch.where"):
        lower_fx(gm)


def test_grouped_mm_other_than_experts_is_refused_by_name() -> None:
    gm = make_fx(lambda a, b: torch._grouped_mm(a, b))(torch.randn(2, 4, 8), torch.randn(2, 8, 4))
    with pytest.raises(LoweringError, match=r"_grouped_mm.*only the mixture-of-experts form.*\(rows, in\) input"):
        lower_fx(gm)


@pytest.mark.smoke
@pytest.mark.smoke
@pytest.mark.parametrize(("step", "op"), [(1, "dynamic_update_slice"), (2, "scatter")])
def test_slice_scatter_forms(step: int, op: str) -> None:
    """A contiguous window (step 1, static bounds) is written with one dynamic_update_slice; a strided
    one scatters at computed positions. Both match eager (the table's slice_scatter cases)."""
    gm = make_fx(lambda a, s: torch.slice_scatter(a, s, 1, 1, 1 + 2 * step, step))(torch.zeros(3, 6), torch.ones(3, 2))
    ops = {node.op for node in lower_fx(gm).nodes}
    assert op in ops and ({"scatter", "dynamic_update_slice"} - {op}).isdisjoint(ops)


def test_none_outputs_keep_their_slots() -> None:
    def fn(a: Any, b: Any) -> Any:
        return a * 2, None, b

    gm = make_fx(fn)(torch.randn(2), torch.randn(3))
    lowered = lower_fx_graph(gm)
    assert lowered.output_slots == [0, None, 1]
    with pytest.raises(LoweringError, match=r"returns None at output\(s\) \[1\]"):
        lower_fx(gm)


@pytest.mark.smoke
def test_symint_inputs_become_symbolic_dims() -> None:
    def fn(a: Any, b: Any) -> Any:
        return torch.cat([a, b], 0).reshape(-1) * 2

    gm = make_fx(fn, tracing_mode="symbolic", decomposition_table=core_aten_decompositions())(
        torch.randn(4, 3), torch.randn(5, 3))
    graph = lower_fx(gm)
    (x, y), (out,) = graph.inputs, graph.outputs
    assert all(isinstance(d, str) for d in (x.type.shape[0], y.type.shape[0]))
    assert isinstance(out.type.shape[0], str) and "*" in out.type.shape[0]  # (s0 + s1) * s2
    a, b = torch.randn(2, 3), torch.randn(6, 3)
    (result,) = execute(graph, [a.numpy(), b.numpy()])
    np.testing.assert_allclose(result, fn(a, b).numpy(), rtol=1e-6)


@pytest.mark.smoke
def test_collectives_lower_to_ir_collectives() -> None:
    import torch.distributed._functional_collectives

    c10d = torch.ops._c10d_functional

    def fn(a: Any) -> Any:
        r = c10d.wait_tensor(c10d.all_reduce(a, "sum", "0"))
        g = c10d.wait_tensor(c10d.all_gather_into_tensor(r, 2, "0"))
        s = c10d.wait_tensor(c10d.reduce_scatter_tensor(g, "avg", 2, "0"))
        t = c10d.wait_tensor(c10d.all_to_all_single(s, [2, 2], [2, 2], "0"))
        return c10d.wait_tensor(c10d.broadcast(t, 1, "0"))

    gm = make_fx(fn, tracing_mode="fake")(torch.randn(4, 3))
    graph = lower_fx(gm)
    ops = [n.op for n in graph.nodes]
    assert ops == ["all_reduce", "all_gather", "reduce_scatter", "all_to_all", "broadcast"]
    assert [str(n.output.type) for n in graph.nodes] == ["f32[4,3]", "f32[8,3]", "f32[4,3]", "f32[4,3]", "f32[4,3]"]
    assert graph.nodes[0].attrs == {"reduce_op": "sum", "group_name": "0"}
    assert graph.nodes[-1].attrs == {"src": 1, "group_name": "0"}
    with pytest.raises(Exception, match=r"collective: it needs a process group.*set_collective_backend"):
        execute(graph, [np.ones((4, 3), np.float32)])


@pytest.mark.smoke
def test_coverage_report(capsys: pytest.CaptureFixture[str]) -> None:
    from spiky_ir.coverage import coverage, main

    cov = coverage()
    assert {"aten.convolution.default", "aten.sort.default", "aten.cumsum.default"} <= set(cov.lowered)
    assert "aten.nonzero.default" in cov.missing  # a data-dependent shape: never lowered
    assert len(cov.lowered) >= 130 and not set(cov.lowered) & set(cov.missing)
    assert main(["--missing-only"]) == 0
    out = capsys.readouterr().out
    assert "  - aten.nonzero.default" in out and f"summary: {len(cov.lowered)}/" in out
    # keys are overloads, Python operators (SymInt arithmetic), or names of late-registered prims and
    # of a model library's custom ops (registered when the library is imported)
    assert all(hasattr(t, "tags") or getattr(t, "__module__", None) == "_operator" or
               (isinstance(t, str) and t.split(".")[0] in ("prims", "transformers")) for t in LOWERINGS)
