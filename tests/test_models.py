"""Whole models through torch.compile(backend="nkipy"), against eager.

Forward models run in eval mode; the training table checks every parameter gradient
(the backward graphs) against torch.autograd. Both run with each host executor (numpy, xla),
and a subset of each on the neuron target through the fake Neuron stack (see NEURON_MODELS).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import spiky.torch  # noqa: F401  (registers the backend)
from spiky.reference_models import GPTBlock, rotary
from spiky.testing import FakeNeuron


class EmbeddingClassifier(nn.Module):
    def __init__(self, vocab: int = 50, dim: int = 16, classes: int = 5) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.head(self.embed(tokens).mean(dim=1))
        return logits.log_softmax(-1), logits.argmax(-1)


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=2), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AvgPool2d(2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )


def _randomize_bn(model: nn.Module) -> nn.Module:
    # Non-trivial running stats, so batch norm does more than the identity.
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model


def _tokens(shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randint(0, 50, shape)


# name → (model factory, input factory, (rtol, atol)). fp32 throughout.
MODELS: dict[str, tuple[Callable[[], nn.Module], Callable[[], list[torch.Tensor]], tuple[float, float]]] = {
    "small_cnn": (lambda: _randomize_bn(small_cnn()), lambda: [torch.randn(2, 3, 16, 16)], (1e-4, 1e-5)),
    "transformer_encoder_layer": (
        lambda: nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True),
        lambda: [torch.randn(2, 7, 32)], (1e-4, 1e-5)),
    "transformer_encoder_layer_gelu_norm_first": (
        lambda: nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True, activation="gelu",
                                           norm_first=True),
        lambda: [torch.randn(3, 5, 32)], (1e-4, 1e-5)),
    "gpt_block": (lambda: GPTBlock(norm_init_noise=0.1), lambda: [torch.randn(2, 9, 32)], (1e-4, 1e-5)),
    "embedding_mean_pool": (EmbeddingClassifier, lambda: [_tokens((4, 7))], (1e-5, 1e-6)),
}


def _flat(out: Any) -> list[torch.Tensor]:
    return list(out) if isinstance(out, tuple | list) else [out]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_matches_eager(name: str, host_executor: str) -> None:
    _check_model(name)


# The neuron target through the fake Neuron stack costs ~2 s per compiled graph, so one model per kind of
# graph: int64 token ids in and argmax ids out (the int64 boundary), convolutions with batch norm and pooling,
# and attention (the encoder layer); the norm-first/GELU layer and the GPT block add no new kind.
NEURON_MODELS = ["embedding_mean_pool", "small_cnn", "transformer_encoder_layer"]


@pytest.mark.parametrize("name", NEURON_MODELS)
def test_model_matches_eager_on_neuron(name: str, neuron_target: FakeNeuron) -> None:
    _check_model(name)
    assert neuron_target.execute_count() >= 1  # it ran on the (fake) device


def _check_model(name: str) -> None:
    make_model, make_inputs, (rtol, atol) = MODELS[name]
    torch.manual_seed(0)
    model = make_model().eval()
    inputs = make_inputs()
    compiled = torch.compile(model, backend="nkipy", dynamic=False)
    # Grad mode stays on: torch's fused inference kernels (e.g. the TransformerEncoderLayer
    # fast path) only run under no_grad, and are not ATen ops the IR lowers.
    expected, actual = _flat(model(*inputs)), _flat(compiled(*inputs))
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        assert a.shape == e.shape and a.dtype == e.dtype
        torch.testing.assert_close(a, e, rtol=rtol, atol=atol)


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.GELU(), nn.Linear(16, 4))


# name → (model factory, input factory); loss = weighted sum of outputs, so every output
# element gets a distinct gradient.
TRAINING: dict[str, tuple[Callable[[], nn.Module], Callable[[], list[torch.Tensor]]]] = {
    "linear": (lambda: nn.Linear(8, 4), lambda: [torch.randn(5, 8, requires_grad=True)]),
    "mlp": (_mlp, lambda: [torch.randn(6, 8)]),
    "layer_norm": (lambda: nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8)), lambda: [torch.randn(3, 4, 8)]),
    "softmax": (lambda: nn.Sequential(nn.Linear(8, 6), nn.Softmax(dim=-1)), lambda: [torch.randn(5, 8)]),
    "log_softmax_tanh_sigmoid": (
        lambda: nn.Sequential(nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 6), nn.Sigmoid(), nn.LogSoftmax(-1)),
        lambda: [torch.randn(5, 8)]),
    "embedding_classifier": (lambda: _first(EmbeddingClassifier()), lambda: [_tokens((3, 6))]),
}


class _first(nn.Module):  # noqa: N801 (reads like a function in the table)
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.inner(*args)[0]
        return out


def _grads(model: nn.Module, inputs: list[torch.Tensor], fn: Callable[..., Any]) -> list[torch.Tensor]:
    model.zero_grad()
    inputs = [x.detach().requires_grad_(x.requires_grad) for x in inputs]
    out = fn(*inputs)
    weights = torch.linspace(-1, 1, out.numel()).reshape(out.shape)
    (out * weights).sum().backward()
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    grads += [x.grad.clone() for x in inputs if x.grad is not None]
    return [out.detach(), *grads]


@pytest.mark.parametrize("name", sorted(TRAINING))
def test_gradients_match_autograd(name: str, host_executor: str) -> None:
    _check_gradients(name)


# Training on neuron (a forward and a backward graph each): the embedding classifier (int64 ids saved for the
# backward's scatter-add) and layer norm (the reductions of a normalisation backward); the Linear/MLP/softmax
# rows are matmuls and elementwise ops the two already cover.
NEURON_TRAINING = ["embedding_classifier", "layer_norm"]


@pytest.mark.parametrize("name", NEURON_TRAINING)
def test_gradients_match_autograd_on_neuron(name: str, neuron_target: FakeNeuron) -> None:
    _check_gradients(name)
    assert len(neuron_target.neffs) >= 2  # the forward and the backward graph compiled for neuron


def _check_gradients(name: str) -> None:
    make_model, make_inputs = TRAINING[name]
    torch.manual_seed(0)
    model = make_model()
    inputs = make_inputs()
    expected = _grads(model, inputs, model)
    actual = _grads(model, inputs, torch.compile(model, backend="nkipy", dynamic=False))
    assert len(actual) == len(expected) == 1 + sum(1 for _ in model.parameters()) + sum(
        1 for x in inputs if x.requires_grad)
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-5)


def test_rotary_is_a_rotation() -> None:
    # Guards the test model itself: rotary embedding preserves norms pairwise.
    x = torch.randn(1, 1, 4, 8)
    torch.testing.assert_close(rotary(x).norm(dim=-1), x.norm(dim=-1))
    assert not math.isclose(float((rotary(x) - x).abs().max()), 0.0)
