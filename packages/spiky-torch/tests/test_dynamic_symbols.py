"""Sizes that are not the sizes of tensor inputs under ``dynamic=True``: Python ints Dynamo makes
SymInt graph inputs, and float scalars computed from sizes (SymFloat). Each compared with eager."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from spiky.torch.dynamic import bucket_stats, reset_bucket_stats

Case = Callable[[torch.Tensor, int], torch.Tensor]


def _scale_by_int(x: torch.Tensor, rank: int) -> torch.Tensor:
    return x * (rank + 1) - rank


def _int_in_float_math(x: torch.Tensor, rank: int) -> torch.Tensor:
    return torch.tanh(x / (2 * rank + 1)) + rank * rank


def _int_and_size(x: torch.Tensor, rank: int) -> torch.Tensor:  # an int argument next to a size
    return x.sum(0) * rank + x.shape[0]


# name → function of (x, an int argument)
CASES: dict[str, Case] = {
    "scale_by_int": _scale_by_int,
    "int_in_float_math": _int_in_float_math,
    "int_and_size": _int_and_size,
}


@pytest.mark.parametrize("case", list(CASES))
def test_int_arguments_are_graph_inputs_bound_per_call(case: str) -> None:
    fn = CASES[case]
    compiled = torch.compile(fn, backend="nkipy", dynamic=True)
    torch.manual_seed(0)
    for rows, rank in ((3, 2), (5, 3), (4, 7), (3, 3)):
        x = torch.randn(rows, 6)
        torch.testing.assert_close(compiled(x, rank), fn(x, rank), rtol=1e-5, atol=1e-5)


def test_an_int_argument_compiles_exact_buckets_and_shapes_stay_padded() -> None:
    reset_bucket_stats()
    compiled = torch.compile(_scale_by_int, backend="nkipy", dynamic=True)
    for rows, rank in ((3, 2), (5, 2), (6, 4)):
        x = torch.randn(rows, 6)
        torch.testing.assert_close(compiled(x, rank), _scale_by_int(x, rank), rtol=1e-5, atol=1e-5)
    (stats,) = bucket_stats()
    value_symbols = [sym for sym, why in stats.exact.items() if "int argument" in why]
    assert len(value_symbols) == 1  # the int; the row count is still padded to buckets
    assert stats.padded


def test_calls_seen_before_take_the_fast_route_keyed_by_the_int_values_too() -> None:
    """The fast route (a call whose input shapes were seen before) also serves graphs with int arguments:
    its key holds their values, so the same shape with another int takes its own route, never another's."""
    from unittest import mock

    from spiky.torch.dynamic import DynamicGraph

    compiled = torch.compile(_int_and_size, backend="nkipy", dynamic=True)
    torch.manual_seed(0)
    calls = [(3, 2), (5, 3), (3, 7)]
    inputs = {rows: torch.randn(rows, 6) for rows in (3, 5)}
    for _ in range(2):  # every bucket built (a new bucket forgets the routes), then every route taken once
        for rows, rank in calls:
            compiled(inputs[rows], rank)
    with mock.patch.object(DynamicGraph, "_call_general", autospec=True,
                           side_effect=DynamicGraph._call_general) as general:
        for rows, rank in [*calls, (3, 3)]:
            x = inputs[rows]
            torch.testing.assert_close(compiled(x, rank), _int_and_size(x, rank), rtol=1e-5, atol=1e-5)
    assert general.call_count == 1  # only (3, 3), an int value not seen before


def test_a_float_computed_from_sizes_in_a_backward_matches_eager() -> None:
    def unbiased_var(x: torch.Tensor) -> torch.Tensor:  # its backward scales by 2 / (n - 1), a SymFloat
        return torch.var(x, dim=1) * 3

    compiled = torch.compile(unbiased_var, backend="nkipy", dynamic=True)
    torch.manual_seed(0)
    for rows, cols in ((3, 5), (4, 7)):
        x = torch.randn(rows, cols)
        mine, theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
        out, expected = compiled(mine), unbiased_var(theirs)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
        out.sum().backward()
        expected.sum().backward()
        assert mine.grad is not None and theirs.grad is not None
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-5, atol=1e-5)


def _view_by_int(x: torch.Tensor, n: int) -> torch.Tensor:  # the -1 becomes numel // n
    return x.view(n, -1).softmax(dim=1) * n


def test_a_view_by_an_int_argument_matches_eager() -> None:
    compiled = torch.compile(_view_by_int, backend="nkipy", dynamic=True)
    torch.manual_seed(0)
    for numel, n in ((12, 3), (12, 4), (20, 5), (30, 3)):
        x = torch.randn(numel)
        torch.testing.assert_close(compiled(x, n), _view_by_int(x, n), rtol=1e-5, atol=1e-5)


class StridedConvNet(torch.nn.Module):
    """ResNet-like: a stride-2 stem with max pooling, a residual block that halves the size (3x3 stride-2 path and 1x1
    stride-2 shortcut: output sizes (s - 1) // 2 + 1), batch norm, global pooling, a classifier."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.MaxPool2d(3, stride=2, padding=1))
        self.path = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16))
        self.shortcut = nn.Sequential(nn.Conv2d(8, 16, 1, stride=2), nn.BatchNorm2d(16))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.head(torch.relu(self.path(x) + self.shortcut(x)))


def test_strided_convolutions_over_dynamic_image_sizes_match_eager() -> None:
    torch.manual_seed(0)
    model = StridedConvNet().eval()
    compiled = torch.compile(model, backend="nkipy", dynamic=True)
    with torch.no_grad():
        for batch, height, width in ((2, 32, 32), (3, 37, 45), (2, 19, 26)):
            x = torch.randn(batch, 3, height, width)
            torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)


def test_training_a_strided_convolution_over_dynamic_sizes_is_a_clear_error() -> None:
    model = StridedConvNet().train()
    compiled = torch.compile(model, backend="nkipy", dynamic=True)
    x = torch.randn(2, 3, 21, 21)
    with pytest.raises(Exception, match=r"convolution_backward.*stride-2 convolution over symbolic size"
                                        r".*compile with static shapes"):
        compiled(x).sum().backward()
