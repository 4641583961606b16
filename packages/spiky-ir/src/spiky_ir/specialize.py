"""Binding symbolic dims: one graph describes a family of sizes; ``specialize`` picks one.

>>> from spiky_ir import DType, Graph, TensorType, specialize
>>> g = Graph()
>>> x = g.add_input("x", TensorType(("s0", 4), DType.float32))
>>> g.set_outputs([g.add_op("reshape", [x], {"shape": ("4*s0",)})])
>>> str(specialize(g, {"s0": 8}).outputs[0].type)
'f32[32]'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from spiky_ir.errors import IRError, ShapeError
from spiky_ir.ir import Graph, Value
from spiky_ir.registry import get_op
from spiky_ir.symbolic import Dim, dim_eval, dim_rename, dim_symbols, solve_binding
from spiky_ir.types import Attr, TensorType


def graph_symbols(graph: Graph) -> set[str]:
    """Every symbol named by the graph's input types (the ones callers must bind)."""
    return {s for v in graph.inputs for d in v.type.shape for s in dim_symbols(d)}


def _bind_type(t: TensorType, bindings: Mapping[str, int]) -> TensorType:
    return TensorType(tuple(dim_eval(d, bindings) for d in t.shape), t.dtype)


def _bind_attr(kind: str, value: Attr, bindings: Mapping[str, int]) -> Attr:
    if kind == "dims" and isinstance(value, tuple):
        return tuple(dim_eval(d, bindings) for d in value)
    if kind == "dim" and isinstance(value, int | str) and not isinstance(value, bool):
        return dim_eval(value, bindings)
    return value


def specialize(graph: Graph, bindings: Mapping[str, int]) -> Graph:
    """A copy of ``graph`` with symbols replaced by sizes (same value names, re-inferred types).

    Binding every symbol of the inputs gives a static graph that :func:`spiky_ir.execute`
    and the emitters accept; binding some leaves the others symbolic.
    """
    for sym, size in bindings.items():
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise IRError(f"symbol {sym!r} must be bound to a non-negative int, got {size!r}")
    out = Graph(name=graph.name)
    env: dict[int, Value] = {}
    for value in graph.inputs:
        env[id(value)] = out.add_input(value.name, _bind_type(value.type, bindings), exact=True)
    for index, node in enumerate(graph.nodes):
        kinds = get_op(node.op).attrs
        attrs = {k: _bind_attr(kinds.get(k, ""), v, bindings) for k, v in node.attrs.items()}
        try:
            new = out.add_node(node.op, [env[id(v)] for v in node.inputs], attrs,
                               source=node.source, result_names=[v.name for v in node.outputs])
        except ShapeError as exc:
            raise ShapeError(f"specializing {dict(bindings)} breaks node #{index} {node.describe()}: {exc}") from None
        for old, value in zip(node.outputs, new.outputs, strict=True):
            env[id(old)] = value
    out.set_outputs([env[id(v)] for v in graph.outputs])
    return out


def rename_symbols(graph: Graph, mapping: Mapping[str, str]) -> Graph:
    """A copy of ``graph`` with symbols renamed (e.g. Dynamo's ``s77``, ``s27`` to ``s0``, ``s1``)."""
    out = Graph(name=graph.name)
    env: dict[int, Value] = {}

    def attr(kind: str, value: Attr) -> Attr:
        if kind == "dims" and isinstance(value, tuple):
            return tuple(dim_rename(d, mapping) for d in value)
        if kind == "dim" and isinstance(value, int | str) and not isinstance(value, bool):
            return dim_rename(value, mapping)
        return value

    for value in graph.inputs:
        t = TensorType(tuple(dim_rename(d, mapping) for d in value.type.shape), value.type.dtype)
        env[id(value)] = out.add_input(value.name, t, exact=True)
    for node in graph.nodes:
        kinds = get_op(node.op).attrs
        attrs = {k: attr(kinds.get(k, ""), v) for k, v in node.attrs.items()}
        new = out.add_node(node.op, [env[id(v)] for v in node.inputs], attrs,
                           source=node.source, result_names=[v.name for v in node.outputs])
        for old, value in zip(node.outputs, new.outputs, strict=True):
            env[id(old)] = value
    out.set_outputs([env[id(v)] for v in graph.outputs])
    return out


def bindings_for(graph: Graph, shapes: Sequence[Sequence[int]]) -> dict[str, int]:
    """Read symbol values off concrete input shapes (each symbol must appear alone or linearly)."""
    if len(shapes) != len(graph.inputs):
        raise IRError(f"graph '{graph.name}' takes {len(graph.inputs)} inputs, got {len(shapes)} shapes")
    bindings: dict[str, int] = {}
    pending: list[tuple[Dim, int, str]] = []
    for value, shape in zip(graph.inputs, shapes, strict=True):
        if len(shape) != value.type.rank:
            raise IRError(
                f"input %{value.name} expects rank {value.type.rank} ({value.type}), got shape {tuple(shape)}"
            )
        for dim, size in zip(value.type.shape, shape, strict=True):
            if not isinstance(dim, int):
                pending.append((dim, int(size), value.name))
    # Plain symbols first, so that expressions like 2*s0 see s0 bound.
    pending.sort(key=lambda p: len(dim_symbols(p[0])) + (0 if str(p[0]).isidentifier() else 1))
    for dim, size, name in pending:
        try:
            solve_binding(dim, size, bindings)
        except ShapeError as exc:
            raise ShapeError(f"input %{name}: {exc}") from None
    return bindings


def specialize_for(graph: Graph, arrays: Sequence[np.ndarray[Any, Any]]) -> Graph:
    """``graph`` specialized to the shapes of ``arrays`` (itself when already static)."""
    if all(v.type.is_static for v in graph.inputs):
        return graph
    return specialize(graph, bindings_for(graph, [a.shape for a in arrays]))
