"""Run a serialized HLO module on XLA:CPU through jaxlib: the fast host executor, and the check of emitted HLO.

This is the only module that touches jax, and it uses private jax APIs, so the version
is pinned (jax and jaxlib |JAX_VERSION|: ``tools/requirements-dev.txt``, and spiky-torch's
``xla`` extra) and checked before first use. jax is optional for spiky-ir: without it the
numpy executor is the host target.

>>> import numpy as np
>>> from spiky_ir import DType, Graph, TensorType
>>> from spiky_ir.hlo import emit_hlo
>>> g = Graph()
>>> x = g.add_input("x", TensorType((3,), DType.float32))
>>> g.set_outputs([g.add_op("exp", [x])])
>>> run_hlo(emit_hlo(g).proto, [np.zeros(3, np.float32)])[0].tolist()  # doctest: +SKIP
[1.0, 1.0, 1.0]

The call path (:meth:`XlaCpuExecutable.__call__` with input specs) is one
``batched_device_put`` per input (zero-copy: XLA aliases a numpy array that is 64-byte
aligned, as the runtime's device buffers are; others are copied) -- reused while an input
stays at the same address, as parameters do; inputs up to 64 KiB in new memory are copied
into memory of the executable's own instead -- one ``execute_sharded`` and one zero-copy
numpy view per output buffer. Small outputs can leave packed into one byte buffer
(:class:`OutputLayout`), each a numpy view into it. There is no per-op Python work; XLA runs
the fused program with the GIL released.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import os
import platform
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from spiky_ir.errors import IRError

JAX_VERSION = "0.10.2"

Array = np.ndarray[Any, np.dtype[Any]]
Spec = tuple[tuple[int, ...], np.dtype[Any]]
"""(shape, dtype) of one input."""


@dataclass(frozen=True)
class OutputLayout:
    """Where a module's outputs are: ``count`` outputs, of which ``packed`` (output index, byte offset,
    shape, dtype) are views of the module's last result, one byte buffer; the others are its results
    in order. See ``emit_hlo``'s ``packed_outputs``."""

    count: int
    packed: tuple[tuple[int, int, tuple[int, ...], np.dtype[Any]], ...] = ()


SINGLE_THREAD_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
"""XLA_FLAGS that keep XLA:CPU's compute on the calling thread (see :func:`limit_threads`)."""

ZERO_COPY_ALIGNMENT = 64
"""XLA:CPU aliases host arrays whose data pointer is a multiple of this; others are copied in."""
SCRATCH_BYTES = 64 * 1024
"""Inputs up to this size in new memory are copied into the executable's own (see ``_scratch``): a copy of
64 KiB (1.0 µs) costs less than a device put (2.8 µs, more when the call's code is cold)."""

VOLATILE_COPIES = 3
"""After this many calls in a row that found an input at a new address, it is copied into the executable's
own memory without its address being read (an input that later stays put is then copied, not aliased)."""


def unavailable_reason() -> str | None:
    """None when jax/jaxlib |JAX_VERSION| are installed, else why XLA:CPU cannot be used.

    Cheap: reads package metadata, does not import jax.
    """
    for name in ("jax", "jaxlib"):
        if importlib.util.find_spec(name) is None:
            return f"{name} is not installed (pip install jax=={JAX_VERSION} jaxlib=={JAX_VERSION})"
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return f"{name} has no package metadata"
        if version != JAX_VERSION:
            return (f"{name} {version} is installed, spiky needs {JAX_VERSION} "
                    f"(pip install jax=={JAX_VERSION} jaxlib=={JAX_VERSION})")
    return None


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


def limit_threads() -> bool:
    """Keep XLA:CPU single-threaded (no Eigen intra-op pool) for this process.

    XLA reads ``XLA_FLAGS`` once, when its CPU client starts: returns False (and changes
    nothing) if jax's backends already started without them; True when the flags are in effect.
    """
    xla_bridge = sys.modules.get("jax._src.xla_bridge")
    if _client_cache or (xla_bridge is not None and xla_bridge.backends_are_initialized()):
        return SINGLE_THREAD_FLAGS in os.environ.get("XLA_FLAGS", "")
    flags = os.environ.get("XLA_FLAGS", "")
    if SINGLE_THREAD_FLAGS not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {SINGLE_THREAD_FLAGS}".strip()
    return True


def host_fingerprint() -> str:
    """What a serialized XLA:CPU executable depends on: jaxlib version, machine and CPU features.

    Executables are compiled for this host's instruction set; one compiled elsewhere could
    fault, so serialized executables are stored under this fingerprint.
    """
    flags = ""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith(("flags", "Features")):
                    flags = line
                    break
    except OSError:
        flags = platform.processor()
    xla_flags = os.environ.get("XLA_FLAGS", "")
    text = f"jaxlib={JAX_VERSION};machine={platform.machine()};{flags.strip()};XLA_FLAGS={xla_flags}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


_client_lock = threading.Lock()
_client_cache: list[Any] = []


def _client() -> Any:
    """Spiky's own XLA:CPU client (synchronous), created once per process.

    Not jax's default backend: that would probe every platform (TPU, GPU plugins) on first
    use, and its asynchronous dispatch runs programs on XLA's worker threads. Synchronous
    execution runs on the calling thread (with the GIL released), so the runtime's pipeline
    thread is the one doing the compute.
    """
    with _client_lock:
        if not _client_cache:
            _jax()
            xla_client = importlib.import_module("jax._src.lib").xla_client
            _client_cache.append(xla_client.make_cpu_client(asynchronous=False))
        return _client_cache[0]


class XlaCpuExecutable:
    """A module compiled for one XLA:CPU device; call it with a list of numpy arrays.

    With ``input_specs`` (shape, dtype per parameter) inputs must match them exactly (the
    runtime guarantees it) and no per-call conversion happens; without them each call
    makes its arguments C-contiguous and derives their types.
    """

    def __init__(self, exe: Any, input_specs: Sequence[Spec] | None = None,
                 outputs: OutputLayout | None = None) -> None:
        self._exe = exe
        # Packed outputs (emit_hlo's packed_outputs): the module's last result is one byte buffer, and
        # each packed output is a view into it (0.3 µs) instead of a buffer of its own to disassemble
        # and view (~3 µs). Per output: (result position, None, None) or (byte offset, shape, dtype).
        self._unpack: list[tuple[int, tuple[int, ...] | None, np.dtype[Any] | None]] | None = None
        if outputs is not None and outputs.packed:
            packed = {index: (offset, shape, dtype) for index, offset, shape, dtype in outputs.packed}
            position = 0
            self._unpack = []
            for index in range(outputs.count):
                if index in packed:
                    self._unpack.append(packed[index])
                else:
                    self._unpack.append((position, None, None))
                    position += 1
        self._client = exe.client
        self._device = self._client.devices()[0]
        lib = importlib.import_module("jax._src.lib")._jax
        self._core = importlib.import_module("jax._src.core")
        self._sharding = importlib.import_module("jax._src.sharding_impls").SingleDeviceSharding(self._device)
        self._put_one, self._zero_copy = lib.batched_device_put, lib.HostBufferSemantics.ZERO_COPY
        self.input_specs = None if input_specs is None else [(tuple(s), np.dtype(d)) for s, d in input_specs]
        self._avals = None if self.input_specs is None else [self._aval(s, d) for s, d in self.input_specs]
        # Per input: (array, address, XLA buffer, checked to alias it) of the last call. A buffer made with
        # ZERO_COPY is only a view of host memory that XLA reads when it runs, so an input at
        # the same address (weights, pool blocks) reuses it: ~1.7 µs per input instead of ~3.5 µs.
        # The runtime hands a host model the same view object for an input at the same address
        # (and spec), so the array itself is checked first (30 ns; its address costs ~0.8 µs).
        self._last: list[tuple[Array, int, Any, bool] | None] = [None] * len(self.input_specs or ())
        # Small inputs that arrive in new memory at every call (a backward's saved activations, Dynamo's
        # float arguments under dynamic=True, a decode step's token) are copied into memory of our own
        # that one XLA buffer aliases for good: a 0.4-1 µs copy instead of a ~3 µs device put. That memory
        # is shared by the calls, so a call holds the lock from the copy to the end of the execution.
        self._scratch: dict[int, tuple[Array, Any] | None] = {}  # None: XLA would not alias it
        self._copied_from: list[int] = [-1] * len(self.input_specs or ())  # address of the last copy
        # How many calls in a row copied the input from a new address. From VOLATILE_COPIES on it is
        # copied without asking its address (which costs ~1.5 µs, five times the copy of a small input):
        # a backward's saved activations and Dynamo's float arguments never come back at the same address.
        self._moves: list[int] = [0] * len(self.input_specs or ())
        self._lock = threading.Lock()
        self._called = False

    def _aval(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> Any:
        return self._core.ShapedArray(shape, dtype)

    def _put(self, inputs: Sequence[Array]) -> list[Any]:
        put, sharding, devices, zero_copy = self._put_one, self._sharding, [self._device], self._zero_copy
        if self.input_specs is None or self._avals is None:
            arrays = [np.ascontiguousarray(a) for a in inputs]
            avals = [self._aval(a.shape, a.dtype) for a in arrays]
            # committed, no forced copy, zero-copy when aligned, 64-bit types kept (no x64 narrowing)
            return [put(aval, sharding, [a], devices, True, False, zero_copy, True)
                    for a, aval in zip(arrays, avals, strict=True)]
        if len(inputs) != len(self._avals):
            raise IRError(f"XLA:CPU executable takes {len(self._avals)} inputs, got {len(inputs)}")
        last = self._last
        # The very arrays of the last call whose buffers were checked to alias them are reused as they
        # are (weights, and inputs the runtime staged): one identity test each (~0.1 µs), the rest below.
        misses = [i for i, (a, seen) in enumerate(zip(inputs, last, strict=True))
                  if seen is None or seen[0] is not a or not seen[3]]
        buffers: list[Any] = [None if seen is None else seen[2] for seen in last]
        if not misses:
            self._called = True
            return buffers
        specs, avals, moves, scratches = self.input_specs, self._avals, self._moves, self._scratch
        for index in misses:
            a, (shape, dtype), aval = inputs[index], specs[index], avals[index]
            if moves[index] >= VOLATILE_COPIES:  # in new memory at every call: copied, address unasked
                if a.shape != shape or a.dtype != dtype or not a.flags.c_contiguous:
                    raise _bad_input(a, shape, dtype)
                memory, buffer = scratches[index]  # type: ignore[misc]  # made by the copies that counted
                memory[...] = a
                buffers[index] = buffer
                continue
            seen = last[index]
            if seen is not None and seen[0] is a:  # the very array of the last call: same memory, checked then
                if self._aliases(index, seen):
                    buffers[index] = seen[2]
                    continue
                seen = None
            if a.shape != shape or a.dtype != dtype or not a.flags.c_contiguous:
                raise _bad_input(a, shape, dtype)
            address = a.ctypes.data
            if seen is not None and seen[1] == address and (seen[3] or self._aliases(index, seen)):
                last[index] = (a, address, seen[2], True)
                buffers[index] = seen[2]
                continue
            # Not where the last call had it: copied, unless the last call copied it from this very
            # address (it stays put, as weights do after a first move): then aliased from now on.
            if a.nbytes <= SCRATCH_BYTES and self._called and self._copied_from[index] != address:
                scratch = (self._scratch[index] if index in self._scratch
                           else self._make_scratch(index, aval, shape, dtype))
                if scratch is not None:
                    scratch[0][...] = a
                    last[index] = None  # never reused by identity: the array may change in place
                    if self._copied_from[index] != -1:  # copied before, from another address
                        moves[index] += 1
                    self._copied_from[index] = address
                    buffers[index] = scratch[1]
                    continue
            moves[index] = 0
            buffer = put(aval, sharding, [a], devices, True, False, zero_copy, True)
            # Only an alias of this very memory can be reused; a copied (unaligned) input cannot.
            # Whether XLA aliased it is asked (1.7 µs) only when a later call would reuse it: most
            # inputs in new memory (a backward's saved activations) never come back.
            last[index] = (a, address, buffer, False) if address % ZERO_COPY_ALIGNMENT == 0 else None
            buffers[index] = buffer
        self._called = True
        return buffers

    def _aliases(self, index: int, seen: tuple[Array, int, Any, bool]) -> bool:
        """Whether the XLA buffer of ``seen`` (input ``index``'s last call) is a view of its memory, so
        it may serve again; remembered as checked, or forgotten when XLA had copied the input."""
        if seen[2].unsafe_buffer_pointer() == seen[1]:
            self._last[index] = (seen[0], seen[1], seen[2], True)
            return True
        self._last[index] = None
        return False

    def _make_scratch(self, index: int, aval: Any, shape: tuple[int, ...],
                      dtype: np.dtype[Any]) -> tuple[Array, Any] | None:
        """Aligned memory for input ``index`` and the XLA buffer aliasing it; None if XLA copied it."""
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        raw = np.zeros(nbytes + ZERO_COPY_ALIGNMENT, np.uint8)
        start = -raw.ctypes.data % ZERO_COPY_ALIGNMENT
        memory = raw[start:start + nbytes].view(dtype).reshape(shape)
        buffer = self._put_one(aval, self._sharding, [memory], [self._device], True, False, self._zero_copy, True)
        made = (memory, buffer) if memory.size and buffer.unsafe_buffer_pointer() == memory.ctypes.data else None
        self._scratch[index] = made
        return made

    @property
    def packed_offsets(self) -> dict[int, int]:
        """Output index → byte offset in the packed buffer, for the outputs that leave packed."""
        return {} if self._unpack is None else {
            index: where for index, (where, shape, _) in enumerate(self._unpack) if shape is not None}

    def call_packed(self, inputs: Sequence[Array]) -> list[Array]:
        """Like calling it, but the packed outputs stay in their one byte buffer: the other outputs in
        order, then that buffer (see :attr:`packed_offsets`; a runtime host model copies each out)."""
        with self._lock:
            results = self._exe.execute_sharded(self._put(inputs))
        # Each output is a zero-copy, read-only view of XLA's result buffer; the packed one as bytes
        # (a module packs outputs of one dtype in that dtype).
        arrays = [np.asarray(per_device[0]) for per_device in results.disassemble_into_single_device_arrays()]
        if self._unpack is not None and arrays[-1].dtype != np.uint8:
            arrays[-1] = arrays[-1].view(np.uint8)
        return arrays

    def __call__(self, inputs: Sequence[Array]) -> list[Array]:
        arrays = self.call_packed(inputs)
        if self._unpack is None:
            return arrays
        packed = arrays[-1]
        return [arrays[where] if shape is None else np.ndarray(shape, dtype, packed, where)
                for where, shape, dtype in self._unpack]

    def serialize(self) -> bytes:
        """The compiled executable as bytes (for :func:`deserialize` on a host with the same fingerprint)."""
        try:
            return bytes(self._client.serialize_executable(self._exe))
        except Exception as exc:
            raise IRError(f"XLA:CPU could not serialize the executable: {exc}") from exc


def _bad_input(a: Array, shape: tuple[int, ...], dtype: np.dtype[Any]) -> IRError:
    return IRError(f"XLA:CPU input is {a.dtype}{list(a.shape)} (C-contiguous: {a.flags.c_contiguous}), "
                   f"expected C-contiguous {dtype}{list(shape)}")


def _compile_options() -> Any:
    return importlib.import_module("jax._src.compiler").get_compile_options(num_replicas=1, num_partitions=1)


def compile_hlo(proto: bytes, input_specs: Sequence[Spec] | None = None,
                outputs: OutputLayout | None = None) -> XlaCpuExecutable:
    """Convert a serialized ``HloModuleProto`` to StableHLO with XLA's own importer and compile it.

    ``outputs``: how the module's results map to the graph's outputs when some are packed (emitted
    with ``emit_hlo(..., packed_outputs=...)``). Raises :class:`IRError` with XLA's message when
    XLA rejects the module.
    """
    client = _client()
    xla = importlib.import_module("jax._src.lib").xla_client._xla
    try:
        stablehlo = xla.mlir.hlo_to_stablehlo(proto)
        exe = client.compile_and_load(stablehlo, client.devices()[:1], _compile_options())
    except Exception as exc:  # XLA raises its own error types (XlaRuntimeError, ValueError)
        raise IRError(f"XLA:CPU rejected the HLO module: {exc}") from exc
    return XlaCpuExecutable(exe, input_specs, outputs)


def deserialize(data: bytes, input_specs: Sequence[Spec] | None = None,
                outputs: OutputLayout | None = None) -> XlaCpuExecutable:
    """Load an executable written by :meth:`XlaCpuExecutable.serialize` (same :func:`host_fingerprint`).

    Only load bytes this process family wrote: a serialized executable is native code.
    """
    client = _client()
    try:
        exe = client.deserialize_executable(data, client.devices()[:1], _compile_options())
    except Exception as exc:
        raise IRError(f"XLA:CPU could not load the serialized executable: {exc}") from exc
    return XlaCpuExecutable(exe, input_specs, outputs)


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
