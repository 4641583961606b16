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


# --- floor division: derived symbols --------------------------------------------------------------

_DERIVED: dict[str, tuple[Dim, Dim]] = {}
"""Derived symbol → (numerator, divisor): ``fd_<hash>`` stands for ``numerator // divisor``."""
_DERIVED_PREFIX = "fd_"


def _derived_name(numerator: Dim, divisor: Dim) -> str:
    import hashlib

    key = f"{numerator}//{divisor}"
    name = _DERIVED_PREFIX + hashlib.sha256(key.encode()).hexdigest()[:10]
    _DERIVED.setdefault(name, (numerator, divisor))
    return name


def is_derived(symbol: str) -> bool:
    """Whether ``symbol`` is a floor division of other dims (:func:`dim_floor`), not a size of its own."""
    return symbol in _DERIVED


def derived_definition(symbol: str) -> tuple[Dim, Dim]:
    """``(numerator, divisor)`` of a derived symbol."""
    return _DERIVED[symbol]


def base_symbols(dim: Dim) -> set[str]:
    """The symbols ``dim`` depends on, derived symbols replaced by the symbols they divide."""
    out: set[str] = set()
    for sym in dim_symbols(dim):
        if sym in _DERIVED:
            numerator, divisor = _DERIVED[sym]
            out |= base_symbols(numerator) | base_symbols(divisor)
        else:
            out.add(sym)
    return out


def dim_floor(a: Dim, b: Dim) -> Dim:
    """``a // b`` (floor), exact when possible; otherwise a polynomial over a *derived symbol* that
    stands for the quotient and evaluates once the symbols of ``a`` and ``b`` are bound
    (:func:`dim_eval`). Canonical: with a static ``b`` the multiples of ``b`` in ``a`` come out of
    the quotient (``(2*s0+s1+5)//2`` is ``s0+2+(s1+1)//2``), so equal quotients get one symbol."""
    if isinstance(a, int) and isinstance(b, int):
        return a // b
    if isinstance(b, int):
        if b <= 0:
            raise ShapeError(f"floor division of {a!r} by {b}; the divisor must be positive")
        poly = to_poly(a)
        inner = [mono[0] for mono in poly if len(mono) == 1 and mono[0] in _DERIVED]
        if len(inner) == 1 and set(poly) <= {(inner[0],), ()} and poly[(inner[0],)] == 1:
            numerator, divisor = _DERIVED[inner[0]]
            if isinstance(divisor, int):  # (x//m + c)//b == (x + c*m)//(m*b): one symbol per quotient
                return dim_floor(dim_add(numerator, poly.get((), 0) * divisor), divisor * b)
        whole: Poly = {}
        rest: Poly = {}
        for mono, coef in to_poly(a).items():
            q, r = divmod(coef, b)
            if q:
                whole[mono] = q
            if r:
                rest[mono] = r
        if not any(mono for mono in rest):  # only a constant 0 <= r < b is left: it floors to 0
            return from_poly(whole)
        return from_poly(_poly_add(whole, {(_derived_name(from_poly(rest), b),): 1}))
    if to_poly(b) and _poly_mul(to_poly(b), {(): 1}) == to_poly(a):
        return 1
    return _derived_name(canonical(a), canonical(b))


def dims_product(dims: Iterable[Dim]) -> Dim:
    out: Dim = 1
    for d in dims:
        out = dim_mul(out, d)
    return out


def _bind_derived(symbol: str, bindings: Mapping[str, int]) -> int | None:
    numerator, divisor = _DERIVED[symbol]
    n, d = dim_eval(numerator, bindings), dim_eval(divisor, bindings)
    if isinstance(n, int) and isinstance(d, int):
        if d <= 0:
            raise ShapeError(f"floor division {numerator} // {divisor} has divisor {d} under {dict(bindings)}")
        return n // d
    return None


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
            value = bindings.get(s)
            if value is None and s in _DERIVED:
                value = _bind_derived(s, bindings)
            if value is not None:
                coef *= value
            else:
                rest.append(s)
        key = tuple(sorted(rest))
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
        key = tuple(sorted(_rename_symbol(s, mapping) for s in mono))
        out[key] = out.get(key, 0) + coef
    return from_poly(out)


def _rename_symbol(symbol: str, mapping: Mapping[str, str]) -> str:
    if symbol in _DERIVED and symbol not in mapping:  # a quotient of renamed symbols: rename inside
        numerator, divisor = _DERIVED[symbol]
        renamed = dim_floor(dim_rename(numerator, mapping), dim_rename(divisor, mapping))
        if isinstance(renamed, str) and renamed in _DERIVED:
            return renamed
        raise ShapeError(f"renaming {symbol} ({numerator} // {divisor}) by {dict(mapping)} does not give a quotient")
    return mapping.get(symbol, symbol)
