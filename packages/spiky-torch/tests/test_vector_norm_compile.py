"""linalg_vector_norm under torch.compile, with no fallback: a weight-normed convolution (wav2vec2's
positional conv) infers like eager, and norms of several orders train like eager, with static and
dynamic lengths. (Training through weight_norm itself needs aten._weight_norm_interface_backward,
which has no lowering or decomposition yet.)"""

from __future__ import annotations

import pytest
import torch
from torch import nn


class WeightNormConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.utils.parametrizations.weight_norm(nn.Conv1d(4, 4, 3, padding=1), dim=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.gelu(self.conv(x))


def _norms(x: torch.Tensor) -> torch.Tensor:
    two = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    three = torch.linalg.vector_norm(x, ord=3, dim=(1, 2), keepdim=True)
    peak = torch.linalg.vector_norm(x, ord=float("inf"), dim=2, keepdim=True)
    return x / (two + 1) + three * 0.1 + peak


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_weight_norm_conv_infers_like_eager(dynamic: bool) -> None:
    torch.manual_seed(0)
    model = WeightNormConv().eval()
    compiled = torch.compile(model, backend="nkipy", dynamic=dynamic)
    with torch.no_grad():
        for length in (9, 13) if dynamic else (9,):
            x = torch.randn(2, 4, length)
            torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_norms_train_like_eager(dynamic: bool) -> None:
    compiled = torch.compile(_norms, backend="nkipy", dynamic=dynamic)
    torch.manual_seed(0)
    for length in (9, 13) if dynamic else (9,):
        x = torch.randn(2, 4, length)
        mine, theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
        out, expected = compiled(mine), _norms(theirs)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
        out.square().sum().backward()
        expected.square().sum().backward()
        assert mine.grad is not None and theirs.grad is not None
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-4, atol=1e-5)
