"""Torch tensors as numpy arrays and back, without copies, for every dtype the runtime takes.

numpy has no bfloat16, and ``Tensor.numpy()`` / ``torch.from_numpy`` refuse it. The runtime takes
bfloat16 as ``ml_dtypes.bfloat16`` arrays, so a bfloat16 tensor crosses as a view of its raw bits:
``t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)`` one way and
``torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)`` the other. Both share the memory
(no copy). Every other dtype takes numpy's own path.

Per-call code that knows its dtypes ahead (a compiled graph's inputs and outputs) decides once
whether it needs these (:func:`array_reader`), so a float32 call costs what ``t.numpy()`` /
``torch.from_numpy`` cost.
"""

from __future__ import annotations

from collections.abc import Callable
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


def to_array(tensor: torch.Tensor) -> np.ndarray[Any, Any]:
    """A CPU ``tensor`` as a numpy array over the same memory (bfloat16 as ``ml_dtypes.bfloat16``)."""
    if tensor.requires_grad:
        tensor = tensor.detach()
    if tensor.dtype is torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(bfloat16())
    return tensor.numpy()


def from_array(array: np.ndarray[Any, Any]) -> torch.Tensor:
    """A numpy ``array`` as a CPU tensor over the same memory (``ml_dtypes.bfloat16`` as bfloat16)."""
    if array.dtype.itemsize == 2 and array.dtype == bfloat16():
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def array_reader(bf16: bool) -> Callable[[np.ndarray[Any, Any]], torch.Tensor]:
    """The array -> tensor converter for a call's results: ``torch.from_numpy`` (the cheapest)
    unless ``bf16`` says some result is bfloat16."""
    return from_array if bf16 else torch.from_numpy
