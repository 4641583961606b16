"""Floor division of symbolic dims: derived symbols, their canonical forms, evaluation and renaming."""

from __future__ import annotations

import itertools

import pytest

from spiky_ir.errors import ShapeError
from spiky_ir.symbolic import base_symbols, dim_add, dim_eval, dim_floor, dim_rename, is_derived

# (numerator, divisor) pairs, each checked against Python's // over a grid of symbol values
CASES: list[tuple[str | int, str | int]] = [
    ("s0+1", 2), ("s0-1", 2), ("2*s0+s1+5", 2), ("3*s0", 3), ("s0*s1-7", 4), ("s0", "s1"), ("s0+s1", "s1"),
]


@pytest.mark.parametrize(("numerator", "divisor"), CASES)
def test_floor_evaluates_like_python(numerator: str | int, divisor: str | int) -> None:
    quotient = dim_floor(numerator, divisor)
    for s0, s1 in itertools.product(range(1, 9), range(1, 6)):
        sizes = {"s0": s0, "s1": s1}
        n, d = dim_eval(numerator, sizes), dim_eval(divisor, sizes)
        assert isinstance(n, int) and isinstance(d, int)
        assert dim_eval(quotient, sizes) == n // d, (quotient, sizes)


def test_canonical_forms_give_one_symbol_per_quotient() -> None:
    assert dim_floor("3*s0", 3) == "s0"  # exact: no derived symbol
    assert dim_floor("s0+1", 2) == dim_add(dim_floor("s0-1", 2), 1)  # (s0-1)//2 + 1 == (s0+1)//2
    assert dim_floor(dim_add(dim_floor("s0+1", 2), 1), 2) == dim_floor("s0+3", 4)  # nested quotients
    assert dim_floor("2*s0+s1+5", 2) == dim_add("s0+2", dim_floor("s1+1", 2))
    symbol = dim_floor("s0+1", 2)
    assert isinstance(symbol, str) and is_derived(symbol) and not is_derived("s0")


def test_renaming_renames_inside_the_quotient() -> None:
    quotient = dim_floor("s7+1", 2)
    renamed = dim_rename(quotient, {"s7": "s0"})
    assert renamed == dim_floor("s0+1", 2) and base_symbols(renamed) == {"s0"}
    assert dim_eval(renamed, {"s0": 9}) == 5


def test_non_positive_divisors_are_errors() -> None:
    with pytest.raises(ShapeError, match="divisor must be positive"):
        dim_floor("s0", 0)
    with pytest.raises(ShapeError, match="has divisor 0"):
        dim_eval(dim_floor("s0", "s1"), {"s0": 4, "s1": 0})
