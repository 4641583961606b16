"""Errors raised by spiky-torch, in the hierarchy rooted at :class:`spiky_ir.SpikyError`.

The native engine raises ``spiky_runtime.SpikyRuntimeError`` (a ``RuntimeError``)
and its subclasses; they are re-exported here so users need one import.
"""

from __future__ import annotations

from spiky_ir.errors import IRError, LoweringError, ShapeError, SpikyError
from spiky_runtime import InvalidArgumentError, OutOfMemoryError, SpikyRuntimeError


class SpikyOptionError(SpikyError, ValueError):
    """An unknown option or a bad option value for ``torch.compile(backend="nkipy")``."""


class SpikyConfigError(SpikyError, ValueError):
    """A bad argument to :func:`spiky.torch.init_nkipy_backend`."""


class SpikyShapeError(SpikyError, ValueError):
    """An input size the compiled function cannot serve (no bucket fits, bad dynamic size)."""


class SpikyRangeError(SpikyError, ValueError):
    """An input value the target cannot represent (an int64 beyond int32 on the neuron target,
    which narrows int64 to int32 unless ``--native-int64=enabled``)."""


class SpikyTargetError(SpikyError, RuntimeError):
    """The requested target cannot run here; the message says what is missing."""


class SpikyCompileError(SpikyError, RuntimeError):
    """``neuronx-cc`` failed (exit code, missing NEFF, timeout); the message ends with the log's tail.

    ``log_path`` is the full compiler log (kept in the cache's staging area for inspection).
    """

    def __init__(self, message: str, log_path: str | None = None) -> None:
        super().__init__(message)
        self.log_path = log_path


__all__ = [
    "IRError", "InvalidArgumentError", "LoweringError", "OutOfMemoryError", "ShapeError",
    "SpikyCompileError", "SpikyConfigError", "SpikyError", "SpikyOptionError", "SpikyRangeError", "SpikyRuntimeError",
    "SpikyShapeError", "SpikyTargetError",
]
