"""One compile pipeline: FX graph → IR → target artefact (a compile-cache entry) → loaded model.

Every graph the ``"nkipy"`` backend compiles goes through here, on every target: a static
graph once, a dynamic graph once per bucket (its symbolic IR specialised to the bucket's
sizes first)::

    lower(gm)             FX → IR, optimised (fold, CSE, DCE)                        → Lowered
    build(graph, ctx)     one static graph (a whole graph, or one bucket)            → Loaded
        dump_ir_dir         <kernel>.ir.txt and <kernel>.kernel.py
        collectives         host target: bound to spiky-dist's torch.distributed backend
        artefact            the compile-cache entry, built on a miss (compile_artefact):
                              host:   the HLO module (the xla executor compiles it)
                              neuron: HLO module → neuronx-cc → NEFF
        model               host: the numpy plan or XLA:CPU (host_executor); neuron: the NEFF on nrt
                              (int64 as int32 unless --native-int64=enabled: Loaded.int64)
        the rest            save_ntff profiler, compile stats, one log line with the cache key and path
    build_many(jobs, ctx) several buckets (precompile); on neuron the compiles run in parallel
    execute(...)          one call of a Loaded model through a runtime bundle (pipelined or not,
                          padded on the device, outputs to the host or left on the device; int64
                          inputs narrowed and outputs widened where the neuron model has int32)

:class:`~spiky.torch.executable.CompiledGraph` (static) and
:class:`~spiky.torch.dynamic.DynamicGraph` (buckets) are thin callables over it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import fx

import spiky_runtime as rt
from spiky._version import __version__ as spiky_version
from spiky.cache import KERNEL_SOURCE, CacheEntry, CacheKey, CompileCache
from spiky.torch.collectives import bind_host_collectives, host_replica_groups
from spiky.torch.config import BackendConfig, current_config
from spiky.torch.device_call import fx_output_devices
from spiky.torch.host_executors import build_host_artefact, load_host_graph
from spiky.torch.neuron import Int64Boundary, NtffProfiler, build_neff, load_neff_model
from spiky.torch.neuronx_cc import NeuronCompiler, detect_target, find_neuronx_cc
from spiky.torch.options import Options
from spiky.torch.targets import runtime_device
from spiky_ir import Graph, IRError, kernel_source, optimize, print_graph
from spiky_ir import __version__ as ir_version
from spiky_ir.fx import OutputSlot, lower_fx_graph
from spiky_ir.hlo import emitter_digest
from spiky_ir.symbolic import Dim

log = logging.getLogger("spiky.compile")
bucket_log = logging.getLogger("spiky.buckets")

HOST_PIPELINE = "spiky-ir-hlo"
"""The ``compiler`` of host cache entries; its version is spiky-ir's."""

Array = np.ndarray[Any, Any]
RuntimeInput = Array | rt.DeviceTensor
Buckets = Mapping[str, Sequence[int]]


# --- one compiled function's context -------------------------------------------------------------


@dataclass(frozen=True)
class Context:
    """What every graph of one compiled function shares. Options are merged with the process
    configuration here, once (:meth:`create`); nothing downstream looks up a default."""

    options: Options
    config: BackendConfig
    device: rt.Device
    """The runtime device the target executes on (``host:0`` or ``nrt:0``)."""
    inference: bool = False
    """An inference graph (aot_autograd's inference compiler) that writes into none of its inputs: no
    backward reads its outputs and no state lives in them, so they may leave the CPU (see
    :attr:`keep_cpu_outputs_on_device`)."""

    @staticmethod
    def create(options: Options, config: BackendConfig | None = None, *, inference: bool = False) -> Context:
        config = config or current_config()
        merged = options.replace(host_executor=options["host_executor"] or config.host_executor)
        return Context(merged, config, runtime_device(config.target), inference)

    @property
    def target(self) -> str:
        return self.config.target

    @property
    def keep_cpu_outputs_on_device(self) -> bool:
        """``keep_outputs_on_device`` for calls with CPU inputs: only in inference graphs that update no
        input (in training autograd needs outputs and gradients next to their parameters, and a state
        update, such as an optimizer step, must leave its new state where the old one lives)."""
        return bool(self.options["keep_outputs_on_device"]) and self.inference


# --- capture → IR ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Lowered:
    """An FX graph lowered to optimised IR, and how its outputs map back to the FX graph's."""

    graph: Graph
    output_slots: Sequence[OutputSlot]
    """Per FX output: the IR output index, or None (None outputs of backward graphs, sizes)."""
    dim_outputs: Mapping[int, Dim]
    """FX outputs that are sizes (SymInts), by FX output index."""
    output_devices: Sequence[str | None]
    """Per FX output: the device type it was traced on (``"cpu"``, ``"nkipy"``), None for non-tensors."""
    tensor_args: Sequence[bool]
    """Per FX placeholder: whether it is a tensor (SymInt placeholders are not)."""
    seconds: float
    passthrough: Mapping[int, int] = field(default_factory=dict)
    """FX outputs that are one of the graph's tensor inputs, by FX output index: the FX placeholder
    index whose tensor the call returns as it is (its slot is None; the IR graph does not output it)."""


def lower(gm: fx.GraphModule) -> Lowered:
    """FX → IR (spiky_ir.fx), then fold constants, CSE and DCE (``SPIKY_DUMP_PASSES`` dumps each pass).

    An FX output that is a tensor input itself (a training forward saves parameters for its backward)
    is not an output of the IR graph: the call hands back the input tensor, as eager autograd saves it,
    instead of a copy made by the program (a copy, a transfer and a view per parameter per step).
    """
    start = time.perf_counter()
    lowered = lower_fx_graph(gm)
    graph = optimize(lowered.graph)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    tensor_args = [isinstance(n.meta.get("val"), torch.Tensor) for n in placeholders]
    slots, passthrough = _passthrough(gm, placeholders, tensor_args, graph, list(lowered.output_slots))
    return Lowered(graph, slots, dict(lowered.dim_outputs), fx_output_devices(gm), tensor_args,
                   time.perf_counter() - start, passthrough)


def _passthrough(gm: fx.GraphModule, placeholders: list[fx.Node], tensor_args: list[bool], graph: Graph,
                 slots: list[OutputSlot]) -> tuple[list[OutputSlot], dict[int, int]]:
    """Take the FX outputs that are tensor inputs out of ``graph``'s outputs (in place): the new slots and
    {FX output index: placeholder index}. Nothing changes when every output would go (a program needs one)."""
    index_of = {node: i for i, node in enumerate(placeholders)}
    outs = gm.graph.output_node().args[0]
    outs = outs if isinstance(outs, list | tuple) else (outs,)
    passthrough = {i: index_of[out] for i, out in enumerate(outs)
                   if isinstance(out, fx.Node) and out in index_of and tensor_args[index_of[out]]
                   and slots[i] is not None}
    keep = sorted({slot for i, slot in enumerate(slots) if slot is not None and i not in passthrough})
    if not passthrough or not keep:
        return slots, {}
    renumber = {old: new for new, old in enumerate(keep)}
    graph.set_outputs([graph.outputs[old] for old in keep])
    return [None if slot is None or i in passthrough else renumber[slot] for i, slot in enumerate(slots)], passthrough


def return_inputs(results: list[Any], passthrough: Sequence[tuple[int, int]], passed: Sequence[Any]) -> list[Any]:
    """Put the inputs a call returns as they are (``passed``, taken from its arguments at the
    placeholder indices of ``passthrough``'s ``(output index, placeholder index)`` pairs) at their
    output indices of ``results``; see :attr:`Lowered.passthrough`."""
    for (index, _), tensor in zip(passthrough, passed, strict=True):
        results[index] = tensor
    return results


def kernel_name_of(ir_text: str) -> str:
    return "kernel_" + hashlib.sha256(ir_text.encode()).hexdigest()[:12]


def dump_ir(graph: Graph, name: str, directory: str | os.PathLike[str]) -> None:
    """``dump_ir_dir``: the graph's IR text and, when it has one, its NKIPy kernel source."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    (path / f"{name}.ir.txt").write_text(print_graph(graph))
    try:  # what the model became, as a readable NKIPy/NumPy kernel
        (path / f"{name}.kernel.py").write_text(kernel_source(graph, name=name))
    except IRError as exc:  # collective and symbolic graphs have no standalone NumPy kernel
        log.info("no kernel source for %s: %s", name, exc)


# --- IR → artefact ---------------------------------------------------------------------------------


def cache_key(
    ir_text: str,
    target: str,
    options: Options,
    config: BackendConfig,
    *,
    compiler: NeuronCompiler | None = None,
    buckets: Buckets | None = None,
) -> CacheKey:
    """The cache key of one static graph: IR, target, compiler + version + args, the options whose
    table row says ``in_cache_key``, bucket sizes, spiky version."""
    return CacheKey(
        ir_text=ir_text,
        target=target,
        compiler=compiler.path if compiler is not None else HOST_PIPELINE,
        compiler_version=compiler.version if compiler is not None else ir_version,
        compiler_args=config.additional_compiler_args if compiler is not None else "",
        options=options.cache_key_items(),
        buckets=tuple(sorted((k, tuple(v)) for k, v in (buckets or {}).items())),
        spiky_version=f"{spiky_version}+hlo.{emitter_digest()}",  # a changed HLO emitter makes new entries
    )


@dataclass(frozen=True)
class Artefact:
    """A static graph's compile-cache entry."""

    kernel_name: str
    entry: CacheEntry
    hit: bool
    """Found in the cache (nothing was compiled)."""
    seconds: float


def _write_kernel_source(graph: Graph, kernel_name: str, directory: Path) -> None:
    """The NKIPy kernel source (a NumPy program) of the graph, for reading and reuse."""
    try:
        (directory / KERNEL_SOURCE).write_text(kernel_source(graph, name=kernel_name))
    except IRError as exc:
        log.info("%s has no NKIPy kernel source (%s)", kernel_name, exc)


def compile_neuron(
    graph: Graph,
    options: Options,
    config: BackendConfig | None = None,
    *,
    compiler: NeuronCompiler | None = None,
    neuron_target: str | None = None,
    buckets: Buckets | None = None,
    timeout: float | None = None,
    progress: bool | None = None,
) -> tuple[CacheEntry, bool]:
    """The cached NEFF of ``graph`` (static shapes): emit HLO, run ``neuronx-cc`` once per key.

    Returns ``(entry, hit)``; ``entry.file("model.neff")`` is the NEFF. Concurrent callers
    (ranks, precompile threads) with the same key compile once; the others wait and reuse it.
    """
    config = config or current_config()
    compiler = compiler or find_neuronx_cc()
    chip = detect_target(neuron_target)
    text = print_graph(graph)
    kernel_name = kernel_name_of(text)
    key = cache_key(text, f"neuron-{chip}", options, config, compiler=compiler, buckets=buckets)

    def build(directory: Path) -> dict[str, Any]:
        _write_kernel_source(graph, kernel_name, directory)
        return build_neff(graph, kernel_name, directory, compiler=compiler, chip=chip, config=config,
                          timeout=timeout, progress=progress)

    return CompileCache(config.nkipy_cache).get_or_build(key, build, kernel_name=kernel_name)


def compile_artefact(
    graph: Graph, ctx: Context, *, buckets: Buckets | None = None, progress: bool | None = None
) -> Artefact:
    """Find or build the compile-cache entry of a static graph for the context's target."""
    start = time.perf_counter()
    text = print_graph(graph)
    kernel_name = kernel_name_of(text)
    if ctx.target == "neuron":
        entry, hit = compile_neuron(graph, ctx.options, ctx.config, buckets=buckets, progress=progress)
    else:
        key = cache_key(text, ctx.target, ctx.options, ctx.config, buckets=buckets)
        groups = host_replica_groups(graph, ctx.config.world_size)

        def build(directory: Path) -> dict[str, Any]:
            _write_kernel_source(graph, kernel_name, directory)
            return build_host_artefact(graph, kernel_name, directory, groups)

        entry, hit = CompileCache(ctx.config.nkipy_cache).get_or_build(key, build, kernel_name=kernel_name)
    return Artefact(kernel_name, entry, hit, time.perf_counter() - start)


# --- artefact → loaded model -------------------------------------------------------------------------


@dataclass
class Loaded:
    """A static graph loaded on the target's device, with what every call of it needs."""

    graph: Graph
    kernel_name: str
    model: rt.Model
    entry: CacheEntry
    hit: bool
    profiler: NtffProfiler | None
    """``save_ntff``: profiles the chosen executions of this model (None: off or not this rank)."""
    int64: Int64Boundary | None = None
    """Neuron target without ``--native-int64=enabled``: the model takes and gives int32 where the graph has
    int64, so :func:`execute` narrows those inputs (range-checked) and widens those outputs (None: nothing to
    convert; callers that bypass :func:`execute` must check this is None)."""


def load(graph: Graph, artefact: Artefact, ctx: Context) -> rt.Model:
    """The artefact's model on the context's device."""
    if ctx.target == "neuron":
        return load_neff_model(ctx.device, graph, artefact.entry, ctx.config, artefact.kernel_name)
    return load_host_graph(ctx.device, graph, artefact.kernel_name, ctx.options["host_executor"], artefact.entry)


def build(
    graph: Graph, ctx: Context, *, buckets: Buckets | None = None, label: str = "static graph",
    artefact: Artefact | None = None,
) -> Loaded:
    """IR → artefact → loaded model for one static graph (a whole graph, or one bucket); see the module doc.

    ``artefact``: already compiled (by :func:`build_many`); ``label`` names the graph in the log line.
    """
    start = time.perf_counter() - (artefact.seconds if artefact is not None else 0.0)
    kernel_name = artefact.kernel_name if artefact is not None else kernel_name_of(print_graph(graph))
    if ctx.options["dump_ir_dir"] is not None:
        dump_ir(graph, kernel_name, ctx.options["dump_ir_dir"])
    if ctx.target == "host":
        bind_host_collectives(graph)  # spiky-dist runs them (the NEFF holds them on neuron)
    if artefact is None:
        artefact = compile_artefact(graph, ctx, buckets=buckets)
    model = load(graph, artefact, ctx)
    if not artefact.hit:
        ctx.device.record_compile()
    profiler = NtffProfiler.for_graph(ctx.options, ctx.config, kernel_name, artefact.entry)
    int64 = Int64Boundary.of(graph, kernel_name, ctx.config) if ctx.target == "neuron" else None
    log.info(
        "%s %s (%s, %d nodes) for target %s in %.1f ms (cache key %s, artefacts in %s)",
        "loaded" if artefact.hit else "compiled", kernel_name, label, len(graph.nodes), ctx.target,
        (time.perf_counter() - start) * 1e3,
        artefact.entry.key[:12], artefact.entry.path,
    )
    return Loaded(graph, kernel_name, model, artefact.entry, artefact.hit, profiler, int64)


@dataclass(frozen=True)
class Job:
    """One graph for :func:`build_many`: a bucket's specialised graph, its sizes and its name (``s0=8``)."""

    graph: Graph
    buckets: Buckets
    label: str


def compile_workers(jobs: int) -> int:
    """How many compiles :func:`build_many` runs at once: one per core this process may use."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(jobs, cores))


def build_many(jobs: Sequence[Job], ctx: Context, *, name: str,
               on_loaded: Callable[[Job, Loaded], None] | None = None) -> list[Loaded]:
    """Build several graphs (a ladder's buckets). Host compiles take milliseconds and run one after
    another; neuron compiles (minutes each on real models) run in parallel, each in its own
    ``neuronx-cc`` process, at most one per core, with a progress bar on a terminal and one log line
    per bucket otherwise. Models are loaded in job order on the calling thread."""
    if ctx.target != "neuron" or len(jobs) < 2:
        out = []
        for n, job in enumerate(jobs, 1):
            bucket_log.info("%s: precompiling bucket %d/%d: %s", name, n, len(jobs), job.label)
            loaded = build(job.graph, ctx, buckets=job.buckets, label=f"bucket {job.label} of {name}")
            if on_loaded is not None:
                on_loaded(job, loaded)
            out.append(loaded)
        return out
    artefacts = _compile_in_parallel(jobs, ctx, name)
    out = []
    for job, artefact in zip(jobs, artefacts, strict=True):
        loaded = build(job.graph, ctx, buckets=job.buckets, label=f"bucket {job.label} of {name}", artefact=artefact)
        if on_loaded is not None:
            on_loaded(job, loaded)
        out.append(loaded)
    return out


def _compile_in_parallel(jobs: Sequence[Job], ctx: Context, name: str) -> list[Artefact]:
    workers = compile_workers(len(jobs))
    progress = _Progress(name, len(jobs), workers)
    results: dict[int, Artefact] = {}

    def one(index: int) -> Artefact:
        job = jobs[index]
        # no per-compile progress line: the bar below is the one line on the terminal
        artefact = compile_artefact(job.graph, ctx, buckets=job.buckets, progress=False)
        progress.done(job.label, artefact)
        return artefact

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="spiky-precompile")
    try:
        futures: dict[Future[Artefact], int] = {pool.submit(one, i): i for i in range(len(jobs))}
        done, _pending = wait(futures, return_when=FIRST_EXCEPTION)
        for future in done:
            if future.exception() is not None:
                pool.shutdown(wait=True, cancel_futures=True)  # compiles already running finish; no new ones
                raise future.exception()  # type: ignore[misc]
            results[futures[future]] = future.result()
    finally:
        pool.shutdown(wait=True)
        progress.close()
    return [results[i] for i in range(len(jobs))]


def _stderr_is_terminal() -> bool:
    return sys.stderr.isatty()  # looked up per call: sys.stderr may be replaced (pytest, notebooks)


@dataclass
class _Progress:
    """Precompile progress: a bar redrawn on a terminal, else one log line per finished bucket."""

    name: str
    total: int
    workers: int
    start: float = field(default_factory=time.monotonic)
    finished: int = 0
    cached: int = 0
    terminal: bool = field(default_factory=_stderr_is_terminal)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        bucket_log.info("%s: precompiling %d buckets, %d at a time", self.name, self.total, self.workers)
        self._draw()

    def done(self, label: str, artefact: Artefact) -> None:
        with self._lock:
            self.finished += 1
            self.cached += int(artefact.hit)
            bucket_log.info("%s: precompiled bucket %d/%d: %s (%s) in %.1f s", self.name, self.finished,
                            self.total, label,
                            "found in the cache" if artefact.hit else "compiled", artefact.seconds)
            self._draw()

    def _draw(self) -> None:
        if not self.terminal:
            return
        width = 24
        filled = width * self.finished // max(self.total, 1)
        sys.stderr.write(f"\r\x1b[Kprecompile {self.name}: [{'#' * filled}{'.' * (width - filled)}] "
                         f"{self.finished}/{self.total} buckets, {time.monotonic() - self.start:.0f} s")
        sys.stderr.flush()

    def close(self) -> None:
        if self.terminal:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
        bucket_log.info("%s: %d/%d buckets ready (%d from the cache) in %.1f s", self.name, self.finished,
                        self.total, self.cached, time.monotonic() - self.start)


# --- calls ----------------------------------------------------------------------------------------------


def execute(loaded: Loaded, bundle: rt.Bundle, inputs: Sequence[RuntimeInput], *, to_host: bool = True,
            unpad: bool = True) -> list[Any]:
    """One call of ``loaded`` through ``bundle`` (which holds its model): host arrays (``to_host``) or
    DeviceTensors that may still be being produced (a pipelined bundle returns once the call is queued).
    Chosen executions are profiled (``save_ntff``); int64 crosses ``loaded.int64`` (neuron target)."""
    boundary = loaded.int64
    if boundary is not None:
        inputs = boundary.narrow(inputs)

    def call() -> Any:
        if to_host:
            return bundle.run(inputs, unpad=unpad)  # a pipelined bundle queues the call and waits for it
        return bundle.submit(inputs, to_host=False, unpad=unpad)

    result = call() if loaded.profiler is None else loaded.profiler.run(loaded.model, call)
    outputs = list(result) if to_host else list(result.result())
    return outputs if boundary is None else boundary.widen(outputs)
