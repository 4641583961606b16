"""Convolutions against torch eager: conv3d, transposed convolution (1-, 2-, 3-d) and the gradients of
every convolution (``aten.convolution_backward``: input, weight and bias, as ``output_mask`` asks).

Each case is traced without decompositions (``make_fx``), lowered, and run on every path: the numpy
reference, the plan executor, NKIPy kernel source (bit for bit with the reference) and the emitted
HLO on XLA:CPU. Gradients are traced through ``torch.autograd.grad``, so the backward graph holds
``convolution_backward`` itself. With symbolic sizes the weight gradient takes its per-tap form,
which the padding pass can mask; those graphs run padded, with NaN in the padding.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the FX lowering needs torch (spiky-ir[torch])")
ml_dtypes = pytest.importorskip("ml_dtypes", reason="bfloat16 arrays need ml_dtypes")

from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: E402
from torch.fx.experimental.proxy_tensor import make_fx  # noqa: E402
from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext  # noqa: E402

from spiky_ir import DType, Graph, TensorType, compile_plan, execute, specialize  # noqa: E402
from spiky_ir.fx import lower_fx, lower_fx_graph  # noqa: E402
from spiky_ir.hlo import emit_hlo  # noqa: E402
from spiky_ir.hlo.xla_cpu import run_hlo  # noqa: E402
from spiky_ir.kernel_source import run_kernel  # noqa: E402
from spiky_ir.padding import pad_graph, unpad  # noqa: E402

F = torch.nn.functional
F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
TOL = {F32: (1e-4, 1e-4), F16: (5e-3, 5e-3), BF16: (3e-2, 3e-2)}  # sums over windows, batches and taps


def _np(t: Any) -> np.ndarray[Any, Any]:
    t = t.detach()
    if t.dtype is BF16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)  # type: ignore[no-any-return]
    return t.numpy()  # type: ignore[no-any-return]


def _torch(a: np.ndarray[Any, Any]) -> Any:
    if a.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(np.array(a).view(np.int16)).view(BF16)
    return torch.from_numpy(np.array(a))


@dataclass(frozen=True)
class Conv:
    """A convolution call: input and weight shapes and torch's keyword arguments."""

    nd: int
    x: tuple[int, ...]
    w: tuple[int, ...]
    kw: dict[str, Any] = field(default_factory=dict)
    transposed: bool = False
    bias: bool = True

    def fn(self) -> Callable[..., Any]:
        op = {(1, False): F.conv1d, (2, False): F.conv2d, (3, False): F.conv3d,
              (1, True): F.conv_transpose1d, (2, True): F.conv_transpose2d, (3, True): F.conv_transpose3d}
        return op[self.nd, self.transposed]  # type: ignore[no-any-return]

    def bias_size(self) -> int:
        return self.w[1] * self.kw.get("groups", 1) if self.transposed else self.w[0]

    def inputs(self, dtype: Any, seed: int) -> list[Any]:
        gen = torch.Generator().manual_seed(seed)
        out = [torch.randn(self.x, generator=gen).to(dtype), torch.randn(self.w, generator=gen).to(dtype)]
        if self.bias:
            out.append(torch.randn(self.bias_size(), generator=gen).to(dtype))
        return out


CONVS: dict[str, Conv] = {
    "conv3d": Conv(3, (2, 3, 5, 6, 4), (4, 3, 3, 2, 2), {"padding": 1}),
    "conv3d_stride_dilation_groups": Conv(3, (1, 4, 7, 6, 6), (6, 2, 2, 3, 2), {
        "stride": (2, 1, 2), "dilation": (1, 2, 1), "groups": 2, "padding": (1, 0, 1)}),
    "conv1d_groups": Conv(1, (2, 6, 11), (9, 2, 3), {"stride": 2, "padding": 2, "dilation": 2, "groups": 3}),
    "conv2d_unbatched": Conv(2, (3, 7, 6), (4, 3, 3, 3), {"padding": 1}, bias=False),
    # The HLO rule's forms (conv_as_dot): XLA's convolution on a large map, im2col + dot on a small
    # one, a fused multiply-add for depthwise (here with a channel multiplier), a batched dot for groups.
    "conv2d_large_map": Conv(2, (2, 3, 15, 13), (5, 3, 3, 2), {"stride": (1, 1), "padding": (1, 0)}),
    "conv2d_small_map_stride_dilation": Conv(2, (2, 4, 9, 8), (6, 4, 3, 3),
                                             {"stride": 2, "padding": 2, "dilation": 2}),
    "conv2d_depthwise_multiplier": Conv(2, (2, 4, 9, 7), (8, 1, 3, 3), {"padding": 1, "groups": 4}),
    "conv2d_grouped_1x1_stride": Conv(2, (2, 6, 8, 8), (9, 2, 1, 1), {"stride": 2, "groups": 3}),
    "conv_transpose1d": Conv(1, (2, 4, 7), (4, 3, 3), {"stride": 2, "padding": 1, "output_padding": 1},
                             transposed=True),
    "conv_transpose1d_crop_beyond_reach": Conv(1, (2, 3, 9), (3, 2, 2), {"padding": 2}, transposed=True),
    "conv_transpose1d_groups_dilation": Conv(1, (2, 4, 6), (4, 2, 3),
                                             {"stride": 3, "padding": 1, "output_padding": 2, "groups": 2,
                                              "dilation": 2}, transposed=True),
    "conv_transpose2d": Conv(2, (2, 4, 5, 6), (4, 3, 3, 2),
                             {"stride": (2, 1), "padding": (1, 0), "output_padding": (1, 0), "dilation": (1, 2)},
                             transposed=True),
    "conv_transpose2d_groups": Conv(2, (1, 6, 4, 4), (6, 2, 3, 3), {"stride": 2, "padding": 1, "groups": 3},
                                    transposed=True, bias=False),
    "conv_transpose3d": Conv(3, (1, 2, 3, 4, 3), (2, 3, 2, 3, 2),
                             {"stride": (1, 2, 2), "padding": (0, 1, 1), "output_padding": (0, 1, 0)}, transposed=True),
}


def _all_paths(graph: Graph, arrays: Sequence[np.ndarray[Any, Any]]) -> dict[str, list[np.ndarray[Any, Any]]]:
    reference = execute(graph, arrays)
    for kernel_out, ref in zip(run_kernel(graph, arrays), reference, strict=True):
        np.testing.assert_array_equal(kernel_out, ref)  # kernel source computes what the reference does
    return {"reference": reference, "plan": compile_plan(graph)(list(arrays)),
            "xla": run_hlo(emit_hlo(graph).proto, list(arrays))}


def _compare(graph: Graph, inputs: Sequence[Any], expected: Sequence[Any], dtype: Any) -> None:
    """Within TOL; for half types the absolute part scales with the result's largest magnitude: a sum
    of many products rounds (in torch's half kernels too) by an ulp of the sum, not of each element."""
    rtol, atol = TOL[dtype]
    for path, outs in _all_paths(graph, [_np(t) for t in inputs]).items():
        assert len(outs) == len(expected), path
        for got, want in zip(outs, expected, strict=True):
            actual = _torch(np.asarray(got))
            assert actual.dtype == want.dtype, path
            scale = max(float(want.detach().float().abs().max()), 1.0) if dtype is not F32 else 1.0
            torch.testing.assert_close(actual, want.detach(), rtol=rtol, atol=atol * scale, msg=path)


@pytest.mark.parametrize("dtype", [F32, F16])
@pytest.mark.parametrize("name", sorted(CONVS))
def test_convolution_forward_matches_eager(name: str, dtype: Any) -> None:
    conv = CONVS[name]
    inputs = conv.inputs(dtype, zlib.crc32(name.encode()))

    def fn(*args: Any) -> Any:
        return conv.fn()(*args, **conv.kw)

    graph = lower_fx(make_fx(fn)(*inputs))
    kind = f"conv_transpose{conv.nd}d" if conv.transposed else f"conv{conv.nd}d"
    assert kind in [n.op for n in graph.nodes]
    _compare(graph, inputs, [fn(*inputs)], dtype)


# which gradients: every input, or the weight (and bias) alone (output_mask [False, True, True])
HLO_FORMS = {"conv2d_large_map": "convolution", "conv2d_small_map_stride_dilation": "dot",
             "conv2d_depthwise_multiplier": "multiply", "conv2d_grouped_1x1_stride": "dot",
             # transposed: the input spread by the stride in one pad, then the plain convolution's forms
             "conv_transpose2d": "dot", "conv_transpose2d_groups": "dot"}


@pytest.mark.parametrize("name", sorted(HLO_FORMS))
def test_hlo_rule_picks_the_fast_form(name: str) -> None:
    """Which HLO a plain convolution becomes (the numerics of each form are checked above)."""
    conv = CONVS[name]
    inputs = conv.inputs(F32, 0)[:2]
    graph = lower_fx(make_fx(lambda x, w: conv.fn()(x, w, **conv.kw))(*inputs))
    text = emit_hlo(graph).text
    form = HLO_FORMS[name]
    assert f" {form}(" in text
    assert (" convolution(" in text) == (form == "convolution")


def test_the_weight_gradient_is_matmuls_per_kernel_tap() -> None:
    """A static convolution's weight gradient is one GEMM per kernel tap, not XLA's convolution with the
    whole output map as its kernel (400 -> 104 ms for resnet18's backward on XLA:CPU)."""
    conv = CONVS["conv2d_large_map"]
    x, w = (t.requires_grad_() for t in conv.inputs(F32, 0)[:2])
    graph = lower_fx(make_fx(lambda x, w: torch.autograd.grad(conv.fn()(x, w, **conv.kw).sum(), [w]))(x, w))
    text = emit_hlo(graph).text
    # the forward's own convolution (a large map: XLA's form) and one dot per tap for the gradient
    assert text.count(" convolution(") == 1 and text.count(" dot(") == math.prod(w.shape[2:])


GRADS = {"all": (0, 1, 2), "weight_and_bias": (1, 2), "input": (0,)}


def _grad_fn(conv: Conv, which: tuple[int, ...]) -> Callable[..., Any]:
    def fn(*args: Any) -> Any:
        out = conv.fn()(*args, **conv.kw)
        seed = out.detach().cos()  # a non-uniform dL/dy
        wrt = [args[i] for i in which if i < len(args)]
        return torch.autograd.grad((out * seed).sum(), wrt)

    return fn


@pytest.mark.parametrize("dtype", [F32, BF16])
@pytest.mark.parametrize("which", sorted(GRADS))
@pytest.mark.parametrize("name", sorted(CONVS))
def test_convolution_backward_matches_eager(name: str, which: str, dtype: Any) -> None:
    conv = CONVS[name]
    inputs = [t.requires_grad_() for t in conv.inputs(dtype, zlib.crc32(name.encode()))]
    fn = _grad_fn(conv, GRADS[which])
    gm = make_fx(fn)(*inputs)
    assert torch.ops.aten.convolution_backward.default in [n.target for n in gm.graph.nodes]
    graph = lower_fx(gm)
    _compare(graph, inputs, list(fn(*inputs)), dtype)


def test_masked_gradients_stay_none() -> None:
    """output_mask [False, True, False]: the lowering returns None where torch has None."""
    x, w = torch.randn(2, 3, 6), torch.randn(4, 3, 3)

    def fn(a: Any, b: Any) -> Any:
        return torch.ops.aten.convolution_backward.default(
            torch.ones(2, 4, 4), a, b, None, [1], [0], [1], False, [0], 1, [False, True, False])

    lowered = lower_fx_graph(make_fx(fn)(x, w))
    assert lowered.output_slots == [None, 0, None]
    (grad_w,) = execute(lowered.graph, [x.numpy(), w.numpy()])
    torch.testing.assert_close(torch.from_numpy(grad_w), fn(x, w)[1], rtol=1e-5, atol=1e-5)


# --- symbolic sizes: the per-tap weight gradient, padded ------------------------------------------------

SYMBOLIC: dict[str, Conv] = {
    "conv1d": Conv(1, (5, 3, 12), (4, 3, 3)),
    "conv2d_groups": Conv(2, (5, 4, 9, 9), (6, 2, 3, 2), {"groups": 2, "dilation": (2, 1)}),
    "conv1d_padding": Conv(1, (5, 3, 12), (4, 3, 3), {"padding": 1}),
    "conv_transpose1d": Conv(1, (5, 3, 12), (3, 2, 3), {"padding": 1}, transposed=True),
}
SYMBOLIC_SIZES = [(3, 17), (17, 9), (33, 5), (2, 33)]  # (batch, length)


def _trace_dynamic_batch_and_length(fn: Callable[..., Any], inputs: Sequence[Any]) -> Any:
    """Trace with the first input's batch and first spatial size symbolic, everything else static (as
    Dynamo traces a model's input, the parameters being static)."""
    mode = FakeTensorMode(shape_env=ShapeEnv())
    x = inputs[0]
    dynamic = [DimDynamic.DYNAMIC if i in (0, 2) else DimDynamic.STATIC for i in range(x.dim())]
    fakes = [mode.from_tensor(x, symbolic_context=StatelessSymbolicContext(dynamic_sizes=dynamic)),
             *(mode.from_tensor(t, static_shapes=True) for t in inputs[1:])]
    with mode:
        return make_fx(fn)(*fakes)


@pytest.mark.parametrize("name", sorted(SYMBOLIC))
def test_symbolic_gradients_pad_and_match_eager(name: str) -> None:
    """Batch and length symbolic: the weight gradient is a matmul per kernel tap; the padded graph
    (NaN in the padding) serves every size. Batch is always padded; the length too where the
    convolution has no zero padding of its own (pad ops refuse a padded axis: exact sizes)."""
    conv = SYMBOLIC[name]
    example = [t.requires_grad_() for t in conv.inputs(F32, 0)]
    fn = _grad_fn(conv, GRADS["all"])
    graph = lower_fx(_trace_dynamic_batch_and_length(fn, example))
    assert "matmul" in [n.op for n in graph.nodes]
    batch_sym, _, *length_syms = graph.inputs[0].type.shape
    symbols = {s for v in graph.inputs for s in v.type.shape if isinstance(s, str)}
    plan = pad_graph(graph, symbols)
    assert batch_sym in plan.padded, plan.exact
    if "padding" not in conv.kw and not conv.transposed:
        assert {s for s in length_syms if isinstance(s, str)} <= plan.padded, plan.exact
    spatial = conv.x[2:]
    for batch, length in SYMBOLIC_SIZES:
        shape = (batch, conv.x[1], *(length if i == 0 else d for i, d in enumerate(spatial)))
        inputs = [torch.randn(shape).requires_grad_(), *(t.detach().clone().requires_grad_() for t in example[1:])]
        sizes = {s: n for v, t in zip(graph.inputs, inputs, strict=True)
                 for s, n in zip(v.type.shape, t.shape, strict=True) if isinstance(s, str)}
        buckets = {s: (1 << n.bit_length()) if s in plan.padded else n for s, n in sizes.items()}
        arrays = []
        for v, t in zip(graph.inputs, inputs, strict=True):
            padded = np.full([buckets.get(d, d) if isinstance(d, str) else d for d in v.type.shape], np.nan,
                             np.float32)
            padded[tuple(slice(0, n) for n in t.shape)] = _np(t)
            arrays.append(padded)
        static = specialize(plan.graph, buckets)
        outs = execute(static, [*arrays, *(np.array(sizes[s], np.int64) for s in plan.length_symbols)])
        for out, want, layout in zip(outs, fn(*inputs), plan.output_layouts, strict=True):
            got = torch.from_numpy(unpad(out, layout, plan.padded, sizes, buckets))
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4, msg=f"batch {batch} length {length}")


# --- padding rules of conv3d and the transposed convolutions ---------------------------------------------


@pytest.mark.parametrize(("op", "shape", "weight", "attrs", "paddable"), [
    ("conv3d", ("s0", 2, 5, 4, "s1"), (3, 2, 2, 2, 3), {"stride": (1, 1, 1), "pad_lo": (1, 0, 1),
                                                         "pad_hi": (1, 1, 2), "dilation": (1, 1, 2)}, True),
    ("conv_transpose1d", ("s0", 3, "s1"), (3, 2, 3), {"stride": (1,), "pad_lo": (1,), "pad_hi": (0,),
                                                       "dilation": (2,)}, True),
    ("conv_transpose2d", ("s0", 2, 4, "s1"), (2, 3, 2, 3), {"stride": (2, 1), "pad_lo": (0, 2), "pad_hi": (1, -1),
                                                              "dilation": (1, 1)}, True),
    ("conv_transpose1d", (2, 3, "s1"), (3, 2, 3), {"stride": (2,), "pad_lo": (0,), "pad_hi": (0,),
                                                    "dilation": (1,)}, False),  # a strided padded axis
])
def test_convolution_over_padded_batch_and_length(op: str, shape: tuple[Any, ...], weight: tuple[int, ...],
                                                  attrs: dict[str, Any], paddable: bool) -> None:
    g = Graph()
    x = g.add_input("x", TensorType(shape, DType.float32))
    w = g.add_input("w", TensorType(weight, DType.float32))
    g.set_outputs([g.add_op(op, [x, w], {**attrs, "groups": 1})])
    symbols = {s for s in shape if isinstance(s, str)}
    plan = pad_graph(g, symbols)
    if not paddable:
        assert "s1" in plan.exact and "strided" in plan.exact["s1"]
        return
    assert plan.padded == symbols, plan.exact
    rng = np.random.default_rng(0)
    sizes, buckets = {"s0": 3, "s1": 5}, {"s0": 4, "s1": 8}
    real = rng.standard_normal([sizes[d] if isinstance(d, str) else d for d in shape]).astype(np.float32)
    weights = rng.standard_normal(weight).astype(np.float32)
    padded = np.full([buckets[d] if isinstance(d, str) else d for d in shape], np.nan, np.float32)
    padded[tuple(slice(0, n) for n in real.shape)] = real
    static = specialize(plan.graph, buckets)
    args: list[np.ndarray[Any, Any]] = [padded, weights, *(np.array(sizes[s], np.int64) for s in plan.length_symbols)]
    (expected,) = execute(g, [real, weights])
    for out in (execute(static, args)[0], run_hlo(emit_hlo(static).proto, args)[0]):
        got = unpad(out, plan.output_layouts[0], plan.padded, sizes, buckets)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
