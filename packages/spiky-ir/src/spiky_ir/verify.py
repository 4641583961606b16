"""The verifier: rejects malformed graphs with a message naming the offending node."""

from __future__ import annotations

from spiky_ir.errors import IRError
from spiky_ir.ir import Graph, Value
from spiky_ir.registry import get_op


def verify(graph: Graph) -> None:
    """Check SSA form, op definitions and result types; raise :class:`IRError` if broken.

    Checks: every operand is defined before use (graph input or earlier node), each
    value is defined once, names are unique, every op is registered, its operands and
    attributes are valid, and the recorded result types are the ones the op infers.
    """
    defined: set[int] = set()
    names: set[str] = set()

    def define(value: Value, where: str) -> None:
        if id(value) in defined:
            raise IRError(f"value %{value.name} is defined twice ({where})")
        if value.name in names:
            raise IRError(f"value name %{value.name} is used by two values ({where})")
        defined.add(id(value))
        names.add(value.name)

    for value in graph.inputs:
        if value.producer is not None:
            raise IRError(f"graph input %{value.name} claims a producer node")
        define(value, "graph input")
    for index, node in enumerate(graph.nodes):
        where = f"node #{index} {node.describe()}"
        for operand in node.inputs:
            if id(operand) not in defined:
                raise IRError(f"{where} uses %{operand.name} before it is defined")
        inferred = get_op(node.op).infer_types([v.type for v in node.inputs], node.attrs,
                                                f" in node {node.describe()}")
        if len(inferred) != len(node.outputs):
            raise IRError(f"{where} has {len(node.outputs)} results; op infers {len(inferred)}")
        for value, expected in zip(node.outputs, inferred, strict=True):
            if value.type != expected:
                raise IRError(f"{where}: result %{value.name} has type {value.type}, op infers {expected}")
            if value.producer is not node:
                raise IRError(f"{where}: result %{value.name} does not point back at its node")
            define(value, where)
    if not graph.outputs:
        raise IRError(f"graph '{graph.name}' has no outputs")
    for value in graph.outputs:
        if id(value) not in defined:
            raise IRError(f"graph output %{value.name} is not defined in graph '{graph.name}'")
