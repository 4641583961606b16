"""The op registry: one entry per NKIPy op, holding every rule for that op.

An :class:`OpDef` carries the op's operand count, attribute kinds, shape/dtype
rule and numpy reference implementation, plus the slots later layers fill
(HLO emission, padding rule). Adding an op means adding one entry here.

Broadcasting and type promotion are defined once (:func:`broadcast_shapes`,
:func:`spiky_ir.dtypes.promote`) and used by every elementwise op.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from spiky_ir.dtypes import DType, promote
from spiky_ir.errors import IRError, ShapeError
from spiky_ir.ir import Attr, Dim, Node, TensorType

Array = np.ndarray[Any, np.dtype[Any]]
ShapeRule = Callable[[Sequence[TensorType], Mapping[str, Attr]], Sequence[TensorType]]
Reference = Callable[[Sequence[Array], Mapping[str, Attr]], Sequence[Array]]

# Attribute kinds an op may declare, with the Python types each accepts.
_ATTR_KINDS: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (float, int),
    "bool": (bool,),
    "str": (str,),
    "dtype": (DType,),
    "ints": (tuple,),
    "scalar": (bool, int, float),
}


@dataclass(frozen=True)
class OpDef:
    """Everything spiky-ir knows about one op."""

    name: str
    category: str
    arity: int | None
    """Number of operands; ``None`` for variadic ops."""
    attrs: Mapping[str, str]
    """Attribute name → kind (a key of ``_ATTR_KINDS``); all are required."""
    shape_rule: ShapeRule
    reference: Reference
    doc: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    """Rules other layers attach to the op by name (``"hlo"``, ``"pad"``)."""

    def infer_types(self, node: Node) -> tuple[TensorType, ...]:
        """Check ``node``'s operands and attributes, then return its result types."""
        # A node still being built has no results; Graph.add_node adds its name instead.
        where = f" in node {node.describe()}" if node.outputs else ""
        if self.arity is not None and len(node.inputs) != self.arity:
            raise IRError(
                f"op '{self.name}' takes {self.arity} operand(s), got {len(node.inputs)}{where}"
            )
        for key, kind in self.attrs.items():
            if key not in node.attrs:
                raise IRError(f"op '{self.name}' needs attribute '{key}' ({kind}){where}")
            value = node.attrs[key]
            if not isinstance(value, _ATTR_KINDS[kind]) or (
                kind in ("int", "float") and isinstance(value, bool)
            ):
                raise IRError(
                    f"attribute '{key}' of op '{self.name}' must be {kind}, got {value!r}{where}"
                )
            if kind == "ints" and not all(isinstance(v, int) for v in value):  # type: ignore[union-attr]
                raise IRError(f"attribute '{key}' of op '{self.name}' must be a tuple of ints, got {value!r}")
        extra = set(node.attrs) - set(self.attrs)
        if extra:
            raise IRError(
                f"op '{self.name}' has no attribute(s) {sorted(extra)}; it takes {sorted(self.attrs)}"
            )
        try:
            return tuple(self.shape_rule([v.type for v in node.inputs], node.attrs))
        except ShapeError as exc:
            if not where:
                raise
            raise ShapeError(f"{exc}{where}") from None


_REGISTRY: dict[str, OpDef] = {}


def register_op(opdef: OpDef) -> OpDef:
    """Add ``opdef`` to the registry; names are unique."""
    if opdef.name in _REGISTRY:
        raise IRError(f"op '{opdef.name}' is already registered")
    _REGISTRY[opdef.name] = opdef
    return opdef


def get_op(name: str) -> OpDef:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise IRError(f"unknown op '{name}'; known ops: {', '.join(sorted(_REGISTRY))}") from None


def all_ops() -> Mapping[str, OpDef]:
    """Every registered op by name (read-only view)."""
    return dict(_REGISTRY)


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


def _elementwise(result: Callable[[DType], DType]) -> ShapeRule:
    def rule(types: Sequence[TensorType], _attrs: Mapping[str, Attr]) -> list[TensorType]:
        shape: tuple[Dim, ...] = ()
        dtype = types[0].dtype
        for t in types:
            shape = broadcast_shapes(shape, t.shape)
        for t in types[1:]:
            dtype = promote(dtype, t.dtype)
        return [TensorType(shape, result(dtype))]

    return rule


def _same(dtype: DType) -> DType:
    return dtype


def _to_float(dtype: DType) -> DType:
    """Int and bool operands of float-valued ops compute in float32, as in torch."""
    return dtype if dtype.is_floating else DType.float32


def _to_bool(_dtype: DType) -> DType:
    return DType.bool


# --- elementwise ops ------------------------------------------------------------------------


def _binary(
    name: str,
    fn: Callable[[Array, Array], Array],
    result: Callable[[DType], DType] = _same,
    doc: str = "",
) -> None:
    rule = _elementwise(result)

    def reference(xs: Sequence[Array], _attrs: Mapping[str, Attr]) -> list[Array]:
        # Compute in the promoted operand type, so numpy's own (different) promotion of
        # e.g. int32 with float16 never leaks into results.
        operand = promote(DType.from_numpy(xs[0].dtype), DType.from_numpy(xs[1].dtype))
        compute = result(operand) if result is _to_float else operand
        a, b = (x.astype(compute.to_numpy(), copy=False) for x in xs)
        out_type = result(operand)
        return [np.asarray(fn(a, b)).astype(out_type.to_numpy(), copy=False)]

    register_op(OpDef(name, "binary", 2, {}, rule, reference, doc or f"elementwise {name}"))


def _unary(
    name: str,
    fn: Callable[[Array], Array],
    result: Callable[[DType], DType] = _same,
    doc: str = "",
) -> None:
    rule = _elementwise(result)

    def reference(xs: Sequence[Array], _attrs: Mapping[str, Attr]) -> list[Array]:
        out_type = result(DType.from_numpy(xs[0].dtype))
        x = xs[0].astype(out_type.to_numpy(), copy=False)
        return [np.asarray(fn(x)).astype(out_type.to_numpy(), copy=False)]

    register_op(OpDef(name, "unary", 1, {}, rule, reference, doc or f"elementwise {name}"))


def _divide(a: Array, b: Array) -> Array:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.true_divide(a, b)


def _power(a: Array, b: Array) -> Array:
    with np.errstate(invalid="ignore", over="ignore"):
        return np.power(a, b)


_erf64 = np.frompyfunc(math.erf, 1, 1)


def _erf(x: Array) -> Array:
    # math.erf is exact to double precision; numpy has no erf of its own.
    return np.asarray(_erf64(x.astype(np.float64)), dtype=np.float64)


def _sigmoid(x: Array) -> Array:
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


def _rsqrt(x: Array) -> Array:
    with np.errstate(divide="ignore", invalid="ignore"):
        return 1.0 / np.sqrt(x)


def _log(x: Array) -> Array:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(x)


def _sqrt(x: Array) -> Array:
    with np.errstate(invalid="ignore"):
        return np.sqrt(x)


def _exp(x: Array) -> Array:
    with np.errstate(over="ignore"):
        return np.exp(x)


_binary("add", np.add)
_binary("subtract", np.subtract)
_binary("multiply", np.multiply)
_binary("divide", _divide, _to_float, "true division; integer operands give float32")
_binary("power", _power)
_binary("maximum", np.maximum)
_binary("minimum", np.minimum)
_binary("equal", np.equal, _to_bool)
_binary("not_equal", np.not_equal, _to_bool)
_binary("less", np.less, _to_bool)
_binary("less_equal", np.less_equal, _to_bool)
_binary("greater", np.greater, _to_bool)
_binary("greater_equal", np.greater_equal, _to_bool)

_unary("negative", np.negative)
_unary("abs", np.abs)
_unary("exp", _exp, _to_float)
_unary("log", _log, _to_float)
_unary("sqrt", _sqrt, _to_float)
_unary("rsqrt", _rsqrt, _to_float)
_unary("tanh", np.tanh, _to_float)
_unary("sigmoid", _sigmoid, _to_float, "1 / (1 + exp(-x)); HLO 'logistic'")
_unary("erf", _erf, _to_float)


# --- creation and type ops -----------------------------------------------------------------


def _constant_rule(_types: Sequence[TensorType], attrs: Mapping[str, Attr]) -> list[TensorType]:
    dtype = attrs["dtype"]
    assert isinstance(dtype, DType)
    return [TensorType((), dtype)]


def _constant_ref(_xs: Sequence[Array], attrs: Mapping[str, Attr]) -> list[Array]:
    dtype = attrs["dtype"]
    assert isinstance(dtype, DType)
    return [np.asarray(attrs["value"]).astype(dtype.to_numpy())]


register_op(
    OpDef("constant", "creation", 0, {"value": "scalar", "dtype": "dtype"}, _constant_rule,
          _constant_ref, "a rank-0 constant; broadcasting gives it any shape")
)


def _astype_rule(types: Sequence[TensorType], attrs: Mapping[str, Attr]) -> list[TensorType]:
    dtype = attrs["dtype"]
    assert isinstance(dtype, DType)
    return [TensorType(types[0].shape, dtype)]


def _astype_ref(xs: Sequence[Array], attrs: Mapping[str, Attr]) -> list[Array]:
    dtype = attrs["dtype"]
    assert isinstance(dtype, DType)
    with np.errstate(invalid="ignore", over="ignore"):
        return [xs[0].astype(dtype.to_numpy())]


register_op(OpDef("astype", "transform", 1, {"dtype": "dtype"}, _astype_rule, _astype_ref,
                  "element type conversion (C-style truncation for float → int)"))


# --- transforms -----------------------------------------------------------------------------


def _ints(attrs: Mapping[str, Attr], key: str) -> tuple[int, ...]:
    value = attrs[key]
    assert isinstance(value, tuple)
    return value


def _transpose_rule(types: Sequence[TensorType], attrs: Mapping[str, Attr]) -> list[TensorType]:
    axes = _ints(attrs, "axes")
    shape = types[0].shape
    if sorted(axes) != list(range(len(shape))):
        raise ShapeError(f"transpose axes {axes} are not a permutation of the {len(shape)} dims")
    return [TensorType(tuple(shape[a] for a in axes), types[0].dtype)]


register_op(
    OpDef("transpose", "transform", 1, {"axes": "ints"}, _transpose_rule,
          lambda xs, attrs: [np.transpose(xs[0], _ints(attrs, "axes"))],
          "permute dims: result dim i is operand dim axes[i]")
)


def _reshape_rule(types: Sequence[TensorType], attrs: Mapping[str, Attr]) -> list[TensorType]:
    shape = _ints(attrs, "shape")
    if any(d < 0 for d in shape):
        raise ShapeError(f"reshape target {shape} has a negative dim; resolve -1 before building IR")
    src = types[0]
    if src.is_static and math.prod(src.static_shape()) != math.prod(shape):
        raise ShapeError(f"cannot reshape {src} to {shape}: element counts differ")
    return [TensorType(shape, src.dtype)]


register_op(
    OpDef("reshape", "transform", 1, {"shape": "ints"}, _reshape_rule,
          lambda xs, attrs: [np.reshape(xs[0], _ints(attrs, "shape"))],
          "row-major reshape to a static shape")
)


def _broadcast_to_rule(types: Sequence[TensorType], attrs: Mapping[str, Attr]) -> list[TensorType]:
    shape = _ints(attrs, "shape")
    try:
        fits = broadcast_shapes(types[0].shape, shape) == shape
    except ShapeError:
        fits = False
    if not fits:
        raise ShapeError(f"cannot broadcast {types[0]} to {shape}")
    return [TensorType(shape, types[0].dtype)]


register_op(
    OpDef("broadcast_to", "transform", 1, {"shape": "ints"}, _broadcast_to_rule,
          lambda xs, attrs: [np.broadcast_to(xs[0], _ints(attrs, "shape"))],
          "NumPy broadcast to a larger shape")
)


# --- linalg ---------------------------------------------------------------------------------


def _matmul_rule(types: Sequence[TensorType], _attrs: Mapping[str, Attr]) -> list[TensorType]:
    a, b = types
    if a.rank == 0 or b.rank == 0:
        raise ShapeError(f"matmul needs operands of rank >= 1, got {a} and {b}")
    ka = a.shape[-1]
    kb = b.shape[-2] if b.rank >= 2 else b.shape[0]
    if ka != kb:
        raise ShapeError(f"matmul contraction dims differ: {a} @ {b} ({ka} vs {kb})")
    batch = broadcast_shapes(a.shape[:-2], b.shape[:-2])
    rows: tuple[Dim, ...] = (a.shape[-2],) if a.rank >= 2 else ()
    cols: tuple[Dim, ...] = (b.shape[-1],) if b.rank >= 2 else ()
    return [TensorType(batch + rows + cols, promote(a.dtype, b.dtype))]


def _matmul_ref(xs: Sequence[Array], _attrs: Mapping[str, Attr]) -> list[Array]:
    out = promote(DType.from_numpy(xs[0].dtype), DType.from_numpy(xs[1].dtype)).to_numpy()
    a, b = (x.astype(out, copy=False) for x in xs)
    return [np.asarray(np.matmul(a, b))]


register_op(OpDef("matmul", "linalg", 2, {}, _matmul_rule, _matmul_ref,
                  "NumPy matmul: batched over leading dims, 1-D operands promoted"))
