"""options={"fallback": "eager"}: an op without a lowering runs in torch, the rest compiles."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

import spiky


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
