"""Compiled functions on "nkipy" tensors: device-resident inputs and outputs, mutations, memory.

Numerics against eager CPU at fp32 tolerances (1e-5); "no host round trip" is checked on the
runtime's timeline (no H2D/D2H spans in the call).
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any

import pytest
import torch
from torch import nn

import spiky
import spiky_runtime as rt
from spiky.torch import device as nkipy_device

pytestmark = pytest.mark.skipif(not nkipy_device.is_available(), reason="nkipy device extension unavailable")

DEV = "nkipy"
TOL: dict[str, Any] = {"rtol": 1e-5, "atol": 1e-5}


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))


def _trace_phases(fn: Any) -> set[str]:
    """Names of the runtime phases (H2D, execute, D2H, ...) recorded while ``fn()`` runs."""
    device = rt.Device(nkipy_device.DRIVER, 0)  # the memory behind "nkipy" (test_nrt_device.py: nrt)
    device.start_trace()
    try:
        fn()
        device.synchronize()
    finally:
        trace = json.loads(device.stop_trace())
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    return {e.get("name", "") for e in events}


@pytest.mark.smoke
@pytest.mark.parametrize("keep", [False, True])
def test_mlp_on_device_matches_eager(keep: bool) -> None:
    model = _mlp()
    x = torch.randn(4, 16)
    expected = model(x)
    compiled = torch.compile(model.to(DEV), backend="nkipy", options={"keep_outputs_on_device": keep})
    with torch.no_grad():
        out = compiled(x.to(DEV))
    assert out.device == torch.device("nkipy:0") and out.shape == (4, 8)
    torch.testing.assert_close(out.cpu(), expected.detach(), **TOL)


@pytest.mark.smoke
def test_keep_outputs_on_device_has_no_host_round_trip() -> None:
    compiled = torch.compile(_mlp().to(DEV), backend="nkipy", options={"keep_outputs_on_device": True})
    x = torch.randn(4, 16).to(DEV)
    with torch.no_grad():
        compiled(x)  # compile outside the trace
        used = spiky.get_memory_stats()["used_bytes"]
        holder: list[torch.Tensor] = []
        phases = _trace_phases(lambda: holder.append(compiled(x)))
        # The output owns one pool block (4x8 fp32 rounds up to 512 bytes); nothing else stays.
        assert spiky.get_memory_stats()["used_bytes"] == used + 512
    assert "execute" in phases and not {"H2D", "D2H"} & phases
    chained = holder[0] * 1  # an output is an ordinary device tensor (fallback op)
    assert chained.device.type == DEV
    with torch.no_grad():
        default = torch.compile(_mlp().to(DEV), backend="nkipy")
        default(x)
        phases = _trace_phases(lambda: default(x))
    assert "D2H" in phases  # what the option avoids: outputs come back through the host


def test_device_outputs_feed_the_next_call() -> None:
    def f(a: torch.Tensor) -> torch.Tensor:
        return torch.tanh(a) * 2

    compiled = torch.compile(f, backend="nkipy", options={"keep_outputs_on_device": True})
    a = torch.randn(3, 5)
    out = compiled(compiled(a.to(DEV)))
    torch.testing.assert_close(out.cpu(), f(f(a)), **TOL)


@pytest.mark.smoke
def test_input_mutations_land_in_the_callers_tensors() -> None:
    def f(x: torch.Tensor, buf: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
        buf.add_(x.sum(0))
        dst.copy_(x * 3)
        return x + 1

    x = torch.randn(4, 3)
    buf, dst = torch.zeros(3), torch.zeros(4, 3)
    dx, dbuf, ddst = x.to(DEV), buf.to(DEV), dst.to(DEV)
    compiled = torch.compile(f, backend="nkipy", options={"keep_outputs_on_device": True})
    expected = f(x, buf, dst)
    out = compiled(dx, dbuf, ddst)
    torch.testing.assert_close(out.cpu(), expected, **TOL)
    torch.testing.assert_close(dbuf.cpu(), buf, **TOL)
    torch.testing.assert_close(ddst.cpu(), dst, **TOL)


class _Counter(nn.Module):
    """A module with buffers its forward updates (like running statistics)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.register_buffer("running", torch.zeros(4))
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lin(x)
        with torch.no_grad():
            self.running.mul_(0.9).add_(0.1 * y.mean(0))
            self.steps.add_(1)
        return y


def test_module_buffers_mutated_by_the_graph() -> None:
    torch.manual_seed(1)
    eager = _Counter()
    dev = _Counter()
    dev.load_state_dict(eager.state_dict())
    dev.to(DEV)
    compiled = torch.compile(dev, backend="nkipy", options={"keep_outputs_on_device": True})
    for _ in range(3):
        x = torch.randn(5, 4)
        with torch.no_grad():
            expected = eager(x)
            got = compiled(x.to(DEV))
        torch.testing.assert_close(got.cpu(), expected, **TOL)
    torch.testing.assert_close(dev.running.cpu(), eager.running, **TOL)
    assert int(dev.steps.cpu()) == 3


def test_graphs_returning_inputs_none_and_non_tensors() -> None:
    def f(x: torch.Tensor, y: torch.Tensor) -> tuple[Any, ...]:
        return x, None, 3, y * 2, "tag"

    x, y = torch.randn(2, 3).to(DEV), torch.randn(2, 3).to(DEV)
    got = torch.compile(f, backend="nkipy", options={"keep_outputs_on_device": True})(x, y)
    assert got[0] is x or (got[0].data_ptr() == x.data_ptr())  # the input itself, not a copy
    assert got[1] is None and got[2] == 3 and got[4] == "tag"
    torch.testing.assert_close(got[3].cpu(), y.cpu() * 2, **TOL)


def test_views_of_device_tensors_as_inputs() -> None:
    def f(a: torch.Tensor) -> torch.Tensor:
        return a @ a.t()

    base = torch.randn(6, 8)
    d = base.to(DEV)
    compiled = torch.compile(f, backend="nkipy", options={"keep_outputs_on_device": True})
    out = compiled(d[2:5, 1:])  # a strided view in the middle of a storage
    torch.testing.assert_close(out.cpu(), f(base[2:5, 1:]), **TOL)


@pytest.mark.slow
def test_device_loop_of_1000_calls_does_not_leak() -> None:
    options = {"keep_outputs_on_device": True}
    compiled = torch.compile(_mlp().to(DEV), backend="nkipy", options=options)
    head = torch.compile(lambda a: torch.softmax(a * 2 + 1, dim=-1), backend="nkipy", options=options)
    x = torch.randn(8, 16).to(DEV)
    with torch.no_grad():
        head(compiled(x))  # compile and warm the pool
        start = spiky.get_memory_stats()
        peak_cached = 0
        for _ in range(1000):
            out = head(compiled(x))  # two device-resident calls, the first's output feeds the second
            peak_cached = max(peak_cached, spiky.get_memory_stats()["cached_bytes"])
        expected = torch.softmax(_mlp()(x.cpu()) * 2 + 1, dim=-1)
        torch.testing.assert_close(out.cpu(), expected, **TOL)
        del out
    end = spiky.get_memory_stats()
    assert end["used_bytes"] == start["used_bytes"]
    # every call reuses the same few blocks: the cache stays within a handful of them
    assert peak_cached <= start["cached_bytes"] + 8 * 4096
    assert end["allocation_count"] - start["allocation_count"] <= 4


def test_pending_pipelined_outputs_are_read_after_they_are_produced() -> None:
    """A pipelined call's outputs become nkipy tensors at once; reading one waits for the call."""
    gate = threading.Event()
    x = torch.arange(4, dtype=torch.float32).to(DEV)
    if nkipy_device.DRIVER == "host":
        spec = rt.TensorSpec((4,), "float32")

        def slow_double(xs: list[Any]) -> list[Any]:
            assert gate.wait(10)
            return [xs[0] * 2]

        model = rt.Device("host", 0).load_host_model(slow_double, [spec], [spec], "slow_double")
        bundle = rt.Bundle({0: model}, name="slow_double", pipelined=True)
        future = bundle.submit([nkipy_device.runtime_input(x)], to_host=False)
        (out,) = [nkipy_device.adopt_output(t, 0) for t in future.result()]
        pending = not future.done()
    else:  # NeuronCore memory (test_nrt_device.py): the fake libnrt's execute waits for the gate
        from spiky.testing import FakeNrt, XlaExecuteRule

        fake = FakeNrt(os.environ["SPIKY_LIBNRT"])
        xla = XlaExecuteRule(fake)

        def gated(neff_id: str, ins: dict[str, memoryview], outs: dict[str, memoryview]) -> int:
            assert gate.wait(10)
            return xla(neff_id, ins, outs)

        compiled = torch.compile(lambda a: a * 2, backend="nkipy",
                                 options={"pipelined": True, "keep_outputs_on_device": True})
        with torch.no_grad():
            gate.set()
            compiled(x)  # compiled and loaded with the gate open
            gate.clear()
            fake.set_execute(gated)
            out = compiled(x)  # returns with the execution still held at the gate
            pending = not gate.is_set()
    assert out.device.type == DEV and out.shape == (4,) and pending
    threading.Timer(0.05, gate.set).start()
    # .cpu() waits for the producer (GIL released, so the host fn can run); without the wait
    # it would read the block before the call wrote it
    torch.testing.assert_close(out.cpu(), torch.arange(4, dtype=torch.float32) * 2)


@pytest.mark.parametrize("keep", [False, True])
def test_cpu_outputs_of_a_device_graph_stay_on_the_cpu(keep: bool) -> None:
    def f(x: torch.Tensor, n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x * 2, n + 1  # n: a CPU scalar tensor next to device tensors, as eager allows

    x, n = torch.randn(3), torch.tensor(4.0)
    got = torch.compile(f, backend="nkipy", options={"keep_outputs_on_device": keep})(x.to(DEV), n)
    assert got[0].device.type == DEV and got[1].device.type == "cpu"
    torch.testing.assert_close(got[0].cpu(), x * 2, **TOL)
    torch.testing.assert_close(got[1], n + 1, **TOL)
