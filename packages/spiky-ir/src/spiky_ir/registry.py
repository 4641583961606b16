"""The op registry core: :class:`OpDef`, the registry itself, and the rules ops share.

Each op family in :mod:`spiky_ir.ops` defines its ops with :func:`define_op` (or the
elementwise one-liners of :mod:`spiky_ir.ops.elementwise`), and registers each op's other
rules, next to it, into the tables their consumers own (HLO in :mod:`spiky_ir.hlo.rules`,
padding in :mod:`spiky_ir.padding`, kernel source in :mod:`spiky_ir.kernel_source`). This
module lives outside the ``ops`` package so that those consumers, the graph classes and the
executors can import it without importing (and registering) every op family.

What an :class:`OpDef` holds itself: operand count, attribute kinds, the shape/dtype rule,
the numpy reference, the ATen overloads that lower onto the op one to one (as strings, so
spiky-ir imports without torch), the elementwise numpy function and result-type rule, and,
per rule table, the recorded reason when the op deliberately has no rule there.

Broadcasting and the dtype rules (:func:`broadcast_shapes`, :func:`to_float`,
:func:`elementwise_compute_type`, ...) are defined once, here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np

from spiky_ir.dtypes import DType, promote
from spiky_ir.errors import IRError, ShapeError
from spiky_ir.symbolic import Dim
from spiky_ir.types import Attr, DenseArray, TensorType

Array = np.ndarray[Any, np.dtype[Any]]
ShapeRule = Callable[[Sequence[TensorType], Mapping[str, Attr]], Sequence[TensorType]]
Reference = Callable[[Sequence[Array], Mapping[str, Attr]], Sequence[Array]]
DTypeRule = Callable[[DType], DType]

ATTR_KINDS: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (float, int),
    "bool": (bool,),
    "str": (str,),
    "dtype": (DType,),
    "ints": (tuple,),
    "dims": (tuple,),
    "dim": (int, str),
    "scalar": (bool, int, float),
    "array": (DenseArray,),
}
"""Attribute kinds an op may declare, with the Python types each accepts."""

RULE_TABLES = ("hlo", "padding", "kernel_source")
"""The rule tables consumers own, besides the shape rule and reference every OpDef carries:
HLO emission, padding safety and NKIPy kernel source. An op has a rule in each, or records
why not in :attr:`OpDef.no_rule`."""

_ATEN_NAME = re.compile(r"[a-z_][a-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Elementwise:
    """What makes an op elementwise: the numpy function its reference applies, after casting
    the operands to the compute type, and the result-type rule on the promoted operand type."""

    fn: Callable[..., Array]
    result: DTypeRule


@dataclass(frozen=True)
class OpDef:
    """What the registry knows about one op (its other rules live in their consumers' tables)."""

    name: str
    category: str
    arity: int | None
    """Number of operands; ``None`` for variadic ops."""
    attrs: Mapping[str, str]
    """Attribute name → kind (a key of :data:`ATTR_KINDS`); all are required."""
    shape_rule: ShapeRule
    reference: Reference
    doc: str = ""
    min_arity: int = 0
    """For variadic ops (``arity is None``): the least number of operands."""
    aten: tuple[str, ...] = ()
    """ATen overloads (``"aten.exp.default"``) that lower onto this op one to one; the FX
    lowering (:mod:`spiky_ir.fx`) builds their lowerings from this field."""
    elementwise: Elementwise | None = None
    """Set for unary and binary elementwise ops."""
    no_rule: Mapping[str, str] = field(default_factory=dict)
    """Rule table (one of :data:`RULE_TABLES`) → why this op has no rule in it, on purpose."""

    def infer_types(self, operands: Sequence[TensorType], attrs: Mapping[str, Attr],
                    where: str = "") -> tuple[TensorType, ...]:
        """Check operand count and attributes, then return the result types.

        ``where`` (e.g. ``" in node %y = exp(...)"``) is appended to error messages.
        """
        if self.arity is not None and len(operands) != self.arity:
            raise IRError(f"op '{self.name}' takes {self.arity} operand(s), got {len(operands)}{where}")
        if self.arity is None and len(operands) < self.min_arity:
            raise IRError(
                f"op '{self.name}' takes at least {self.min_arity} operand(s), got {len(operands)}{where}"
            )
        for key, kind in self.attrs.items():
            if key not in attrs:
                raise IRError(f"op '{self.name}' needs attribute '{key}' ({kind}){where}")
            _check_attr(self.name, key, kind, attrs[key], where)
        extra = set(attrs) - set(self.attrs)
        if extra:
            raise IRError(
                f"op '{self.name}' has no attribute(s) {sorted(extra)}; it takes {sorted(self.attrs)}"
            )
        try:
            return tuple(self.shape_rule(operands, attrs))
        except ShapeError as exc:
            if not where:
                raise
            raise ShapeError(f"{exc}{where}") from None


def _check_attr(op: str, key: str, kind: str, value: Attr, where: str) -> None:
    if not isinstance(value, ATTR_KINDS[kind]) or (kind in ("int", "float") and isinstance(value, bool)):
        raise IRError(f"attribute '{key}' of op '{op}' must be {kind}, got {value!r}{where}")
    if kind == "ints" and not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value  # type: ignore[union-attr]
    ):
        raise IRError(f"attribute '{key}' of op '{op}' must be a tuple of ints, got {value!r}{where}")
    if kind == "dims" and not all(
        isinstance(v, int | str) and not isinstance(v, bool) for v in value  # type: ignore[union-attr]
    ):
        raise IRError(
            f"attribute '{key}' of op '{op}' must be a tuple of dims (ints or symbols), got {value!r}{where}"
        )


_REGISTRY: dict[str, OpDef] = {}

R = TypeVar("R")


class RuleTable(dict[str, R], Generic[R]):
    """Op name → rule of one kind, owned by the consumer that applies the rules (HLO emission,
    padding, kernel source) and filled by the op families as they are imported."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def register(self, *ops: str) -> Callable[[R], R]:
        """A decorator registering its function as the rule of each op in ``ops`` (once per op)."""

        def add(rule: R) -> R:
            for op in ops:
                if op in self:
                    raise IRError(f"op '{op}' already has a {self.kind} rule")
                self[op] = rule
            return rule

        return add


def register_op(opdef: OpDef) -> OpDef:
    """Add ``opdef`` to the registry; names are unique, declared ATen overloads and rule
    tables must be well formed."""
    if opdef.name in _REGISTRY:
        raise IRError(f"op '{opdef.name}' is already registered")
    unknown = set(opdef.no_rule) - set(RULE_TABLES)
    if unknown:
        raise IRError(f"op '{opdef.name}' records no_rule for unknown table(s) {sorted(unknown)}; "
                      f"tables: {', '.join(RULE_TABLES)}")
    for name in opdef.aten:
        if not _ATEN_NAME.fullmatch(name):
            raise IRError(f"op '{opdef.name}' declares ATen overload {name!r}; write it as "
                          "'namespace.op.overload', e.g. 'aten.exp.default'")
    _REGISTRY[opdef.name] = opdef
    return opdef


def define_op(name: str, category: str, arity: int | None, attrs: Mapping[str, str], shape_rule: ShapeRule,
              reference: Reference, doc: str, *, min_arity: int = 0, aten: Sequence[str] = (),
              no_rule: Mapping[str, str] | None = None) -> OpDef:
    """Build and register an :class:`OpDef` (the short form the op families use)."""
    return register_op(OpDef(name, category, arity, attrs, shape_rule, reference, doc, min_arity=min_arity,
                             aten=tuple(aten), no_rule=dict(no_rule or {})))


def get_op(name: str) -> OpDef:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise IRError(f"unknown op '{name}'; known ops: {', '.join(sorted(_REGISTRY))}") from None


def all_ops() -> Mapping[str, OpDef]:
    """Every registered op by name (read-only view)."""
    return dict(_REGISTRY)


def aten_overloads(name: str) -> tuple[str, ...]:
    """The ATen overloads that lower directly (one to one) onto op ``name``.

    >>> import spiky_ir
    >>> aten_overloads("exp")
    ('aten.exp.default',)
    """
    return get_op(name).aten


# --- shared shape and dtype rules ---------------------------------------------------------


def broadcast_shapes(a: Sequence[Dim], b: Sequence[Dim]) -> tuple[Dim, ...]:
    """NumPy broadcasting of two shapes whose dims may be symbols."""
    out: list[Dim] = []
    for i in range(max(len(a), len(b))):
        da = a[len(a) - 1 - i] if i < len(a) else 1
        db = b[len(b) - 1 - i] if i < len(b) else 1
        if db in (da, 1):
            out.append(da)
        elif da == 1:
            out.append(db)
        else:
            raise ShapeError(f"shapes {tuple(a)} and {tuple(b)} do not broadcast (dims {da} and {db})")
    return tuple(reversed(out))


def elementwise_shape_rule(result: DTypeRule) -> ShapeRule:
    """Broadcast every operand, promote their types, apply ``result`` to the promoted type."""

    def rule(types: Sequence[TensorType], _attrs: Mapping[str, Attr]) -> list[TensorType]:
        shape: tuple[Dim, ...] = ()
        dtype = types[0].dtype
        for t in types:
            shape = broadcast_shapes(shape, t.shape)
        for t in types[1:]:
            dtype = promote(dtype, t.dtype)
        return [TensorType(shape, result(dtype))]

    return rule


def same(dtype: DType) -> DType:
    return dtype


def to_float(dtype: DType) -> DType:
    """Int and bool operands of float-valued ops compute in float32, as in torch."""
    return dtype if dtype.is_floating else DType.float32


def to_bool(_dtype: DType) -> DType:
    return DType.bool


def widen(dtype: DType) -> DType:
    """The type numpy computes in: half types compute in float32 and round once, like
    torch's CPU kernels (and bfloat16 arrays need not support every ufunc)."""
    return DType.float32 if dtype in (DType.float16, DType.bfloat16) else dtype


def elementwise_compute_type(name: str, operands: Sequence[DType]) -> tuple[DType, DType]:
    """``(compute type, result type)`` of elementwise op ``name`` on operand types."""
    ew = get_op(name).elementwise
    if ew is None:
        raise IRError(f"op '{name}' is not elementwise")
    operand = operands[0]
    for t in operands[1:]:
        operand = promote(operand, t)
    out = ew.result(operand)
    return widen(out if out.is_floating else operand), out


# --- attribute access and checks for rules --------------------------------------------------


def attr_ints(attrs: Mapping[str, Attr], key: str) -> tuple[int, ...]:
    value = attrs[key]
    assert isinstance(value, tuple)
    return tuple(int(v) for v in value)


def attr_dims(attrs: Mapping[str, Attr], key: str) -> tuple[Dim, ...]:
    value = attrs[key]
    assert isinstance(value, tuple)
    return value


def attr_int(attrs: Mapping[str, Attr], key: str) -> int:
    value = attrs[key]
    assert isinstance(value, int)
    return value


def attr_bool(attrs: Mapping[str, Attr], key: str) -> bool:
    return bool(attrs[key])


def attr_dtype(attrs: Mapping[str, Attr]) -> DType:
    value = attrs["dtype"]
    assert isinstance(value, DType)
    return value


def attr_shape(attrs: Mapping[str, Attr], what: str) -> tuple[int, ...]:
    """The ``shape`` attribute as ints (references run on specialized graphs)."""
    return tuple(static_dim(d, what) for d in attr_dims(attrs, "shape"))


def check_axis(axis: int, rank: int, what: str) -> int:
    if not 0 <= axis < rank:
        raise ShapeError(f"{what} axis {axis} is out of range for rank {rank}; axes are 0..{rank - 1}")
    return axis


def static_dim(dim: Dim, what: str) -> int:
    if not isinstance(dim, int):
        raise ShapeError(f"{what} needs a static dim, got symbol {dim!r}; specialize the graph first")
    return dim


# --- numpy helpers for references ------------------------------------------------------------


def dtype_of(x: Array) -> DType:
    return DType.from_numpy(x.dtype)


def cast(x: Array, dtype: DType) -> Array:
    target = dtype.to_numpy()
    if type(x) is np.ndarray and x.dtype == target:
        return x
    return np.asarray(x).astype(target, copy=False)


def scalar_array(value: Attr, dtype: DType) -> Array:
    with np.errstate(all="ignore"):
        return np.asarray(value).astype(dtype.to_numpy())
