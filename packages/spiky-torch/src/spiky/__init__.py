"""Spiky: PyTorch on AWS Neuron through ``torch.compile(model, backend="nkipy")``.

>>> import torch, spiky.torch
>>> model = torch.nn.Linear(32, 64, bias=False)
>>> fast = torch.compile(model, backend="nkipy")
>>> with torch.no_grad():
...     out = fast(torch.randn(8, 32))
>>> spiky.get_stats().total_executions >= 1
True
"""

from spiky import cache, debug
from spiky._compile import compile
from spiky._version import __version__
from spiky.errors import (
    IRError,
    LoweringError,
    OutOfMemoryError,
    SpikyCompileError,
    SpikyConfigError,
    SpikyError,
    SpikyOptionError,
    SpikyRangeError,
    SpikyRuntimeError,
    SpikyShapeError,
    SpikyTargetError,
)
from spiky.logs import configure_logs, configure_logs_from_env
from spiky.profile import profile as profile  # re-export: spiky.profile(path)
from spiky.stats import (
    clear_memory_pool,
    device_count,
    get_memory_stats,
    get_stats,
    reset_stats,
    trim_memory_pool,
)
from spiky.torch.dynamic import bucket_stats, real_shape
from spiky.torch.dynamic import unpad_tensor as unpad

configure_logs_from_env()

__all__ = [
    "IRError", "LoweringError", "OutOfMemoryError", "SpikyCompileError", "SpikyConfigError", "SpikyError",
    "SpikyOptionError", "SpikyRangeError", "SpikyRuntimeError", "SpikyShapeError", "SpikyTargetError", "__version__",
    "bucket_stats", "cache", "clear_memory_pool", "compile", "debug",
    "configure_logs", "device_count", "get_memory_stats",
    "get_stats", "real_shape", "reset_stats", "trim_memory_pool", "unpad",
]
