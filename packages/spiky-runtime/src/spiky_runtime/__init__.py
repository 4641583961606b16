"""spiky_runtime: Spiky's native execution engine, usable without torch.

Devices (drivers), a caching memory pool per device, buffers, models and statistics.
The ``host`` driver keeps device memory in host memory and runs models registered as
Python callables, so everything works on any machine::

    import numpy as np
    import spiky_runtime as rt

    dev = rt.Device("host")
    spec = rt.TensorSpec((2, 2), "float32")
    model = dev.load_host_model(lambda xs: [xs[0] + 1], [spec], [spec], name="inc")
    (out,) = model.run([np.zeros((2, 2), np.float32)])

``host_kernels`` holds the fused native kernels (layer norm, eval batch norm, softmax, erf) that
``spiky_ir.compile_plan(graph, native=host_kernels)`` runs instead of several numpy steps each.

``Device("host", 0)`` returns the process-wide device for that (driver, index): every
Device object for it shares one pool and one set of statistics.

C and C++ code that uses the runtime's allocator ABI (``allocator_capsule``) builds against
the header shipped in this package: ``-I`` :func:`get_include` and
``#include <spiky_runtime/c_abi.h>``.
"""

from __future__ import annotations

from pathlib import Path

from spiky_runtime._core import (
    Buffer,
    Bundle,
    Device,
    DeviceTensor,
    Future,
    Model,
    RuntimeStats,
    TensorSpec,
    device_count,
    driver_names,
    host_kernels,
)
from spiky_runtime.errors import (
    InvalidArgumentError,
    NrtError,
    NrtLoadError,
    OutOfMemoryError,
    SpikyRuntimeError,
)
from spiky_runtime.profile import profile

__version__ = "0.1.0"


def get_include() -> str:
    """The directory to put on a C/C++ include path for ``#include <spiky_runtime/c_abi.h>``.

    The header (the C allocator ABI behind :func:`spiky_runtime._core.allocator_capsule`) is
    package data, so this works the same for wheels and editable installs. Like
    ``numpy.get_include()``, it returns an absolute path as a string.
    """
    return str(Path(__file__).resolve().parent / "include")


__all__ = [
    "__version__",
    "get_include",
    # devices and memory
    "Device",
    "Buffer",
    "device_count",
    "driver_names",
    # models and statistics
    "TensorSpec",
    "Model",
    "Bundle",
    "Future",
    "DeviceTensor",
    "RuntimeStats",
    "profile",
    "host_kernels",
    # errors
    "SpikyRuntimeError",
    "OutOfMemoryError",
    "InvalidArgumentError",
    "NrtError",
    "NrtLoadError",
]
