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
from dataclasses import dataclass
from typing import TypeAlias

from spiky_ir.dtypes import DType
from spiky_ir.errors import IRError
from spiky_ir.symbolic import Dim, canonical

Attr: TypeAlias = int | float | bool | str | DType | tuple[Dim, ...] | None
"""An op attribute value; tuples hold ints (axes, permutations) or dims (shapes)."""


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
    if isinstance(value, tuple):
        return "(" + ",".join(str(v) for v in value) + ")"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    return str(value)
