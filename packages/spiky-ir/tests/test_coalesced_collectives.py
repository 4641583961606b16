"""Coalesced functional collectives and collectives over symbolic sizes, in one process.

``_c10d_functional.*_coalesced`` lower to one IR collective per tensor, in list order; the
reference executor runs them through a simulated second rank, HLO on one replica (where every
collective is the identity). ``reduce_scatter`` and ``all_to_all`` keep torch's symbolic
quotient ``s0//group_size`` and check divisibility once the graph is specialised.
Across real processes: tests/test_dist_coalesced.py.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed._functional_collectives  # registers torch.ops._c10d_functional
from torch.fx.experimental.proxy_tensor import make_fx

from spiky_ir import DType, Graph, ShapeError, TensorType, execute, specialize
from spiky_ir.collectives import set_collective_backend
from spiky_ir.fx import lower_fx
from spiky_ir.symbolic import is_derived

pytestmark = pytest.mark.smoke
Array = np.ndarray[Any, np.dtype[Any]]
c10d = torch.ops._c10d_functional

_COMBINE = {"sum": np.add, "avg": lambda a, b: (a + b) / 2, "max": np.maximum, "min": np.minimum,
            "product": np.multiply}


class RankZeroOfTwo:
    """Collectives as rank 0 of two ranks sees them, rank 1 holding ``peer(array)`` for each array."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[int, ...], str]] = []

    @staticmethod
    def peer(array: Array) -> Array:
        return np.asarray(array * 3 - 1, dtype=array.dtype)

    def all_reduce(self, array: Array, op: str, group_name: str) -> Array:
        self.calls.append(("all_reduce", array.shape, op))
        return np.asarray(_COMBINE[op](array, self.peer(array)), dtype=array.dtype)

    def all_gather(self, array: Array, group_name: str) -> Array:
        self.calls.append(("all_gather", array.shape, ""))
        return np.concatenate([array, self.peer(array)])

    def reduce_scatter(self, array: Array, op: str, group_name: str) -> Array:
        self.calls.append(("reduce_scatter", array.shape, op))
        half = array.shape[0] // 2
        return np.asarray(_COMBINE[op](array, self.peer(array))[:half], dtype=array.dtype)

    def all_to_all(self, array: Array, group_name: str, output_split_sizes: Sequence[int] | None = None,
                   input_split_sizes: Sequence[int] | None = None) -> Array:
        self.calls.append(("all_to_all", array.shape, f"{output_split_sizes} {input_split_sizes}"))
        half = array.shape[0] // 2  # rank 0 keeps its first block and receives rank 1's first block
        return np.concatenate([array[:half], self.peer(array)[:half]])

    def broadcast(self, array: Array, src: int, group_name: str) -> Array:
        raise AssertionError("not used here")


@pytest.fixture
def two_ranks() -> Iterator[RankZeroOfTwo]:
    sim = RankZeroOfTwo()
    previous = set_collective_backend(sim)
    yield sim
    set_collective_backend(previous)


def _inputs() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(4, 3, generator=gen), torch.randn(6, generator=gen), torch.randn(2, 2, 2, generator=gen)]


@pytest.mark.parametrize("op", ["sum", "avg", "max", "min", "product"])
def test_all_reduce_coalesced_is_one_all_reduce_per_tensor(op: str, two_ranks: RankZeroOfTwo) -> None:
    def fn(a: Any, b: Any, c: Any) -> Any:
        outs = c10d.all_reduce_coalesced([a, b * 2, c], op, "0")
        return [c10d.wait_tensor(o) for o in outs]

    xs = _inputs()
    graph = lower_fx(make_fx(fn, tracing_mode="fake")(*xs))
    collectives = [n for n in graph.nodes if n.op == "all_reduce"]
    assert len(collectives) == 3 and all(n.attrs == {"reduce_op": op, "group_name": "0"} for n in collectives)
    assert [str(o.type) for o in graph.outputs] == ["f32[4,3]", "f32[6]", "f32[2,2,2]"]
    results = execute(graph, [x.numpy() for x in xs])
    for got, x in zip(results, [xs[0], xs[1] * 2, xs[2]], strict=True):
        mine = x.numpy()
        np.testing.assert_allclose(got, _COMBINE[op](mine, RankZeroOfTwo.peer(mine)), rtol=1e-6, atol=1e-6)
    assert [c[0] for c in two_ranks.calls] == ["all_reduce"] * 3  # in list order: every rank issues the same
    assert [c[1] for c in two_ranks.calls] == [(4, 3), (6,), (2, 2, 2)]


def test_all_gather_coalesced_concatenates_each_tensor(two_ranks: RankZeroOfTwo) -> None:
    def fn(a: Any, b: Any) -> Any:
        return [c10d.wait_tensor(o) for o in c10d.all_gather_into_tensor_coalesced([a, b], 2, "0")]

    a, b = torch.arange(6, dtype=torch.int64).reshape(3, 2), torch.arange(4, dtype=torch.int64)
    graph = lower_fx(make_fx(fn, tracing_mode="fake")(a, b))
    assert [n.op for n in graph.nodes] == ["all_gather", "all_gather"]
    assert [str(o.type) for o in graph.outputs] == ["i64[6,2]", "i64[8]"]
    ga, gb = execute(graph, [a.numpy(), b.numpy()])
    np.testing.assert_array_equal(ga, np.concatenate([a.numpy(), a.numpy() * 3 - 1]))
    np.testing.assert_array_equal(gb, np.concatenate([b.numpy(), b.numpy() * 3 - 1]))


@pytest.mark.parametrize("op", ["sum", "max", "product"])
def test_reduce_scatter_coalesced_keeps_this_ranks_block_of_each(op: str, two_ranks: RankZeroOfTwo) -> None:
    def fn(a: Any, b: Any) -> Any:
        return [c10d.wait_tensor(o) for o in c10d.reduce_scatter_tensor_coalesced([a, b], op, 2, "0")]

    a, b = torch.randn(4, 3), torch.randn(6)
    graph = lower_fx(make_fx(fn, tracing_mode="fake")(a, b))
    assert [n.op for n in graph.nodes] == ["reduce_scatter", "reduce_scatter"]
    assert all(n.attrs == {"reduce_op": op, "group_size": 2, "group_name": "0"} for n in graph.nodes)
    assert [str(o.type) for o in graph.outputs] == ["f32[2,3]", "f32[3]"]
    for got, x in zip(execute(graph, [a.numpy(), b.numpy()]), (a.numpy(), b.numpy()), strict=True):
        np.testing.assert_allclose(got, _COMBINE[op](x, RankZeroOfTwo.peer(x))[: x.shape[0] // 2], rtol=1e-6)


def test_coalesced_collectives_emit_hlo_per_tensor() -> None:
    from spiky_ir.hlo import emit_hlo
    from spiky_ir.hlo.xla_cpu import run_hlo

    def fn(a: Any, b: Any) -> Any:
        r = [c10d.wait_tensor(o) for o in c10d.all_reduce_coalesced([a, b], "avg", "0")]
        g = [c10d.wait_tensor(o) for o in c10d.all_gather_into_tensor_coalesced(r, 1, "0")]
        return [c10d.wait_tensor(o) for o in c10d.reduce_scatter_tensor_coalesced(g, "max", 1, "0")]

    a, b = torch.randn(4, 3), torch.randn(5)
    graph = lower_fx(make_fx(fn, tracing_mode="fake")(a, b))
    art = emit_hlo(graph, replica_groups={"0": [[0]]})
    assert art.text.count(" all-reduce(") == 2 and art.text.count(" all-gather(") == 2
    assert art.text.count(" reduce-scatter(") == 2
    outs = run_hlo(art.proto, [a.numpy(), b.numpy()])  # one replica: every collective is the identity
    for got, x in zip(outs, (a, b), strict=True):
        np.testing.assert_array_equal(got, x.numpy())


# --- symbolic sizes ---------------------------------------------------------------------------------------


def test_reduce_scatter_of_a_symbolic_dim_is_the_floor_quotient(two_ranks: RankZeroOfTwo) -> None:
    def fn(x: Any) -> Any:
        return c10d.wait_tensor(c10d.reduce_scatter_tensor(x * 2, "sum", 2, "0"))

    graph = lower_fx(make_fx(fn, tracing_mode="symbolic")(torch.randn(6, 3)))
    (out,) = graph.outputs
    rows = out.type.shape[0]
    assert isinstance(rows, str) and is_derived(rows)  # s0//2, as torch's own size
    for n in (4, 6, 10):
        x = np.random.default_rng(n).standard_normal((n, 3)).astype(np.float32)
        (got,) = execute(specialize(graph, {str(graph.inputs[0].type.shape[0]): n}), [x])
        np.testing.assert_allclose(got, (x * 2 + RankZeroOfTwo.peer(x * 2))[: n // 2], rtol=1e-6)
    with pytest.raises(ShapeError, match=r"reduce_scatter input dim 0 \(7\) is not divisible by the group size 2"):
        specialize(graph, {str(graph.inputs[0].type.shape[0]): 7})


def test_all_to_all_with_symbolic_even_splits(two_ranks: RankZeroOfTwo) -> None:
    def fn(x: Any) -> Any:  # what funcol.all_to_all_single(x, None, None, group) traces to
        half = x.shape[0] // 2
        return c10d.wait_tensor(c10d.all_to_all_single(x, [half, half], [half, half], "0"))

    graph = lower_fx(make_fx(fn, tracing_mode="symbolic")(torch.randn(6, 3)))
    (node,) = [n for n in graph.nodes if n.op == "all_to_all"]
    splits = node.attrs["input_split_sizes"]
    assert isinstance(splits, tuple) and len(splits) == 2 and all(isinstance(s, str) for s in splits)
    symbol = str(graph.inputs[0].type.shape[0])
    for n in (4, 8):
        x = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
        static = specialize(graph, {symbol: n})
        (spec,) = [m for m in static.nodes if m.op == "all_to_all"]
        assert spec.attrs["input_split_sizes"] == (n // 2, n // 2)
        (got,) = execute(static, [x])
        np.testing.assert_array_equal(got, np.concatenate([x[: n // 2], RankZeroOfTwo.peer(x)[: n // 2]]))
    with pytest.raises(ShapeError, match=r"all_to_all input dim 0 \(7\) is not divisible by the group size 2"):
        specialize(graph, {symbol: 7})


def test_shape_rules_name_the_size_and_the_group_size() -> None:
    g = Graph()
    x = g.add_input("x", TensorType((7, 3), DType.float32))
    with pytest.raises(ShapeError, match=r"reduce_scatter input dim 0 \(7\) is not divisible by the group size 2"):
        g.add_op("reduce_scatter", [x], {"reduce_op": "sum", "group_size": 2, "group_name": "g"})
    with pytest.raises(ShapeError, match=r"all_to_all input splits \[2, 4\] do not add up to dim 0 \(7\)"):
        g.add_op("all_to_all", [x], {"output_split_sizes": (), "input_split_sizes": (2, 4), "group_name": "g"})
    ok = g.add_op("all_to_all", [x], {"output_split_sizes": (3, 5), "input_split_sizes": (3, 4), "group_name": "g"})
    assert ok.type.shape == (8, 3)
