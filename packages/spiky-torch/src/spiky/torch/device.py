"""The ``"nkipy"`` torch device: PrivateUse1 renamed, storage from spiky-runtime's memory pool.

The pool is the nrt driver's (NeuronCore memory) where the neuron target can run when
:mod:`spiky.torch` is imported, else the host driver's (:func:`choose_driver`).

Registered once when :mod:`spiky.torch` is imported (:func:`register`, idempotent)::

    import torch, spiky.torch
    x = torch.randn(4, 8).to("nkipy")          # pool memory of runtime device host:0 (or nrt:0)
    model = torch.nn.Linear(8, 2).to("nkipy")
    y = torch.compile(model, backend="nkipy", options={"keep_outputs_on_device": True})(x)
    y.device                                    # device(type='nkipy', index=0)
    torch.nkipy.memory_stats()["used_bytes"]

Copies, fills, views and ``resize_`` run on the device (see ``csrc/nkipy_device.cpp``); other
eager ops run on the CPU (copy in, run, copy out) with a one-time warning per op, or raise
with ``SPIKY_DEVICE_FALLBACK=error``. Compiled functions take and return device tensors
without host round trips (:func:`runtime_input`, :func:`adopt_output`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch.utils.backend_registration import (
    generate_methods_for_privateuse1_backend,
    rename_privateuse1_backend,
)

import spiky_runtime as rt
from spiky.errors import SpikyConfigError
from spiky.torch import device_ext
from spiky.torch.arrays import bfloat16
from spiky_dist import DistConfigError, apply_neuron_runtime_env, resolve_rank_world, stage_eager_collectives

log = logging.getLogger("spiky.device")

DEVICE_TYPE = "nkipy"
DRIVER = "host"
"""The runtime driver behind the device, chosen when it is registered (:func:`choose_driver`)."""
DRIVER_ENV = "SPIKY_NKIPY_DEVICE_DRIVER"
DRIVERS = ("auto", "host", "nrt")
STARTED_ENV: dict[str, str] = {}
"""The ``NEURON_RT_*`` variables :func:`choose_driver` set before starting the Neuron runtime."""

_lock = threading.Lock()
_capsules: list[Any] = []
_ext: ModuleType | None = None


def choose_driver() -> str:
    """The runtime driver whose memory backs the device: ``$SPIKY_NKIPY_DEVICE_DRIVER`` (``host``,
    ``nrt`` or ``auto``, the default). ``auto`` is ``nrt`` when the neuron target can run here
    (libnrt loads and sees a NeuronCore), so ``x.to("nkipy")`` is NeuronCore memory as
    ``x.to("cuda")`` is GPU memory, else ``host``. The choice is made once per process, when
    :mod:`spiky.torch` is imported; checking for ``nrt`` starts the Neuron runtime, after setting
    this rank's ``NEURON_RT_VISIBLE_CORES`` from ``LOCAL_RANK`` as :func:`~spiky.torch.init_nkipy_backend`
    would (the runtime reads it once)."""
    from spiky.torch.targets import find_libnrt, neuron_unavailable

    wanted = os.environ.get(DRIVER_ENV, "auto") or "auto"
    if wanted not in DRIVERS:
        raise SpikyConfigError(f"{DRIVER_ENV}={wanted!r} is not a driver; valid: {', '.join(DRIVERS)}")
    if wanted == "host" or (wanted == "auto" and find_libnrt() is None):
        return "host"
    rank, world = resolve_rank_world(None, None)
    try:
        STARTED_ENV.update(apply_neuron_runtime_env(rank, world))
    except DistConfigError as exc:
        if wanted == "nrt":
            raise
        log.info("the nkipy device is backed by host memory: %s", exc)
        return "host"
    reason = neuron_unavailable()
    if reason is None:
        return "nrt"
    if wanted == "nrt":
        raise SpikyConfigError(f"{DRIVER_ENV}=nrt, but the nrt driver cannot run here: {reason}")
    log.info("the nkipy device is backed by host memory: %s", reason)
    return "host"


def register() -> bool:
    """Make ``"nkipy"`` a torch device (idempotent); False when disabled or the build failed.

    ``SPIKY_NKIPY_DEVICE=0`` skips it (the backend works without the device). The memory behind
    it is the :func:`choose_driver` driver's pool.
    """
    global _ext, DRIVER
    with _lock:
        if _ext is not None:
            return True
        if os.environ.get("SPIKY_NKIPY_DEVICE", "1") == "0":
            return False
        name = torch._C._get_privateuse1_backend_name()
        if name not in ("privateuseone", DEVICE_TYPE):
            log.warning("PrivateUse1 is already the %r backend; the nkipy device is not registered", name)
            return False
        try:
            ext = device_ext.load_extension()
        except Exception as exc:  # no compiler, no headers: the backend still works on CPU tensors
            log.warning("the nkipy device is unavailable: building its extension failed: %s", exc)
            return False
        DRIVER = choose_driver()
        for index in range(rt.device_count(DRIVER)):
            capsule = rt._core.allocator_capsule(rt.Device(DRIVER, index))
            ext.register_device(capsule)
            _capsules.append(capsule)
        if name != DEVICE_TYPE:
            rename_privateuse1_backend(DEVICE_TYPE)
        if not hasattr(torch, DEVICE_TYPE):
            torch._register_device_module(DEVICE_TYPE, _module())  # type: ignore[no-untyped-call]
        if not hasattr(torch.Tensor, "is_nkipy"):
            generate_methods_for_privateuse1_backend(for_storage=True)
        # dist.all_reduce(t) & co. on nkipy tensors outside compiled graphs: staged through
        # the process group's host backend (gloo) instead of raising.
        stage_eager_collectives("PrivateUse1")
        _ext = ext
        return True


def extension() -> ModuleType:
    if _ext is None and not register():
        raise SpikyConfigError(
            "the nkipy device is not available (SPIKY_NKIPY_DEVICE=0, or its extension failed to "
            "build: see the spiky.device log)"
        )
    assert _ext is not None
    return _ext


# ---------------------------------------------------------------- torch.nkipy


def _runtime_device(index: int | None = None) -> rt.Device:
    return rt.Device(DRIVER, current_device() if index is None else index)


def _index(device: torch.device | str | int | None) -> int | None:
    if device is None or isinstance(device, int):
        return device
    return torch.device(device).index


def is_available() -> bool:
    return _ext is not None and device_count() > 0


def device_count() -> int:
    return int(_ext.device_count()) if _ext is not None else 0


def current_device() -> int:
    return int(extension().current_device())


def set_device(device: torch.device | str | int) -> None:
    index = _index(device)
    if index is not None:
        extension().set_device(index)


def synchronize(device: torch.device | str | int | None = None) -> None:
    """Waits for every compiled call queued on the device."""
    _runtime_device(_index(device)).synchronize()


def memory_stats(device: torch.device | str | int | None = None) -> dict[str, int]:
    """The device pool's counters (``used_bytes``, ``cached_bytes``, ``peak_used_bytes``, ...)."""
    return dict(_runtime_device(_index(device)).memory_stats_full())


def memory_allocated(device: torch.device | str | int | None = None) -> int:
    return memory_stats(device)["used_bytes"]


def memory_reserved(device: torch.device | str | int | None = None) -> int:
    return memory_stats(device)["total_bytes"]


def empty_cache() -> None:
    """Returns the pool's cached blocks to the driver."""
    for index in range(device_count()):
        _runtime_device(index).clear_cache()


def _is_in_bad_fork() -> bool:
    return False


def is_initialized() -> bool:
    """True once the device is registered: each process owns the cores its runtime was given
    (``NEURON_RT_VISIBLE_CORES``, one per rank), so there is no device left to pick. (Torch's
    DeviceMesh would otherwise call ``set_device(LOCAL_RANK)``, an index this process lacks.)"""
    return _ext is not None


# Streams and events. Work on an nkipy device runs in one order: eager ops wait for what they
# read, compiled calls queue on the runtime device in call order. So every "stream" is the
# device's one stream, waits between streams hold already, and events complete when recorded
# (the C++ guard implements them). This is what torch's device-agnostic code (FSDP2, DTensor,
# DeviceMesh, the autograd engine) asks of an accelerator module.


def current_stream(device: torch.device | str | int | None = None) -> torch.Stream:
    index = _index(device)
    return torch.accelerator.current_stream(current_device() if index is None else index)


def default_stream(device: torch.device | str | int | None = None) -> torch.Stream:
    return current_stream(device)


def Stream(device: torch.device | str | int | None = None, priority: int = 0,  # noqa: N802 (torch's name)
           **_kwargs: Any) -> torch.Stream:
    """The device's stream (there is one; ``priority`` has no effect)."""
    return current_stream(device)


def Event(enable_timing: bool = False, blocking: bool = False, interprocess: bool = False,  # noqa: N802
          ) -> torch.Event:
    return torch.Event(device=DEVICE_TYPE, enable_timing=enable_timing, blocking=blocking,
                       interprocess=interprocess)


def stream(s: torch.Stream | None) -> contextlib.AbstractContextManager[None]:
    """Runs the block on ``s``: the device's one stream, so nothing changes."""
    if s is not None and s.device.type != DEVICE_TYPE:
        raise ValueError(f"torch.nkipy.stream() takes an nkipy stream, got {s}")
    return contextlib.nullcontext()


def manual_seed_all(seed: int) -> None:
    """Random ops run on the CPU generator, which ``torch.manual_seed`` already seeds."""


def _module() -> ModuleType:
    module = ModuleType("torch.nkipy", "The nkipy device (spiky): PrivateUse1 over spiky-runtime.")
    for fn in (is_available, device_count, current_device, set_device, synchronize, memory_stats,
               memory_allocated, memory_reserved, empty_cache, _is_in_bad_fork, manual_seed_all,
               is_initialized, current_stream, default_stream, Stream, Event, stream):
        setattr(module, fn.__name__, fn)
    return module


# ---------------------------------------------------------------- compiled calls

_NUMPY_NAMES = {
    torch.bool: "bool", torch.int8: "int8", torch.int16: "int16", torch.int32: "int32",
    torch.int64: "int64", torch.uint8: "uint8", torch.float16: "float16", torch.float32: "float32",
    torch.float64: "float64", torch.bfloat16: "bfloat16",
}
_TORCH_DTYPES = {np.dtype(name): dtype for dtype, name in _NUMPY_NAMES.items() if name != "bfloat16"}


def _torch_dtype(dtype: np.dtype[Any]) -> torch.dtype:
    """The torch dtype of a runtime array dtype (``ml_dtypes.bfloat16`` is torch.bfloat16)."""
    found = _TORCH_DTYPES.get(dtype)
    if found is not None:
        return found
    if dtype == bfloat16():
        return torch.bfloat16
    raise TypeError(f"runtime output dtype {dtype} has no nkipy tensor dtype; "
                    f"supported: {', '.join(str(d) for d in _NUMPY_NAMES)}")


def is_device_tensor(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.device.type == DEVICE_TYPE


def runtime_input(tensor: torch.Tensor) -> rt.DeviceTensor:
    """The memory of an ``nkipy`` tensor as a runtime DeviceTensor (no copy when it starts an allocation).

    A view into the middle of a storage is first cloned on the device.
    """
    tensor = tensor.detach()
    if tensor.dtype not in _NUMPY_NAMES:
        raise TypeError(f"nkipy tensors of dtype {tensor.dtype} cannot enter compiled graphs; "
                        f"supported: {', '.join(str(d) for d in _NUMPY_NAMES)}")
    starts_allocation = tensor.is_contiguous() and tensor.storage_offset() == 0
    if not starts_allocation:
        tensor = tensor.clone(memory_format=torch.contiguous_format)
    index = tensor.device.index or 0
    return rt._core.device_tensor_from_pointer(
        _capsules[index], tensor.data_ptr(), list(tensor.shape), _NUMPY_NAMES[tensor.dtype]
    )


def adopt_output(value: rt.DeviceTensor, index: int) -> torch.Tensor:
    """An ``nkipy`` tensor owning a call's output memory (possibly still being produced)."""
    ext = extension()
    ptr = rt._core.adopt_device_tensor(_capsules[index], value)
    return ext.tensor_from_pointer(  # type: ignore[no-any-return]
        ptr, value.nbytes, list(value.shape), _torch_dtype(value.dtype), index
    )
