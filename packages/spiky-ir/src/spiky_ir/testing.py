"""Test support: the text round-trip property, checked on every graph a test suite builds, and
:data:`NUMPY_KERNELS`, the numpy reference of the plan's native fused kernels.

``record_graphs`` patches :meth:`Graph.set_outputs` so that every graph finished during a
test is collected; ``assert_round_trips`` checks ``print(parse(print(g))) == print(g)``
plus names, types and attributes. The conftest of each test folder wires them up.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from spiky_ir.errors import IRError
from spiky_ir.fusion import NativeKernels
from spiky_ir.ir import Graph, Value
from spiky_ir.ops.elementwise import erf
from spiky_ir.text import parse_graph, print_graph
from spiky_ir.verify import verify


def assert_round_trips(graph: Graph) -> None:
    """Raise ``AssertionError`` unless ``graph`` survives print → parse unchanged."""
    text = print_graph(graph)
    parsed = parse_graph(text)
    assert print_graph(parsed) == text, f"text round trip changed graph '{graph.name}'"
    for a, b in zip(graph.nodes, parsed.nodes, strict=True):
        # NaN attributes (a NaN fill constant) compare by their text, as NaN != NaN
        attrs_a, attrs_b = ({k: "nan" if isinstance(v, float) and math.isnan(v) else v for k, v in n.attrs.items()}
                            for n in (a, b))
        assert (a.op, attrs_a, [v.type for v in a.outputs]) == (b.op, attrs_b, [v.type for v in b.outputs])
        assert all(type(a.attrs[k]) is type(b.attrs[k]) for k in a.attrs), f"attr types changed in {a.describe()}"


@contextmanager
def record_graphs() -> Iterator[list[Graph]]:
    """Collect every graph whose outputs are set while the context is open."""
    graphs: list[Graph] = []
    original = Graph.set_outputs

    def set_outputs(self: Graph, outputs: Sequence[Value]) -> None:
        original(self, outputs)
        if all(g is not self for g in graphs):
            graphs.append(self)

    Graph.set_outputs = set_outputs  # type: ignore[method-assign]
    try:
        yield graphs
    finally:
        Graph.set_outputs = original  # type: ignore[method-assign]


def check_recorded(graphs: Sequence[Graph]) -> int:
    """Round-trip every recorded graph that verifies (tests break some on purpose); returns the count."""
    checked = 0
    for graph in graphs:
        try:
            verify(graph)
        except IRError:
            continue
        assert_round_trips(graph)
        checked += 1
    return checked


Array = np.ndarray[Any, np.dtype[Any]]


class _NumpyKernels:
    """:class:`NativeKernels` in numpy (the reference the native ones are tested against)."""

    def layer_norm(self, x: Array, axes: int, weight: Array | None, bias: Array | None,
                   eps: float) -> tuple[Array, Array, Array]:
        dims = tuple(range(x.ndim - axes, x.ndim))
        wide = x.astype(np.float64)
        mean = wide.mean(axis=dims, keepdims=True)
        var = ((wide - mean) ** 2).mean(axis=dims, keepdims=True)
        mean_t, t = mean.astype(x.dtype), x.dtype.type
        rstd = (t(1) / np.sqrt(var.astype(x.dtype) + t(eps))).astype(x.dtype)
        y = (x - mean_t) * rstd
        if weight is not None:
            y = y * weight.reshape(x.shape[x.ndim - axes:])
        if bias is not None:
            y = y + bias.reshape(x.shape[x.ndim - axes:])
        return y.astype(x.dtype), mean_t, rstd

    def channel_norm(self, x: Array, mean: Array, var: Array, weight: Array | None, bias: Array | None,
                     eps: float) -> Array:
        shape, t = (x.shape[1],) + (1,) * (x.ndim - 2), x.dtype.type
        y = (x - mean.reshape(shape)) * (t(1) / np.sqrt(var.reshape(shape) + t(eps)))
        if weight is not None:
            y = y * weight.reshape(shape)
        if bias is not None:
            y = y + bias.reshape(shape)
        return y.astype(x.dtype)  # type: ignore[no-any-return]

    def softmax(self, x: Array, axis: int) -> Array:
        e = np.exp(x - np.max(x, axis=axis, keepdims=True))
        return e / np.sum(e, axis=axis, keepdims=True)  # type: ignore[no-any-return]

    def erf(self, x: Array) -> Array:
        return erf(x).astype(x.dtype)


NUMPY_KERNELS: NativeKernels = _NumpyKernels()
