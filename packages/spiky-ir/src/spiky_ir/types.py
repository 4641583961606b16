"""The leaf types of the IR: tensor types and op attribute values.

Everything else in spiky-ir builds on these two, so this module imports nothing of the
IR itself (only dtypes, symbolic dims and errors): the op registry, the graph classes and
the text form can all use them without importing each other.

>>> from spiky_ir.types import TensorType
>>> from spiky_ir.dtypes import DType
>>> str(TensorType(("s0", 4), DType.float32))
'f32[s0,4]'
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np

from spiky_ir.dtypes import DType
from spiky_ir.errors import IRError
from spiky_ir.symbolic import Dim, canonical


@dataclass(frozen=True)
class DenseArray:
    """A dense array attribute (the data of a ``literal`` op): element type, static shape and
    the elements' bytes, little-endian in row-major order.

    Equality and hashing are by value (bytes), so CSE and the text form see the exact data.
    The text form is ``dense<f32[2,3]:HEX>``: the bytes in hex, so it round-trips bit for bit
    (NaN payloads and signed zeros included).
    """

    dtype: DType
    shape: tuple[int, ...]
    data: bytes

    def __post_init__(self) -> None:
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in self.shape):
            raise IRError(f"dense array shape {self.shape} must be non-negative ints (dense data is static)")
        expected = math.prod(self.shape) * self.dtype.itemsize
        if len(self.data) != expected:
            raise IRError(
                f"dense array {self.dtype.value}{list(self.shape)} needs {expected} bytes of data, got {len(self.data)}"
            )

    @staticmethod
    def from_numpy(array: Any) -> DenseArray:
        """The array's type, shape and data (copied); any numpy array with an IR element type."""
        arr = np.asarray(array)
        dtype = DType.from_numpy(arr.dtype)
        raw = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        return DenseArray(dtype, tuple(int(d) for d in arr.shape), raw)

    def to_numpy(self) -> np.ndarray[Any, np.dtype[Any]]:
        """A fresh, writable numpy array holding the data."""
        little = self.dtype.to_numpy().newbyteorder("<")
        flat = np.frombuffer(self.data, dtype=little).astype(self.dtype.to_numpy())
        return flat.reshape(self.shape)

    @property
    def type(self) -> TensorType:
        return TensorType(self.shape, self.dtype)

    def __str__(self) -> str:
        return f"dense<{self.type}:{self.data.hex()}>"


Attr: TypeAlias = int | float | bool | str | DType | tuple[Dim, ...] | DenseArray | None
"""An op attribute value; tuples hold ints (axes, permutations) or dims (shapes); dense
arrays hold the data of literals."""


@dataclass(frozen=True)
class TensorType:
    """Shape and element type of a value."""

    shape: tuple[Dim, ...]
    dtype: DType

    def __post_init__(self) -> None:
        # Symbolic dims are kept canonical so that equal shapes compare equal.
        if not all(isinstance(d, int) for d in self.shape):
            object.__setattr__(self, "shape", tuple(canonical(d) for d in self.shape))

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)

    def static_shape(self) -> tuple[int, ...]:
        """The shape as ints; raises when a dim is still symbolic."""
        out: list[int] = []
        for d in self.shape:
            if not isinstance(d, int):
                raise IRError(f"type {self} has symbolic dim {d!r}; specialize the graph first")
            out.append(d)
        return tuple(out)

    def __str__(self) -> str:
        return f"{self.dtype.value}[{','.join(str(d) for d in self.shape)}]"


def format_attr(value: Attr) -> str:
    """An attribute value as the text form writes it (the parser reads it back)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, DType):
        return value.value
    if isinstance(value, DenseArray):
        return str(value)
    if isinstance(value, tuple):
        return "(" + ",".join(str(v) for v in value) + ")"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    return str(value)
