"""The neuron target's half of a compiled graph, and NTFF profiling.

:func:`load_neuron_model`: the graph's NEFF from the compile cache (HLO → ``neuronx-cc``,
compiled once per key) loaded on the nrt device, its I/O bound by NEFF name and checked
against the graph's types. :class:`NtffProfiler`: the ``save_ntff`` options::

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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

import spiky_runtime as rt
from spiky.cache import CacheEntry
from spiky.errors import SpikyTargetError
from spiky.torch.collectives import collective_groups
from spiky.torch.config import BackendConfig
from spiky.torch.neuronx_cc import NEFF_FILE
from spiky.torch.options import Options
from spiky_ir import Graph

log = logging.getLogger("spiky.runtime")

DEFAULT_NTFF_DIR = "spiky_ntff"


def _spec(value_type: Any) -> rt.TensorSpec:
    return rt.TensorSpec(value_type.static_shape(), value_type.dtype.to_numpy())


def load_neuron_model(
    graph: Graph, options: Options, config: BackendConfig, device: rt.Device, kernel_name: str
) -> tuple[rt.Model, CacheEntry, bool]:
    """Compile (or find) the graph's NEFF and load it on ``device`` (an nrt device).

    Returns ``(model, cache entry, cache hit)``. The model's inputs and outputs are in graph
    order; graphs with collectives load with this process's rank and world size.
    """
    from spiky.torch.executable import compile_neuron  # executable imports this module

    outputs = [_spec(v.type) for v in graph.outputs]
    empty = [i for i, spec in enumerate(outputs) if 0 in spec.shape]
    if empty:
        raise SpikyTargetError(
            f"{kernel_name}: outputs {empty} have zero elements, which a NEFF drops; the neuron target does not "
            "support such graphs yet (use target='host')"
        )
    entry, hit = compile_neuron(graph, options, config)
    meta = entry.meta["neff"]
    collectives = bool(collective_groups(graph))
    model = device.load_neff(
        entry.file(NEFF_FILE).read_bytes(),
        kernel_name,
        rank=config.rank if collectives else None,
        world_size=config.world_size if collectives else None,
        input_names=list(meta["inputs"]),
        output_names=list(meta["outputs"]),
        inputs=[_spec(v.type) for v in graph.inputs],
        outputs=outputs,
    )
    return model, entry, hit


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

    def run(self, model: rt.Model, arrays: list[np.ndarray[Any, Any]]) -> list[np.ndarray[Any, Any]]:
        with self._lock:
            index = self._count
            self._count += 1
            profiled = self.chosen is None or index in self.chosen
            if profiled and not self._prepared:
                self._prepare()
        if not profiled:
            return model.run(arrays)
        if self.target == "neuron":
            path = str(self.directory / f"{index}.ntff")
            model.profile_start(path)
            try:
                return model.run(arrays)
            finally:
                model.profile_stop(path)
                log.info("save_ntff: wrote %s", path)
        device = model.device
        if device.tracing:  # spiky.profile() is recording this device already
            return model.run(arrays)
        device.start_trace()
        try:
            return model.run(arrays)
        finally:
            device.synchronize()
            (self.directory / f"{index}.trace.json").write_text(device.stop_trace())
