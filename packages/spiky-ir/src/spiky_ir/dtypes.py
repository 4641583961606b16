"""Element types of the NKIPy IR, their numpy counterparts and NumPy-style promotion."""

from __future__ import annotations

import builtins
import enum
from typing import Any

import numpy as np

from spiky_ir.errors import IRError


class DType(enum.Enum):
    """An IR element type; ``value`` is the short name used by the text form."""

    bool = "bool"
    int8 = "i8"
    int16 = "i16"
    int32 = "i32"
    int64 = "i64"
    uint8 = "u8"
    float16 = "f16"
    bfloat16 = "bf16"
    float32 = "f32"
    float64 = "f64"

    @property
    def is_floating(self) -> builtins.bool:
        return self in _FLOATS

    @property
    def is_integer(self) -> builtins.bool:
        return self in _INTS

    @property
    def itemsize(self) -> int:
        return _ITEMSIZE[self]

    def to_numpy(self) -> np.dtype[Any]:
        """The numpy dtype holding this type (bfloat16 needs the ``ml_dtypes`` package)."""
        cached = _TO_NUMPY.get(self)
        if cached is not None:
            return cached
        if self is DType.bfloat16:
            try:
                import ml_dtypes  # type: ignore[import-not-found,unused-ignore]
            except ImportError as exc:
                raise IRError(
                    "bfloat16 arrays need the 'ml_dtypes' package; install it with "
                    "'pip install ml_dtypes' or use float32/float16"
                ) from exc
            bf16: np.dtype[Any] = np.dtype(ml_dtypes.bfloat16)
            _TO_NUMPY[self] = bf16
            return bf16
        _TO_NUMPY[self] = np.dtype(_NUMPY_NAME[self])
        return _TO_NUMPY[self]

    @staticmethod
    def from_numpy(dtype: Any) -> DType:
        """The IR type of a numpy dtype (or anything ``np.dtype`` accepts).

        Memoised per numpy dtype: references call it per op and call, and ``np.dtype.name`` is slow.
        """
        try:
            return _FROM_NUMPY[dtype]
        except (KeyError, TypeError):  # not seen yet, or unhashable
            pass
        dt = np.dtype(dtype)
        if dt in _FROM_NUMPY:
            return _FROM_NUMPY[dt]
        found = DType._from_numpy_name(dt)
        _FROM_NUMPY[dt] = found
        return found

    @staticmethod
    def _from_numpy_name(dt: np.dtype[Any]) -> DType:
        if dt.name == "bfloat16":
            return DType.bfloat16
        for ir_type, name in _NUMPY_NAME.items():
            if dt.name == name:
                return ir_type
        valid = ", ".join(_NUMPY_NAME.values())
        raise IRError(f"numpy dtype {dt.name!r} has no IR type; supported: {valid}, bfloat16")

    @staticmethod
    def parse(short: str) -> DType:
        """``DType.parse("f32") is DType.float32``; also accepts the long names."""
        for ir_type in DType:
            if short in (ir_type.value, ir_type.name):
                return ir_type
        valid = ", ".join(t.value for t in DType)
        raise IRError(f"unknown dtype {short!r}; valid: {valid}")


_FLOATS = frozenset({DType.float16, DType.bfloat16, DType.float32, DType.float64})
_INTS = frozenset({DType.int8, DType.int16, DType.int32, DType.int64, DType.uint8})
_ITEMSIZE = {
    DType.bool: 1, DType.int8: 1, DType.uint8: 1, DType.int16: 2, DType.float16: 2,
    DType.bfloat16: 2, DType.int32: 4, DType.float32: 4, DType.int64: 8, DType.float64: 8,
}
_NUMPY_NAME = {
    DType.bool: "bool", DType.int8: "int8", DType.int16: "int16", DType.int32: "int32",
    DType.int64: "int64", DType.uint8: "uint8", DType.float16: "float16",
    DType.float32: "float32", DType.float64: "float64",
}
_TO_NUMPY: dict[DType, np.dtype[Any]] = {}
_FROM_NUMPY: dict[Any, DType] = {}
"""Memos of :meth:`DType.to_numpy` and :meth:`DType.from_numpy` (keys: numpy dtypes)."""

# Category lattice used by promotion: bool < integers < floats (as in NumPy and torch).
_SIGNED = [DType.int8, DType.int16, DType.int32, DType.int64]
_FLOAT_ORDER = [DType.float16, DType.float32, DType.float64]


def promote(a: DType, b: DType) -> DType:
    """Result type of a binary op on tensors of types ``a`` and ``b``.

    Follows torch's tensor-tensor rule (which NumPy shares for these types): the
    higher category wins, then the wider type; ``uint8`` with a signed type needs
    the next signed width; ``bfloat16`` with ``float16`` gives ``float32``.
    """
    if a is b:
        return a
    if a is DType.bool:
        return b
    if b is DType.bool:
        return a
    if a.is_floating != b.is_floating:
        return a if a.is_floating else b
    if a.is_floating:
        if DType.bfloat16 in (a, b):
            other = b if a is DType.bfloat16 else a
            return DType.float32 if other is DType.float16 else other
        return max(a, b, key=_FLOAT_ORDER.index)
    if DType.uint8 in (a, b):
        other = b if a is DType.uint8 else a
        return DType.int16 if other is DType.int8 else other
    return max(a, b, key=_SIGNED.index)
