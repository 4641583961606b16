"""The NKIPy IR core: tensor types with (possibly symbolic) shapes, values, nodes, graphs.

A graph is a typed SSA program: every value is produced once, by a graph input or
by a node, and nodes are kept in a valid execution order. Ops are looked up in the
op registry (:mod:`spiky_ir.registry`), which also infers each result type. The text
form's printer lives here too (``str(graph)``); :mod:`spiky_ir.text` adds the parser.

>>> from spiky_ir import Graph, TensorType, DType
>>> g = Graph()
>>> x = g.add_input("x", TensorType((4, "s0"), DType.float32))
>>> y = g.add_op("exp", [x])
>>> g.set_outputs([y])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from spiky_ir.errors import IRError
from spiky_ir.registry import get_op
from spiky_ir.types import Attr, TensorType, format_attr

__all__ = ["TEXT_VERSION", "Attr", "Graph", "Node", "TensorType", "Value", "print_graph"]

TEXT_VERSION = 1
"""Bump when the printed form changes; cache keys include it."""


@dataclass(eq=False)
class Value:
    """An SSA value: a graph input (``producer is None``) or a node result."""

    name: str
    type: TensorType
    producer: Node | None = None

    def __repr__(self) -> str:
        return f"%{self.name}: {self.type}"


@dataclass(eq=False)
class Node:
    """One op application. ``attrs`` are validated by the op's registry entry."""

    op: str
    inputs: tuple[Value, ...]
    attrs: dict[str, Attr]
    outputs: tuple[Value, ...] = ()
    source: str | None = None
    """Where the node came from (an ATen op and user source line), for error messages."""

    @property
    def output(self) -> Value:
        """The single result; raises for multi-result ops."""
        if len(self.outputs) != 1:
            raise IRError(f"node {self.describe()} has {len(self.outputs)} results, not 1")
        return self.outputs[0]

    def describe(self) -> str:
        names = ", ".join(f"%{v.name}" for v in self.outputs) or "<no results>"
        where = f" from {self.source}" if self.source else ""
        return f"{names} = {self.op}(...){where}"


@dataclass(eq=False)
class Graph:
    """A typed SSA graph: inputs, nodes in execution order, outputs."""

    name: str = "main"
    inputs: list[Value] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)
    outputs: list[Value] = field(default_factory=list)
    _names: set[str] = field(default_factory=set, repr=False)

    def fresh_name(self, hint: str) -> str:
        """A value name not used yet in this graph, derived from ``hint``."""
        base = "".join(c if c.isalnum() or c == "_" else "_" for c in hint) or "v"
        name, n = base, 0
        while name in self._names:
            n += 1
            name = f"{base}_{n}"
        self._names.add(name)
        return name

    def add_input(self, name: str, type_: TensorType, *, exact: bool = False) -> Value:
        """Add a graph input named ``name`` (made unique unless ``exact``, which raises on reuse)."""
        if exact:
            if name in self._names:
                raise IRError(f"value name %{name} is already used in graph '{self.name}'")
            self._names.add(name)
            value = Value(name, type_)
            self.inputs.append(value)
            return value
        value = Value(self.fresh_name(name), type_)
        self.inputs.append(value)
        return value

    def add_node(
        self,
        op: str,
        inputs: Sequence[Value],
        attrs: Mapping[str, Attr] | None = None,
        *,
        name: str | None = None,
        source: str | None = None,
        result_names: Sequence[str] | None = None,
    ) -> Node:
        """Append a node, inferring its result types from the op registry.

        Result names derive from ``name`` (or the op) unless ``result_names`` gives them.
        """
        opdef = get_op(op)
        node = Node(op, tuple(inputs), dict(attrs or {}), source=source)
        base = name or op
        try:
            result_types = opdef.infer_types([v.type for v in node.inputs], node.attrs)
        except IRError as exc:
            where = f" from {source}" if source else ""
            raise type(exc)(f"{exc} (in node %{base} = {op}(...){where})") from None
        if result_names is not None:
            if len(result_names) != len(result_types):
                raise IRError(
                    f"op '{op}' has {len(result_types)} results, got names {list(result_names)}"
                )
            for n in result_names:
                if n in self._names:
                    raise IRError(f"value name %{n} is already used in graph '{self.name}'")
                self._names.add(n)
            names = list(result_names)
        else:
            names = [
                self.fresh_name(base if len(result_types) == 1 else f"{base}_r{i}")
                for i in range(len(result_types))
            ]
        node.outputs = tuple(Value(n, t, node) for n, t in zip(names, result_types, strict=True))
        self.nodes.append(node)
        return node

    def add_op(
        self,
        op: str,
        inputs: Sequence[Value],
        attrs: Mapping[str, Attr] | None = None,
        *,
        name: str | None = None,
        source: str | None = None,
    ) -> Value:
        """Append a single-result node and return its value."""
        return self.add_node(op, inputs, attrs, name=name, source=source).output

    def set_outputs(self, outputs: Sequence[Value]) -> None:
        self.outputs = list(outputs)

    def __str__(self) -> str:
        return print_graph(self)


def _ref(value: Value) -> str:
    return f"%{value.name}"


def print_graph(graph: Graph) -> str:
    """The text form of ``graph`` (ends with a newline); :func:`spiky_ir.text.parse_graph` reads it."""
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
