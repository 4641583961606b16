"""spiky-torch's modules import each other without a cycle, function-level imports included."""

from __future__ import annotations

from pathlib import Path

import pytest

import spiky
from spiky_ir.import_graph import format_cycle, import_cycle, import_graph

SRC = Path(spiky.__file__).resolve().parents[1]
pytestmark = pytest.mark.smoke


def test_spiky_has_no_import_cycle() -> None:
    cycle = import_cycle(import_graph(SRC, "spiky"))
    assert cycle is None, f"import cycle: {format_cycle(cycle)}"


@pytest.mark.parametrize(
    ("module", "must_not_reach"),
    [("spiky.cache", "spiky.torch.config"),  # the cache knows its default directory; config uses it
     ("spiky.torch.neuron", "spiky.torch.executable"),  # the pipeline calls both
     ("spiky.torch.pipeline", "spiky.torch.executable"),
     ("spiky.torch.pipeline", "spiky.torch.dynamic")],
)
def test_layers_point_one_way(module: str, must_not_reach: str) -> None:
    graph = import_graph(SRC, "spiky")
    seen, todo = set(), [module]
    while todo:
        for target in graph.get(todo.pop(), ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    assert must_not_reach not in seen
