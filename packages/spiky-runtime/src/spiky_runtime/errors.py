"""Exceptions of spiky_runtime.

The C++ engine raises these (translated in one place in ``csrc/bindings.cc``)::

    SpikyRuntimeError (RuntimeError)
    ├── OutOfMemoryError (MemoryError)      pool exhausted after freeing its cache
    └── InvalidArgumentError (ValueError)   bad size, offset, shape, dtype, index or name

Catch ``SpikyRuntimeError`` for anything the runtime raises; the second bases let callers
that only know the builtin categories (``except MemoryError``) keep working.
"""

from __future__ import annotations

__all__ = ["SpikyRuntimeError", "OutOfMemoryError", "InvalidArgumentError"]


class SpikyRuntimeError(RuntimeError):
    """Root of every error raised by spiky_runtime."""


class OutOfMemoryError(SpikyRuntimeError, MemoryError):
    """A device allocation failed even after the pool freed its cache and retried.

    The message carries the pool numbers: requested, used, cached, total and capacity.
    """


class InvalidArgumentError(SpikyRuntimeError, ValueError):
    """An argument was out of range or of the wrong shape/dtype; the message names it."""
