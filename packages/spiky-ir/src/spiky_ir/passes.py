"""Graph passes (DCE, CSE, constant folding) and a pass manager that can dump the IR after each.

Every pass takes a graph and returns a graph (these rewrite in place and return it).
The pass manager verifies after each pass, so a broken pass is named at once::

    from spiky_ir.passes import PassManager
    graph = PassManager(dump_dir="/tmp/ir").run(graph)   # or SPIKY_DUMP_PASSES=/tmp/ir

The dump folder gets ``00-input.ir.txt``, ``01-dce.ir.txt``, ... in the text form.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from spiky_ir.dtypes import DType
from spiky_ir.ir import Graph, Node, Value, print_graph
from spiky_ir.reference import execute
from spiky_ir.registry import get_op
from spiky_ir.types import Attr, format_attr
from spiky_ir.verify import verify

log = logging.getLogger("spiky.ir.passes")

Pass = Callable[[Graph], Graph]
DUMP_ENV = "SPIKY_DUMP_PASSES"


def _replace_uses(graph: Graph, mapping: dict[int, Value]) -> None:
    if not mapping:
        return
    for node in graph.nodes:
        if any(id(v) in mapping for v in node.inputs):
            node.inputs = tuple(mapping.get(id(v), v) for v in node.inputs)
    graph.outputs = [mapping.get(id(v), v) for v in graph.outputs]


def dce(graph: Graph) -> Graph:
    """Dead-code elimination: drop nodes none of whose results reach an output.

    Every op is pure (collectives too: their results are values), so unused means dead.
    """
    live = {id(v) for v in graph.outputs}
    kept: list[Node] = []
    for node in reversed(graph.nodes):
        if any(id(v) in live for v in node.outputs):
            kept.append(node)
            live.update(id(v) for v in node.inputs)
    graph.nodes = kept[::-1]
    return graph


def _attr_key(attrs: dict[str, Attr]) -> tuple[tuple[str, str, str], ...]:
    # The printed form plus the Python type tells 1 from 1.0 from True.
    return tuple((k, type(v).__name__, format_attr(v)) for k, v in sorted(attrs.items()))


def cse(graph: Graph) -> Graph:
    """Common-subexpression elimination: nodes with the same op, operands and attributes
    compute the same results, so later copies reuse the first one's."""
    seen: dict[Any, Node] = {}
    mapping: dict[int, Value] = {}
    kept: list[Node] = []
    for node in graph.nodes:
        if mapping:
            node.inputs = tuple(mapping.get(id(v), v) for v in node.inputs)
        key = (node.op, tuple(id(v) for v in node.inputs), _attr_key(node.attrs))
        first = seen.get(key)
        if first is None or get_op(node.op).category == "collective":
            seen[key] = node
            kept.append(node)
            continue
        for old, new in zip(node.outputs, first.outputs, strict=True):
            mapping[id(old)] = new
    graph.nodes = kept
    graph.outputs = [mapping.get(id(v), v) for v in graph.outputs]
    return graph


_FOLDABLE_SOURCES = ("constant", "full", "zeros")
FOLD_LIMIT = 1 << 16
"""Largest result (elements) constant folding evaluates; bigger stays computed at run time."""


def _uniform_value(array: np.ndarray[Any, Any]) -> bool | int | float | None:
    """The single value of ``array`` if all its elements are equal (bitwise for floats)."""
    flat = array.reshape(-1)
    if flat.size == 0:
        return None
    first = flat[0]
    if flat.size > 1 and not np.array_equal(flat, np.full_like(flat, first), equal_nan=array.dtype.kind == "f"):
        return None
    value = first.item() if hasattr(first, "item") else first
    if DType.from_numpy(array.dtype) is DType.bfloat16:
        value = float(value)
    if isinstance(value, bool | int | float):
        return value
    return None


def fold_constants(graph: Graph) -> Graph:
    """Evaluate nodes whose operands are all constants (``constant``/``full``/``zeros``)
    with the reference semantics; a result whose elements are all equal becomes a
    ``constant`` (rank 0) or ``full`` node. Other results stay as they are, since the
    IR keeps no dense literals."""
    mapping: dict[int, Value] = {}
    new_nodes: list[Node] = []
    const_values: set[int] = set()
    for node in graph.nodes:
        if mapping:
            node.inputs = tuple(mapping.get(id(v), v) for v in node.inputs)
        if node.op in _FOLDABLE_SOURCES and all(v.type.is_static for v in node.outputs):
            const_values.update(id(v) for v in node.outputs)
            new_nodes.append(node)
            continue
        foldable = (
            node.inputs
            and all(id(v) in const_values for v in node.inputs)
            and get_op(node.op).category != "collective"
            and all(v.type.is_static for v in node.outputs)
            and all(int(np.prod(v.type.static_shape())) <= FOLD_LIMIT for v in node.outputs)
        )
        if not foldable:
            new_nodes.append(node)
            continue
        sub = Graph(name="fold")
        sub.nodes = [_producer(v) for v in node.inputs]
        sub.nodes = [*list({id(n): n for n in sub.nodes}.values()), node]
        sub.outputs = list(node.outputs)
        results = execute(sub, [])
        replacements: list[Value] = []
        for value, result in zip(node.outputs, results, strict=True):
            uniform = _uniform_value(result)
            if uniform is None:
                break
            attrs: dict[str, Attr] = {"value": uniform, "dtype": value.type.dtype}
            op = "constant"
            if value.type.rank:
                op, attrs["shape"] = "full", value.type.shape
            fresh = Node(op, (), attrs, source=node.source)
            fresh.outputs = (Value(value.name, value.type, fresh),)
            replacements.append(fresh.outputs[0])
        if len(replacements) != len(node.outputs):
            new_nodes.append(node)
            continue
        for old, new in zip(node.outputs, replacements, strict=True):
            mapping[id(old)] = new
            const_values.add(id(new))
            assert new.producer is not None
            new_nodes.append(new.producer)
    graph.nodes = new_nodes
    graph.outputs = [mapping.get(id(v), v) for v in graph.outputs]
    return graph


def _producer(value: Value) -> Node:
    assert value.producer is not None
    return value.producer


DEFAULT_PASSES: tuple[tuple[str, Pass], ...] = (
    ("fold_constants", fold_constants),
    ("cse", cse),
    ("dce", dce),
)


class PassManager:
    """Runs passes in order, verifying after each and optionally dumping the text form.

    ``dump_dir`` (or the ``SPIKY_DUMP_PASSES`` environment variable) names a folder that
    receives ``NN-<pass>.ir.txt`` after each pass (``00-input.ir.txt`` before the first).
    """

    def __init__(self, passes: Sequence[tuple[str, Pass]] = DEFAULT_PASSES,
                 dump_dir: str | os.PathLike[str] | None = None) -> None:
        self.passes = list(passes)
        env = os.environ.get(DUMP_ENV)
        chosen = dump_dir if dump_dir is not None else env or None
        self.dump_dir = Path(chosen) if chosen is not None else None

    def _dump(self, index: int, name: str, graph: Graph) -> None:
        if self.dump_dir is None:
            return
        self.dump_dir.mkdir(parents=True, exist_ok=True)
        path = self.dump_dir / f"{graph.name}.{index:02d}-{name}.ir.txt"
        path.write_text(print_graph(graph))

    def run(self, graph: Graph) -> Graph:
        self._dump(0, "input", graph)
        for index, (name, run_pass) in enumerate(self.passes, start=1):
            before = len(graph.nodes)
            graph = run_pass(graph)
            verify(graph)
            log.debug("pass %s: %d → %d nodes", name, before, len(graph.nodes))
            self._dump(index, name, graph)
        return graph


def optimize(graph: Graph, dump_dir: str | os.PathLike[str] | None = None) -> Graph:
    """Run the default pipeline (fold constants, CSE, DCE) on ``graph``."""
    return PassManager(dump_dir=dump_dir).run(graph)
