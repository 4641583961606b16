"""The neuron target's half of the compile pipeline, and NTFF profiling.

:func:`build_neff` writes a graph's artefact (HLO → ``neuronx-cc`` → NEFF) into a compile-cache
entry; :func:`load_neff_model` loads it on the nrt device, its I/O bound by NEFF name and
checked against the graph's types (int64 as int32 unless ``--native-int64=enabled``; each call's int64
inputs and outputs cross :class:`Int64Boundary`). :mod:`spiky.torch.pipeline` calls both.
:class:`NtffProfiler`: the ``save_ntff`` options::

    torch.compile(model, backend="nkipy",
                  options={"save_ntff": True, "save_ntff_dir": "profiles", "save_ntff_exe_idx": [0, 3]})

On neuron the chosen executions (0-based call counts of each compiled graph) run between
``nrt_profile_start``/``nrt_profile_stop``: ``profiles/kernel_<hash>/<exe_idx>.ntff`` next to
``kernel_<hash>.neff``; view with ``neuron-profile view -n kernel_<hash>.neff -s 0.ntff``. Only
the ranks in ``save_ntff_ranks`` (default rank 0) profile. On the host target the same calls
write the runtime's timeline trace ``<exe_idx>.trace.json`` instead (Chrome/Perfetto).
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

import spiky_runtime as rt
from spiky.cache import HLO_TEXT, CacheEntry
from spiky.errors import SpikyRangeError
from spiky.torch.collectives import collective_groups, graph_replica_groups
from spiky.torch.config import BackendConfig
from spiky.torch.neuronx_cc import NEFF_FILE, NeuronCompiler, compile_neff, native_int64
from spiky.torch.options import Options
from spiky_ir import DType, Graph
from spiky_ir.hlo import emit_hlo
from spiky_ir.hlo.narrow import INT32_MAX, INT32_MIN, narrow_int64

log = logging.getLogger("spiky.runtime")

DEFAULT_NTFF_DIR = "spiky_ntff"
_R = TypeVar("_R")


def _spec(value_type: Any, narrowed: bool) -> rt.TensorSpec:
    dtype = DType.int32 if narrowed and value_type.dtype is DType.int64 else value_type.dtype
    return rt.TensorSpec(value_type.static_shape(), dtype.to_numpy())


# --- int64 on the neuron target -------------------------------------------------------------------------
# neuronx-cc computes int64 as int32 unless given --native-int64=enabled (docs/neuron-interfaces.md). The
# neuron target says so itself: the HLO it compiles has every s64 narrowed to s32 (spiky_ir.hlo.narrow),
# the NEFF is loaded with int32 where the graph has int64, and each call narrows int64 inputs (checking
# their range) and widens int32 results back to int64, so torch sees the dtypes eager mode gives.


@dataclass(frozen=True)
class Int64Boundary:
    """The int64 inputs and outputs of one neuron graph compiled with int64 narrowed to int32."""

    kernel_name: str
    inputs: tuple[tuple[int, str], ...]
    """(index, IR name) of each int64 graph input."""
    outputs: tuple[int, ...]
    """Index of each int64 graph output."""

    @staticmethod
    def of(graph: Graph, kernel_name: str, config: BackendConfig) -> Int64Boundary | None:
        """The boundary of ``graph`` on the neuron target, None when nothing crosses it as int64 or the
        compiler keeps int64 native (``--native-int64=enabled``)."""
        if native_int64(config.additional_compiler_args):
            return None
        inputs = tuple((i, v.name) for i, v in enumerate(graph.inputs) if v.type.dtype is DType.int64)
        outputs = tuple(i for i, v in enumerate(graph.outputs) if v.type.dtype is DType.int64)
        if not inputs and not outputs:
            return None
        return Int64Boundary(kernel_name, inputs, outputs)

    def narrow(self, inputs: Sequence[Any]) -> list[Any]:
        """``inputs`` with each int64 one as int32; raises :class:`SpikyRangeError` for a value int32
        cannot hold (it would wrap on the device, turning e.g. an index into another index)."""
        out = list(inputs)
        for index, name in self.inputs:
            value = out[index]
            array: np.ndarray[Any, Any] = value.numpy() if isinstance(value, rt.DeviceTensor) else np.asarray(value)
            if array.dtype != np.int64:
                continue  # the runtime names a mismatched input itself
            if array.size:
                low, high = int(array.min()), int(array.max())
                if low < INT32_MIN or high > INT32_MAX:
                    bad = low if low < INT32_MIN else high
                    raise SpikyRangeError(
                        f"{self.kernel_name}: int64 input {index} (%{name}) holds {bad}, outside the int32 range "
                        f"[{INT32_MIN}, {INT32_MAX}] the neuron target computes int64 in (neuronx-cc narrows int64 "
                        "to int32 by default); pass additional_compiler_args=\"--native-int64=enabled\" to "
                        "init_nkipy_backend to keep int64 on the device, or bring the values into range"
                    )
            out[index] = array.astype(np.int32)
        return out

    def widen(self, outputs: Sequence[Any]) -> list[Any]:
        """``outputs`` with each int64 graph output (an int32 result) widened back to int64."""
        out = list(outputs)
        for index in self.outputs:
            value = out[index]
            array = value.numpy() if isinstance(value, rt.DeviceTensor) else value
            out[index] = array.astype(np.int64)
        return out


def build_neff(
    graph: Graph,
    kernel_name: str,
    directory: Path,
    *,
    compiler: NeuronCompiler,
    chip: str,
    config: BackendConfig,
    timeout: float | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """The neuron artefact of a static graph in ``directory``: HLO module → ``neuronx-cc`` → NEFF.

    Returns the entry's ``neff`` metadata (NEFF I/O names, compile time, argv). Collectives compile
    with HLO replica groups from this process's world size.
    """
    # Zero-element inputs become constants (a NEFF carries no zero-element tensor; the driver leaves
    # such declared inputs and outputs unbound and gives empty outputs back).
    artifact = emit_hlo(graph, name=kernel_name, replica_groups=graph_replica_groups(graph, config.world_size),
                        drop_empty_inputs=True)
    native = native_int64(config.additional_compiler_args)
    if not native:  # what neuronx-cc would compute anyway, said in the module (see Int64Boundary)
        artifact = narrow_int64(artifact)
    (directory / HLO_TEXT).write_text(artifact.text)
    result = compile_neff(compiler, directory, artifact.proto, target=chip,
                          extra_args=config.additional_compiler_args, timeout=timeout, progress=progress)
    return {"neff": {"inputs": [v.name for v in graph.inputs], "outputs": list(artifact.output_names),
                     "compile_seconds": round(result.seconds, 3), "argv": list(result.argv),
                     "int64": "native" if native else "narrowed to int32"}}


def load_neff_model(
    device: rt.Device, graph: Graph, entry: CacheEntry, config: BackendConfig, kernel_name: str
) -> rt.Model:
    """Load the NEFF of a cache entry built by :func:`build_neff` on ``device`` (an nrt device).

    The model's inputs and outputs are in graph order, bound by NEFF name and checked against
    the graph's types (int64 ones as int32 unless ``--native-int64=enabled``); graphs with
    collectives load with this process's rank and world size.
    """
    meta = entry.meta["neff"]
    narrowed = not native_int64(config.additional_compiler_args)
    collectives = bool(collective_groups(graph))
    return device.load_neff(
        entry.file(NEFF_FILE).read_bytes(),
        kernel_name,
        rank=config.rank if collectives else None,
        world_size=config.world_size if collectives else None,
        input_names=list(meta["inputs"]),
        output_names=list(meta["outputs"]),
        inputs=[_spec(v.type, narrowed) for v in graph.inputs],
        outputs=[_spec(v.type, narrowed) for v in graph.outputs],
    )


class NtffProfiler:
    """Runs a compiled graph's model, profiling the executions ``save_ntff_exe_idx`` chooses."""

    def __init__(self, options: Options, config: BackendConfig, kernel_name: str, entry: CacheEntry | None) -> None:
        self.directory = Path(options["save_ntff_dir"] or DEFAULT_NTFF_DIR) / kernel_name
        chosen: Sequence[int] | None = options["save_ntff_exe_idx"]
        self.chosen = None if chosen is None else frozenset(chosen)
        self.target = config.target
        self.kernel_name = kernel_name
        self.entry = entry
        self._count = 0
        self._lock = threading.Lock()
        self._prepared = False

    @staticmethod
    def for_graph(
        options: Options, config: BackendConfig, kernel_name: str, entry: CacheEntry | None
    ) -> NtffProfiler | None:
        """A profiler when ``save_ntff`` is on and this rank profiles, else None."""
        if not options["save_ntff"] or config.rank not in options["save_ntff_ranks"]:
            return None
        return NtffProfiler(options, config, kernel_name, entry)

    def _prepare(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.target == "neuron" and self.entry is not None:
            shutil.copyfile(self.entry.file(NEFF_FILE), self.directory / f"{self.kernel_name}.neff")
        else:
            log.warning("save_ntff: NTFF profiles need Neuron (target 'neuron'); on target %r %s gets runtime "
                        "timeline traces (<exe_idx>.trace.json) in %s instead", self.target, self.kernel_name,
                        self.directory)
        self._prepared = True

    def run(self, model: rt.Model, call: Callable[[], _R]) -> _R:
        """``call()`` (one execution of ``model``: ``model.run``, or a bundle's ``run``/``submit``),
        profiled when it is a chosen execution. A profiled call is waited for before the profile stops."""
        with self._lock:
            index = self._count
            self._count += 1
            profiled = self.chosen is None or index in self.chosen
            if profiled and not self._prepared:
                self._prepare()
        if not profiled:
            return call()
        device = model.device
        device.synchronize()  # pipelined calls still in flight belong to no profile
        if self.target == "neuron":
            path = str(self.directory / f"{index}.ntff")
            model.profile_start(path)
            try:
                return _finished(call())
            finally:
                model.profile_stop(path)
                log.info("save_ntff: wrote %s", path)
        if device.tracing:  # spiky.profile() is recording this device already
            return call()
        device.start_trace()
        try:
            return _finished(call())
        finally:
            device.synchronize()
            (self.directory / f"{index}.trace.json").write_text(device.stop_trace())


def _finished(result: _R) -> _R:
    if isinstance(result, rt.Future):
        result.wait()
    return result
