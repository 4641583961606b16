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
