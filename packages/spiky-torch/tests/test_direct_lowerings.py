"""Ops the backend keeps out of the decomposition table because spiky-ir lowers them onto an IR op of
their own (``spiky.torch.decompositions.LOWERED``): the real op reaches the graph, and the compiled
result matches eager, static and dynamic, forward and backward."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch
from torch import fx
from torch._dynamo.backends.common import aot_autograd

from spiky.torch.decompositions import LOWERED, spiky_decompositions

aten = torch.ops.aten
Fn = Callable[[torch.Tensor], torch.Tensor]

# ATen op name → a function using it (its result kept differentiable where the op is)
CASES: dict[str, Fn] = {
    "aten.roll.default": lambda x: torch.roll(x * 2, shifts=(1, -2), dims=(0, 1)) + x,
    "aten.argsort.default": lambda x: torch.argsort(x, dim=1, descending=True).to(x.dtype) + x,
    "aten.argsort.stable": lambda x: torch.argsort(x.round(), dim=1, stable=True).to(x.dtype) * x,
    "aten.logsumexp.default": lambda x: torch.logsumexp(x * 3, dim=1, keepdim=True) - x,
    "aten.tril.default": lambda x: torch.tril(x + 1, diagonal=-1) * x,
    "aten.triu.default": lambda x: torch.triu(x.exp(), diagonal=1) + x,
}


def test_every_lowered_entry_has_a_case() -> None:
    assert set(CASES) == set(LOWERED)


def _ops_in_aot_graphs(fn: Fn, x: torch.Tensor) -> set[str]:
    seen: set[str] = set()

    def record(gm: fx.GraphModule, _inputs: Sequence[Any]) -> Any:
        seen.update(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm.forward

    backend = aot_autograd(fw_compiler=record, decompositions=spiky_decompositions())
    torch.compile(fn, backend=backend)(x.clone().requires_grad_())
    return seen


@pytest.mark.parametrize("name", list(CASES))
def test_the_op_itself_reaches_the_graph(name: str) -> None:
    fn = CASES[name]
    ops = _ops_in_aot_graphs(fn, torch.randn(4, 6))
    if name.startswith("aten.argsort"):  # a composite op: its own kernel is sort, which reaches the graph
        assert ops & {"aten.sort.default", "aten.sort.stable"}, sorted(ops)
    else:
        assert name in ops, sorted(ops)
    assert not ops & {"aten.index_select.default", "aten.gather.default", "aten.index.Tensor"}, sorted(ops)


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
@pytest.mark.parametrize("name", list(CASES))
def test_compiled_matches_eager(name: str, dynamic: bool, forward_backward_match: Callable[..., None]) -> None:
    fn = CASES[name]
    compiled = torch.compile(fn, backend="nkipy", dynamic=dynamic)
    torch.manual_seed(0)
    for rows, cols in ((5, 7), (3, 9)) if dynamic else ((5, 7),):
        forward_backward_match(compiled, fn, torch.randn(rows, cols))
