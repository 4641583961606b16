"""``spiky.compile``: ``torch.compile(backend="nkipy")`` with options checked up front."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch

from spiky.torch.config import current_config
from spiky.torch.options import validate_options

_F = TypeVar("_F", bound=Callable[..., Any])


def compile(  # mirrors torch.compile on purpose
    model: _F,
    *,
    options: Mapping[str, Any] | None = None,
    dynamic: bool | None = None,
) -> _F:
    """Compile ``model`` for the nkipy backend; same semantics as
    ``torch.compile(model, backend="nkipy", options=options, dynamic=dynamic)``.

    Differences: options are validated now (``torch.compile`` only passes them to the
    backend at the first call), and the backend is initialised with defaults if
    :func:`spiky.torch.init_nkipy_backend` has not run.

    >>> import torch, spiky
    >>> fast = spiky.compile(torch.nn.Linear(4, 2))
    """
    validate_options(options)
    current_config()
    compiled = torch.compile(model, backend="nkipy", options=dict(options or {}) or None, dynamic=dynamic)
    return compiled  # type: ignore[return-value]
