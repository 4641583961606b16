"""The ``"nkipy"`` torch.compile backend: aot_autograd → spiky-ir → runtime."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import fx
from torch._dynamo.backends.common import aot_autograd

from spiky.torch.config import current_config
from spiky.torch.decompositions import spiky_decompositions
from spiky.torch.dynamic import compile_dynamic, is_dynamic, with_static_layouts
from spiky.torch.executable import compile_graph
from spiky.torch.fallback import compile_with_fallback, unlowered_ops
from spiky.torch.options import validate_options


def nkipy_backend(
    gm: fx.GraphModule,
    example_inputs: Sequence[Any],
    options: Mapping[str, Any] | None = None,
) -> Callable[..., Any]:
    """Compile a Dynamo graph for the configured target (host or Neuron).

    Used as ``torch.compile(model, backend="nkipy", options={...})``; options are
    validated before anything is traced.
    """
    validated = validate_options(options)
    config = current_config()

    def compile_static(graph_module: fx.GraphModule) -> Any:
        return with_static_layouts(compile_graph(graph_module, config.target, validated), validated)

    def compiler(graph_module: fx.GraphModule, _inputs: Sequence[torch.Tensor]) -> Any:
        if is_dynamic(graph_module):  # symbolic sizes: buckets, padding, JIT (spiky.torch.dynamic)
            return compile_dynamic(graph_module, config.target, validated)
        if validated["fallback"] == "eager" and unlowered_ops(graph_module):
            return compile_with_fallback(graph_module, compile_static)
        return compile_static(graph_module)

    backend = aot_autograd(
        fw_compiler=compiler,
        bw_compiler=compiler,
        decompositions=spiky_decompositions(),
    )
    return backend(gm, example_inputs)


def register() -> None:
    """Register ``"nkipy"`` with Dynamo (idempotent)."""
    from torch._dynamo.backends.registry import _BACKENDS, register_backend

    if _BACKENDS.get("nkipy") is None:
        register_backend(nkipy_backend, name="nkipy")
