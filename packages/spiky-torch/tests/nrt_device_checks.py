"""The ``"nkipy"`` device as NeuronCore memory (the nrt driver, here the fake libnrt).

Not collected on its own (no ``test_`` prefix): test_nrt_device.py runs it in a process started
with ``SPIKY_LIBNRT`` pointing at the fake libnrt, so :func:`spiky.torch.device.choose_driver`
backs the device with the nrt driver when ``spiky.torch`` is imported, as it would on a Trn host.
Numerics against eager CPU at fp32 tolerances (1e-5), pipelined results against synchronous ones
exactly.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from torch import nn

import spiky
import spiky_runtime as rt
from spiky.testing import FakeNeuron, TimingModel
from spiky.torch import device as nkipy_device

TOL: dict[str, Any] = {"rtol": 1e-5, "atol": 1e-5}
DEV = "nkipy"

pytestmark = pytest.mark.filterwarnings("ignore:spiky.*is not implemented on the nkipy device")


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 16))


def test_the_device_is_neuron_core_memory(neuron_target: FakeNeuron) -> None:
    assert nkipy_device.DRIVER == "nrt" and torch.nkipy.device_count() == 1  # type: ignore[attr-defined]
    before = neuron_target.bytes_written()
    x = torch.randn(256, 64)
    on_device = x.to(DEV)  # one nrt_tensor_write of the tensor's bytes
    assert neuron_target.bytes_written() - before == x.numel() * 4
    assert rt.Device("nrt", 0).memory_stats()["used_bytes"] >= x.numel() * 4
    torch.testing.assert_close(on_device.cpu(), x, rtol=0, atol=0)


def test_compiled_calls_on_device_tensors_move_no_bytes(neuron_target: FakeNeuron) -> None:
    """Parameters and inputs already on the NeuronCore enter the NEFF as they are; outputs stay."""
    model = _mlp()
    x = torch.randn(8, 64)
    expected = model(x).detach()
    fast = torch.compile(model.to(DEV), backend="nkipy", options={"keep_outputs_on_device": True})
    x_dev = x.to(DEV)
    with torch.no_grad():
        fast(x_dev)  # compile and load
        spiky.reset_stats()
        written, read = neuron_target.bytes_written(), neuron_target.bytes_read()
        out = fast(x_dev)
        stats = spiky.get_stats()
        assert (neuron_target.bytes_written() - written, neuron_target.bytes_read() - read) == (0, 0)
    assert stats.total_executions == 1 and stats.call_h2d_bytes == 0 and stats.call_d2h_bytes == 0
    assert out.device == torch.device("nkipy:0")
    torch.testing.assert_close(out.cpu(), expected, **TOL)


def test_pipelined_calls_return_before_their_results_and_equal_synchronous_ones(
        neuron_target: FakeNeuron) -> None:
    """100 distinct CPU inputs submitted before any result is read: each call returns an nkipy tensor
    of NeuronCore memory still being produced; every result equals the synchronous call's, bit for bit.
    Under the timing model the copy worker uploads the next call while the core executes this one."""
    model = _mlp().eval()
    xs = [torch.randn(32, 64) for _ in range(100)]
    with torch.no_grad():
        sync = torch.compile(model, backend="nkipy")
        want = [sync(x) for x in xs]
        piped = torch.compile(model, backend="nkipy", options={"pipelined": True, "keep_outputs_on_device": True})
        piped(xs[0])  # compile and load before the timed part
        torch.nkipy.synchronize()  # type: ignore[attr-defined]
        neuron_target.set_timing(TimingModel(h2d_gbps=0.5, d2h_gbps=0.5, execute_ms=2.0))
        device = rt.Device("nrt", 0)
        spiky.reset_stats()
        device.start_trace()
        try:
            outs = [piped(x) for x in xs]
            assert all(o.device.type == DEV for o in outs)
            got = [o.cpu() for o in outs]
        finally:
            trace = json.loads(device.stop_trace())
            neuron_target.set_timing(None)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(got[7], model(xs[7]), **TOL)
    stats = spiky.get_stats()
    # the weights stayed resident: each call uploads its own activations only
    assert stats.total_executions == 100 and stats.call_h2d_bytes == 100 * 32 * 64 * 4
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    spans = {name: sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == name and e.get("ph") == "X")
             for name in ("H2D", "execute")}
    overlapped = sum(any(h0 < e1 and e0 < h1 for e0, e1 in spans["execute"]) for h0, h1 in spans["H2D"])
    assert overlapped >= 50, f"only {overlapped} of {len(spans['H2D'])} uploads overlapped an execution"


def test_training_steps_on_device_parameters_match_eager(neuron_target: FakeNeuron) -> None:
    """An optimizer over NeuronCore parameters (its update runs eagerly on the device through the CPU
    fallback) gives eager CPU training's parameters after three steps."""
    reference, model = _mlp(), _mlp().to(DEV)
    fast = torch.compile(model, backend="nkipy")
    opt_ref = torch.optim.SGD(reference.parameters(), lr=0.1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.manual_seed(1)
    for _ in range(3):
        x, y = torch.randn(8, 64), torch.randn(8, 16)
        for net, optimizer, inputs in ((fast, opt, (x.to(DEV), y.to(DEV))), (reference, opt_ref, (x, y))):
            optimizer.zero_grad()
            loss = ((net(inputs[0]) - inputs[1]) ** 2).mean()
            loss.backward()
            optimizer.step()
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        assert p.device.type == DEV
        torch.testing.assert_close(p.detach().cpu(), q.detach(), **TOL)
