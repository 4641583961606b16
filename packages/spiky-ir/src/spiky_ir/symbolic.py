"""Symbolic dimensions: integer polynomials over named sizes (``s0``, ``4*s0``, ``s0*s1+1``).

A dim is an ``int`` or a string holding an expression in canonical form, so two dims are
equal exactly when their strings are. Shape rules do arithmetic on dims with
:func:`dim_add`, :func:`dim_mul`, :func:`dim_floordiv`, and :func:`dim_eval` binds the
symbols to sizes.

>>> dim_mul("s0", 4)
'4*s0'
>>> dim_add(dim_mul("s0", "s1"), 1)
's0*s1+1'
>>> dim_eval("4*s0", {"s0": 3})
12
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from typing import TypeAlias

from spiky_ir.errors import ShapeError

Dim: TypeAlias = int | str
"""A dimension: a static size, or a canonical symbolic expression such as ``"s0"``."""

# A polynomial: monomial (sorted tuple of symbol names, repeats for powers) → coefficient.
Poly: TypeAlias = dict[tuple[str, ...], int]

_TOKEN = re.compile(r"\s*(?:(\d+)|([A-Za-z_][A-Za-z0-9_]*)|(.))")


@functools.lru_cache(maxsize=4096)
def _parse(text: str) -> tuple[tuple[tuple[str, ...], int], ...]:
    tokens: list[str] = []
    for number, name, other in _TOKEN.findall(text):
        tokens.append(number or name or other)
    pos = 0

    def peek() -> str | None:
        return tokens[pos] if pos < len(tokens) else None

    def take() -> str:
        nonlocal pos
        if pos >= len(tokens):
            raise ShapeError(f"dim expression {text!r} ends early")
        pos += 1
        return tokens[pos - 1]

    def atom() -> Poly:
        tok = take()
        if tok == "(":
            inner = expr()
            if take() != ")":
                raise ShapeError(f"dim expression {text!r} has an unclosed '('")
            return inner
        if tok == "-":
            return _scale(atom(), -1)
        if tok.isdigit():
            return {(): int(tok)}
        if tok[0].isalpha() or tok[0] == "_":
            return {(tok,): 1}
        raise ShapeError(
            f"dim expression {text!r} has unexpected {tok!r}; dims are integer polynomials "
            "over symbols, e.g. '4*s0+1'"
        )

    def power() -> Poly:
        base = atom()
        if peek() == "*" and pos + 1 < len(tokens) and tokens[pos + 1] == "*":  # sympy's s0**2
            take(), take()
            exponent = take()
            if not exponent.isdigit():
                raise ShapeError(f"dim expression {text!r} has a non-integer exponent {exponent!r}")
            out: Poly = {(): 1}
            for _ in range(int(exponent)):
                out = _poly_mul(out, base)
            return out
        return base

    def term() -> Poly:
        out = power()
        while peek() == "*":
            take()
            out = _poly_mul(out, power())
        return out

    def expr() -> Poly:
        out = term()
        while peek() in ("+", "-"):
            sign = 1 if take() == "+" else -1
            out = _poly_add(out, _scale(term(), sign))
        return out

    result = expr()
    if pos != len(tokens):
        raise ShapeError(
            f"dim expression {text!r} has unexpected {''.join(tokens[pos:])!r}; dims are integer "
            "polynomials over symbols, e.g. '4*s0+1'"
        )
    return tuple(sorted(result.items()))


def to_poly(dim: Dim) -> Poly:
    if isinstance(dim, bool):
        raise ShapeError(f"dim {dim!r} is a bool, not an int or symbol")
    if isinstance(dim, int):
        return {(): dim} if dim else {}
    return dict(_parse(dim))


def _clean(p: Poly) -> Poly:
    return {m: c for m, c in p.items() if c != 0}


def _scale(p: Poly, k: int) -> Poly:
    return _clean({m: c * k for m, c in p.items()})


def _poly_add(a: Poly, b: Poly) -> Poly:
    out = dict(a)
    for m, c in b.items():
        out[m] = out.get(m, 0) + c
    return _clean(out)


def _poly_mul(a: Poly, b: Poly) -> Poly:
    out: Poly = {}
    for ma, ca in a.items():
        for mb, cb in b.items():
            m = tuple(sorted(ma + mb))
            out[m] = out.get(m, 0) + ca * cb
    return _clean(out)


def from_poly(p: Poly) -> Dim:
    """The canonical dim of a polynomial: an int when constant, else a sorted expression."""
    p = _clean(p)
    if not p:
        return 0
    if list(p) == [()]:
        return p[()]
    # Higher degree first, then by symbol names; the constant last.
    terms = sorted(p.items(), key=lambda mc: (-len(mc[0]), mc[0]))
    text = ""
    for mono, coef in terms:
        body = "*".join(mono)
        mag = abs(coef)
        piece = str(mag) if not mono else body if mag == 1 else f"{mag}*{body}"
        if not text:
            text = piece if coef > 0 else f"-{piece}"
        else:
            text += f"+{piece}" if coef > 0 else f"-{piece}"
    return text


def canonical(dim: Dim) -> Dim:
    """``dim`` in canonical form (``"s0*2"`` → ``"2*s0"``, ``"3"`` → ``3``)."""
    return dim if isinstance(dim, int) else from_poly(to_poly(dim))


def dim_add(a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return a + b
    return from_poly(_poly_add(to_poly(a), to_poly(b)))


def dim_sub(a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return a - b
    return from_poly(_poly_add(to_poly(a), _scale(to_poly(b), -1)))


def dim_mul(a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return a * b
    return from_poly(_poly_mul(to_poly(a), to_poly(b)))


def dim_floordiv(a: Dim, b: int) -> Dim:
    """``a // b``; a symbolic ``a`` must be exactly divisible (every coefficient)."""
    if isinstance(a, int):
        return a // b
    p = to_poly(a)
    if any(c % b for c in p.values()):
        raise ShapeError(
            f"cannot divide symbolic dim {a!r} by {b} exactly; specialize the graph first"
        )
    return from_poly({m: c // b for m, c in p.items()})


def dims_product(dims: Iterable[Dim]) -> Dim:
    out: Dim = 1
    for d in dims:
        out = dim_mul(out, d)
    return out


def dim_symbols(dim: Dim) -> set[str]:
    return {s for mono in to_poly(dim) for s in mono}


def dim_eval(dim: Dim, bindings: Mapping[str, int]) -> Dim:
    """Substitute ``bindings``; the result is an int once every symbol is bound."""
    if isinstance(dim, int):
        return dim
    out: Poly = {}
    for mono, coefficient in to_poly(dim).items():
        rest: list[str] = []
        coef = coefficient
        for s in mono:
            if s in bindings:
                coef *= bindings[s]
            else:
                rest.append(s)
        key = tuple(rest)
        out[key] = out.get(key, 0) + coef
    return from_poly(out)


def solve_binding(dim: Dim, size: int, bindings: dict[str, int]) -> None:
    """Bind the one unknown symbol of ``dim`` (linear in it) so that ``dim == size``.

    Used to read symbol values off concrete input shapes; raises when ``dim``
    cannot equal ``size``.
    """
    rest = dim_eval(dim, bindings)
    if isinstance(rest, int):
        if rest != size:
            raise ShapeError(f"dim {dim!r} is {rest} under {bindings}, but the array has {size}")
        return
    p = to_poly(rest)
    unknown = dim_symbols(rest)
    if len(unknown) != 1 or any(len(m) > 1 for m in p):
        raise ShapeError(
            f"cannot infer symbols {sorted(unknown)} of dim {dim!r} from size {size}; "
            "pass them to specialize() explicitly"
        )
    (sym,) = unknown
    coef, const = p.get((sym,), 0), p.get((), 0)
    if (size - const) % coef:
        raise ShapeError(f"dim {dim!r} cannot equal {size}")
    bindings[sym] = (size - const) // coef


def dim_rename(dim: Dim, mapping: Mapping[str, str]) -> Dim:
    """``dim`` with its symbols renamed (``dim_rename("s77*s27", {"s77": "s0", "s27": "s1"})`` → ``"s0*s1"``)."""
    if isinstance(dim, int):
        return dim
    out: Poly = {}
    for mono, coef in to_poly(dim).items():
        key = tuple(sorted(mapping.get(s, s) for s in mono))
        out[key] = out.get(key, 0) + coef
    return from_poly(out)
