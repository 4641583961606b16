"""options={"fallback": "eager"}: an op without a lowering runs in torch, the rest compiles."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import spiky
from spiky_ir.fx import LOWERINGS


class Exotic(nn.Module):
    """Linear → lgamma (no spiky-ir lowering, but differentiable) → Linear → tanh."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 16)
        self.b = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x))
        h = torch.lgamma(h + 1)  # the exotic op
        return torch.tanh(self.b(h)) * 2


@pytest.mark.smoke
def test_without_fallback_the_error_names_the_op_and_the_way_out() -> None:
    with pytest.raises(Exception, match=r"aten\.lgamma\.default .*fallback': 'eager'"), torch.no_grad():
        torch.compile(Exotic(), backend="nkipy")(torch.randn(3, 8))


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_the_lowering_error_names_the_users_source_line(dynamic: bool) -> None:
    lines, first = inspect.getsourcelines(Exotic.forward)
    number = first + next(i for i, line in enumerate(lines) if "torch.lgamma" in line)
    with pytest.raises(Exception) as caught, torch.no_grad():
        torch.compile(Exotic(), backend="nkipy", dynamic=dynamic)(torch.randn(3, 8))
    message = str(caught.value)
    assert f"aten.lgamma.default (node 'lgamma') at {__file__}, line {number}, in forward" in message
    assert "(`h = torch.lgamma(h + 1)  # the exotic op`)" in message  # the code itself
    assert "options={'fallback': 'eager'}" in message  # and what to do


def test_fallback_eager_runs_the_op_in_torch_and_compiles_the_rest(caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(0)
    model, x = Exotic(), torch.randn(5, 8)
    spiky.reset_stats()
    compiled = torch.compile(model, backend="nkipy", options={"fallback": "eager"})
    with caplog.at_level(logging.WARNING, logger="spiky.compile"), torch.no_grad():
        actual = compiled(x)
        expected = model(x)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    warnings = [r.getMessage() for r in caplog.records if "fallback='eager'" in r.getMessage()]
    assert len(warnings) == 1 and "aten.lgamma.default" in warnings[0]
    # the two lowerable regions around the exotic op ran through the runtime
    assert spiky.get_stats().total_executions == 2


def test_fallback_with_training() -> None:
    torch.manual_seed(0)
    model, x = Exotic(), torch.randn(4, 8)
    reference = Exotic()
    reference.load_state_dict(model.state_dict())
    torch.compile(model, backend="nkipy", options={"fallback": "eager"})(x).sum().backward()
    reference(x).sum().backward()
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        assert p.grad is not None and q.grad is not None
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5)


# --- partitions around multi-output ops, on every path ---------------------------------------------
#
# Each case: a function whose multi-output op (unlowered, or lowered and feeding an unlowered op) sits
# between lowered ops, and the ATen ops removed from the lowering table for the test (so the partitioner
# must keep them, and the getitems of their results, in torch). Compared with eager, static and dynamic,
# forward (no_grad) and backward (every input gradient).

aten = torch.ops.aten


def _var_mean(x: torch.Tensor) -> torch.Tensor:  # var_mean.correction has no lowering
    var, mean = torch.var_mean(torch.relu(x) * 2 + 1, dim=1, keepdim=True)
    return torch.tanh(x - mean) * var + mean


def _max_dim(x: torch.Tensor) -> torch.Tensor:  # both results of an unlowered max.dim feed lowered ops
    values, indices = (x * 3).max(dim=1)
    return torch.sigmoid(values) + indices.to(x.dtype) * 0.25


def _sort(x: torch.Tensor) -> torch.Tensor:  # an unlowered sort between lowered ops, both results used
    values, indices = torch.sort(torch.exp(x * 0.5), dim=1, descending=True)
    return values.cumsum(1) * 0.1 + indices.to(x.dtype)


def _topk_into_lgamma(x: torch.Tensor) -> torch.Tensor:  # a lowered topk whose results feed an unlowered op
    values, indices = torch.topk(x.abs() + 0.5, 2, dim=1)
    return torch.lgamma(values) + torch.lgamma(indices.to(x.dtype) + 1.5) - values * 2


def _layer_norm(x: torch.Tensor) -> torch.Tensor:  # native_layer_norm's mean/rstd outputs reach the backward
    return torch.nn.functional.layer_norm(torch.relu(x) + x * 0.5, (x.shape[-1],)) * 3 + x


FALLBACK_CASES: dict[str, tuple[Any, tuple[Any, ...]]] = {
    "var_mean": (_var_mean, ()),
    "max_dim": (_max_dim, (aten.max.dim,)),
    "sort": (_sort, (aten.sort.default,)),
    "topk_into_lgamma": (_topk_into_lgamma, ()),
    "layer_norm": (_layer_norm, (aten.native_layer_norm.default,)),
}


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
@pytest.mark.parametrize("backward", [False, True], ids=["forward", "backward"])
@pytest.mark.parametrize("case", list(FALLBACK_CASES))
def test_fallback_partitions_around_multi_output_ops_match_eager(
    case: str, backward: bool, dynamic: bool, monkeypatch: pytest.MonkeyPatch,
    forward_backward_match: Callable[..., None],
) -> None:
    fn, removed = FALLBACK_CASES[case]
    for op in removed:
        monkeypatch.delitem(LOWERINGS, op)
    compiled = torch.compile(fn, backend="nkipy", dynamic=dynamic, options={"fallback": "eager"})
    torch.manual_seed(0)
    for rows in (3, 5) if dynamic else (4,):
        x = torch.randn(rows, 6)
        if not backward:
            with torch.no_grad():
                torch.testing.assert_close(compiled(x), fn(x), rtol=1e-5, atol=1e-5)
            continue
        forward_backward_match(compiled, fn, x, grad_rtol=1e-4)
