"""Host executors: what runs a compiled graph's body on the host target.

- ``numpy``: spiky-ir's reference semantics (:func:`spiky_ir.execute`), run as a plan
  prepared once per graph (:func:`spiky_ir.compile_plan`: the same numpy code per op, with
  the lookups, type promotion and checks done at load time). A 1-op call costs ~2 µs. Layer
  norms, eval batch norms, softmax and erf of float32/float64 run as one call each of the
  runtime's native kernels (``spiky_runtime.host_kernels``, :mod:`spiky_ir.fusion`).
- ``xla``: the graph's HLO module (the same artefact the Neuron target hands to
  ``neuronx-cc``) compiled by XLA:CPU into fused native code (:mod:`spiky_ir.hlo.xla_cpu`,
  needs ``pip install spiky-torch[xla]``). Compiled once per graph (bucket), kept in memory
  and serialized into the graph's cache entry; a call is one XLA execution with no per-op
  Python work, inputs aliased zero-copy from the runtime's device buffers.
- ``auto``: ``numpy`` without jax/jaxlib. With them, per graph:

  - tiny graphs (at most :data:`TINY_GRAPH_NODES` nodes and :data:`TINY_GRAPH_ELEMENTS`
    elements in all their values) run on ``numpy``: XLA's fixed cost per call (~6 µs plus
    ~1.7-3.5 µs per input, through jaxlib's Python API) is more than the whole plan;
  - other graphs are compiled by XLA, then both executors are timed once on synthetic
    inputs of the graph's types (the plan only when an XLA call takes at most
    :data:`AUTO_TIMING_LIMIT_S`), and the numpy plan is kept only if it was at least
    :data:`AUTO_MARGIN` times faster (neither wins everywhere on XLA:CPU: it fuses and its
    ``erf`` is 200x numpy's, but its ``sin`` is 10x slower and a large elementwise ``add``
    3x slower, measured in docs/PERFORMANCE.md). The choice is made once per graph and
    process.

  The log line ``<kernel>: host executor numpy (auto: ...)`` gives the reason and the times.

The choice is ``init_nkipy_backend(host_executor=...)`` (default ``"auto"``) or the
per-function option ``options={"host_executor": ...}``. Graphs XLA cannot run here fall
back to numpy with a log line: graphs with collectives (XLA:CPU runs one replica; spiky-dist
runs the collectives through torch.distributed) and graphs without an HLO form.

>>> import spiky.torch
>>> spiky.torch.host_executor_info().resolved in ("numpy", "xla")
True
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import spiky_runtime as rt
from spiky.cache import COMPILE_LOG, HLO_PROTO, HLO_TEXT, CacheEntry
from spiky.errors import SpikyConfigError
from spiky.torch.collectives import collective_groups
from spiky_ir import Graph, IRError, compile_plan, print_graph
from spiky_ir.hlo import emit_hlo, xla_cpu
from spiky_ir.hlo.emit import PACKABLE, pack_layout

log = logging.getLogger("spiky.compile")

HOST_EXECUTORS = ("auto", "numpy", "xla")
XLA_EXECUTABLE_PREFIX = "model.xla-cpu."
"""Serialized XLA:CPU executables live in the cache entry as ``model.xla-cpu.<host fingerprint>.bin``."""
_MAGIC = b"SPIKYXLA1\n"
TINY_GRAPH_NODES = 4
TINY_GRAPH_ELEMENTS = 65_536
"""``auto`` runs graphs up to these sizes on the numpy plan untimed (crossover measured in
docs/PERFORMANCE.md); bigger ones are timed on both. Up to 16 nodes once: a training step's 12-node
loss backward then ran on numpy, 33 µs against XLA's 19 µs when timed, 101 against 73 µs inside the step."""
AUTO_MARGIN = 1.25
PACK_OUTPUT_BYTES = 64 * 1024
"""Outputs up to this size leave XLA:CPU packed into one buffer (see :func:`output_layout`)."""
PACK_MIN_OUTPUTS = 8
"""Fewer small outputs than this are not worth packing (see :func:`output_layout`)."""
"""``auto`` keeps XLA unless the numpy plan measured at least this much faster: XLA runs with
the GIL released (the pipelined executor overlaps it) and one timing on a busy host is noisy."""
AUTO_TIMING_LIMIT_S = 0.01
"""``auto`` times the numpy plan only for graphs whose XLA call takes at most this long (10 ms), so
the timing stays a small part of a compile; bigger graphs keep XLA."""

Array = np.ndarray[Any, np.dtype[Any]]
HostFn = Callable[[Sequence[Array]], Sequence[Array]]


@dataclass(frozen=True)
class HostExecutorInfo:
    """What ``host_executor="auto"`` picks in this process, and why (for logs and ``spiky info``)."""

    resolved: str
    """``"xla"`` or ``"numpy"``."""
    xla_available: bool
    reason: str
    """Why: the jax version in use, or what is missing for XLA."""

    def describe(self) -> str:
        return f"host executor: {self.resolved} ({self.reason})"


def host_executor_info() -> HostExecutorInfo:
    """Which executor ``"auto"`` resolves to here. Cheap: does not import jax.

    >>> info = host_executor_info()
    >>> print(info.describe())  # doctest: +SKIP
    host executor: xla (XLA:CPU through jax/jaxlib 0.10.2)
    """
    missing = xla_cpu.unavailable_reason()
    if missing is None:
        return HostExecutorInfo(
            "xla", True, f"XLA:CPU through jax/jaxlib {xla_cpu.JAX_VERSION}; per graph: tiny graphs (<= "
            f"{TINY_GRAPH_NODES} nodes, <= {TINY_GRAPH_ELEMENTS:,} elements) on the numpy plan, others on XLA unless "
            f"the plan measures {AUTO_MARGIN}x faster")
    return HostExecutorInfo("numpy", False, f"the numpy plan (the reference semantics); XLA:CPU unavailable: {missing}")


def check_host_executor(value: Any) -> str | None:
    """Option/config check: None for a good value, else what a good value looks like."""
    return None if value in HOST_EXECUTORS else "one of " + ", ".join(repr(e) for e in HOST_EXECUTORS)


_announced = False


def resolve_host_executor(requested: str) -> str:
    """``"numpy"`` or ``"xla"`` for a requested executor; ``"xla"`` without jax raises."""
    global _announced
    problem = check_host_executor(requested)
    if problem is not None:
        raise SpikyConfigError(f"host_executor got {requested!r}; expected {problem}")
    info = host_executor_info()
    if requested == "auto":
        if not _announced:
            _announced = True
            log.info("host_executor 'auto' -> %s", info.describe())
        return info.resolved
    if requested == "xla" and not info.xla_available:
        raise SpikyConfigError(
            f"host_executor 'xla' is not available: {info.reason}; "
            "pip install 'spiky-torch[xla]' or use host_executor='numpy' / 'auto'"
        )
    return requested


# -- the host target's artefact ----------------------------------------------------------------


def build_host_artefact(
    graph: Graph, kernel_name: str, directory: Path,
    replica_groups: Mapping[str, Sequence[Sequence[int]]] | None = None,
) -> dict[str, Any]:
    """The host target's artefact of a static graph in ``directory`` (a cache entry being built): its HLO
    module, proto and text, which the ``xla`` executor compiles. Returns the entry's ``hlo`` metadata.

    The host target runs the IR itself, so a graph without an HLO form still gets an entry (IR only).
    """
    start = time.perf_counter()
    try:
        artifact = emit_hlo(graph, name=kernel_name, replica_groups=replica_groups)
    except IRError as exc:
        log.info("%s has no HLO form (%s); caching the IR only", kernel_name, exc)
        (directory / COMPILE_LOG).write_text(f"host target: no HLO module: {exc}\n")
        return {"hlo": {"available": False, "reason": str(exc)}}
    (directory / HLO_PROTO).write_bytes(artifact.proto)
    (directory / HLO_TEXT).write_text(artifact.text)
    ms = (time.perf_counter() - start) * 1e3
    (directory / COMPILE_LOG).write_text(f"host target: HLO module emitted in {ms:.1f} ms\n")
    return {"hlo": {"available": True, "inputs": list(artifact.input_names), "outputs": list(artifact.output_names)}}


# -- XLA executables: compiled once per HLO module, in memory and on disk ------------------------

_lock = threading.Lock()
_in_memory: dict[str, xla_cpu.XlaCpuExecutable] = {}


def _specs(graph: Graph) -> list[xla_cpu.Spec]:
    return [(tuple(v.type.static_shape()), np.dtype(v.type.dtype.to_numpy())) for v in graph.inputs]


def _hlo_proto(graph: Graph, kernel_name: str, entry: CacheEntry | None) -> bytes:
    if entry is not None and entry.meta.get("hlo", {}).get("available") and HLO_PROTO in entry.meta.get("files", {}):
        return entry.file(HLO_PROTO).read_bytes()
    return emit_hlo(graph, name=kernel_name).proto


def _disk_path(entry: CacheEntry, outputs: xla_cpu.OutputLayout) -> Path:
    # Which outputs are packed is part of the program: executables of another layout never load.
    layout = "" if not outputs.packed else "." + hashlib.sha256(
        repr([(i, offset, shape, dtype.str) for i, offset, shape, dtype in outputs.packed]).encode()).hexdigest()[:12]
    return entry.path / f"{XLA_EXECUTABLE_PREFIX}{xla_cpu.host_fingerprint()}{layout}.bin"


def output_layout(graph: Graph) -> tuple[list[int], xla_cpu.OutputLayout]:
    """The outputs XLA:CPU returns packed into one byte buffer (``emit_hlo``'s ``packed_outputs``):
    every output of at most :data:`PACK_OUTPUT_BYTES` of a packable type, when there are at least
    :data:`PACK_MIN_OUTPUTS` of them.

    Each output buffer jaxlib hands back costs ~2.5 µs (its single-device array, then its numpy view);
    a packed output is a numpy view into the one buffer (0.6 µs), but the module spends ~10 µs more
    copying the bytes there (measured: a tiny Llama's 5 outputs, 84 µs per call either way; a training
    forward's 65 saved activations, 390 -> 211 µs)."""
    types = [v.type for v in graph.outputs]
    small = [i for i, t in enumerate(types) if t.dtype in PACKABLE
             and 0 < math.prod(t.static_shape()) * t.dtype.itemsize <= PACK_OUTPUT_BYTES]
    if len(small) < PACK_MIN_OUTPUTS:
        return [], xla_cpu.OutputLayout(len(types))
    packed = tuple((index, offset, tuple(types[index].static_shape()), np.dtype(types[index].dtype.to_numpy()))
                   for index, offset, _nbytes in pack_layout(types, small))
    return small, xla_cpu.OutputLayout(len(types), packed)


def _read_serialized(path: Path) -> bytes | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("cannot read the XLA executable %s (%s); compiling again", path, exc)
        return None
    head, digest, payload = data[: len(_MAGIC)], data[len(_MAGIC): len(_MAGIC) + 32], data[len(_MAGIC) + 32:]
    if head != _MAGIC or hashlib.sha256(payload).digest() != digest:
        log.warning("the XLA executable %s is damaged; compiling again", path)
        return None
    return payload


def _write_serialized(path: Path, payload: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        tmp.write_bytes(_MAGIC + hashlib.sha256(payload).digest() + payload)
        os.replace(tmp, path)  # atomic: readers see the old file, none, or the whole new one
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        log.warning("cannot store the XLA executable in %s (%s); it stays in memory only", path.parent, exc)


def xla_executable(graph: Graph, kernel_name: str, entry: CacheEntry | None = None) -> xla_cpu.XlaCpuExecutable:
    """The XLA:CPU executable of ``graph`` (static shapes): from memory, the cache entry, or compiled.

    Raises :class:`spiky_ir.IRError` when the graph has no HLO form or XLA rejects it.
    """
    proto = _hlo_proto(graph, kernel_name, entry)
    specs = _specs(graph)
    packed, outputs = output_layout(graph)
    key = hashlib.sha256(proto).hexdigest() + repr(specs) + repr(packed)
    with _lock:
        exe = _in_memory.get(key)
        if exe is not None:
            return exe
        start = time.perf_counter()
        path = _disk_path(entry, outputs) if entry is not None else None
        payload = _read_serialized(path) if path is not None else None
        how = "loaded from the cache entry"
        if payload is not None:
            try:
                exe = xla_cpu.deserialize(payload, specs, outputs)
            except IRError as exc:
                log.warning("%s; compiling again", exc)
        if exe is None:
            how = "compiled"
            if packed:  # the stored module returns every output on its own (as a NEFF does)
                proto = emit_hlo(graph, name=kernel_name, packed_outputs=packed).proto
            exe = xla_cpu.compile_hlo(proto, specs, outputs)
            if path is not None:
                try:
                    _write_serialized(path, exe.serialize())
                    how = "compiled and stored in the cache entry"
                except IRError as exc:  # the executable still runs; only the disk copy is missing
                    log.info("%s; kept in memory only", exc)
        _in_memory[key] = exe
    log.info("%s: XLA:CPU executable %s in %.1f ms", kernel_name, how, (time.perf_counter() - start) * 1e3)
    return exe


def clear_xla_executables() -> None:
    """Forget the in-memory XLA executables (the on-disk copies stay in their cache entries) and auto's choices."""
    with _lock:
        _in_memory.clear()
        _measured.clear()


# -- the host fn handed to the runtime -----------------------------------------------------------


def host_function(
    graph: Graph, kernel_name: str, executor: str, entry: CacheEntry | None = None
) -> tuple[HostFn, str]:
    """The host fn for ``Device.load_host_model`` and the executor it really uses.

    ``executor`` is a resolved one (``"numpy"`` or ``"xla"``). With ``"xla"``, graphs XLA:CPU
    cannot run correctly here fall back to ``"numpy"`` with a log line.
    """
    if executor == "xla":
        groups = collective_groups(graph)
        if groups:
            log.warning("%s: runs on the numpy executor, not XLA: its collectives (groups %s) run through "
                        "torch.distributed, which single-replica XLA:CPU cannot call", kernel_name, ", ".join(groups))
        else:
            try:
                exe = xla_executable(graph, kernel_name, entry)
            except IRError as exc:
                log.warning("%s: runs on the numpy executor, not XLA: %s", kernel_name, exc)
            else:
                return exe.__call__, "xla"
    elif executor != "numpy":
        raise SpikyConfigError(f"host_function needs a resolved executor ('numpy' or 'xla'), got {executor!r}")

    return numpy_plan(graph), "numpy"


NATIVE_FUSION = True
"""Whether numpy plans run fused native steps (the runtime's host_kernels); off only to measure them."""


def numpy_plan(graph: Graph) -> HostFn:
    """The numpy plan of ``graph``, with the runtime's native fused steps; unchecked, as the runtime
    checks the inputs and copies the outputs."""
    return compile_plan(graph, native=rt.host_kernels if NATIVE_FUSION else None).run_unchecked


def tiny_graph(graph: Graph) -> str | None:
    """Why ``auto`` runs ``graph`` (static shapes) on the numpy plan rather than XLA, or None."""
    if len(graph.nodes) > TINY_GRAPH_NODES:
        return None
    elements = sum(math.prod(v.type.static_shape()) for v in graph.inputs)
    elements += sum(math.prod(v.type.static_shape()) for node in graph.nodes for v in node.outputs)
    if elements > TINY_GRAPH_ELEMENTS:
        return None
    return (f"tiny graph, {len(graph.nodes)} node(s) and {elements:,} elements: XLA's per-call dispatch "
            "would cost more than the whole numpy plan")


_measured: dict[str, tuple[str, str]] = {}
"""auto's measured choice (executor, reason) per graph (its IR text)."""


def _sample_inputs(graph: Graph) -> list[Array]:
    """Inputs of the graph's types for timing: normal floats, zero ints (valid indices), 64-byte aligned like the
    runtime's buffers (so XLA aliases them, as it does on real calls)."""
    rng = np.random.default_rng(0)
    arrays = []
    for value in graph.inputs:
        shape, dtype = value.type.static_shape(), np.dtype(value.type.dtype.to_numpy())
        raw = np.zeros(math.prod(shape) * dtype.itemsize + xla_cpu.ZERO_COPY_ALIGNMENT, np.uint8)
        start = (-raw.ctypes.data) % xla_cpu.ZERO_COPY_ALIGNMENT
        array = raw[start:start + math.prod(shape) * dtype.itemsize].view(dtype).reshape(shape)
        if value.type.dtype.is_floating:
            array[...] = rng.standard_normal(shape)
        arrays.append(array)
    return arrays


def _best_of(fn: HostFn, arrays: Sequence[Array], runs: int, give_up_s: float) -> float:
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        fn(arrays)
        best = min(best, time.perf_counter() - start)
        if best > give_up_s:
            break
    return best


def measure_choice(graph: Graph, xla_fn: HostFn) -> tuple[str, str]:
    """auto's choice for a graph XLA runs: ``("numpy" | "xla", reason)`` from one timing of each executor."""
    key = print_graph(graph)
    with _lock:
        known = _measured.get(key)
    if known is not None:
        return known
    arrays = _sample_inputs(graph)
    plan = numpy_plan(graph)
    try:
        xla_fn(arrays)  # warm
        xla_s = _best_of(xla_fn, arrays, 3, AUTO_TIMING_LIMIT_S)
        if xla_s > AUTO_TIMING_LIMIT_S:
            choice = ("xla", f"auto: XLA takes {xla_s * 1e3:,.0f} ms per call; the numpy plan is not timed "
                             f"for calls over {AUTO_TIMING_LIMIT_S * 1e3:.0f} ms")
        else:
            # A plan far slower than XLA is not timed again (erf-heavy graphs are 200x slower on numpy).
            plan_s = _best_of(plan, arrays, 3, 20 * xla_s + 1e-3)
            times = f"auto: measured numpy plan {plan_s * 1e6:,.0f} µs, XLA {xla_s * 1e6:,.0f} µs per call"
            choice = ("numpy" if plan_s * AUTO_MARGIN <= xla_s else "xla", times)
    except Exception as exc:  # any failure on synthetic inputs: keep XLA, and say why
        choice = ("xla", f"auto: XLA; the timing run failed ({type(exc).__name__}: {exc})")
    with _lock:
        _measured[key] = choice
    return choice


def load_host_graph(
    device: rt.Device, graph: Graph, kernel_name: str, requested: str, entry: CacheEntry | None = None
) -> rt.Model:
    """Load ``graph`` (static shapes) on a host-driver device with the executor ``requested``.

    ``requested`` is ``"auto"``, ``"numpy"`` or ``"xla"``; the one used is logged on
    ``spiky.compile`` (``<kernel>: host executor xla``, with the reason when ``auto`` chose
    the numpy plan for a tiny graph).
    """
    resolved, why = resolve_host_executor(requested), ""
    if requested == "auto" and resolved == "xla":
        tiny = tiny_graph(graph)
        if tiny is not None:
            resolved, why = "numpy", f" (auto: {tiny})"
    fn, used = host_function(graph, kernel_name, resolved, entry)
    if requested == "auto" and used == "xla":
        chosen, reason = measure_choice(graph, fn)
        why = f" ({reason})"
        if chosen == "numpy":
            fn, used = numpy_plan(graph), "numpy"
    log.info("%s: host executor %s%s", kernel_name, used, why)
    # XLA:CPU returns a graph's many small outputs packed in one buffer: the runtime copies each out of
    # it, instead of a numpy view being made of each in Python (~1 µs per output).
    packed: dict[int, int] = {}
    exe = getattr(fn, "__self__", None)
    if used == "xla" and isinstance(exe, xla_cpu.XlaCpuExecutable) and exe.packed_offsets:
        fn, packed = exe.call_packed, exe.packed_offsets
    return device.load_host_model(
        fn,
        [rt.TensorSpec(v.type.static_shape(), v.type.dtype.to_numpy()) for v in graph.inputs],
        [rt.TensorSpec(v.type.static_shape(), v.type.dtype.to_numpy()) for v in graph.outputs],
        kernel_name,
        # XLA:CPU keeps a buffer per input address: small inputs in new memory at every call (a
        # backward's saved activations) are staged by the runtime into memory that stays put.
        stage_bytes=xla_cpu.SCRATCH_BYTES if used == "xla" else 0,
        packed=packed,
    )
