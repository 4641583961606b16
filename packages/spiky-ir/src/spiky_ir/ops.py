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

from spiky_ir.collectives import CollectiveBackend, collective_backend
from spiky_ir.dtypes import DType, promote
from spiky_ir.errors import IRError, ShapeError
from spiky_ir.ir import Attr, Node, TensorType
from spiky_ir.symbolic import Dim, dim_add, dim_floordiv, dim_mul, dim_sub, dims_product

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
    "dims": (tuple,),
    "dim": (int, str),
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
    min_arity: int = 0
    """For variadic ops (``arity is None``): the least number of operands."""

    def infer_types(self, node: Node) -> tuple[TensorType, ...]:
        """Check ``node``'s operands and attributes, then return its result types."""
        # A node still being built has no results; Graph.add_node adds its name instead.
        where = f" in node {node.describe()}" if node.outputs else ""
        if self.arity is not None and len(node.inputs) != self.arity:
            raise IRError(
                f"op '{self.name}' takes {self.arity} operand(s), got {len(node.inputs)}{where}"
            )
        if self.arity is None and len(node.inputs) < self.min_arity:
            raise IRError(
                f"op '{self.name}' takes at least {self.min_arity} operand(s), "
                f"got {len(node.inputs)}{where}"
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
            if kind == "ints" and not all(
                isinstance(v, int) and not isinstance(v, bool) for v in value  # type: ignore[union-attr]
            ):
                raise IRError(
                    f"attribute '{key}' of op '{self.name}' must be a tuple of ints, got {value!r}{where}"
                )
            if kind == "dims" and not all(
                isinstance(v, int | str) and not isinstance(v, bool) for v in value  # type: ignore[union-attr]
            ):
                raise IRError(
                    f"attribute '{key}' of op '{self.name}' must be a tuple of dims (ints or "
                    f"symbols), got {value!r}{where}"
                )
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


def _widen(dtype: DType) -> DType:
    """The type numpy computes in: half types compute in float32 and round once, like
    torch's CPU kernels (and bfloat16 arrays need not support every ufunc)."""
    return DType.float32 if dtype in (DType.float16, DType.bfloat16) else dtype


def _np(dtype: DType) -> np.dtype[Any]:
    return dtype.to_numpy()


def _type_of(x: Array) -> DType:
    return DType.from_numpy(x.dtype)


def _cast(x: Array, dtype: DType) -> Array:
    return np.asarray(x).astype(_np(dtype), copy=False)


# --- elementwise ops ------------------------------------------------------------------------

ELEMENTWISE_FN: dict[str, Callable[..., Array]] = {}
"""Elementwise op name → the numpy function its reference applies (after casting the
operands to the compute type); the kernel-source emitter writes the same calls."""


def elementwise_compute_type(name: str, operands: Sequence[DType]) -> tuple[DType, DType]:
    """``(compute type, result type)`` of elementwise op ``name`` on operand types."""
    opdef = get_op(name)
    operand = operands[0]
    for t in operands[1:]:
        operand = promote(operand, t)
    out: DType = opdef.extra["result_type"](operand)
    return _widen(out if out.is_floating else operand), out


def _elementwise_op(
    name: str, arity: int, fn: Callable[..., Array], result: Callable[[DType], DType], doc: str,
    category: str,
) -> None:
    rule = _elementwise(result)

    def reference(xs: Sequence[Array], _attrs: Mapping[str, Attr]) -> list[Array]:
        # Compute in one type derived from the promoted operand type, so numpy's own
        # (different) promotion of e.g. int32 with float16 never leaks into results.
        compute, out = elementwise_compute_type(name, [_type_of(x) for x in xs])
        args = [_cast(x, compute) for x in xs]
        with np.errstate(all="ignore"):
            return [_cast(fn(*args), out)]

    ELEMENTWISE_FN[name] = fn
    register_op(OpDef(name, category, arity, {}, rule, reference, doc or f"elementwise {name}",
                      extra={"result_type": result}))


def _binary(name: str, fn: Callable[..., Array], result: Callable[[DType], DType] = _same,
            doc: str = "") -> None:
    _elementwise_op(name, 2, fn, result, doc, "binary")


def _unary(name: str, fn: Callable[..., Array], result: Callable[[DType], DType] = _same,
           doc: str = "") -> None:
    _elementwise_op(name, 1, fn, result, doc, "unary")


def erf(x: Array) -> Array:
    """Error function, exact to double precision (numpy has no erf of its own)."""
    return np.asarray(np.frompyfunc(math.erf, 1, 1)(x.astype(np.float64)), np.float64)


def sigmoid(x: Array) -> Array:
    return 1.0 / (1.0 + np.exp(-x))


def rsqrt(x: Array) -> Array:
    return 1.0 / np.sqrt(x)


def _bitwise_domain(dtype: DType) -> DType:
    if dtype.is_floating:
        raise ShapeError(f"bitwise ops need integer or bool operands, got {dtype.value}")
    return dtype


_binary("add", np.add)
_binary("subtract", np.subtract)
_binary("multiply", np.multiply)
_binary("divide", np.true_divide, _to_float, "true division; integer operands give float32")
_binary("floor_divide", np.floor_divide, doc="division rounded toward -inf")
_binary("fmod", np.fmod, doc="C-style remainder (sign of the dividend), as torch.fmod and HLO remainder")
_binary("remainder", np.remainder, doc="Python-style modulus (sign of the divisor), as torch.remainder")
_binary("power", np.power)
_binary("maximum", np.maximum, doc="NaN-propagating maximum")
_binary("minimum", np.minimum, doc="NaN-propagating minimum")
_binary("arctan2", np.arctan2, _to_float)
_binary("equal", np.equal, _to_bool)
_binary("not_equal", np.not_equal, _to_bool)
_binary("less", np.less, _to_bool)
_binary("less_equal", np.less_equal, _to_bool)
_binary("greater", np.greater, _to_bool)
_binary("greater_equal", np.greater_equal, _to_bool)
_binary("logical_and", np.logical_and, _to_bool)
_binary("logical_or", np.logical_or, _to_bool)
_binary("logical_xor", np.logical_xor, _to_bool)
_binary("bitwise_and", np.bitwise_and, _bitwise_domain)
_binary("bitwise_or", np.bitwise_or, _bitwise_domain)
_binary("bitwise_xor", np.bitwise_xor, _bitwise_domain)

_unary("negative", np.negative)
_unary("abs", np.abs)
_unary("sign", np.sign)
_unary("ceil", np.ceil)
_unary("floor", np.floor)
_unary("round", np.round, doc="round half to even, as torch.round")
_unary("trunc", np.trunc)
_unary("exp", np.exp, _to_float)
_unary("expm1", np.expm1, _to_float)
_unary("log", np.log, _to_float)
_unary("log1p", np.log1p, _to_float)
_unary("sqrt", np.sqrt, _to_float)
_unary("rsqrt", rsqrt, _to_float)
_unary("reciprocal", np.reciprocal, _to_float)
_unary("sin", np.sin, _to_float)
_unary("cos", np.cos, _to_float)
_unary("tan", np.tan, _to_float)
_unary("tanh", np.tanh, _to_float)
_unary("sigmoid", sigmoid, _to_float, "1 / (1 + exp(-x)); HLO 'logistic'")
_unary("erf", erf, _to_float)
_unary("logical_not", np.logical_not, _to_bool)
_unary("bitwise_not", np.invert, _bitwise_domain)
_unary("isnan", np.isnan, _to_bool)
_unary("isinf", np.isinf, _to_bool)


# --- small helpers for the structured ops -----------------------------------------------------


def _ints(attrs: Mapping[str, Attr], key: str) -> tuple[int, ...]:
    value = attrs[key]
    assert isinstance(value, tuple)
    return tuple(int(v) for v in value)


def _dims(attrs: Mapping[str, Attr], key: str) -> tuple[Dim, ...]:
    value = attrs[key]
    assert isinstance(value, tuple)
    return value


def _int(attrs: Mapping[str, Attr], key: str) -> int:
    value = attrs[key]
    assert isinstance(value, int)
    return value


def _bool(attrs: Mapping[str, Attr], key: str) -> bool:
    return bool(attrs[key])


def _dtype(attrs: Mapping[str, Attr]) -> DType:
    value = attrs["dtype"]
    assert isinstance(value, DType)
    return value


def _axis(axis: int, rank: int, what: str) -> int:
    if not 0 <= axis < rank:
        raise ShapeError(f"{what} axis {axis} is out of range for rank {rank}; axes are 0..{rank - 1}")
    return axis


def _static(dim: Dim, what: str) -> int:
    if not isinstance(dim, int):
        raise ShapeError(f"{what} needs a static dim, got symbol {dim!r}; specialize the graph first")
    return dim


def _op(name: str, category: str, arity: int | None, attrs: Mapping[str, str], rule: ShapeRule,
        reference: Reference, doc: str, min_arity: int = 0) -> None:
    register_op(OpDef(name, category, arity, attrs, rule, reference, doc, min_arity=min_arity))


# --- creation -----------------------------------------------------------------------------


def _constant_rule(_types: Sequence[TensorType], attrs: Mapping[str, Attr]) -> list[TensorType]:
    return [TensorType((), _dtype(attrs))]


def _full_rule(_types: Sequence[TensorType], attrs: Mapping[str, Attr]) -> list[TensorType]:
    return [TensorType(_dims(attrs, "shape"), _dtype(attrs))]


def _shape_of(attrs: Mapping[str, Attr]) -> tuple[int, ...]:
    return tuple(_static(d, "executing a creation op") for d in _dims(attrs, "shape"))


def _scalar_array(value: Attr, dtype: DType) -> Array:
    with np.errstate(all="ignore"):
        return np.asarray(value).astype(_np(dtype))


_op("constant", "creation", 0, {"value": "scalar", "dtype": "dtype"}, _constant_rule,
    lambda _xs, attrs: [_scalar_array(attrs["value"], _dtype(attrs))],
    "a rank-0 constant; broadcasting gives it any shape")
_op("dim_value", "creation", 0, {"value": "dim", "dtype": "dtype"}, _constant_rule,
    lambda _xs, attrs: [_scalar_array(_static(attrs["value"], "dim_value"), _dtype(attrs))],  # type: ignore[arg-type]
    "a size as a rank-0 tensor (e.g. the element count a mean divides by); symbolic until specialized")
_op("full", "creation", 0, {"shape": "dims", "value": "scalar", "dtype": "dtype"}, _full_rule,
    lambda _xs, attrs: [np.full(_shape_of(attrs), _scalar_array(attrs["value"], _dtype(attrs)))],
    "a tensor filled with one value")
_op("zeros", "creation", 0, {"shape": "dims", "dtype": "dtype"}, _full_rule,
    lambda _xs, attrs: [np.zeros(_shape_of(attrs), _np(_dtype(attrs)))], "a tensor of zeros")


def _iota_rule(types: Sequence[TensorType], attrs: Mapping[str, Attr]) -> list[TensorType]:
    shape = _dims(attrs, "shape")
    _axis(_int(attrs, "axis"), len(shape), "iota")
    return [TensorType(shape, _dtype(attrs))]


def _iota_ref(_xs: Sequence[Array], attrs: Mapping[str, Attr]) -> list[Array]:
    shape, axis = _shape_of(attrs), _int(attrs, "axis")
    line = np.arange(shape[axis]).reshape([-1 if i == axis else 1 for i in range(len(shape))])
    return [np.broadcast_to(line, shape).astype(_np(_dtype(attrs)))]


_op("iota", "creation", 0, {"shape": "dims", "axis": "int", "dtype": "dtype"}, _iota_rule, _iota_ref,
    "the index along ``axis`` at every position")


def _arange_rule(_types: Sequence[TensorType], attrs: Mapping[str, Attr]) -> list[TensorType]:
    size = attrs["size"]
    assert isinstance(size, int | str)
    return [TensorType((size,), _dtype(attrs))]


def _arange_ref(_xs: Sequence[Array], attrs: Mapping[str, Attr]) -> list[Array]:
    # torch computes start + i * step in double precision, then rounds once.
    size = _static(attrs["size"], "arange")  # type: ignore[arg-type]
    start, step = float(attrs["start"]), float(attrs["step"])  # type: ignore[arg-type]
    return [(start + np.arange(size, dtype=np.float64) * step).astype(_np(_dtype(attrs)))]


_op("arange", "creation", 0, {"start": "scalar", "step": "scalar", "size": "dim", "dtype": "dtype"},
    _arange_rule, _arange_ref, "``start + i * step`` for i in range(size)")


def _keep_rule(types: Sequence[TensorType], _attrs: Mapping[str, Attr]) -> list[TensorType]:
    if types[0].rank < 2:
        raise ShapeError(f"tril/triu need rank >= 2, got {types[0]}")
    return [types[0]]


_op("tril", "creation", 1, {"k": "int"}, _keep_rule,
    lambda xs, attrs: [np.tril(xs[0], _int(attrs, "k"))], "zero above diagonal k of the last two dims")
_op("triu", "creation", 1, {"k": "int"}, _keep_rule,
    lambda xs, attrs: [np.triu(xs[0], _int(attrs, "k"))], "zero below diagonal k of the last two dims")


# --- type conversion and transforms ---------------------------------------------------------


def _astype_rule(types: Sequence[TensorType], attrs: Mapping[str, Attr]) -> list[TensorType]:
    return [TensorType(types[0].shape, _dtype(attrs))]


def _astype_ref(xs: Sequence[Array], attrs: Mapping[str, Attr]) -> list[Array]:
    with np.errstate(invalid="ignore", over="ignore"):
        return [xs[0].astype(_np(_dtype(attrs)))]


_op("astype", "transform", 1, {"dtype": "dtype"}, _astype_rule, _astype_ref,
    "element type conversion (C-style truncation for float → int)")


def _transpose_rule(types: Sequence[TensorType], attrs: Mapping[str, Attr]) -> list[TensorType]:
    axes = _ints(attrs, "axes")
    shape = types[0].shape
    if sorted(axes) != list(range(len(shape))):
        raise ShapeError(f"transpose axes {axes} are not a permutation of the {len(shape)} dims")
    return [TensorType(tuple(shape[a] for a in axes), types[0].dtype)]


_op("transpose", "transform", 1, {"axes": "ints"}, _transpose_rule,
    lambda xs, attrs: [np.transpose(xs[0], _ints(attrs, "axes"))],
    "permute dims: result dim i is operand dim axes[i]")


def _reshape_rule(types: Sequence[TensorType], attrs: Mapping[str, Attr]) -> list[TensorType]:
    shape = _dims(attrs, "shape")
    if any(isinstance(d, int) and d < 0 for d in shape):
        raise ShapeError(f"reshape target {shape} has a negative dim; resolve -1 before building IR")
    src = types[0]
    if dims_product(src.shape) != dims_product(shape):
        raise ShapeError(f"cannot reshape {src} to {shape}: element counts differ")
    return [TensorType(shape, src.dtype)]


_op("reshape", "transform", 1, {"shape": "dims"}, _reshape_rule,
    lambda xs, attrs: [np.reshape(xs[0], _shape_of(attrs))], "row-major reshape")


def _broadcast_to_rule(types: Sequence[TensorType], attrs: Mapping[str, Attr]) -> list[TensorType]:
    shape = _dims(attrs, "shape")
    try:
        fits = broadcast_shapes(types[0].shape, shape) == shape
    except ShapeError:
        fits = False
    if not fits:
        raise ShapeError(f"cannot broadcast {types[0]} to {shape}")
    return [TensorType(shape, types[0].dtype)]


_op("broadcast_to", "transform", 1, {"shape": "dims"}, _broadcast_to_rule,
    lambda xs, attrs: [np.broadcast_to(xs[0], _shape_of(attrs))], "NumPy broadcast to a larger shape")


def _expand_dims_rule(types: Sequence[TensorType], attrs: Mapping[str, Attr]) -> list[TensorType]:
    t, axis = types[0], _int(attrs, "axis")
    _axis(axis, t.rank + 1, "expand_dims")
    return [TensorType((*t.shape[:axis], 1, *t.shape[axis:]), t.dtype)]


_op("expand_dims", "transform", 1, {"axis": "int"}, _expand_dims_rule,
    lambda xs, attrs: [np.expand_dims(xs[0], _int(attrs, "axis"))], "insert a size-1 dim at ``axis``")


def _squeeze_rule(types: Sequence[TensorType], attrs: Mapping[str, Attr]) -> list[TensorType]:
    t, axes = types[0], _ints(attrs, "axes")
    for a in axes:
        _axis(a, t.rank, "squeeze")
        if t.shape[a] != 1:
            raise ShapeError(f"squeeze axis {a} of {t} has size {t.shape[a]}, not 1")
    return [TensorType(tuple(d for i, d in enumerate(t.shape) if i not in axes), t.dtype)]


_op("squeeze", "transform", 1, {"axes": "ints"}, _squeeze_rule,
    lambda xs, attrs: [np.squeeze(xs[0], _ints(attrs, "axes"))], "drop size-1 dims ``axes``")


def _concat_rule(types: Sequence[TensorType], attrs: Mapping[str, Attr]) -> list[TensorType]:
    first, axis = types[0], _int(attrs, "axis")
    _axis(axis, first.rank, "concatenate")
    size: Dim = 0
    dtype = first.dtype
    for t in types:
        if t.rank != first.rank or any(
            a != b for i, (a, b) in enumerate(zip(t.shape, first.shape, strict=True)) if i != axis
        ):
            raise ShapeError(f"concatenate operands {first} and {t} differ outside axis {axis}")
        size = dim_add(size, t.shape[axis])
        dtype = promote(dtype, t.dtype)
    return [TensorType((*first.shape[:axis], size, *first.shape[axis + 1:]), dtype)]


def _concat_ref(xs: Sequence[Array], attrs: Mapping[str, Attr]) -> list[Array]:
    dtype = _type_of(xs[0])
    for x in xs[1:]:
        dtype = promote(dtype, _type_of(x))
    return [np.concatenate([_cast(x, dtype) for x in xs], axis=_int(attrs, "axis"))]


_op("concatenate", "transform", None, {"axis": "int"}, _concat_rule, _concat_ref,
    "join operands along ``axis`` (types promote)", min_arity=1)


def _split_rule(types: Sequence[TensorType], attrs: Mapping[str, Attr]) -> list[TensorType]:
    t, axis, sizes = types[0], _int(attrs, "axis"), _dims(attrs, "sizes")
    _axis(axis, t.rank, "split")
    total: Dim = 0
    for s in sizes:
        total = dim_add(total, s)
    if total != t.shape[axis]:
        raise ShapeError(f"split sizes {sizes} add up to {total}, but axis {axis} of {t} is {t.shape[axis]}")
    return [TensorType((*t.shape[:axis], s, *t.shape[axis + 1:]), t.dtype) for s in sizes]


def _split_ref(xs: Sequence[Array], attrs: Mapping[str, Attr]) -> list[Array]:
    sizes = [_static(d, "split") for d in _dims(attrs, "sizes")]
    cuts = np.cumsum(sizes)[:-1].tolist()
    return list(np.split(xs[0], cuts, axis=_int(attrs, "axis")))


_op("split", "transform", 1, {"sizes": "dims", "axis": "int"}, _split_rule, _split_ref,
    "cut along ``axis`` into pieces of ``sizes`` (one result each)")


def _slice_rule(types: Sequence[TensorType], attrs: Mapping[str, Attr]) -> list[TensorType]:
    t = types[0]
    start, stop, step = _dims(attrs, "start"), _dims(attrs, "stop"), _ints(attrs, "step")
    if not len(start) == len(stop) == len(step) == t.rank:
        raise ShapeError(f"slice of {t} needs start/stop/step of length {t.rank}, got {start}, {stop}, {step}")
    out: list[Dim] = []
    for axis, (lo, hi, st, dim) in enumerate(zip(start, stop, step, t.shape, strict=True)):
        if st < 1:
            raise ShapeError(f"slice step {st} on axis {axis} must be >= 1")
        if isinstance(lo, int) and isinstance(hi, int) and isinstance(dim, int):
            if not 0 <= lo <= hi <= dim:
                raise ShapeError(f"slice [{lo}:{hi}] on axis {axis} is outside 0..{dim} of {t}")
            out.append(-(-(hi - lo) // st))
        elif st == 1:
            out.append(dim_sub(hi, lo))
        else:
            out.append(dim_floordiv(dim_add(dim_sub(hi, lo), st - 1), st))
    return [TensorType(tuple(out), t.dtype)]


def _slice_ref(xs: Sequence[Array], attrs: Mapping[str, Attr]) -> list[Array]:
    index = tuple(
        slice(_static(lo, "slice"), _static(hi, "slice"), st)
        for lo, hi, st in zip(_dims(attrs, "start"), _dims(attrs, "stop"), _ints(attrs, "step"), strict=True)
    )
    return [xs[0][index]]


_op("slice", "transform", 1, {"start": "dims", "stop": "dims", "step": "ints"}, _slice_rule, _slice_ref,
    "``x[start:stop:step]`` on every axis (static bounds, in range)")


def _pad_rule(types: Sequence[TensorType], attrs: Mapping[str, Attr]) -> list[TensorType]:
    t, lo, hi = types[0], _ints(attrs, "lo"), _ints(attrs, "hi")
    if len(lo) != t.rank or len(hi) != t.rank or min(lo + hi, default=0) < 0:
        raise ShapeError(f"pad of {t} needs non-negative lo/hi of length {t.rank}, got {lo}, {hi}")
    return [TensorType(tuple(dim_add(dim_add(d, a), b) for d, a, b in zip(t.shape, lo, hi, strict=True)), t.dtype)]


def _pad_ref(xs: Sequence[Array], attrs: Mapping[str, Attr]) -> list[Array]:
    widths = list(zip(_ints(attrs, "lo"), _ints(attrs, "hi"), strict=True))
    fill = _scalar_array(attrs["value"], _type_of(xs[0]))
    return [np.pad(xs[0], widths, constant_values=fill)]


_op("pad", "transform", 1, {"lo": "ints", "hi": "ints", "value": "scalar"}, _pad_rule, _pad_ref,
    "constant padding: ``lo[i]`` before and ``hi[i]`` after axis i")


def _flip_rule(types: Sequence[TensorType], attrs: Mapping[str, Attr]) -> list[TensorType]:
    for a in _ints(attrs, "axes"):
        _axis(a, types[0].rank, "flip")
    return [types[0]]


_op("flip", "transform", 1, {"axes": "ints"}, _flip_rule,
    lambda xs, attrs: [np.flip(xs[0], _ints(attrs, "axes"))], "reverse the order along ``axes``")


def _repeat_rule(types: Sequence[TensorType], attrs: Mapping[str, Attr]) -> list[TensorType]:
    t, axis, n = types[0], _int(attrs, "axis"), _int(attrs, "repeats")
    _axis(axis, t.rank, "repeat")
    return [TensorType((*t.shape[:axis], dim_mul(t.shape[axis], n), *t.shape[axis + 1:]), t.dtype)]


_op("repeat", "transform", 1, {"repeats": "int", "axis": "int"}, _repeat_rule,
    lambda xs, attrs: [np.repeat(xs[0], _int(attrs, "repeats"), axis=_int(attrs, "axis"))],
    "repeat each element ``repeats`` times along ``axis`` (np.repeat)")


def _tile_rule(types: Sequence[TensorType], attrs: Mapping[str, Attr]) -> list[TensorType]:
    t, reps = types[0], _ints(attrs, "reps")
    if len(reps) != t.rank:
        raise ShapeError(f"tile reps {reps} must have one entry per dim of {t}")
    return [TensorType(tuple(dim_mul(d, r) for d, r in zip(t.shape, reps, strict=True)), t.dtype)]


_op("tile", "transform", 1, {"reps": "ints"}, _tile_rule,
    lambda xs, attrs: [np.tile(xs[0], _ints(attrs, "reps"))], "repeat the whole tensor ``reps`` times per dim")


# --- reductions -----------------------------------------------------------------------------


def _reduced_shape(t: TensorType, axes: tuple[int, ...], keepdims: bool, what: str) -> tuple[Dim, ...]:
    for a in axes:
        _axis(a, t.rank, what)
    if len(set(axes)) != len(axes):
        raise ShapeError(f"{what} axes {axes} repeat an axis")
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(t.shape))
    return tuple(d for i, d in enumerate(t.shape) if i not in axes)


def _sum_type(dtype: DType) -> DType:
    return dtype if dtype.is_floating else DType.int64


def _reduce(name: str, fn: Callable[..., Array], result: Callable[[DType], DType], doc: str,
            extra_attrs: Mapping[str, str] | None = None) -> None:
    attrs_kinds = {"axes": "ints", "keepdims": "bool", **(extra_attrs or {})}

    def rule(types: Sequence[TensorType], attrs: Mapping[str, Attr]) -> list[TensorType]:
        t = types[0]
        shape = _reduced_shape(t, _ints(attrs, "axes"), _bool(attrs, "keepdims"), name)
        return [TensorType(shape, result(t.dtype))]

    def reference(xs: Sequence[Array], attrs: Mapping[str, Attr]) -> list[Array]:
        out = result(_type_of(xs[0]))
        compute = _widen(out) if out.is_floating else out
        x = _cast(xs[0], compute) if compute is not DType.bool else xs[0]
        kwargs = {k: attrs[k] for k in (extra_attrs or {})}
        with np.errstate(all="ignore"):
            r = fn(x, axis=_ints(attrs, "axes"), keepdims=_bool(attrs, "keepdims"), **kwargs)
        return [_cast(r, out)]

    _op(name, "reduce", 1, attrs_kinds, rule, reference, doc)


def _var(x: Array, axis: tuple[int, ...], keepdims: bool, correction: float) -> Array:
    return np.var(x, axis=axis, keepdims=keepdims, ddof=correction)  # type: ignore[no-any-return]


_reduce("sum", np.sum, _sum_type, "sum over ``axes`` (ints and bool sum to int64, as in torch)")
_reduce("prod", np.prod, _sum_type, "product over ``axes``")
_reduce("max", np.max, _same, "NaN-propagating maximum over ``axes``")
_reduce("min", np.min, _same, "NaN-propagating minimum over ``axes``")
_reduce("mean", np.mean, _to_float, "arithmetic mean over ``axes``")
_reduce("var", _var, _to_float, "variance with ``correction`` (0 biased, 1 unbiased)",
        {"correction": "float"})
_reduce("any", np.any, _to_bool, "logical or over ``axes``")
_reduce("all", np.all, _to_bool, "logical and over ``axes``")


def _arg_reduce(name: str, fn: Callable[..., Array]) -> None:
    def rule(types: Sequence[TensorType], attrs: Mapping[str, Attr]) -> list[TensorType]:
        shape = _reduced_shape(types[0], (_int(attrs, "axis"),), _bool(attrs, "keepdims"), name)
        return [TensorType(shape, DType.int64)]

    def reference(xs: Sequence[Array], attrs: Mapping[str, Attr]) -> list[Array]:
        x = xs[0]
        if _type_of(x) is DType.bfloat16:
            x = x.astype(np.float32)  # exact, and every numpy version can compare it
        return [np.asarray(fn(x, axis=_int(attrs, "axis"), keepdims=_bool(attrs, "keepdims"))).astype(np.int64)]

    _op(name, "reduce", 1, {"axis": "int", "keepdims": "bool"}, rule, reference,
        f"index of the first {name[3:]} along ``axis`` (int64)")


_arg_reduce("argmax", np.argmax)
_arg_reduce("argmin", np.argmin)


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
    out = promote(_type_of(xs[0]), _type_of(xs[1]))
    a, b = (_cast(x, _widen(out)) for x in xs)
    return [_cast(np.matmul(a, b), out)]


_op("matmul", "linalg", 2, {}, _matmul_rule, _matmul_ref,
    "NumPy matmul: batched over leading dims, 1-D operands promoted; half types accumulate in f32")


def _dot_rule(types: Sequence[TensorType], attrs: Mapping[str, Attr]) -> list[TensorType]:
    a, b = types
    if a.rank != 1 or b.rank != 1 or a.shape != b.shape:
        raise ShapeError(f"dot needs two vectors of one length, got {a} and {b}")
    return [TensorType((), promote(a.dtype, b.dtype))]


_op("dot", "linalg", 2, {}, _dot_rule, _matmul_ref, "inner product of two vectors")


# --- indexing -------------------------------------------------------------------------------


def _where_rule(types: Sequence[TensorType], _attrs: Mapping[str, Attr]) -> list[TensorType]:
    cond, a, b = types
    if cond.dtype is not DType.bool:
        raise ShapeError(f"where condition must be bool, got {cond}")
    shape = broadcast_shapes(broadcast_shapes(cond.shape, a.shape), b.shape)
    return [TensorType(shape, promote(a.dtype, b.dtype))]


def _where_ref(xs: Sequence[Array], _attrs: Mapping[str, Attr]) -> list[Array]:
    out = promote(_type_of(xs[1]), _type_of(xs[2]))
    return [np.where(xs[0], _cast(xs[1], out), _cast(xs[2], out))]


_op("where", "indexing", 3, {}, _where_rule, _where_ref, "select ``a`` where ``cond`` else ``b`` (broadcasting)")


def _check_indices(t: TensorType, what: str) -> None:
    if not t.dtype.is_integer:
        raise ShapeError(f"{what} indices must be integers, got {t}")


def _take_rule(types: Sequence[TensorType], attrs: Mapping[str, Attr]) -> list[TensorType]:
    x, idx = types
    axis = _axis(_int(attrs, "axis"), x.rank, "take")
    _check_indices(idx, "take")
    return [TensorType(x.shape[:axis] + idx.shape + x.shape[axis + 1:], x.dtype)]


_op("take", "indexing", 2, {"axis": "int"}, _take_rule,
    lambda xs, attrs: [np.take(xs[0], xs[1], axis=_int(attrs, "axis"))],
    "``np.take``: rows of ``axis`` picked by an index tensor (negative indices wrap)")


def _along_rule(types: Sequence[TensorType], attrs: Mapping[str, Attr]) -> list[TensorType]:
    x, idx = types[0], types[1]
    axis = _axis(_int(attrs, "axis"), x.rank, "take_along_axis")
    _check_indices(idx, "take_along_axis")
    if idx.rank != x.rank:
        raise ShapeError(f"indices {idx} must have the rank of {x}")
    if len(types) == 3 and types[2].rank != x.rank:
        raise ShapeError(f"updates {types[2]} must have the rank of {x}")
    del axis
    return [TensorType(idx.shape, x.dtype)] if len(types) == 2 else [x]


def _crop(x: Array, shape: Sequence[int], skip: int | None = None) -> Array:
    return x[tuple(slice(None) if i == skip else slice(0, s) for i, s in enumerate(shape))]


def _take_along_ref(xs: Sequence[Array], attrs: Mapping[str, Attr]) -> list[Array]:
    x, idx, axis = xs[0], xs[1], _int(attrs, "axis")
    return [np.take_along_axis(_crop(x, idx.shape, axis), idx, axis=axis)]


_op("take_along_axis", "indexing", 2, {"axis": "int"}, _along_rule, _take_along_ref,
    "torch.gather: ``out[i][j] = x[i][idx[i][j]]`` for axis 1 (result has the indices' shape)")


def _scatter_index(idx: Array, axis: int) -> tuple[Array, ...]:
    grid: list[Array] = list(np.indices(idx.shape, sparse=True))
    grid[axis] = idx
    return tuple(np.broadcast_arrays(*grid))


def _scatter_ref(xs: Sequence[Array], attrs: Mapping[str, Attr]) -> list[Array]:
    x, idx, upd, axis = xs[0], xs[1], xs[2], _int(attrs, "axis")
    out = x.copy()
    out[_scatter_index(idx, axis)] = _cast(_crop(upd, idx.shape), _type_of(x))
    return [out]


def _scatter_add_ref(xs: Sequence[Array], attrs: Mapping[str, Attr]) -> list[Array]:
    x, idx, upd, axis = xs[0], xs[1], xs[2], _int(attrs, "axis")
    dtype = _type_of(x)
    out = _cast(x, _widen(dtype)).copy()
    np.add.at(out, _scatter_index(idx, axis), _cast(_crop(upd, idx.shape), _widen(dtype)))
    return [_cast(out, dtype)]


_op("scatter", "indexing", 3, {"axis": "int"}, _along_rule, _scatter_ref,
    "torch.scatter: a copy of x with ``out[i][idx[i][j]] = upd[i][j]`` for axis 1")
_op("scatter_add", "indexing", 3, {"axis": "int"}, _along_rule, _scatter_add_ref,
    "torch.scatter_add: like scatter but accumulating repeated indices")


def _dynamic_starts(types: Sequence[TensorType], rank: int, what: str) -> None:
    if len(types) != rank:
        raise ShapeError(f"{what} needs {rank} start operand(s), one per dim, got {len(types)}")
    for t in types:
        if t.rank != 0 or not t.dtype.is_integer:
            raise ShapeError(f"{what} starts must be integer scalars, got {t}")


def _dynamic_slice_rule(types: Sequence[TensorType], attrs: Mapping[str, Attr]) -> list[TensorType]:
    x, sizes = types[0], _ints(attrs, "sizes")
    _dynamic_starts(types[1:], x.rank, "dynamic_slice")
    if len(sizes) != x.rank:
        raise ShapeError(f"dynamic_slice sizes {sizes} need one entry per dim of {x}")
    return [TensorType(sizes, x.dtype)]


def _clamped_starts(xs: Sequence[Array], shape: Sequence[int], sizes: Sequence[int]) -> list[int]:
    # XLA semantics: starts are clamped so that the window fits.
    return [min(max(int(s), 0), d - n) for s, d, n in zip(xs, shape, sizes, strict=True)]


def _dynamic_slice_ref(xs: Sequence[Array], attrs: Mapping[str, Attr]) -> list[Array]:
    x, sizes = xs[0], _ints(attrs, "sizes")
    starts = _clamped_starts(xs[1:], x.shape, sizes)
    return [x[tuple(slice(s, s + n) for s, n in zip(starts, sizes, strict=True))]]


_op("dynamic_slice", "indexing", None, {"sizes": "ints"}, _dynamic_slice_rule, _dynamic_slice_ref,
    "a ``sizes`` window at run-time starts (one int scalar operand per dim, clamped)", min_arity=1)


def _dynamic_update_rule(types: Sequence[TensorType], _attrs: Mapping[str, Attr]) -> list[TensorType]:
    x, upd = types[0], types[1]
    _dynamic_starts(types[2:], x.rank, "dynamic_update_slice")
    if upd.rank != x.rank:
        raise ShapeError(f"dynamic_update_slice update {upd} must have the rank of {x}")
    return [x]


def _dynamic_update_ref(xs: Sequence[Array], _attrs: Mapping[str, Attr]) -> list[Array]:
    x, upd = xs[0], xs[1]
    starts = _clamped_starts(xs[2:], x.shape, upd.shape)
    out = x.copy()
    out[tuple(slice(s, s + n) for s, n in zip(starts, upd.shape, strict=True))] = _cast(upd, _type_of(x))
    return [out]


_op("dynamic_update_slice", "indexing", None, {}, _dynamic_update_rule, _dynamic_update_ref,
    "a copy of x with ``update`` written at run-time starts (clamped)", min_arity=2)


# --- nn -------------------------------------------------------------------------------------


def _softmax_rule(types: Sequence[TensorType], attrs: Mapping[str, Attr]) -> list[TensorType]:
    _axis(_int(attrs, "axis"), types[0].rank, "softmax")
    return [TensorType(types[0].shape, _to_float(types[0].dtype))]


def softmax(x: Array, axis: int) -> Array:
    """Numerically stable softmax (subtracts the max first)."""
    shifted = x - np.max(x, axis=axis, keepdims=True)
    e = np.exp(shifted)
    return e / np.sum(e, axis=axis, keepdims=True)  # type: ignore[no-any-return]


def _softmax_ref(xs: Sequence[Array], attrs: Mapping[str, Attr]) -> list[Array]:
    out = _to_float(_type_of(xs[0]))
    with np.errstate(all="ignore"):
        return [_cast(softmax(_cast(xs[0], _widen(out)), _int(attrs, "axis")), out)]


_op("softmax", "nn", 1, {"axis": "int"}, _softmax_rule, _softmax_ref, "stable softmax along ``axis``")


def _topk_rule(types: Sequence[TensorType], attrs: Mapping[str, Attr]) -> list[TensorType]:
    t, k = types[0], _int(attrs, "k")
    axis = _axis(_int(attrs, "axis"), t.rank, "topk")
    size = t.shape[axis]
    if isinstance(size, int) and not 0 <= k <= size:
        raise ShapeError(f"topk k={k} is outside 0..{size} for {t}")
    shape = (*t.shape[:axis], k, *t.shape[axis + 1:])
    return [TensorType(shape, t.dtype), TensorType(shape, DType.int64)]


def topk(x: Array, k: int, axis: int, largest: bool) -> tuple[Array, Array]:
    """Top ``k`` values and their indices along ``axis``, sorted; ties keep index order."""
    key = x.astype(np.float64)
    order = np.argsort(-key if largest else key, axis=axis, kind="stable")
    idx = np.take(order, np.arange(k), axis=axis)
    return np.take_along_axis(x, idx, axis=axis), idx.astype(np.int64)


_op("topk", "nn", 1, {"k": "int", "axis": "int", "largest": "bool"}, _topk_rule,
    lambda xs, attrs: list(topk(xs[0], _int(attrs, "k"), _int(attrs, "axis"), _bool(attrs, "largest"))),
    "the k largest (or smallest) values along ``axis`` and their int64 indices")


# --- convolution ----------------------------------------------------------------------------


def _conv(nd: int) -> None:
    name = f"conv{nd}d"

    def rule(types: Sequence[TensorType], attrs: Mapping[str, Attr]) -> list[TensorType]:
        x, w = types
        stride, dil = _ints(attrs, "stride"), _ints(attrs, "dilation")
        lo, hi, groups = _ints(attrs, "pad_lo"), _ints(attrs, "pad_hi"), _int(attrs, "groups")
        if x.rank != nd + 2 or w.rank != nd + 2:
            raise ShapeError(f"{name} needs rank-{nd + 2} input and weight, got {x} and {w}")
        if not len(stride) == len(dil) == len(lo) == len(hi) == nd:
            raise ShapeError(f"{name} needs {nd} entries in stride/dilation/pad_lo/pad_hi")
        c_in = _static(x.shape[1], f"{name} channels")
        if groups < 1 or c_in % groups or w.shape[1] != c_in // groups:
            raise ShapeError(f"{name}: input {x} with groups={groups} does not fit weight {w}")
        if isinstance(w.shape[0], int) and w.shape[0] % groups:
            raise ShapeError(f"{name}: {w.shape[0]} output channels not divisible by groups={groups}")
        spatial: list[Dim] = []
        for i in range(nd):
            k = _static(w.shape[2 + i], f"{name} kernel")
            span = dil[i] * (k - 1) + 1
            padded = dim_add(x.shape[2 + i], lo[i] + hi[i])
            if isinstance(padded, int):
                if padded < span:
                    raise ShapeError(f"{name}: kernel span {span} exceeds padded input {padded} in {x}")
                spatial.append((padded - span) // stride[i] + 1)
            else:
                spatial.append(dim_floordiv(dim_add(padded, stride[i] - span), stride[i]))
        return [TensorType((x.shape[0], w.shape[0], *spatial), promote(x.dtype, w.dtype))]

    def reference(xs: Sequence[Array], attrs: Mapping[str, Attr]) -> list[Array]:
        out = promote(_type_of(xs[0]), _type_of(xs[1]))
        return [_cast(conv(_cast(xs[0], _widen(out)), _cast(xs[1], _widen(out)), _ints(attrs, "stride"),
                           _ints(attrs, "pad_lo"), _ints(attrs, "pad_hi"), _ints(attrs, "dilation"),
                           _int(attrs, "groups")), out)]

    _op(name, "conv", 2,
        {"stride": "ints", "pad_lo": "ints", "pad_hi": "ints", "dilation": "ints", "groups": "int"},
        rule, reference, f"grouped {nd}-d cross-correlation, NC{'HW'[:nd]} layout, weight OI{'HW'[:nd]}")


def conv(x: Array, w: Array, stride: Sequence[int], pad_lo: Sequence[int], pad_hi: Sequence[int],
         dilation: Sequence[int], groups: int) -> Array:
    """N-d grouped cross-correlation (torch's convolution) by windowed tensor contraction."""
    nd = x.ndim - 2
    x = np.pad(x, [(0, 0), (0, 0), *zip(pad_lo, pad_hi, strict=True)])
    kernel = w.shape[2:]
    spans = [d * (k - 1) + 1 for d, k in zip(dilation, kernel, strict=True)]
    win = np.lib.stride_tricks.sliding_window_view(x, spans, axis=tuple(range(2, 2 + nd)))
    # win: N, C, *out_full, *spans → subsample outputs by stride and windows by dilation
    index = (slice(None), slice(None), *(slice(None, None, s) for s in stride),
             *(slice(None, None, d) for d in dilation))
    win = win[index]
    n, c = x.shape[:2]
    out_sp = win.shape[2:2 + nd]
    win = win.reshape(n, groups, c // groups, *out_sp, *kernel)
    wg = w.reshape(groups, w.shape[0] // groups, c // groups, *kernel)
    sp = "".join("hwd"[i] for i in range(nd))
    ks = "".join("klm"[i] for i in range(nd))
    out = np.einsum(f"ngc{sp}{ks},goc{ks}->ngo{sp}", win, wg, optimize=True)
    return out.reshape(n, w.shape[0], *out_sp)  # type: ignore[no-any-return]


_conv(1)
_conv(2)


# --- collectives ----------------------------------------------------------------------------


def _collective(
    name: str, attrs: Mapping[str, str], rule: ShapeRule, doc: str,
    call: Callable[[CollectiveBackend, Array, Mapping[str, Attr]], Array],
) -> None:
    def reference(xs: Sequence[Array], attrs: Mapping[str, Attr]) -> list[Array]:
        return [np.asarray(call(collective_backend(name), xs[0], attrs))]

    _op(name, "collective", 1, attrs, rule, reference, doc)


_REDUCE_OPS = ("sum", "avg", "product", "min", "max")


def _check_reduce_op(attrs: Mapping[str, Attr]) -> None:
    if attrs["reduce_op"] not in _REDUCE_OPS:
        raise ShapeError(f"reduce_op {attrs['reduce_op']!r} is not one of {_REDUCE_OPS}")


def _all_reduce_rule(types: Sequence[TensorType], attrs: Mapping[str, Attr]) -> list[TensorType]:
    _check_reduce_op(attrs)
    return [types[0]]


def _all_gather_rule(types: Sequence[TensorType], attrs: Mapping[str, Attr]) -> list[TensorType]:
    t = types[0]
    if t.rank == 0:
        raise ShapeError("all_gather needs rank >= 1")
    return [TensorType((dim_mul(t.shape[0], _int(attrs, "group_size")), *t.shape[1:]), t.dtype)]


def _reduce_scatter_rule(types: Sequence[TensorType], attrs: Mapping[str, Attr]) -> list[TensorType]:
    _check_reduce_op(attrs)
    t = types[0]
    if t.rank == 0:
        raise ShapeError("reduce_scatter needs rank >= 1")
    return [TensorType((dim_floordiv(t.shape[0], _int(attrs, "group_size")), *t.shape[1:]), t.dtype)]


def _all_to_all_rule(types: Sequence[TensorType], attrs: Mapping[str, Attr]) -> list[TensorType]:
    t, out_splits = types[0], _ints(attrs, "output_split_sizes")
    if not out_splits:
        return [t]
    return [TensorType((sum(out_splits), *t.shape[1:]), t.dtype)]


def _group(attrs: Mapping[str, Attr]) -> str:
    return str(attrs["group_name"])


_GROUP = {"group_name": "str"}
_collective("all_reduce", {"reduce_op": "str", **_GROUP}, _all_reduce_rule,
            "reduce over the ranks of ``group_name``",
            lambda b, x, attrs: b.all_reduce(x, str(attrs["reduce_op"]), _group(attrs)))
_collective("all_gather", {"group_size": "int", **_GROUP}, _all_gather_rule,
            "concatenate every rank's tensor along dim 0",
            lambda b, x, attrs: b.all_gather(x, _group(attrs)))
_collective("reduce_scatter", {"reduce_op": "str", "group_size": "int", **_GROUP}, _reduce_scatter_rule,
            "reduce over ranks, each rank keeping its dim-0 shard",
            lambda b, x, attrs: b.reduce_scatter(x, str(attrs["reduce_op"]), _group(attrs)))
_collective("broadcast", {"src": "int", **_GROUP}, lambda types, _attrs: [types[0]],
            "every rank gets group rank ``src``'s tensor",
            lambda b, x, attrs: b.broadcast(x, _int(attrs, "src"), _group(attrs)))
_collective("all_to_all", {"output_split_sizes": "ints", "input_split_sizes": "ints", **_GROUP},
            _all_to_all_rule, "exchange dim-0 chunks between ranks",
            lambda b, x, attrs: b.all_to_all(
                x, _group(attrs), _ints(attrs, "output_split_sizes") or None,
                _ints(attrs, "input_split_sizes") or None))
