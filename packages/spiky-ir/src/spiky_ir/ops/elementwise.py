"""Elementwise ops: one line each, every rule derived from that line.

``unary(name, numpy function, result-type rule, hlo=..., aten=...)`` (and ``binary``) gives
the op all of its rules:

- shape/dtype: operands broadcast, their types promote, the result type rule applies to the
  promoted type (:func:`spiky_ir.registry.elementwise_shape_rule`);
- numpy reference: cast the operands to the compute type, apply the numpy function, cast to
  the result type (:func:`spiky_ir.registry.elementwise_compute_type`);
- HLO: ``hlo`` is an HLO opcode name or an emitter (the HLO emitters below); operands are
  coerced to the compute type first (``hlo_compute`` changes how it is chosen);
- padding: position-wise (garbage stays in the padded region);
- kernel source: the same numpy call; a function that is not numpy's own (erf, sigmoid,
  rsqrt) has its source copied into the kernel;
- FX lowering: the ATen overloads in ``aten`` lower onto the op one to one (binary ops accept
  a Python scalar on either side, weakly typed as in torch).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from spiky_ir.dtypes import DType
from spiky_ir.errors import IRError, ShapeError
from spiky_ir.hlo.builder import ComputationBuilder, HloValue
from spiky_ir.hlo.rules import BOOL, ComputeRule, Emit, compute_type, elementwise_rule, hlo_rule, nonzero, opcode, zero
from spiky_ir.ir import Node
from spiky_ir.kernel_source import KernelEmitter, input_types, kernel_helper, kernel_rule, numpy_name
from spiky_ir.padding import pad_rule, positionwise
from spiky_ir.registry import (
    Array,
    DTypeRule,
    Elementwise,
    OpDef,
    cast,
    dtype_of,
    elementwise_compute_type,
    elementwise_shape_rule,
    get_op,
    register_op,
    same,
    to_bool,
    to_float,
)
from spiky_ir.types import Attr


def _define(name: str, arity: int, fn: Callable[..., Array], result: DTypeRule, hlo: str | Emit,
            hlo_compute: ComputeRule, aten: Sequence[str], doc: str) -> OpDef:
    def reference(xs: Sequence[Array], _attrs: Mapping[str, Attr]) -> list[Array]:
        # Compute in one type derived from the promoted operand type, so numpy's own
        # (different) promotion of e.g. int32 with float16 never leaks into results.
        compute, out = elementwise_compute_type(name, [dtype_of(x) for x in xs])
        args = [cast(x, compute) for x in xs]
        with np.errstate(all="ignore"):
            return [cast(fn(*args), out)]

    category = "unary" if arity == 1 else "binary"
    opdef = register_op(OpDef(name, category, arity, {}, elementwise_shape_rule(result), reference,
                              doc or f"elementwise {name}", aten=tuple(aten), elementwise=Elementwise(fn, result)))
    hlo_rule(name)(elementwise_rule(opcode(hlo) if isinstance(hlo, str) else hlo, hlo_compute))
    pad_rule(name)(positionwise)
    kernel_helper(fn)
    kernel_rule(name)(_kernel)
    return opdef


def unary(name: str, fn: Callable[..., Array], result: DTypeRule = same, *, hlo: str | Emit,
          hlo_compute: ComputeRule = compute_type, aten: Sequence[str] = (), doc: str = "") -> OpDef:
    """Define and register a one-operand elementwise op with all of its rules (see the module doc)."""
    return _define(name, 1, fn, result, hlo, hlo_compute, aten, doc)


def binary(name: str, fn: Callable[..., Array], result: DTypeRule = same, *, hlo: str | Emit,
           hlo_compute: ComputeRule = compute_type, aten: Sequence[str] = (), doc: str = "") -> OpDef:
    """Define and register a two-operand (broadcasting) elementwise op with all of its rules."""
    return _define(name, 2, fn, result, hlo, hlo_compute, aten, doc)


def _kernel(e: KernelEmitter, node: Node, args: list[str], _attrs: Mapping[str, Attr]) -> str:
    compute, out = elementwise_compute_type(node.op, input_types(node))
    ew = get_op(node.op).elementwise
    assert ew is not None
    cast_args = [e.cast(a, t, compute) for a, t in zip(args, input_types(node), strict=True)]
    expr = f"{e.function(ew.fn)}({', '.join(cast_args)})"
    if out is not compute or numpy_name(ew.fn) is None:  # a helper may compute in another type (erf)
        expr = f"np.asarray({expr}).astype({e.dt(out)})"
    return expr


# --- numpy functions numpy lacks ------------------------------------------------------------------


def erf(x: Array) -> Array:
    """Error function, exact to double precision (numpy has none): math.erf per element, into float64."""
    flat = x.astype(np.float64).ravel()
    return np.fromiter(map(math.erf, flat.tolist()), np.float64, count=flat.size).reshape(x.shape)  # type: ignore[no-any-return]


def sigmoid(x: Array) -> Array:
    return 1.0 / (1.0 + np.exp(-x))


def rsqrt(x: Array) -> Array:
    return 1.0 / np.sqrt(x)


def _bits(dtype: DType) -> DType:
    if dtype.is_floating:
        raise ShapeError(f"bitwise ops need integer or bool operands, got {dtype.value}")
    return dtype


# --- HLO emitters for ops that are more than one HLO instruction ------------------------------------


def _arith(name: str, on_bool: str | None = None) -> Emit:
    """HLO ``name``; on bool operands ``on_bool`` (or, and; power computes in int32), or an error."""

    def emit(b: ComputationBuilder, a: list[HloValue]) -> HloValue:
        if a[0].dtype is BOOL:
            if on_bool is None:
                raise IRError(f"'{name}' is not defined on bool (numpy rejects it too)")
            if on_bool == "power":  # x ** y on bools, computed in int32
                ints = [b.convert(x, DType.int32) for x in a]
                return b.convert(b.elementwise("power", ints), BOOL)
            return b.elementwise(on_bool, a)
        return b.elementwise(name, a)

    return emit


def _int_division(b: ComputationBuilder, a: list[HloValue], result: HloValue) -> HloValue:
    """numpy gives 0 for an integer division by zero (XLA gives -1 or the dividend)."""
    y = a[1]
    if y.dtype.is_floating:
        return result
    return b.select(b.compare("EQ", y, zero(b, y)), zero(b, result), result)


def _signs_differ(b: ComputationBuilder, r: HloValue, y: HloValue) -> HloValue:
    """A nonzero remainder ``r`` whose sign differs from the divisor's."""
    differ = b.compare("NE", b.compare("LT", r, zero(b, r)), b.compare("LT", y, zero(b, y)))
    return b.elementwise("and", [b.compare("NE", r, zero(b, r)), differ])


def _floor_divide(b: ComputationBuilder, a: list[HloValue]) -> HloValue:
    x, y = a
    if x.dtype.is_floating:
        return b.elementwise("floor", [b.elementwise("divide", [x, y])])
    q = b.elementwise("divide", [x, y])  # truncates toward zero
    r = b.elementwise("remainder", [x, y])
    adjust = _signs_differ(b, r, y)
    return _int_division(b, a, b.select(adjust, b.elementwise("subtract", [q, b.full(1, q.dtype, q.dims)]), q))


def _remainder(b: ComputationBuilder, a: list[HloValue]) -> HloValue:
    x, y = a
    r = b.elementwise("remainder", [x, y])  # C fmod: the sign of the dividend
    adjust = _signs_differ(b, r, y)
    return _int_division(b, a, b.select(adjust, b.elementwise("add", [r, y]), r))


def _fmod(b: ComputationBuilder, a: list[HloValue]) -> HloValue:
    return _int_division(b, a, b.elementwise("remainder", a))


def _int8_bool(operand: DType, out: DType) -> DType:
    """Integer division ops on bool compute in int8, as numpy's upcast does."""
    return DType.int8 if operand is BOOL else compute_type(operand, out)


def _operand_type(operand: DType, _out: DType) -> DType:
    """Comparisons and logical ops compute in the promoted operand type."""
    return operand


def _compare(direction: str) -> Emit:
    return lambda b, a: b.compare(direction, a[0], a[1])


def _logical(name: str) -> Emit:
    return lambda b, a: b.elementwise(name, [nonzero(b, x) for x in a])


def _integral_identity(name: str) -> Emit:
    """Rounding ops: the identity on ints and bools (numpy agrees), ``name`` on floats."""
    return lambda b, a: b.elementwise(name, a) if a[0].dtype.is_floating else a[0]


def _trunc(b: ComputationBuilder, a: list[HloValue]) -> HloValue:
    x = a[0]
    if not x.dtype.is_floating:
        return x
    return b.select(b.compare("LT", x, zero(b, x)), b.elementwise("ceil", [x]), b.elementwise("floor", [x]))


def _sign(b: ComputationBuilder, a: list[HloValue]) -> HloValue:
    x = a[0]
    if x.dtype is BOOL:
        return x
    if x.dtype is DType.uint8:
        return b.convert(nonzero(b, x), x.dtype)
    return b.elementwise("sign", [x])


def _abs(b: ComputationBuilder, a: list[HloValue]) -> HloValue:
    return a[0] if a[0].dtype in (BOOL, DType.uint8) else b.elementwise("abs", a)  # XLA abs rejects unsigned


def _negative(b: ComputationBuilder, a: list[HloValue]) -> HloValue:
    if a[0].dtype is BOOL:
        raise IRError("'negative' is not defined on bool (numpy rejects it too); use logical_not")
    return b.elementwise("negate", a)


def _reciprocal(b: ComputationBuilder, a: list[HloValue]) -> HloValue:
    return b.elementwise("divide", [b.full(1, a[0].dtype, a[0].dims), a[0]])


def _exp2(b: ComputationBuilder, a: list[HloValue]) -> HloValue:
    """HLO has no exp2: ``power(2, x)``."""
    return b.elementwise("power", [b.full(2, a[0].dtype, a[0].dims), a[0]])


def _isnan(b: ComputationBuilder, a: list[HloValue]) -> HloValue:
    x = a[0]
    return b.compare("NE", x, x) if x.dtype.is_floating else b.full(False, BOOL, x.dims)


def _isinf(b: ComputationBuilder, a: list[HloValue]) -> HloValue:
    x = a[0]
    if not x.dtype.is_floating:
        return b.full(False, BOOL, x.dims)
    return b.compare("EQ", b.elementwise("abs", [x]), b.full(math.inf, x.dtype, x.dims))


def _logical_not(b: ComputationBuilder, a: list[HloValue]) -> HloValue:
    return b.elementwise("not", [nonzero(b, a[0])])


# --- the ops ---------------------------------------------------------------------------------------
# add and subtract take torch's ``alpha``: their ATen lowerings are composites in spiky_ir.fx.

binary("add", np.add, hlo=_arith("add", "or"))
binary("subtract", np.subtract, hlo=_arith("subtract"))
binary("multiply", np.multiply, hlo=_arith("multiply", "and"), aten=("aten.mul.Tensor", "aten.mul.Scalar"))
binary("divide", np.true_divide, to_float, hlo="divide", aten=("aten.div.Tensor", "aten.div.Scalar"),
       doc="true division; integer operands give float32")
binary("floor_divide", np.floor_divide, hlo=_floor_divide, hlo_compute=_int8_bool,
       aten=("aten.floor_divide.default",), doc="division rounded toward -inf")
binary("fmod", np.fmod, hlo=_fmod, hlo_compute=_int8_bool, aten=("aten.fmod.Tensor", "aten.fmod.Scalar"),
       doc="C-style remainder (sign of the dividend), as torch.fmod and HLO remainder")
binary("remainder", np.remainder, hlo=_remainder, hlo_compute=_int8_bool,
       aten=("aten.remainder.Tensor", "aten.remainder.Scalar"),
       doc="Python-style modulus (sign of the divisor), as torch.remainder")
binary("power", np.power, hlo=_arith("power", "power"),
       aten=("aten.pow.Tensor_Tensor", "aten.pow.Tensor_Scalar", "aten.pow.Scalar"))
binary("maximum", np.maximum, hlo=_arith("maximum", "or"), aten=("aten.maximum.default",),
       doc="NaN-propagating maximum")
binary("minimum", np.minimum, hlo=_arith("minimum", "and"), aten=("aten.minimum.default",),
       doc="NaN-propagating minimum")
binary("arctan2", np.arctan2, to_float, hlo="atan2", aten=("aten.atan2.default",))
# Comparisons and logical ops compute in the promoted operand type: (name, numpy, HLO, ATen overloads).
for _name, _fn, _emit, _overloads in [
    ("equal", np.equal, _compare("EQ"), ("aten.eq.Tensor", "aten.eq.Scalar")),
    ("not_equal", np.not_equal, _compare("NE"), ("aten.ne.Tensor", "aten.ne.Scalar")),
    ("less", np.less, _compare("LT"), ("aten.lt.Tensor", "aten.lt.Scalar")),
    ("less_equal", np.less_equal, _compare("LE"), ("aten.le.Tensor", "aten.le.Scalar")),
    ("greater", np.greater, _compare("GT"), ("aten.gt.Tensor", "aten.gt.Scalar")),
    ("greater_equal", np.greater_equal, _compare("GE"), ("aten.ge.Tensor", "aten.ge.Scalar")),
    ("logical_and", np.logical_and, _logical("and"), ("aten.logical_and.default",)),
    ("logical_or", np.logical_or, _logical("or"), ("aten.logical_or.default",)),
    ("logical_xor", np.logical_xor, _logical("xor"), ("aten.logical_xor.default",)),
]:
    binary(_name, _fn, to_bool, hlo=_emit, hlo_compute=_operand_type, aten=_overloads)
binary("bitwise_and", np.bitwise_and, _bits, hlo="and", aten=("aten.bitwise_and.Tensor", "aten.bitwise_and.Scalar"))
binary("bitwise_or", np.bitwise_or, _bits, hlo="or", aten=("aten.bitwise_or.Tensor", "aten.bitwise_or.Scalar"))
binary("bitwise_xor", np.bitwise_xor, _bits, hlo="xor", aten=("aten.bitwise_xor.Tensor", "aten.bitwise_xor.Scalar"))

unary("negative", np.negative, hlo=_negative, aten=("aten.neg.default",))
unary("abs", np.abs, hlo=_abs, aten=("aten.abs.default",))
unary("sign", np.sign, hlo=_sign, aten=("aten.sign.default",))
unary("ceil", np.ceil, hlo=_integral_identity("ceil"), aten=("aten.ceil.default",))
unary("floor", np.floor, hlo=_integral_identity("floor"), aten=("aten.floor.default",))
unary("round", np.round, hlo=_integral_identity("round-nearest-even"), aten=("aten.round.default",),
      doc="round half to even, as torch.round")
unary("trunc", np.trunc, hlo=_trunc, aten=("aten.trunc.default",))
unary("exp", np.exp, to_float, hlo="exponential", aten=("aten.exp.default",))
unary("expm1", np.expm1, to_float, hlo="exponential-minus-one", aten=("aten.expm1.default",))
unary("exp2", np.exp2, to_float, hlo=_exp2, aten=("aten.exp2.default",))
unary("log", np.log, to_float, hlo="log", aten=("aten.log.default",))
unary("log1p", np.log1p, to_float, hlo="log-plus-one", aten=("aten.log1p.default",))
unary("sqrt", np.sqrt, to_float, hlo="sqrt", aten=("aten.sqrt.default",))
unary("rsqrt", rsqrt, to_float, hlo="rsqrt", aten=("aten.rsqrt.default",))
unary("reciprocal", np.reciprocal, to_float, hlo=_reciprocal, aten=("aten.reciprocal.default",))
unary("sin", np.sin, to_float, hlo="sine", aten=("aten.sin.default",))
unary("cos", np.cos, to_float, hlo="cosine", aten=("aten.cos.default",))
unary("tan", np.tan, to_float, hlo="tan", aten=("aten.tan.default",))
unary("tanh", np.tanh, to_float, hlo="tanh", aten=("aten.tanh.default",))
unary("sigmoid", sigmoid, to_float, hlo="logistic", aten=("aten.sigmoid.default",),
      doc="1 / (1 + exp(-x)); HLO 'logistic'")
unary("erf", erf, to_float, hlo="erf", aten=("aten.erf.default",))
unary("logical_not", np.logical_not, to_bool, hlo=_logical_not, hlo_compute=_operand_type,
      aten=("aten.logical_not.default",))
unary("bitwise_not", np.invert, _bits, hlo="not", aten=("aten.bitwise_not.default",))
unary("isnan", np.isnan, to_bool, hlo=_isnan, hlo_compute=_operand_type, aten=("aten.isnan.default",))
unary("isinf", np.isinf, to_bool, hlo=_isinf, hlo_compute=_operand_type, aten=("aten.isinf.default",))
