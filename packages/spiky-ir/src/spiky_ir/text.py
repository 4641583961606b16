"""The text form of a graph: stable, versioned, and what compile-cache keys hash.

::

    spiky-ir v1
    graph main(%x: f32[4,16], %w: f32[64,16]) {
      %t = transpose(%w) {axes=(1,0)} : f32[16,64]
      %mm = matmul(%x, %t) : f32[4,64]
      return %mm
    }

Attributes are printed sorted by name; node ``source`` locations are debug
information and are not part of the text (two graphs that compute the same thing
from different source lines share a cache entry).
"""

from __future__ import annotations

import json

from spiky_ir.dtypes import DType
from spiky_ir.ir import Attr, Graph, Value

TEXT_VERSION = 1
"""Bump when the printed form changes; cache keys include it."""


def format_attr(value: Attr) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, DType):
        return value.value
    if isinstance(value, tuple):
        return "(" + ",".join(str(v) for v in value) + ")"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    return str(value)


def _ref(value: Value) -> str:
    return f"%{value.name}"


def print_graph(graph: Graph) -> str:
    """The text form of ``graph`` (ends with a newline)."""
    params = ", ".join(f"{_ref(v)}: {v.type}" for v in graph.inputs)
    lines = [f"spiky-ir v{TEXT_VERSION}", f"graph {graph.name}({params}) {{"]
    for node in graph.nodes:
        results = ", ".join(_ref(v) for v in node.outputs)
        operands = ", ".join(_ref(v) for v in node.inputs)
        attrs = ""
        if node.attrs:
            attrs = " {" + ", ".join(f"{k}={format_attr(node.attrs[k])}" for k in sorted(node.attrs)) + "}"
        types = ", ".join(str(v.type) for v in node.outputs)
        lines.append(f"  {results} = {node.op}({operands}){attrs} : {types}")
    lines.append("  return " + ", ".join(_ref(v) for v in graph.outputs))
    lines.append("}")
    return "\n".join(lines) + "\n"
