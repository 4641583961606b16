"""The numpy reference executor: the semantics every other backend is checked against."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from spiky_ir.dtypes import DType
from spiky_ir.errors import IRError
from spiky_ir.ir import Graph
from spiky_ir.registry import get_op
from spiky_ir.specialize import specialize_for

Array = np.ndarray[Any, np.dtype[Any]]


def execute(graph: Graph, inputs: Sequence[Array]) -> list[Array]:
    """Run ``graph`` on numpy arrays and return its outputs as new arrays.

    Input shapes and dtypes must match the graph's input types; symbolic dims are bound
    from the arrays' shapes (see :func:`spiky_ir.specialize`).

    >>> import numpy as np
    >>> from spiky_ir import Graph, TensorType, DType, execute
    >>> g = Graph()
    >>> x = g.add_input("x", TensorType((2,), DType.float32))
    >>> g.set_outputs([g.add_op("exp", [x])])
    >>> execute(g, [np.zeros(2, np.float32)])[0].tolist()
    [1.0, 1.0]
    """
    if len(inputs) != len(graph.inputs):
        raise IRError(f"graph '{graph.name}' takes {len(graph.inputs)} inputs, got {len(inputs)}")
    graph = specialize_for(graph, inputs)
    env: dict[int, Array] = {}
    for value, array in zip(graph.inputs, inputs, strict=True):
        expected = value.type
        if array.shape != expected.static_shape() or DType.from_numpy(array.dtype) != expected.dtype:
            raise IRError(
                f"input %{value.name} of graph '{graph.name}' expects {expected}, "
                f"got {DType.from_numpy(array.dtype).value}{list(array.shape)}"
            )
        env[id(value)] = array
    for node in graph.nodes:
        results = get_op(node.op).reference([env[id(v)] for v in node.inputs], node.attrs)
        for value, result in zip(node.outputs, results, strict=True):
            env[id(value)] = result
    # Outputs are fresh, contiguous arrays the caller owns (views of inputs would alias).
    return [np.array(env[id(v)], copy=True, order="C") for v in graph.outputs]
