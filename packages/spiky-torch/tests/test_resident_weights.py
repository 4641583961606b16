"""Resident weights on the neuron target (option ``resident_weights``, issue 17 item 1).

Parameters of a compiled static graph are uploaded once and reused; an in-place update (``mul_``, an
optimizer step, ``load_state_dict``) is uploaded again before the next call, so results match eager
exactly as without residency. Runs on the fake Neuron stack (``neuron_target`` fixture).
"""

from __future__ import annotations

import gc
from typing import Any

import pytest
import torch

import spiky

TOL = {"rtol": 1e-5, "atol": 1e-5}


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 8))


def _weight_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _h2d(fn: Any, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    spiky.reset_stats()
    out = fn(x)
    return out, spiky.get_stats().total_h2d_bytes


@pytest.mark.parametrize("resident", [True, False])
def test_steady_calls_upload_only_activations(neuron_target: Any, resident: bool) -> None:
    model = _model()
    fn = torch.compile(model, backend="nkipy", options={"resident_weights": resident})
    x = torch.randn(4, 64)
    with torch.no_grad():
        fn(x)
        out, h2d = _h2d(fn, x)
        torch.testing.assert_close(out, model(x), **TOL)
    activations = x.numel() * 4
    if resident:
        assert h2d == activations
    else:
        assert h2d == activations + _weight_bytes(model)


@pytest.mark.parametrize("update", ["mul_", "load_state_dict", "replace_parameter"])
def test_weight_update_between_calls_is_seen(neuron_target: Any, update: str) -> None:
    model = _model()
    fn = torch.compile(model, backend="nkipy")
    x = torch.randn(4, 64)
    with torch.no_grad():
        torch.testing.assert_close(fn(x), model(x), **TOL)
        first = model[0].weight
        if update == "mul_":
            first.mul_(0.5)
        elif update == "load_state_dict":
            other = _model()
            for p in other.parameters():
                p.add_(1.0)
            model.load_state_dict(other.state_dict())
        else:
            model[0].weight = torch.nn.Parameter(first * -1.0)
        out, h2d = _h2d(fn, x)
        torch.testing.assert_close(out, model(x), **TOL)
        assert h2d > x.numel() * 4  # the changed weight crossed again
        torch.testing.assert_close(fn(x), model(x), **TOL)


def test_training_steps_match_eager(neuron_target: Any) -> None:
    eager, compiled = _model(), _model()
    fn = torch.compile(compiled, backend="nkipy")
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (eager, compiled)]
    x, y = torch.randn(4, 64), torch.randn(4, 8)
    for _ in range(3):
        for opt, run in ((opts[0], eager), (opts[1], fn)):
            opt.zero_grad()
            torch.nn.functional.mse_loss(run(x), y).backward()
            opt.step()
    for a, b in zip(eager.parameters(), compiled.parameters(), strict=True):
        torch.testing.assert_close(b, a, **TOL)


def test_deleting_the_module_frees_its_weights(neuron_target: Any) -> None:
    """The copies go with the parameters: torch's caches keep the compiled graph alive after ``del``
    and ``torch._dynamo.reset()``, not the module."""
    torch._dynamo.reset()
    gc.collect()
    before = spiky.get_memory_stats()["used_bytes"]
    model = _model()
    fn = torch.compile(model, backend="nkipy")
    with torch.no_grad():
        fn(torch.randn(4, 64))
    assert spiky.get_memory_stats()["used_bytes"] >= before + _weight_bytes(model)
    del fn, model
    torch._dynamo.reset()
    gc.collect()
    assert spiky.get_memory_stats()["used_bytes"] == before


def test_updates_replace_the_device_copy(neuron_target: Any) -> None:
    """A re-uploaded weight frees its old device copy: pool use stays flat across updates."""
    model = _model()
    fn = torch.compile(model, backend="nkipy")
    x = torch.randn(4, 64)
    with torch.no_grad():
        fn(x)
        steady = spiky.get_memory_stats()["used_bytes"]
        for _ in range(3):
            for p in model.parameters():
                p.mul_(0.5)
            torch.testing.assert_close(fn(x), model(x), **TOL)
            assert spiky.get_memory_stats()["used_bytes"] == steady


def test_resident_copies_die_with_their_owner(neuron_target: Any) -> None:
    from spiky.torch.device_call import ResidentWeights
    from spiky.torch.targets import runtime_device

    gc.collect()
    before = spiky.get_memory_stats()["used_bytes"]
    model = _model()
    resident = ResidentWeights(runtime_device("neuron"))
    inputs = resident.inputs(list(model.parameters()))
    assert spiky.get_memory_stats()["used_bytes"] >= before + _weight_bytes(model)
    assert resident.inputs(list(model.parameters()))[0] is inputs[0]  # reused, not uploaded again
    del resident, inputs
    gc.collect()
    assert spiky.get_memory_stats()["used_bytes"] == before


class _WithBuffer(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(64, 64)
        self.register_buffer("scale", torch.linspace(0.5, 1.5, 64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.lin(x)) * self.scale


def test_buffers_stay_and_inputs_do_not(neuron_target: Any) -> None:
    """Module buffers stay like parameters; an input passed again as the same tensor still crosses
    each call (a caller may refill it through numpy, which its version does not see); an in-place
    buffer update is uploaded again."""
    torch.manual_seed(0)
    model = _WithBuffer()
    fn = torch.compile(model, backend="nkipy")
    x = torch.randn(4, 64)
    activations = x.numel() * 4
    with torch.no_grad():
        uploads = [_h2d(fn, x)[1] for _ in range(3)]
        assert uploads[0] == activations + _weight_bytes(model) + model.scale.numel() * 4
        assert uploads[1:] == [activations, activations]
        x.numpy()[:] = 2.0  # refilled without a version bump: must cross again
        torch.testing.assert_close(fn(x), model(x), **TOL)
        model.scale.mul_(2.0)
        out, h2d = _h2d(fn, x)
        torch.testing.assert_close(out, model(x), **TOL)
        assert h2d > activations


@pytest.mark.parametrize("resident", [True, False])
def test_dynamic_graphs_keep_their_weights(neuron_target: Any, resident: bool) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.GELU(), torch.nn.Linear(64, 64))
    fn = torch.compile(model, backend="nkipy", dynamic=True, options={"resident_weights": resident})
    weights = _weight_bytes(model)
    with torch.no_grad():
        for rows in (5, 9, 16, 23, 9):
            x = torch.randn(rows, 64)
            out, h2d = _h2d(fn, x)
            torch.testing.assert_close(out, model(x), **TOL)
        if resident:
            assert h2d < weights / 10, h2d
        else:
            assert h2d >= weights
        model[0].weight.mul_(-1.0)  # an update between dynamic calls is seen
        torch.testing.assert_close(fn(x), model(x), **TOL)


def test_bad_option_value_is_refused() -> None:
    with pytest.raises(Exception, match="resident_weights"):
        fn = torch.compile(_model(), backend="nkipy", options={"resident_weights": "yes"})
        fn(torch.randn(4, 64))
