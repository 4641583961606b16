"""Training through torch.compile(backend="nkipy"): backward graphs, compiled optimizer steps, device.

Three steps on the "nkipy" device against the same steps in eager on the CPU; losses and
weights agree within 1e-4 (fp32). On the host target, and one case on the neuron target (fake stack).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch import nn

from spiky.reference_models import TransformerBlock
from spiky.testing import FakeNeuron
from spiky.torch import device as nkipy_device

DEV = "nkipy"
TOL: dict[str, Any] = {"rtol": 1e-4, "atol": 1e-4}
needs_device = pytest.mark.skipif(not nkipy_device.is_available(), reason="nkipy device extension unavailable")


@pytest.fixture(autouse=True)
def _quiet_fallback() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eager device ops (zero_grad, autograd glue) use the CPU fallback
        yield


Block = TransformerBlock


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 8))


MODELS: dict[str, tuple[Callable[[], nn.Module], Callable[[int], tuple[int, ...]], tuple[int, ...]]] = {
    # name -> (factory, input shape for a batch, output feature shape)
    "mlp": (_mlp, lambda b: (b, 16), (8,)),
    "block": (Block, lambda b: (b, 6, 32), (6, 32)),
}
OPTIMIZERS: dict[str, Callable[[Any], torch.optim.Optimizer]] = {
    "sgd": lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9, foreach=False),
    "adamw": lambda params: torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1, foreach=False),
}


def _mse(y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return ((y - t) ** 2).mean()


def _exempt(name: str, model: nn.Module, optimizer: str) -> torch.Tensor | None:
    """Entries whose exact gradient is zero, where Adam turns rounding noise into ±lr steps.

    The key bias of attention shifts every score of a query row equally, so softmax ignores it:
    its gradient is 0 in exact arithmetic and ~1e-9 in floats, and Adam's m/sqrt(v) makes any
    such noise a full step of either sign. Those entries are checked separately.
    """
    if optimizer != "adamw" or not isinstance(model, Block) or name != "attn.in_proj_bias":
        return None
    d = model.attn.embed_dim
    mask = torch.zeros(3 * d, dtype=torch.bool)
    mask[d : 2 * d] = True
    return mask


def _train(model_name: str, optimizer: str, batches: tuple[int, ...], on_device: bool) -> None:
    factory, in_shape, out_shape = MODELS[model_name]
    torch.manual_seed(0)
    eager = factory()
    trained = copy.deepcopy(eager)
    dev = DEV if on_device else "cpu"
    trained.to(dev)
    opt_eager = OPTIMIZERS[optimizer](eager.parameters())
    opt = OPTIMIZERS[optimizer](trained.parameters())
    options = {"keep_outputs_on_device": True}
    compiled = torch.compile(trained, backend="nkipy", options=options)
    loss_fn = torch.compile(_mse, backend="nkipy", options=options)

    @torch.compile(backend="nkipy", options=options)
    def step() -> None:
        opt.step()

    for b in batches:
        x, t = torch.randn(in_shape(b)), torch.randn(b, *out_shape)
        opt_eager.zero_grad()
        loss_eager = _mse(eager(x), t)
        loss_eager.backward()
        opt_eager.step()

        opt.zero_grad()
        loss = loss_fn(compiled(x.to(dev)), t.to(dev))
        assert loss.device.type == dev
        loss.backward()
        for (name, p_eager), p in zip(eager.named_parameters(), trained.parameters(), strict=True):
            assert p.grad is not None and p.grad.device.type == dev
            torch.testing.assert_close(p.grad.cpu(), p_eager.grad, **TOL, msg=f"grad of {name}")
        step()
        torch.testing.assert_close(loss.detach().cpu(), loss_eager.detach(), **TOL)

    for (name, p_eager), p in zip(eager.named_parameters(), trained.parameters(), strict=True):
        assert p.device.type == dev
        got, want = p.detach().cpu(), p_eager.detach()
        exempt = _exempt(name, eager, optimizer)
        if exempt is not None:
            assert p_eager.grad is not None and p_eager.grad[exempt].abs().max() < 1e-6
            lr = opt.param_groups[0]["lr"]
            assert (got[exempt] - want[exempt]).abs().max() <= 2 * lr * len(batches)
            got, want = got[~exempt], want[~exempt]
        torch.testing.assert_close(got, want, **TOL, msg=f"weights of {name}")


@pytest.mark.smoke
def test_backward_through_compiled_model_gives_eager_gradients_on_cpu() -> None:
    torch.manual_seed(0)
    model = _mlp()
    twin = copy.deepcopy(model)
    x = torch.randn(5, 16)
    _mse(model(x), torch.ones(5, 8)).backward()
    _mse(torch.compile(twin, backend="nkipy")(x), torch.ones(5, 8)).backward()
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert q.grad is not None and p.grad is not None
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.smoke
@pytest.mark.parametrize("dynamic", [False, True])
def test_parameters_saved_for_backward_are_the_parameters_not_copies(dynamic: bool) -> None:
    """A training forward returns the weights its backward needs; the compiled call hands back the
    parameters themselves (as eager autograd saves them), not copies the program made; gradients
    stay eager's. ``dynamic``: the same through the bucketed graph (its first and its routed calls)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 8))
    twin = copy.deepcopy(model)
    compiled = torch.compile(twin, backend="nkipy", dynamic=dynamic)
    weights = {p.data_ptr() for p in twin.parameters()}
    for batch in (5, 6, 6) if dynamic else (5, 5):
        x = torch.randn(batch, 16)
        saved: list[torch.Tensor] = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t, saved=saved: saved.append(t) or t, lambda t: t):
            loss = _mse(compiled(x), torch.ones(batch, 8))
        loss.backward()
        _mse(model(x), torch.ones(batch, 8)).backward()
        # the second layer's weight carries the gradient back to the hidden layer (the first one's
        # input needs no gradient, so its weight is not saved)
        assert twin[2].weight.data_ptr() in {t.data_ptr() for t in saved}
        assert all(t.data_ptr() not in weights or t.data_ptr() == twin[2].weight.data_ptr() for t in saved)
        for p, q in zip(model.parameters(), twin.parameters(), strict=True):
            assert q.grad is not None and p.grad is not None
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-5)


@needs_device
@pytest.mark.smoke
def test_mlp_sgd_three_steps_on_device() -> None:
    _train("mlp", "sgd", (4, 4, 4), on_device=True)


@needs_device
@pytest.mark.parametrize(("model", "optimizer"), [("mlp", "adamw"), ("block", "sgd"), ("block", "adamw")])
def test_three_steps_on_device_match_eager(model: str, optimizer: str) -> None:
    _train(model, optimizer, (4, 4, 4), on_device=True)


# The neuron target through the fake Neuron stack (~2 s per graph; a training step compiles five: the model's
# forward and backward, the loss's forward and backward, the optimizer step): the MLP with AdamW, whose step
# graph has the most state (moments, a step counter), on the "nkipy" device when there is one (on neuron it is
# backed by host memory, so tensors are uploaded per call), else on the CPU. The block adds attention, which
# tests/test_models.py runs on neuron.
def test_three_steps_on_neuron_match_eager(neuron_target: FakeNeuron) -> None:
    _train("mlp", "adamw", (4, 4, 4), on_device=nkipy_device.is_available())
    assert len(neuron_target.neffs) >= 5 and neuron_target.execute_count() >= 15


@needs_device
def test_gradients_w_r_t_device_inputs() -> None:
    torch.manual_seed(2)
    w = torch.randn(8, 4)
    x = torch.randn(3, 8, requires_grad=True)
    xd = x.detach().to(DEV).requires_grad_(True)
    wd = w.to(DEV)

    def f(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(a @ b).sum()

    f(x, w).backward()
    out = torch.compile(f, backend="nkipy", options={"keep_outputs_on_device": True})(xd, wd)
    out.backward()
    assert xd.grad is not None and xd.grad.device.type == DEV and x.grad is not None
    torch.testing.assert_close(xd.grad.cpu(), x.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("on_device", [False, pytest.param(True, marks=needs_device)])
def test_dynamic_batch_during_training(on_device: bool) -> None:
    """Batch 4, 8, 4: the second size makes Dynamo trace a dynamic batch dim (served by buckets)."""
    _train("mlp", "sgd", (4, 8, 4), on_device=on_device)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    # transformers' rotary embedding: its backward writes each half's gradient into zeros with slice_scatter
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1) * x.sin()


def test_slice_scatter_in_a_backward_matches_eager(host_executor: str,
                                                   forward_backward_match: Callable[..., None]) -> None:
    forward_backward_match(torch.compile(_rotate_half, backend="nkipy"), _rotate_half, torch.randn(2, 3, 5, 8))


def test_slice_scatter_in_a_backward_matches_eager_on_neuron(neuron_target: FakeNeuron,
                                                             forward_backward_match: Callable[..., None]) -> None:
    forward_backward_match(torch.compile(_rotate_half, backend="nkipy"), _rotate_half, torch.randn(2, 3, 5, 8))
    assert neuron_target.execute_count() >= 2
