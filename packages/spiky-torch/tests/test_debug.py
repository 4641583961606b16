"""spiky.debug.compare: per-output errors, and bisection to a deliberately broken lowering."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import spiky
from spiky_ir import fx as ir_fx


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.relu(self.fc(x))
        return torch.exp(h) * 2 + 1, h.sum(dim=1)


@pytest.mark.smoke
def test_matching_model_reports_small_errors() -> None:
    torch.manual_seed(0)
    report = spiky.debug.compare(Model(), torch.randn(3, 8))
    assert report.ok and report.divergence is None
    assert len(report.outputs) == 2 and all(o.max_abs < 1e-5 for o in report.outputs)
    assert "output 0: max abs" in str(report)


def test_broken_lowering_is_found_and_named(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_exp(ctx: ir_fx.LoweringContext, node: torch.fx.Node) -> ir_fx.Value:
        return ctx.op("tanh", ctx.arg(node, 0))  # deliberately wrong: exp lowered as tanh

    monkeypatch.setitem(ir_fx.LOWERINGS, torch.ops.aten.exp.default, broken_exp)
    torch.manual_seed(0)
    report = spiky.debug.compare(Model(), torch.randn(3, 8))
    assert not report.ok
    assert not report.outputs[0].ok and report.outputs[1].ok  # the sum output does not use exp
    d = report.divergence
    assert d is not None
    assert d.aten_op == "aten.exp.default" and d.node == "exp"
    assert "test_debug.py" in d.where and "forward" in d.where  # the user's source line
    assert "first divergence" in str(report)
