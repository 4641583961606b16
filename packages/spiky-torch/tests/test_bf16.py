"""bfloat16 and float16 end to end: the torch <-> runtime boundary, both host executors, dynamic
graphs padded by the runtime, "nkipy" device tensors, the neuron target (through the fake Neuron
stack), a tiny Llama in bfloat16, and mixed precision with ``torch.autocast``.

Tolerances against torch eager in the same dtype (:data:`TOLERANCE`): bfloat16 rtol 1.6e-2
(2^-6, a few units in the last place of its 8-bit mantissa), float16 rtol 2e-3 (2 ulp of its
11-bit mantissa), with an atol of the same size for values near zero. Both sides round to the
low-precision type after each op (the IR computes reductions and transcendental ops in float32,
as torch's CPU kernels do), so most results here are bit-identical; the tolerance is for the
ones whose float32 accumulation order differs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest
import torch
from torch import nn

import spiky
import spiky.torch
from spiky.testing import FakeNeuron, fake_libnrt, fake_neuron
from spiky.torch import device as nkipy_device
from spiky.torch.arrays import array_reader, from_array, to_array

LOW = [torch.bfloat16, torch.float16]
TOLERANCE = {torch.bfloat16: 1.6e-2, torch.float16: 2e-3}
"""rtol and atol per dtype (see the module doc)."""
F = torch.nn.functional

Graph = Callable[..., Any]


def _inputs(dtype: torch.dtype, rows: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(rows)
    return torch.randn(rows, 16, generator=gen).to(dtype), torch.randn(12, 16, generator=gen).to(dtype)


# (x[rows, 16], w[12, 16]) -> tensors; rows is the dynamic dim.
GRAPHS: dict[str, Graph] = {
    "elementwise": lambda x, w: torch.sigmoid(x) * w[0] + torch.exp(-x.abs()) - x.square(),
    "matmul": lambda x, w: x @ w.T + 1,
    "softmax": lambda x, w: torch.softmax(x * 3, -1),
    "layernorm": lambda x, w: F.layer_norm(x, (16,), w[0], w[1]),
    "reductions": lambda x, w: (x.sum(-1), x.mean(0), x.amax(-1), x.var(-1)),
    "embedding": lambda x, w: F.embedding((x.abs() * 3).long().clamp(max=11), w),
}


def _as_tuple(value: Any) -> tuple[torch.Tensor, ...]:
    return value if isinstance(value, tuple) else (value,)


def _check(got: Any, expected: Any, dtype: torch.dtype, device: str = "cpu") -> None:
    got, expected = _as_tuple(got), _as_tuple(expected)
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert g.dtype == e.dtype == dtype and g.device.type == device and g.shape == e.shape
        torch.testing.assert_close(g.cpu(), e, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype])


# ---------------------------------------------------------------- the boundary


ARRAY_DTYPES = [torch.bfloat16, torch.float16, torch.float32, torch.float64, torch.int8, torch.int16,
                torch.int32, torch.int64, torch.uint8, torch.bool]


@pytest.mark.smoke
@pytest.mark.parametrize("dtype", ARRAY_DTYPES, ids=str)
def test_arrays_are_zero_copy_views_both_ways(dtype: torch.dtype) -> None:
    tensor = (torch.arange(-6, 6) * 1.25).reshape(3, 4).to(dtype)
    array = to_array(tensor)
    assert array.ctypes.data == tensor.data_ptr() and array.shape == (3, 4)
    if dtype is torch.bfloat16:
        assert array.dtype == np.dtype(ml_dtypes.bfloat16)
        np.testing.assert_array_equal(array.astype(np.float32), tensor.float().numpy())
    back = from_array(array)
    assert back.dtype == dtype and back.data_ptr() == tensor.data_ptr() and torch.equal(back, tensor)
    # Strided and requires_grad tensors too (the runtime makes non-contiguous arrays contiguous).
    if dtype.is_floating_point:
        leaf = tensor.t().requires_grad_()
        assert torch.equal(from_array(to_array(leaf)), leaf.detach())


@pytest.mark.smoke
def test_array_reader_keeps_numpys_own_conversion_without_bfloat16() -> None:
    assert array_reader(False) is torch.from_numpy
    assert array_reader(True) is from_array


def test_unsupported_runtime_dtype_is_a_clear_error() -> None:
    with pytest.raises(TypeError, match=r"runtime output dtype complex64 has no nkipy tensor dtype; supported: .*"
                                        r"torch.bfloat16"):
        nkipy_device._torch_dtype(np.dtype(np.complex64))


# ---------------------------------------------------------------- host target


@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_graph_matches_eager_on_each_host_executor(host_executor: str, name: str, dtype: torch.dtype) -> None:
    fn = GRAPHS[name]
    x, w = _inputs(dtype)
    _check(torch.compile(fn, backend="nkipy")(x, w), fn(x, w), dtype)


@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_dynamic_graph_is_padded_and_matches_eager(name: str, dtype: torch.dtype) -> None:
    """Rows 5 and 7 share one bucket (8): the runtime pads the low-precision inputs with zeros
    and crops the outputs; the second call takes the fast route."""
    fn = GRAPHS[name]
    compiled = torch.compile(fn, backend="nkipy", dynamic=True)
    for rows in (5, 7, 7):
        x, w = _inputs(dtype, rows)
        _check(compiled(x, w), fn(x, w), dtype)
    stats = spiky.bucket_stats()
    assert stats[-1].calls == 3 and stats[-1].padded_elements > stats[-1].real_elements


PADDING_OPTIONS: dict[str, dict[str, Any]] = {
    "padded_on_host": {"pad_on_device": False},
    "padded_outputs": {"output_layout": "padded"},
    "pipelined_kept": {"pipelined": True, "keep_outputs_on_device": True},
}


@pytest.mark.parametrize("case", sorted(PADDING_OPTIONS))
def test_dynamic_bfloat16_with_each_padding_path(case: str) -> None:
    """bf16 through the host-side padding (numpy zeros of ml_dtypes.bfloat16), outputs left
    bucket-sized (cropped here to spiky.real_shape) and the pipelined executor."""
    fn = GRAPHS["softmax"]
    compiled = torch.compile(fn, backend="nkipy", dynamic=True, options=PADDING_OPTIONS[case])
    for rows in (5, 7):
        x, w = _inputs(torch.bfloat16, rows)
        got = compiled(x, w)
        if case == "padded_outputs":
            real = spiky.real_shape(got)
            assert got.shape[0] == 8 and real is not None and real[0] == rows
            got = got[tuple(slice(0, n) for n in real)]
        _check(got.cpu(), fn(x, w), torch.bfloat16)


@pytest.mark.skipif(not nkipy_device.is_available(), reason="nkipy device extension unavailable")
@pytest.mark.parametrize("keep", [False, True], ids=["copied", "kept"])
@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_nkipy_device_tensors_in_and_out(dtype: torch.dtype, keep: bool) -> None:
    fn = GRAPHS["layernorm"]
    x, w = _inputs(dtype)
    compiled = torch.compile(fn, backend="nkipy", options={"keep_outputs_on_device": keep})
    _check(compiled(x.to("nkipy"), w.to("nkipy")), fn(x, w), dtype, device="nkipy")
    _check(compiled(x, w), fn(x, w), dtype, device="nkipy" if keep else "cpu")


def test_debug_compare_on_a_bfloat16_model() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 8)).to(torch.bfloat16)
    report = spiky.debug.compare(model, torch.randn(4, 16, dtype=torch.bfloat16))
    assert report.ok, str(report)
    assert report.outputs and all(o.max_abs <= 1.6e-2 for o in report.outputs)


# ---------------------------------------------------------------- neuron target (fake)


@pytest.fixture
def neuron() -> Iterator[FakeNeuron]:
    """The fake Neuron stack (as test_neuron_target.py's fixture) on this test's cache."""
    assert fake_libnrt().exists()
    with fake_neuron(Path(os.environ["SPIKY_CACHE"])) as handle:
        yield handle


@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_neuron_target_low_precision_io(neuron: FakeNeuron, dtype: torch.dtype) -> None:
    """The NEFF's inputs and outputs are bf16/f16 (NRT dtype codes 6/7)."""
    fn = GRAPHS["reductions"]
    x, w = _inputs(dtype)
    _check(torch.compile(fn, backend="nkipy")(x, w), fn(x, w), dtype)
    assert neuron.execute_count() == 1


def test_neuron_target_nkipy_tensors_in_bfloat16(neuron: FakeNeuron) -> None:
    """On the neuron target "nkipy" tensors are read as arrays (bit views) and uploaded."""
    fn = GRAPHS["layernorm"]
    x, w = _inputs(torch.bfloat16)
    got = torch.compile(fn, backend="nkipy")(x.to("nkipy"), w.to("nkipy"))
    _check(got, fn(x, w), torch.bfloat16, device="nkipy")
    assert neuron.execute_count() == 1


def test_neuron_target_dynamic_bfloat16(neuron: FakeNeuron) -> None:
    fn = GRAPHS["softmax"]
    compiled = torch.compile(fn, backend="nkipy", dynamic=True)
    for rows in (5, 7):
        x, w = _inputs(torch.bfloat16, rows)
        _check(compiled(x, w), fn(x, w), torch.bfloat16)
    assert neuron.call_count("nrt_load") == 1  # one bucket (8) for both sizes


# ---------------------------------------------------------------- a bf16 decoder LM


def _tiny_llama() -> tuple[nn.Module, torch.Tensor]:
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model: nn.Module = transformers.LlamaForCausalLM(config)
    model = model.to(torch.bfloat16).eval()
    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(1))
    return model, ids


def _check_logits(got: torch.Tensor, expected: torch.Tensor) -> None:
    """Logits within bf16 tolerance; greedy tokens equal wherever eager's choice is clear.

    Tolerance: 1.6e-2 of the largest logit (eager bf16 itself is 2.5e-3 off eager float32 here,
    max |logit| 0.57). A random tiny model's top logits are often closer than that, so an
    argmax may legitimately flip there. With every logit within ``tol``, a token can only
    change where eager's top-2 gap is at most ``2 * tol``: elsewhere the tokens must be equal
    (and at least half the positions must be such, so the check is not vacuous); everywhere,
    the compiled token's eager logit is within ``2 * tol`` of eager's best.
    """
    assert got.dtype == expected.dtype == torch.bfloat16 and got.shape == expected.shape
    tol = 1.6e-2 * float(expected.abs().max())
    torch.testing.assert_close(got, expected, rtol=1.6e-2, atol=tol)
    ref = expected.float()
    top2 = ref.topk(2, dim=-1).values
    clear = (top2[..., 0] - top2[..., 1]) > 2 * tol
    assert clear.float().mean() >= 0.5, f"only {int(clear.sum())} of {clear.numel()} positions have a clear token"
    tokens, want = got.argmax(-1), expected.argmax(-1)
    assert torch.equal(tokens[clear], want[clear])
    chosen = ref.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    assert bool(((top2[..., 0] - chosen) <= 2 * tol).all())


def test_llama_bf16_matches_eager_on_host() -> None:
    model, ids = _tiny_llama()
    with torch.no_grad():
        expected = model(ids).logits
        got = torch.compile(model, backend="nkipy")(ids).logits
    _check_logits(got, expected)


def test_llama_bf16_matches_eager_on_neuron(neuron: FakeNeuron) -> None:
    model, ids = _tiny_llama()
    with torch.no_grad():
        expected = model(ids).logits
        got = torch.compile(model, backend="nkipy")(ids).logits
    _check_logits(got, expected)
    assert neuron.execute_count() >= 1


# ---------------------------------------------------------------- torch.autocast


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 8), nn.LayerNorm(8))


@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_autocast_inference_matches_eager_autocast(dtype: torch.dtype) -> None:
    """Dynamo traces the autocast region's casts (aten._to_copy of the float32 parameters and
    input), so the graph computes the linears in ``dtype`` as eager autocast does."""
    model = _mlp().eval()
    compiled = torch.compile(model, backend="nkipy")
    x = torch.randn(4, 16)
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        expected, got = model(x), compiled(x)
    _check(got, expected, dtype)
    with torch.no_grad():  # outside autocast the guard fails and float32 is compiled again
        plain = compiled(x)
    assert plain.dtype == torch.float32
    torch.testing.assert_close(plain, model(x), rtol=1e-5, atol=1e-5)


def test_autocast_training_step_matches_eager_autocast() -> None:
    """Forward in bfloat16 under autocast, float32 gradients for the float32 parameters."""
    model = _mlp()
    compiled = torch.compile(model, backend="nkipy")
    x = torch.randn(4, 16)
    grads = []
    for fn in (model, compiled):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = fn(x)
        assert out.dtype == torch.bfloat16
        # Not a loss LayerNorm makes (almost) constant, whose gradients would be rounding noise.
        loss = (out.float() * torch.linspace(-1, 1, 8)).sum()
        grads.append(torch.autograd.grad(loss, list(model.parameters())))
    for eager, got in zip(*grads, strict=True):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, eager, rtol=1.6e-2, atol=1.6e-2 * float(eager.abs().max()))
