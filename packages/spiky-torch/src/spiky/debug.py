"""``spiky.debug.compare``: eager against compiled, and where a mismatch starts.

>>> report = spiky.debug.compare(model, x)          # doctest: +SKIP
>>> print(report)                                    # per-output errors, then the first bad node

On a mismatch the model is traced again to the ATen graphs the backend sees; each graph runs
node by node in torch and, lowered to IR, in the numpy reference executor. The first FX node
whose IR value differs from torch's is reported with its ATen op and the user's source line:
that is where a lowering (or the IR's semantics) went wrong.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import fx
from torch._decomp import core_aten_decompositions
from torch._dynamo.backends.common import aot_autograd
from torch._functorch._aot_autograd.utils import make_boxed_func

from spiky._compile import compile as spiky_compile
from spiky.torch.arrays import from_array, to_array
from spiky_ir import execute
from spiky_ir.fx import lower_fx_graph, source_of

_TOLERANCES = {torch.float16: (1e-2, 1e-3), torch.bfloat16: (5e-2, 1e-2)}
_DEFAULT_TOLERANCE = (1e-4, 1e-5)  # (rtol, atol) for float32 and wider; exact for integers


@dataclass(frozen=True)
class OutputError:
    index: int
    max_abs: float
    max_rel: float
    ok: bool


@dataclass(frozen=True)
class Divergence:
    """The first FX node whose value under spiky-ir differs from torch's."""

    graph_index: int
    node: str
    aten_op: str
    where: str
    max_abs: float


@dataclass
class CompareReport:
    outputs: list[OutputError]
    divergence: Divergence | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outputs)

    def __str__(self) -> str:
        lines = [f"output {o.index}: max abs {o.max_abs:.3e}, max rel {o.max_rel:.3e} "
                 f"{'ok' if o.ok else 'MISMATCH'}" for o in self.outputs]
        if self.divergence is not None:
            d = self.divergence
            lines.append(f"first divergence: graph {d.graph_index}, {d.where} "
                         f"(max abs {d.max_abs:.3e}); the values before it match torch")
        lines += self.notes
        return "\n".join(lines)


def _tolerance(dtype: torch.dtype) -> tuple[float, float]:
    return _TOLERANCES.get(dtype, _DEFAULT_TOLERANCE)


def _errors(actual: torch.Tensor, expected: torch.Tensor) -> tuple[float, float, bool]:
    a, e = actual.detach().cpu().double(), expected.detach().cpu().double()
    if a.shape != e.shape:
        return float("inf"), float("inf"), False
    diff = (a - e).abs()
    max_abs = float(diff.max()) if diff.numel() else 0.0
    max_rel = float((diff / e.abs().clamp_min(1e-12)).max()) if diff.numel() else 0.0
    if not expected.is_floating_point():
        return max_abs, max_rel, max_abs == 0.0
    rtol, atol = _tolerance(expected.dtype)
    return max_abs, max_rel, bool(torch.allclose(a, e, rtol=rtol, atol=atol, equal_nan=True))


def _flat(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, list | tuple):
        return [t for v in value for t in _flat(v)]
    if isinstance(value, Mapping):
        return [t for v in value.values() for t in _flat(v)]
    return []


def _capture(model: Callable[..., Any], inputs: Sequence[Any]) -> list[tuple[fx.GraphModule, list[Any]]]:
    """The ATen graphs the nkipy backend would get for this call, with their real inputs."""
    captured: list[tuple[fx.GraphModule, list[Any]]] = []

    def compiler(gm: fx.GraphModule, _example: Sequence[Any]) -> Any:
        def run(*args: Any) -> Any:
            captured.append((gm, [a.detach().clone() if isinstance(a, torch.Tensor) else a for a in args]))
            return gm(*args)

        return make_boxed_func(run)

    backend = aot_autograd(fw_compiler=compiler, decompositions=core_aten_decompositions())
    torch._dynamo.reset()
    with torch.no_grad():
        torch.compile(model, backend=backend)(*inputs)
    torch._dynamo.reset()
    return captured


def _first_divergence(index: int, gm: fx.GraphModule, args: list[Any]) -> Divergence | None:
    torch_values: dict[str, Any] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            result = super().run_node(n)
            torch_values[n.name] = result
            return result

    Recorder(gm).run(*args)
    lowered = lower_fx_graph(gm)
    names = [n.name for n in gm.graph.nodes if n.op == "call_function" and n.name in lowered.node_values]
    graph = lowered.graph
    graph.set_outputs([lowered.node_values[name] for name in names])
    arrays = [to_array(a) for a in args if isinstance(a, torch.Tensor)]
    ir_values = dict(zip(names, execute(graph, arrays), strict=True))
    nodes = {n.name: n for n in gm.graph.nodes}
    for name in names:
        expected = torch_values.get(name)
        if not isinstance(expected, torch.Tensor):
            continue
        max_abs, _, ok = _errors(from_array(np.asarray(ir_values[name])), expected)
        if not ok:
            node = nodes[name]
            return Divergence(index, name, str(node.target), source_of(node), max_abs)
    return None


def compare(
    model: Callable[..., Any], *inputs: Any, options: Mapping[str, Any] | None = None
) -> CompareReport:
    """Run ``model`` eagerly and compiled (``backend="nkipy"``) under ``torch.no_grad()``; report
    each output's max abs/rel error and, on a mismatch, the first diverging ATen node."""
    with torch.no_grad():
        expected = _flat(model(*inputs))
        torch._dynamo.reset()
        actual = _flat(spiky_compile(model, options=options)(*inputs))
    torch._dynamo.reset()
    report = CompareReport([])
    for i, (a, e) in enumerate(zip(actual, expected, strict=False)):
        max_abs, max_rel, ok = _errors(a, e)
        report.outputs.append(OutputError(i, max_abs, max_rel, ok))
    if len(actual) != len(expected):
        report.notes.append(f"compiled returned {len(actual)} tensors, eager {len(expected)}")
        report.outputs.append(OutputError(len(report.outputs), float("inf"), float("inf"), False))
    if report.ok:
        return report
    for index, (gm, args) in enumerate(_capture(model, inputs)):
        divergence = _first_divergence(index, gm, args)
        if divergence is not None:
            report.divergence = divergence
            return report
    report.notes.append("every IR value matches torch on the numpy reference: the difference comes "
                        "from the executor or the runtime, not the lowering")
    return report


__all__ = ["CompareReport", "Divergence", "OutputError", "compare"]
