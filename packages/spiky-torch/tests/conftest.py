"""Each test starts with the backend uninitialised, Dynamo's caches empty and a private cache dir.

``host_executor``: a fixture that runs a test with each host executor (numpy, xla); ``neuron_target``: one
that runs it on the neuron target through the fake Neuron stack. :func:`_forward_backward_match`
compares a compiled function with eager, output and input gradient (the ``forward_backward_match`` fixture).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

import spiky.torch
from spiky.testing import FakeNeuron, fake_neuron


def _forward_backward_match(compiled: Callable[[torch.Tensor], torch.Tensor],
                                  fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                                  grad_rtol: float = 1e-5) -> None:
    """``compiled(x)`` equals ``fn(x)`` (1e-5), and so does the gradient of a random projection of it
    with respect to ``x`` (``grad_rtol``, atol 1e-5)."""
    mine, theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, expected = compiled(mine), fn(theirs)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    weights = torch.randn_like(expected)
    (out * weights).sum().backward()
    (expected * weights).sum().backward()
    assert mine.grad is not None and theirs.grad is not None
    torch.testing.assert_close(mine.grad, theirs.grad, rtol=grad_rtol, atol=1e-5)


@pytest.fixture
def forward_backward_match() -> Callable[..., None]:
    """:func:`_forward_backward_match`, for tests comparing a compiled function's gradients with eager."""
    return _forward_backward_match


ON_NEURON = os.environ.get("SPIKY_TEST_ON_FAKE_NEURON") == "1"
"""Set by test_nrt_device.py, which runs the device tests again in a process whose ``"nkipy"`` device
is NeuronCore memory of the fake libnrt: every test that does not choose its target runs inside
:func:`fake_neuron`."""


_OWN_TARGET = frozenset({"neuron", "neuron_target", "target", "host_executor"})
"""Fixtures that initialise the backend themselves (for a target, or a host executor)."""


@pytest.fixture(autouse=True)
def fresh_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Iterator[None]:
    monkeypatch.setenv("SPIKY_CACHE", str(tmp_path / "cache"))
    spiky.torch.reset_nkipy_backend()
    torch._dynamo.reset()
    if ON_NEURON and not _OWN_TARGET & set(request.fixturenames):
        with fake_neuron(tmp_path / "neuron_cache"):
            yield
    else:
        yield
    spiky.torch.reset_nkipy_backend()
    torch._dynamo.reset()


@pytest.fixture(params=["numpy", "xla"])
def host_executor(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Runs the test once per host executor (the backend initialised with it); xla needs jax."""
    from spiky.torch.host_executors import host_executor_info

    if request.param == "xla" and not host_executor_info().xla_available:
        pytest.skip(host_executor_info().reason)
    spiky.torch.reset_nkipy_backend()
    torch._dynamo.reset()
    spiky.torch.init_nkipy_backend(nkipy_cache=tmp_path / "executor_cache", target="host", host_executor=request.param)
    yield request.param
    spiky.torch.reset_nkipy_backend()
    torch._dynamo.reset()


@pytest.fixture
def neuron_target(tmp_path: Path) -> Iterator[FakeNeuron]:
    """Runs the test on the neuron target through the fake Neuron stack (``spiky.testing.fake_neuron``:
    HLO -> fake neuronx-cc -> NEFF -> fake libnrt, executed on XLA:CPU); yields the ``FakeNeuron`` handle."""
    with fake_neuron(tmp_path / "neuron_cache") as handle:
        yield handle
