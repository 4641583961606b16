"""The exception hierarchy shared by the pure-Python Spiky packages.

``SpikyError`` is the root; spiky-dist and spiky-torch subclass it. The native
engine (spiky-runtime) has its own root, ``spiky_runtime.SpikyRuntimeError``,
because it must install and import without this package.
"""

from __future__ import annotations


class SpikyError(Exception):
    """Root of every error raised by spiky-ir, spiky-dist and spiky-torch."""


class IRError(SpikyError):
    """A malformed graph, value or type; the message names the offending node."""


class ShapeError(IRError, ValueError):
    """Operand shapes or dtypes that an op cannot accept."""


class LoweringError(SpikyError):
    """An FX node that spiky-ir cannot turn into IR (unsupported ATen op or argument)."""
