"""A lowered graph loaded on the runtime: what the backend hands back to aot_autograd.

Compiling goes through the on-disk compile cache (:mod:`spiky.cache`):

- host target: the artifact is the IR text plus its HLO module (proto and text; XLA:CPU
  can run it). A miss emits the HLO and counts a compile in ``spiky.get_stats()``; a hit
  skips HLO emission and counts in ``spiky.cache.stats().hits`` instead.
- neuron target (:func:`compile_neuron`): HLO → ``neuronx-cc`` → NEFF, compiled once per
  key across processes, loaded through the runtime's nrt driver (:mod:`spiky.torch.neuron`).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import fx

import spiky_runtime as rt
from spiky.cache import COMPILE_LOG, HLO_PROTO, HLO_TEXT, KERNEL_SOURCE, CacheEntry, CacheKey, CompileCache
from spiky.torch.collectives import bind_host_collectives, graph_replica_groups, host_replica_groups
from spiky.torch.config import BackendConfig, current_config
from spiky.torch.device import is_device_tensor
from spiky.torch.device_call import call_on_device, fx_output_devices
from spiky.torch.host_executors import load_host_graph
from spiky.torch.neuron import NtffProfiler, load_neuron_model
from spiky.torch.neuronx_cc import NeuronCompiler, compile_neff, detect_target, find_neuronx_cc
from spiky.torch.options import Options
from spiky.torch.targets import runtime_device
from spiky_ir import Graph, IRError, compile_plan, kernel_source, optimize, print_graph
from spiky_ir import __version__ as ir_version
from spiky_ir.fx import OutputSlot, lower_fx_graph
from spiky_ir.hlo import emit_hlo

log = logging.getLogger("spiky.compile")

HOST_PIPELINE = "spiky-ir-hlo"
"""The ``compiler`` of host cache entries; its version is spiky-ir's."""
_NOT_IN_KEY = frozenset({"dump_ir_dir", "keep_outputs_on_device", "save_ntff", "save_ntff_dir", "save_ntff_exe_idx",
                         "save_ntff_ranks", "host_executor"})
"""Options that do not change the compiled artifact (every other option is part of the key)."""


def _spec(value_type: Any) -> rt.TensorSpec:
    return rt.TensorSpec(value_type.static_shape(), value_type.dtype.to_numpy())


class CompiledGraph:
    """A boxed callable (aot_autograd's calling convention) running one graph on a device."""

    _boxed_call = True
    keep_outputs_on_device = False
    """Calls with ``"nkipy"`` inputs return outputs in pool memory instead of through the host."""
    output_devices: Sequence[str | None] = ()
    """Device type of each FX output as traced (device calls keep "cpu" outputs on the host)."""
    profiler: NtffProfiler | None = None
    """``save_ntff``: profiles chosen executions (host calls)."""

    def __init__(
        self, graph: Graph, device: rt.Device, kernel_name: str, cache_entry: CacheEntry | None = None,
        cache_hit: bool = False, output_slots: Sequence[OutputSlot] | None = None, model: rt.Model | None = None,
    ) -> None:
        # An instance attribute too: aot_autograd wraps backward compilers with functools.wraps,
        # which copies the instance __dict__ but not class attributes.
        self._boxed_call = True
        # Backward graphs return None for inputs that need no gradient; the IR graph
        # returns only tensors and the slots put the Nones back.
        self.output_slots = output_slots
        self.graph = graph
        self.kernel_name = kernel_name
        self.cache_entry = cache_entry
        self.cache_hit = cache_hit
        # neuron: the loaded NEFF; host: the IR run by the numpy executor (the reference's plan).
        self.model = model if model is not None else device.load_host_model(
            compile_plan(graph).run_unchecked,  # the runtime checks inputs and copies outputs
            [_spec(v.type) for v in graph.inputs],
            [_spec(v.type) for v in graph.outputs],
            kernel_name,
        )

    def __call__(self, args: list[Any]) -> list[torch.Tensor | None]:
        # The per-call path is kept to a few attribute reads: plain CPU tensors become numpy
        # views (no copy; the runtime makes non-contiguous ones contiguous), anything else
        # ("nkipy" tensors, tensors numpy cannot view, non-tensors) takes the careful path.
        try:
            arrays = [a.detach().numpy() if a.requires_grad else a.numpy() for a in args]
        except (TypeError, AttributeError, RuntimeError):
            return self._call_general(args)
        args.clear()  # boxed convention: drop our references to the inputs early
        results = self.model.run(arrays) if self.profiler is None else self.profiler.run(self.model, arrays)
        slots = self.output_slots
        if slots is None:
            return [torch.from_numpy(out) for out in results]
        outs = [torch.from_numpy(out) for out in results]
        return [None if slot is None else outs[slot] for slot in slots]

    def _call_general(self, args: list[Any]) -> list[torch.Tensor | None]:
        if any(is_device_tensor(a) for a in args):
            return call_on_device(self, args)  # "nkipy" tensors: no host round trip
        arrays = [_to_numpy(a) for a in args]
        args.clear()
        results = self.profiler.run(self.model, arrays) if self.profiler is not None else self.model.run(arrays)
        outs = [torch.from_numpy(out) for out in results]
        slots = self.output_slots if self.output_slots is not None else range(len(outs))
        return [None if slot is None else outs[slot] for slot in slots]


def _to_numpy(value: Any) -> np.ndarray[Any, Any]:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"compiled graph input {value!r} is not a tensor")
    return value.detach().contiguous().numpy()


def kernel_name_of(ir_text: str) -> str:
    return "kernel_" + hashlib.sha256(ir_text.encode()).hexdigest()[:12]


def cache_key(
    ir_text: str,
    target: str,
    options: Options,
    config: BackendConfig,
    *,
    compiler: NeuronCompiler | None = None,
    buckets: Mapping[str, Sequence[int]] | None = None,
) -> CacheKey:
    """The cache key of one graph: IR, target, compiler + version + args, options, buckets, spiky version."""
    from spiky import __version__ as spiky_version

    relevant = tuple(sorted((k, repr(v)) for k, v in options.values.items() if k not in _NOT_IN_KEY))
    return CacheKey(
        ir_text=ir_text,
        target=target,
        compiler=compiler.path if compiler is not None else HOST_PIPELINE,
        compiler_version=compiler.version if compiler is not None else ir_version,
        compiler_args=config.additional_compiler_args if compiler is not None else "",
        options=relevant,
        buckets=tuple(sorted((k, tuple(v)) for k, v in (buckets or {}).items())),
        spiky_version=spiky_version,
    )


def _write_kernel_source(graph: Graph, kernel_name: str, directory: Path) -> None:
    """The NKIPy kernel source (a NumPy program) of the graph, for reading and reuse."""
    try:
        (directory / KERNEL_SOURCE).write_text(kernel_source(graph, name=kernel_name))
    except IRError as exc:
        log.info("%s has no NKIPy kernel source (%s)", kernel_name, exc)


def _host_builder(
    graph: Graph, kernel_name: str, groups: Mapping[str, Sequence[Sequence[int]]] | None = None
) -> Any:
    def build(directory: Path) -> dict[str, Any]:
        start = time.perf_counter()
        _write_kernel_source(graph, kernel_name, directory)
        try:
            artifact = emit_hlo(graph, name=kernel_name, replica_groups=groups)
        except IRError as exc:
            # The host target runs the IR itself; a graph without an HLO form still runs here.
            log.info("%s has no HLO form (%s); caching the IR only", kernel_name, exc)
            (directory / COMPILE_LOG).write_text(f"host target: no HLO module: {exc}\n")
            return {"hlo": {"available": False, "reason": str(exc)}}
        (directory / HLO_PROTO).write_bytes(artifact.proto)
        (directory / HLO_TEXT).write_text(artifact.text)
        ms = (time.perf_counter() - start) * 1e3
        (directory / COMPILE_LOG).write_text(f"host target: HLO module emitted in {ms:.1f} ms\n")
        return {"hlo": {"available": True, "inputs": list(artifact.input_names),
                        "outputs": list(artifact.output_names)}}

    return build


def compile_graph(gm: fx.GraphModule, target: str, options: Options) -> CompiledGraph:
    """Lower ``gm`` to IR, find or build its cache entry, and load it on ``target``'s device."""
    start = time.perf_counter()
    lowered = lower_fx_graph(gm)
    graph = optimize(lowered.graph)  # fold constants, CSE, DCE (SPIKY_DUMP_PASSES dumps each)
    text = print_graph(graph)
    kernel_name = kernel_name_of(text)
    if options["dump_ir_dir"] is not None:
        directory = Path(options["dump_ir_dir"])
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"{kernel_name}.ir.txt").write_text(text)
        try:  # what the model became, as a readable NKIPy/NumPy kernel
            (directory / f"{kernel_name}.kernel.py").write_text(kernel_source(graph))
        except IRError as exc:  # collective graphs have no standalone NumPy kernel
            log.info("no kernel source for %s: %s", kernel_name, exc)
    config = current_config()
    device = runtime_device(target)
    model: rt.Model | None = None
    if target == "neuron":  # HLO -> neuronx-cc -> NEFF (cached), loaded through the nrt driver
        model, entry, hit = load_neuron_model(graph, options, config, device, kernel_name)
    else:
        bind_host_collectives(graph)
        key = cache_key(text, target, options, config)
        groups = host_replica_groups(graph, config.world_size)
        entry, hit = CompileCache(config.nkipy_cache).get_or_build(
            key, _host_builder(graph, kernel_name, groups), kernel_name=kernel_name
        )
        model = load_host_graph(device, graph, kernel_name, options["host_executor"] or config.host_executor, entry)
    compiled = CompiledGraph(graph, device, kernel_name, entry, hit, lowered.output_slots, model=model)
    compiled.profiler = NtffProfiler.for_graph(options, config, kernel_name, entry)
    compiled.keep_outputs_on_device = bool(options["keep_outputs_on_device"])
    compiled.output_devices = fx_output_devices(gm)
    if not hit:
        device.record_compile()
    log.info(
        "%s %s (%d nodes) for target %s in %.1f ms (cache key %s, artefacts in %s)",
        "loaded" if hit else "compiled", kernel_name, len(graph.nodes), target,
        (time.perf_counter() - start) * 1e3, entry.key[:12], entry.path,
    )
    return compiled


def compile_neuron(
    graph: Graph,
    options: Options,
    config: BackendConfig | None = None,
    *,
    compiler: NeuronCompiler | None = None,
    neuron_target: str | None = None,
    buckets: Mapping[str, Sequence[int]] | None = None,
    timeout: float | None = None,
    progress: bool | None = None,
) -> tuple[CacheEntry, bool]:
    """The cached NEFF of ``graph`` (static shapes): emit HLO, run ``neuronx-cc`` once per key.

    Returns ``(entry, hit)``; ``entry.file("model.neff")`` is the NEFF. Concurrent callers
    (ranks) with the same key compile once; the others wait and reuse the entry.
    """
    config = config or current_config()
    compiler = compiler or find_neuronx_cc()
    chip = detect_target(neuron_target)
    text = print_graph(graph)
    kernel_name = kernel_name_of(text)
    key = cache_key(text, f"neuron-{chip}", options, config, compiler=compiler, buckets=buckets)

    def build(directory: Path) -> dict[str, Any]:
        _write_kernel_source(graph, kernel_name, directory)
        artifact = emit_hlo(graph, name=kernel_name, replica_groups=graph_replica_groups(graph, config.world_size))
        (directory / HLO_TEXT).write_text(artifact.text)
        result = compile_neff(compiler, directory, artifact.proto, target=chip,
                              extra_args=config.additional_compiler_args, timeout=timeout, progress=progress)
        return {"neff": {"inputs": list(artifact.input_names), "outputs": list(artifact.output_names),
                         "compile_seconds": round(result.seconds, 3), "argv": list(result.argv)}}

    entry, hit = CompileCache(config.nkipy_cache).get_or_build(key, build, kernel_name=kernel_name)
    log.info("%s NEFF for %s (%s), cache key %s, artefacts in %s", "reused" if hit else "compiled", kernel_name,
             chip, entry.key[:12], entry.path)
    return entry, hit
