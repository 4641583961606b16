"""``fallback="eager"`` around functional collectives: an eager collective's wait runs eagerly too.

torch's functional collectives return before the result is written; only ``wait_tensor`` waits.
Lowered, a wait is the identity, so a compiled partition holding the wait of an *eager* collective
would read the buffer too early. These single-process tests (a one-rank gloo group) check where
the partitioner puts each wait; tests/test_dist_coalesced.py shows the wrong numbers it prevents
with two ranks and a late one.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
from torch import fx
from torch.fx.experimental.proxy_tensor import make_fx

from spiky.torch.fallback import compile_with_fallback, unlowered_ops
from spiky_ir.fx import LOWERINGS

c10d = torch.ops._c10d_functional
WAIT = c10d.wait_tensor.default


@pytest.fixture
def one_rank(tmp_path: Path) -> Iterator[str]:
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        yield str(dist.group.WORLD.group_name)  # type: ignore[union-attr]
    finally:
        dist.destroy_process_group()


def _single(group: str) -> Callable[[torch.Tensor], torch.Tensor]:
    def fn(x: torch.Tensor) -> torch.Tensor:
        return c10d.wait_tensor(c10d.all_reduce(x * 2, "sum", group)) * 3 + 1
    return fn


def _coalesced(group: str) -> Callable[[torch.Tensor], torch.Tensor]:
    def fn(x: torch.Tensor) -> torch.Tensor:
        a, b = c10d.all_reduce_coalesced([x * 2, x + 1], "max", group)
        return c10d.wait_tensor(a) * 3 - c10d.wait_tensor(b)
    return fn


def _partitions(gm: fx.GraphModule) -> tuple[list[list[Any]], Callable[..., Any]]:
    """Compile ``gm`` with fallback; the targets of each compiled partition (run eagerly by torch)."""
    parts: list[list[Any]] = []

    def compile_part(sub: fx.GraphModule) -> Callable[[list[Any]], list[Any]]:
        parts.append([n.target for n in sub.graph.nodes if n.op == "call_function"])

        def run(args: list[Any]) -> list[Any]:
            out = sub(*args)
            return list(out) if isinstance(out, tuple | list) else [out]
        return run

    return parts, compile_with_fallback(gm, compile_part)


@pytest.mark.parametrize("make", [_single, _coalesced], ids=["all_reduce", "all_reduce_coalesced"])
def test_the_wait_of_an_eager_collective_runs_eagerly(make: Callable[[str], Any], one_rank: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    fn = make(one_rank)
    x = torch.randn(4, 3)
    gm = make_fx(fn)(x)
    for op in (c10d.all_reduce.default, c10d.all_reduce_coalesced.default):
        monkeypatch.delitem(LOWERINGS, op)
    collective = next(str(n.target) for n in gm.graph.nodes if "all_reduce" in str(n.target))
    # the warning names the collective, not the getitems and waits that stay with it
    assert unlowered_ops(gm) == [collective]
    parts, run = _partitions(gm)
    assert parts and all(WAIT not in p and operator.getitem not in p for p in parts), parts
    assert any(torch.ops.aten.mul.Tensor in p for p in parts)  # the consumers still compile
    torch.testing.assert_close(run([x]), fn(x), rtol=0, atol=0)


def test_the_wait_of_a_compiled_collective_compiles_with_it(one_rank: str) -> None:
    fn = _coalesced(one_rank)
    x = torch.randn(4, 3)
    gm = make_fx(lambda t: torch.lgamma(fn(t)))(x)  # lgamma stays unlowered: the graph is partitioned
    assert unlowered_ops(gm) == ["aten.lgamma.default"]
    parts, run = _partitions(gm)
    compiled = [t for p in parts for t in p]
    assert c10d.all_reduce_coalesced.default in compiled and compiled.count(WAIT) == 2
    torch.testing.assert_close(run([x]), torch.lgamma(fn(x)), rtol=0, atol=0)


def test_compiled_fallback_around_an_eager_collective_matches_eager(one_rank: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(LOWERINGS, c10d.all_reduce.default)

    def fn(x: torch.Tensor) -> torch.Tensor:
        return funcol.all_reduce(x * 2, "sum", dist.group.WORLD) * 3 + 1  # type: ignore[arg-type]

    compiled = torch.compile(fn, backend="nkipy", options={"fallback": "eager"})
    for rows in (3, 5):
        x = torch.randn(rows, 4)
        torch.testing.assert_close(compiled(x), fn(x), rtol=0, atol=0)
