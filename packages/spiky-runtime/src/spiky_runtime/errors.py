"""Exceptions of spiky_runtime.

The C++ engine raises these (translated in one place in ``csrc/bindings.cc``)::

    SpikyRuntimeError (RuntimeError)
    ├── OutOfMemoryError (MemoryError)      pool exhausted after freeing its cache
    ├── InvalidArgumentError (ValueError)   bad size, offset, shape, dtype, index or name
    ├── NrtError                            a libnrt call returned a failure status
    └── NrtLoadError                        libnrt.so.1 missing, or lacking a symbol

Catch ``SpikyRuntimeError`` for anything the runtime raises; the second bases let callers
that only know the builtin categories (``except MemoryError``) keep working.
"""

from __future__ import annotations

__all__ = ["SpikyRuntimeError", "OutOfMemoryError", "InvalidArgumentError", "NrtError", "NrtLoadError"]


class SpikyRuntimeError(RuntimeError):
    """Root of every error raised by spiky_runtime."""


class OutOfMemoryError(SpikyRuntimeError, MemoryError):
    """A device allocation failed even after the pool freed its cache and retried.

    The message carries the pool numbers: requested, used, cached, total and capacity.
    """


class InvalidArgumentError(SpikyRuntimeError, ValueError):
    """An argument was out of range or of the wrong shape/dtype; the message names it."""


class NrtError(SpikyRuntimeError):
    """A Neuron Runtime (libnrt) call returned a status other than SUCCESS.

    ``code`` is the ``NRT_STATUS`` number, ``status_name`` its name (``"EXEC_BAD_INPUT"``;
    ``"UNKNOWN"`` for a code this runtime does not know, whose number still shows),
    ``call`` the libnrt function and ``context`` what it was working on::

        NrtError: nrt_execute returned TIMEOUT (5) for model 'kernel_ab12'

    Running out of device memory (``RESOURCE`` from ``nrt_tensor_allocate``) is not an
    NrtError: the pool frees its cache, retries, and raises :class:`OutOfMemoryError`.
    """

    def __init__(self, message: str, code: int, status_name: str, call: str, context: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.status_name = status_name
        self.call = call
        self.context = context

    def __reduce__(self) -> tuple[type[NrtError], tuple[str, int, str, str, str]]:
        return (type(self), (str(self), self.code, self.status_name, self.call, self.context))


class NrtLoadError(SpikyRuntimeError):
    """``libnrt.so.1`` could not be loaded or lacks a symbol Spiky needs; the message says
    what was tried and what to install (aws-neuronx-runtime-lib) or set (``SPIKY_LIBNRT``)."""
