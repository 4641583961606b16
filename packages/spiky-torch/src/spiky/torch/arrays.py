"""Torch tensors as numpy arrays and back, without copies, for every dtype the runtime takes.

numpy has no bfloat16, and ``Tensor.numpy()`` / ``torch.from_numpy`` refuse it. The runtime takes
bfloat16 as ``ml_dtypes.bfloat16`` arrays, so a bfloat16 tensor crosses as a view of its raw bits:
its ``view(torch.int16)`` as an array, ``.view(ml_dtypes.bfloat16)``, one way and
``torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)`` the other. Both share the memory
(no copy). Every other dtype crosses as is.

Tensors become arrays through DLPack (:func:`host_view`), not ``Tensor.numpy()``: ``numpy()``
marks the tensor's storage as not resizable for good (torch 2.13), and FSDP2 frees the storage of
its unsharded parameters with ``untyped_storage().resize_(0)`` after they went through a compiled
call. The view costs what ``numpy()`` costs (~1 µs per tensor, ``tools/bench/bench_host_view.py``).
The array must not outlive the call it is made for: the storage stays resizable, so its owner may
free the memory under it.

A compiled graph's parameters are the same tensors at every call; :class:`InputViews` keeps their
views (a 40-parameter model: ~35 µs of views per call become ~3 µs of checks).

Per-call code that knows its dtypes ahead (a compiled graph's inputs and outputs) decides once
whether it needs these (:func:`array_reader`), so a float32 call costs what ``t.numpy()`` /
``torch.from_numpy`` cost.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

_BF16: np.dtype[Any] | None = None


def bfloat16() -> np.dtype[Any]:
    """numpy's bfloat16 (``ml_dtypes.bfloat16``); a clear error when ``ml_dtypes`` is missing."""
    global _BF16
    if _BF16 is None:
        try:
            import ml_dtypes  # type: ignore[import-not-found,unused-ignore]
        except ImportError as exc:  # pragma: no cover - ml_dtypes is a dependency
            raise TypeError("bfloat16 tensors need the 'ml_dtypes' package (numpy has no bfloat16); "
                            "install it with 'pip install ml_dtypes'") from exc
        _BF16 = np.dtype(ml_dtypes.bfloat16)
    return _BF16


class _Exporter:
    """What ``np.from_dlpack`` asks of a CPU tensor, answered by torch's C exporter directly (torch's
    ``Tensor.__dlpack__`` costs ~2.5 µs more in Python-level checks; :func:`host_view` does the one
    that matters here, the negative bit)."""

    __slots__ = ("tensor",)

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor

    def __dlpack__(self, *, stream: Any = None, max_version: Any = None, dl_device: Any = None,
                   copy: Any = None) -> Any:
        return _to_dlpack_versioned(self.tensor)

    def __dlpack_device__(self) -> tuple[int, int]:
        return (1, 0)  # kDLCPU, device 0


_to_dlpack_versioned = torch._C._to_dlpack_versioned
_from_dlpack = np.from_dlpack


def host_view(tensor: torch.Tensor) -> np.ndarray[Any, Any]:
    """A CPU ``tensor`` (any dtype numpy has; ``requires_grad`` too) as a writable numpy array over
    the same memory, leaving its storage resizable (``Tensor.numpy()`` would not)."""
    if tensor.is_neg():  # DLPack has no negative bit: the array would hold the unnegated values
        raise RuntimeError("a tensor with the negative bit set cannot enter a compiled call; "
                           "call .resolve_neg() on it first")
    return _from_dlpack(_Exporter(tensor))


def to_array(tensor: torch.Tensor) -> np.ndarray[Any, Any]:
    """A CPU ``tensor`` as a numpy array over the same memory (bfloat16 as ``ml_dtypes.bfloat16``)."""
    if tensor.dtype is torch.bfloat16:
        return host_view(tensor.view(torch.int16)).view(bfloat16())
    return host_view(tensor)


def from_array(array: np.ndarray[Any, Any]) -> torch.Tensor:
    """A numpy ``array`` as a CPU tensor over the same memory (``ml_dtypes.bfloat16`` as bfloat16)."""
    if array.dtype.itemsize == 2 and array.dtype == bfloat16():
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def array_reader(bf16: bool) -> Callable[[np.ndarray[Any, Any]], torch.Tensor]:
    """The array -> tensor converter for a call's results: ``torch.from_numpy`` (the cheapest)
    unless ``bf16`` says some result is bfloat16."""
    return from_array if bf16 else torch.from_numpy


class InputViews:
    """The numpy views of a compiled graph's tensor inputs, kept for the inputs that stay put.

    A slot whose tensor is the same object at the same data pointer in two calls in a row (a
    parameter, a buffer) keeps its view; from then on a call checks identity and pointer (~0.1 µs)
    instead of making a view (~0.9 µs). Anything else gets a new view, and a slot's kept view is
    dropped as soon as its tensor changes, so a tensor that changes every call (an activation) is not
    kept alive by this beyond one call. The data pointer covers storage swaps (``p.data = ...``,
    ``set_``, FSDP's freed and reallocated storage); the layout of the memory is what Dynamo's guards
    hold fixed (sizes, strides, dtype) for the graph, and ``check_shapes`` (per slot) compares the
    shape too for inputs whose sizes may change between calls (a tensor resized in place keeps its
    pointer).
    """

    __slots__ = ("_check_shapes", "_convert", "_kept", "_seen")

    def __init__(self, count: int, bf16: bool, check_shapes: Sequence[bool] = ()) -> None:
        self._convert = to_array if bf16 else host_view
        self._kept: list[tuple[torch.Tensor, int, np.ndarray[Any, Any]] | None] = [None] * count
        self._seen: list[tuple[int, int]] = [(0, 0)] * count  # (id, data pointer) of the last call's tensor
        self._check_shapes = list(check_shapes) or [False] * count

    def __call__(self, tensors: Sequence[torch.Tensor]) -> list[np.ndarray[Any, Any]]:
        kept, convert, check, out = self._kept, self._convert, self._check_shapes, []
        for i, t in enumerate(tensors):
            k = kept[i]
            if k is not None and k[0] is t and t.data_ptr() == k[1] and (not check[i] or t.shape == k[2].shape):
                out.append(k[2])
                continue
            array = convert(t)
            pointer = t.data_ptr()
            if self._seen[i] == (id(t), pointer):
                kept[i] = (t, pointer, array)
            else:
                kept[i] = None
                self._seen[i] = (id(t), pointer)
            out.append(array)
        return out
