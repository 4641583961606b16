"""The reference executor runs collectives through the registered backend, in graph order."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pytest

from spiky_ir import DType, Graph, IRError, TensorType, execute
from spiky_ir.collectives import set_collective_backend

pytestmark = pytest.mark.smoke
Array = np.ndarray[Any, np.dtype[Any]]


class TwoRankSimulation:
    """What rank 0 of two ranks sees when rank 1 holds ``other`` (arrays are this rank's)."""

    def __init__(self, other: Array) -> None:
        self.other = other
        self.calls: list[tuple[str, Any]] = []

    def all_reduce(self, array: Array, op: str, group_name: str) -> Array:
        self.calls.append(("all_reduce", (op, group_name)))
        combine = {"sum": np.add, "max": np.maximum}[op]
        return np.asarray(combine(array, self.other[: array.shape[0]]))

    def all_gather(self, array: Array, group_name: str) -> Array:
        self.calls.append(("all_gather", group_name))
        return np.concatenate([array, self.other[: array.shape[0]]])

    def reduce_scatter(self, array: Array, op: str, group_name: str) -> Array:
        self.calls.append(("reduce_scatter", (op, group_name)))
        half = array.shape[0] // 2
        return np.asarray(array[:half] + self.other[:half])

    def all_to_all(
        self, array: Array, group_name: str,
        output_split_sizes: Sequence[int] | None = None, input_split_sizes: Sequence[int] | None = None,
    ) -> Array:
        self.calls.append(("all_to_all", (group_name, output_split_sizes, input_split_sizes)))
        return array

    def broadcast(self, array: Array, src: int, group_name: str) -> Array:
        self.calls.append(("broadcast", (src, group_name)))
        return array if src == 0 else self.other[: array.shape[0]].copy()


@pytest.fixture
def backend() -> Iterator[TwoRankSimulation]:
    sim = TwoRankSimulation(np.full((8, 2), 10, np.float32))
    previous = set_collective_backend(sim)
    yield sim
    set_collective_backend(previous)


def test_collectives_dispatch_in_graph_order(backend: TwoRankSimulation) -> None:
    g = Graph()
    x = g.add_input("x", TensorType((4, 2), DType.float32))
    r = g.add_op("all_reduce", [x], {"reduce_op": "sum", "group_name": "world"})
    a = g.add_op("all_gather", [r], {"group_size": 2, "group_name": "world"})
    s = g.add_op("reduce_scatter", [a], {"reduce_op": "max", "group_size": 2, "group_name": "pairs"})
    t = g.add_op("all_to_all", [s], {"output_split_sizes": (), "input_split_sizes": (), "group_name": "world"})
    b = g.add_op("broadcast", [t], {"src": 1, "group_name": "world"})
    g.set_outputs([r, a, s, b])
    ones = np.ones((4, 2), np.float32)
    reduced, gathered, scattered, broadcast = execute(g, [ones])
    np.testing.assert_array_equal(reduced, ones + 10)
    np.testing.assert_array_equal(gathered, np.concatenate([ones + 10, np.full((4, 2), 10)]))
    assert gathered.shape == tuple(g.outputs[1].type.shape) == (8, 2)
    np.testing.assert_array_equal(scattered, np.full((4, 2), 21))
    np.testing.assert_array_equal(broadcast, np.full((4, 2), 10))
    assert [name for name, _ in backend.calls] == [
        "all_reduce", "all_gather", "reduce_scatter", "all_to_all", "broadcast"]
    assert backend.calls[2][1] == ("max", "pairs")
    assert backend.calls[3][1] == ("world", None, None)  # empty split lists mean "even"


def test_without_backend_the_error_says_what_to_do() -> None:
    g = Graph()
    x = g.add_input("x", TensorType((2,), DType.float32))
    g.set_outputs([g.add_op("broadcast", [x], {"src": 0, "group_name": "w"})])
    with pytest.raises(IRError, match=r"op 'broadcast' is a collective.*set_collective_backend"):
        execute(g, [np.ones(2, np.float32)])
