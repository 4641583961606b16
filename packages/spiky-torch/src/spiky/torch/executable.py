"""A lowered graph loaded on the runtime: what the backend hands back to aot_autograd."""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import fx

import spiky_runtime as rt
from spiky.torch.options import Options
from spiky.torch.targets import runtime_device
from spiky_ir import Graph, execute, print_graph
from spiky_ir.fx import lower_fx

log = logging.getLogger("spiky.compile")


def _spec(value_type: Any) -> rt.TensorSpec:
    return rt.TensorSpec(value_type.static_shape(), value_type.dtype.to_numpy())


class CompiledGraph:
    """A boxed callable (aot_autograd's calling convention) running one graph on a device."""

    _boxed_call = True

    def __init__(self, graph: Graph, device: rt.Device, kernel_name: str) -> None:
        self.graph = graph
        self.kernel_name = kernel_name
        self.model = device.load_host_model(
            lambda arrays: execute(graph, arrays),
            [_spec(v.type) for v in graph.inputs],
            [_spec(v.type) for v in graph.outputs],
            kernel_name,
        )

    def __call__(self, args: list[Any]) -> list[torch.Tensor]:
        arrays = [_to_numpy(a) for a in args]
        args.clear()  # boxed convention: drop our references to the inputs early
        return [torch.from_numpy(out) for out in self.model.run(arrays)]


def _to_numpy(value: Any) -> np.ndarray[Any, Any]:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"compiled graph input {value!r} is not a tensor")
    return value.detach().contiguous().numpy()


def compile_graph(gm: fx.GraphModule, target: str, options: Options) -> CompiledGraph:
    """Lower ``gm`` to IR and load it on ``target``'s device."""
    start = time.perf_counter()
    graph = lower_fx(gm)
    text = print_graph(graph)
    kernel_name = "kernel_" + hashlib.sha256(text.encode()).hexdigest()[:12]
    if options["dump_ir_dir"] is not None:
        directory = Path(options["dump_ir_dir"])
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"{kernel_name}.ir.txt").write_text(text)
    device = runtime_device(target)
    compiled = CompiledGraph(graph, device, kernel_name)
    device.record_compile()
    log.info(
        "compiled %s (%d nodes) for target %s in %.1f ms",
        kernel_name, len(graph.nodes), target, (time.perf_counter() - start) * 1e3,
    )
    return compiled
