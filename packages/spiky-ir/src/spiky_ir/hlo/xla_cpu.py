"""Run a serialized HLO module on XLA:CPU through jaxlib: the proof that emitted HLO is right.

This is the only module that touches jax, and it uses private jax APIs, so the version
is pinned (``tools/requirements-dev.txt``: jax and jaxlib |JAX_VERSION|) and checked on
import of :func:`compile_hlo`. jax is a test-time dependency of spiky-ir, not a runtime one.

>>> import numpy as np
>>> from spiky_ir import DType, Graph, TensorType
>>> from spiky_ir.hlo import emit_hlo
>>> g = Graph()
>>> x = g.add_input("x", TensorType((3,), DType.float32))
>>> g.set_outputs([g.add_op("exp", [x])])
>>> run_hlo(emit_hlo(g).proto, [np.zeros(3, np.float32)])[0].tolist()  # doctest: +SKIP
[1.0, 1.0, 1.0]
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from spiky_ir.errors import IRError

JAX_VERSION = "0.10.2"

Array = np.ndarray[Any, np.dtype[Any]]


def _jax() -> Any:
    try:
        import jax
    except ImportError as exc:
        raise IRError(
            f"running HLO on XLA:CPU needs jax and jaxlib {JAX_VERSION}: "
            f"pip install jax=={JAX_VERSION} jaxlib=={JAX_VERSION}"
        ) from exc
    if jax.__version__ != JAX_VERSION:
        raise IRError(
            f"spiky_ir.hlo.xla_cpu uses private jax APIs pinned to jax {JAX_VERSION}, found {jax.__version__}; "
            f"pip install jax=={JAX_VERSION} jaxlib=={JAX_VERSION}"
        )
    return jax


@dataclass
class XlaCpuExecutable:
    """A module compiled for one XLA:CPU device; call it with numpy arrays."""

    _exe: Any
    _device: Any
    num_outputs: int

    def __call__(self, inputs: Sequence[Array]) -> list[Array]:
        jax = _jax()
        config = importlib.import_module("jax._src.config")
        # 64-bit inputs must reach XLA unnarrowed; jax narrows them unless x64 is on.
        with config.enable_x64(True):
            args = [jax.device_put(np.ascontiguousarray(a), self._device) for a in inputs]
            results = self._exe.execute_sharded(args)
            outs = results.disassemble_into_single_device_arrays()
            return [np.asarray(per_device[0]) for per_device in outs]


def compile_hlo(proto: bytes) -> XlaCpuExecutable:
    """Convert a serialized ``HloModuleProto`` to StableHLO with XLA's own importer and compile it.

    Raises :class:`IRError` with XLA's message when XLA rejects the module.
    """
    jax = _jax()
    compiler = importlib.import_module("jax._src.compiler")
    xla = importlib.import_module("jax._src.lib").xla_client._xla

    try:
        stablehlo = xla.mlir.hlo_to_stablehlo(proto)
        device = jax.devices("cpu")[0]
        client = device.client
        options = compiler.get_compile_options(num_replicas=1, num_partitions=1)
        exe = client.compile_and_load(stablehlo, client.devices()[:1], options)
    except Exception as exc:  # XLA raises its own error types (XlaRuntimeError, ValueError)
        raise IRError(f"XLA:CPU rejected the HLO module: {exc}") from exc
    return XlaCpuExecutable(exe, device, 0)


def run_hlo(proto: bytes, inputs: Sequence[Array]) -> list[Array]:
    """Compile and run once; returns the module's outputs (tuple roots flattened)."""
    return compile_hlo(proto)(inputs)


def parse_with_xla(proto: bytes) -> str:
    """XLA's own text rendering of the module proto (verifies that XLA can read it)."""
    _jax()
    _hlo = importlib.import_module("jaxlib._hlo")
    try:
        return str(_hlo.HloModule.from_serialized_hlo_module_proto(proto).to_string())
    except Exception as exc:
        raise IRError(f"XLA could not read the HLO module proto: {exc}") from exc


def parse_text_with_xla(text: str) -> str:
    """XLA's rendering of a module given in HLO text form (verifies our text form parses)."""
    _jax()
    _hlo = importlib.import_module("jaxlib._hlo")
    try:
        return str(_hlo.hlo_module_from_text(text).to_string())
    except Exception as exc:
        raise IRError(f"XLA could not parse the HLO text: {exc}") from exc
