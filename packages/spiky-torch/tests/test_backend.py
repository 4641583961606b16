"""torch.compile(backend="nkipy") end to end on the host target, against eager."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import spiky
import spiky.torch

F = torch.nn.functional
RTOL = ATOL = 1e-5  # fp32


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))


# name → (module or function factory, input shapes)
MODELS: dict[str, tuple[Callable[[], Callable[..., Any]], list[tuple[int, ...]]]] = {
    "add": (lambda: torch.add, [(4, 16), (4, 16)]),
    "linear_no_bias": (lambda: nn.Linear(32, 64, bias=False), [(8, 32)]),
    "linear_bias": (lambda: nn.Linear(32, 64), [(8, 32)]),
    "mlp_relu": (_mlp, [(4, 16)]),
    "linear_silu": (lambda: nn.Sequential(nn.Linear(16, 32), nn.SiLU()), [(4, 16)]),
    "linear_gelu": (lambda: nn.Sequential(nn.Linear(16, 32), nn.GELU()), [(4, 16)]),
    "linear_gelu_tanh": (lambda: nn.Sequential(nn.Linear(16, 32), nn.GELU("tanh")), [(4, 16)]),
    "elementwise_mix": (
        lambda: lambda a, b: (torch.exp(-a) * torch.tanh(b) - a / 3 + 2 * torch.sigmoid(a - b)),
        [(4, 16), (4, 16)],
    ),
    "bmm_permute_view": (
        lambda: lambda a, b: torch.bmm(a, b.permute(0, 2, 1)).reshape(2, -1),
        [(2, 4, 8), (2, 3, 8)],
    ),
    "linear_3d_input": (lambda: nn.Linear(8, 4), [(2, 5, 8)]),
}


@pytest.mark.smoke
@pytest.mark.parametrize("name", sorted(MODELS))
def test_matches_eager(name: str, host_executor: str) -> None:
    factory, shapes = MODELS[name]
    torch.manual_seed(0)
    model = factory()
    inputs = [torch.randn(s) for s in shapes]
    compiled = torch.compile(model, backend="nkipy")
    with torch.no_grad():
        expected = model(*inputs)
        actual = compiled(*inputs)
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    torch.testing.assert_close(actual, expected, rtol=RTOL, atol=ATOL)


@pytest.mark.smoke
def test_stats_count_executions_and_compiles() -> None:
    model = nn.Linear(32, 64, bias=False)
    compiled = torch.compile(model, backend="nkipy")
    spiky.reset_stats()
    with torch.no_grad():
        for _ in range(3):
            compiled(torch.randn(8, 32))
    stats = spiky.get_stats()
    assert stats.total_executions == 3
    assert stats.total_compile_count == 1
    assert stats.total_execution_time_ms > 0


@pytest.mark.smoke
def test_memory_stats_are_real_and_change_after_a_run() -> None:
    spiky.clear_memory_pool()
    before = spiky.get_memory_stats()
    assert set(before) == {
        "used_bytes", "cached_bytes", "total_bytes", "allocation_count", "reuse_count",
        "cache_hit_count", "cache_miss_count",
    }
    assert all(isinstance(v, int) and v >= 0 for v in before.values())
    compiled = torch.compile(nn.Linear(32, 64, bias=False), backend="nkipy", dynamic=True)
    with torch.no_grad():
        compiled(torch.randn(5, 32))
        compiled(torch.randn(6, 32))
    after = spiky.get_memory_stats()
    # Static-shape host calls use no pool memory (the host driver reads x and the weight in place
    # and writes the returned array). Batches 5 and 6 run in bucket 8: the padded input and the
    # padded output (8*64*4 bytes) went through the pool, were cached, and the second call reused them.
    assert after["allocation_count"] > before["allocation_count"]
    assert after["cached_bytes"] >= 8 * 64 * 4
    assert after["used_bytes"] == before["used_bytes"]
    assert after["reuse_count"] > before["reuse_count"]
    assert spiky.trim_memory_pool(0) == after["cached_bytes"]
    assert spiky.get_memory_stats()["cached_bytes"] == 0


def test_unsupported_op_names_the_aten_op_and_node() -> None:
    def fn(a: torch.Tensor) -> torch.Tensor:
        return torch.special.bessel_j0(a) * 2

    message = r"aten\.special_bessel_j0\.default \(node .special_bessel_j0.\) at .*test_backend\.py.*no spiky-ir"
    with pytest.raises(Exception, match=message):
        torch.compile(fn, backend="nkipy")(torch.randn(3))


def test_registered_by_name_and_entry_point() -> None:
    from importlib.metadata import entry_points

    assert "nkipy" in torch._dynamo.list_backends()
    (ep,) = [e for e in entry_points(group="torch_dynamo_backends") if e.name == "nkipy"]
    assert ep.load() is spiky.torch.nkipy_backend
