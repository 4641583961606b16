"""spiky.torch: the ``"nkipy"`` backend for ``torch.compile``.

Importing this module registers the backend (it is also found through the
``torch_dynamo_backends`` entry point without an import)::

    import torch, spiky.torch
    spiky.torch.init_nkipy_backend(target="host")        # optional: defaults otherwise
    fast = torch.compile(model, backend="nkipy")
"""

from spiky.torch.backend import nkipy_backend, register
from spiky.torch.config import (
    BackendConfig,
    current_config,
    init_nkipy_backend,
    is_nkipy_backend_initialized,
    reset_nkipy_backend,
)
from spiky.torch.device import register as register_device
from spiky.torch.host_executors import HOST_EXECUTORS, HostExecutorInfo, host_executor_info
from spiky.torch.options import OPTIONS, validate_options

register()
register_device()  # the "nkipy" torch device (builds its extension on first use)

__all__ = [
    "HOST_EXECUTORS", "OPTIONS", "BackendConfig", "HostExecutorInfo", "current_config", "host_executor_info",
    "init_nkipy_backend",
    "is_nkipy_backend_initialized", "nkipy_backend", "register_device", "reset_nkipy_backend",
    "validate_options",
]
