"""Worker for tests/test_dist_coalesced.py, run under torchrun (2 ranks, gloo, host target).

Three parts (``SPIKY_TEST_PARTS``, comma-separated; all by default), each comparing
``torch.compile(backend="nkipy")`` with the same program run eagerly on gloo:

* ``coalesced``: ``funcol.all_reduce_coalesced`` / ``all_gather_into_tensor_coalesced`` /
  ``reduce_scatter_tensor_coalesced`` for every reduce op and float32, int64, bfloat16
  (fullgraph: a graph break would run the collective eagerly and prove nothing);
* ``fallback``: collectives whose lowering is removed run eagerly under ``fallback="eager"`` while
  one rank arrives late, so an eager collective is still in flight when the compiled consumer
  runs. With ``SPIKY_TEST_WAIT_COMPILED=1`` the waits go back into the compiled partitions (the
  behaviour before the fix) and the mismatches are counted instead of failing the run;
* ``dynamic``: ``reduce_scatter_tensor`` and ``all_to_all_single`` under ``dynamic=True`` for several
  lengths through one compiled function, and the error for a length the group size does not divide.

Prints one JSON line ``RESULT {...}``: this rank's check counts, the largest difference from eager
per part and dtype, mismatches (unfixed mode), the refused sizes' error messages, and the calls
each dynamic graph served.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol

import spiky
import spiky.torch
import spiky.torch.dynamic
import spiky.torch.fallback
from spiky_ir.fx import LOWERINGS

c10d = torch.ops._c10d_functional
REDUCE_OPS = ("sum", "avg", "max", "min", "product")
DTYPES = {"float32": torch.float32, "int64": torch.int64, "bfloat16": torch.bfloat16}
TOL = {  # against eager on gloo
    "float32": {"rtol": 1e-6, "atol": 1e-6},
    "int64": {"rtol": 0, "atol": 0},
    "bfloat16": {"rtol": 8e-3, "atol": 8e-3},  # one bfloat16 ulp at 1
}
LATE_S = 1.0
"""How long the late rank waits before the fallback checks' collectives: far longer than the compiled consumer."""

Outputs = Sequence[torch.Tensor] | torch.Tensor


def _list(out: Outputs) -> list[torch.Tensor]:
    return [out] if isinstance(out, torch.Tensor) else list(out)


class Checks:
    """Compares compiled outputs with eager ones; counts checks and records the largest differences."""

    def __init__(self, strict: bool = True) -> None:
        self.strict = strict
        self.counts: dict[str, int] = {}
        self.diffs: dict[str, float] = {}
        self.mismatches = 0

    def compare(self, kind: str, dtype: str, actual: Outputs, expected: Outputs) -> None:
        got, want = _list(actual), _list(expected)
        assert len(got) == len(want), (len(got), len(want))
        wrong = False
        for a, e in zip(got, want, strict=True):
            assert a.dtype == e.dtype and a.shape == e.shape, (a.dtype, a.shape, e.dtype, e.shape)
            if self.strict:
                torch.testing.assert_close(a, e, **TOL[dtype])
            wrong |= not torch.allclose(a.double(), e.double(), **TOL[dtype])
            diff = float((a.double() - e.double()).abs().max()) if a.numel() else 0.0
            key = f"{kind}/{dtype}"
            self.diffs[key] = max(self.diffs.get(key, 0.0), diff)
        self.mismatches += wrong
        self.counts[kind] = self.counts.get(kind, 0) + 1


def coalesced(checks: Checks, group: Any, world: int, gen: torch.Generator) -> None:
    def check(dtype: str, fn: Callable[..., Outputs], *inputs: torch.Tensor) -> None:
        expected = fn(*inputs)
        torch._dynamo.reset()  # the loop's lambdas share one code object: no recompile limit
        checks.compare("coalesced", dtype, torch.compile(fn, backend="nkipy", fullgraph=True)(*inputs), expected)

    for dtype, torch_dtype in DTYPES.items():
        def make(*shape: int, dt: torch.dtype = torch_dtype) -> torch.Tensor:
            values = torch.randn(*shape, generator=gen) * 3
            return values.to(dt) if dt.is_floating_point else values.round().to(dt)

        a, b, c = make(4, 3), make(6), make(2, 2, 2)
        for op in REDUCE_OPS:
            if op == "avg" and not torch_dtype.is_floating_point:
                continue  # spiky-dist's all_reduce refuses avg on integers (as the single-tensor op does)
            check(dtype, lambda x, y, z, op=op: funcol.all_reduce_coalesced([x * 2, y, z + 1], op, group), a, b, c)
            check(dtype, lambda x, y, op=op: [t - 1 for t in funcol.reduce_scatter_tensor_coalesced(
                [x.repeat(world, 1), y], op, [0, 0], group)], a, b)
        check(dtype, lambda x, y, z: funcol.all_gather_into_tensor_coalesced([x, y * 3, z], group), a, b, c)


def fallback(checks: Checks, group: Any, rank: int, world: int, gen: torch.Generator) -> None:
    def eager_all_reduce(x: torch.Tensor) -> torch.Tensor:
        return funcol.all_reduce(x * 2, "sum", group) * 3 + 1

    def eager_coalesced(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r = funcol.all_reduce_coalesced([x * 2, y + 1], "max", group)
        return r[0] * 3, torch.tanh(r[1]) - 1

    def eager_all_gather(x: torch.Tensor) -> torch.Tensor:
        return funcol.all_gather_tensor(x + 1, 0, group).sum(0) * 2

    # no lowering: these collectives run in torch, between compiled partitions
    removed = {t: LOWERINGS.pop(t) for t in (c10d.all_reduce.default, c10d.all_reduce_coalesced.default,
                                              c10d.all_gather_into_tensor.default)}
    x, y = torch.randn(4, 3, generator=gen), torch.randn(5, generator=gen)
    cases: list[tuple[Callable[..., Outputs], tuple[torch.Tensor, ...]]] = [
        (eager_all_reduce, (x,)), (eager_coalesced, (x, y)), (eager_all_gather, (x,))]
    executions_before = spiky.get_stats().total_executions
    for i, (fn, inputs) in enumerate(cases):
        expected = fn(*inputs)
        torch._dynamo.reset()
        compiled = torch.compile(fn, backend="nkipy", options={"fallback": "eager"})
        for late in (i % world, (i + 1) % world):  # each rank is the late one once
            dist.barrier()
            if rank == late:
                time.sleep(LATE_S)
            checks.compare("fallback", "float32", compiled(*inputs), expected)
    # the consumers of the eager collectives ran compiled: at least one partition per call
    assert spiky.get_stats().total_executions - executions_before >= 2 * len(cases)
    LOWERINGS.update(removed)


def dynamic(
    checks: Checks, group: Any, world: int, gen: torch.Generator,
) -> tuple[dict[str, str], dict[str, list[int]]]:
    name = str(group.group_name)

    def scatter(t: torch.Tensor) -> torch.Tensor:
        return funcol.reduce_scatter_tensor(t * 2, "sum", 0, group) + 1

    def exchange(t: torch.Tensor) -> torch.Tensor:
        return funcol.all_to_all_single(t * 2, None, None, group) - 1

    def scatter_op(t: torch.Tensor) -> torch.Tensor:  # the op itself: no funcol assertion before it
        return c10d.wait_tensor(c10d.reduce_scatter_tensor(t * 2, "avg", world, name)) + 1

    def reduce_pair(t: torch.Tensor, u: torch.Tensor) -> list[torch.Tensor]:
        return funcol.all_reduce_coalesced([t, u * 2], "sum", group)

    errors: dict[str, str] = {}
    graphs: dict[str, list[int]] = {}
    odd = 2 * world + 1
    for label, fn in (("reduce_scatter", scatter), ("all_to_all", exchange), ("reduce_scatter_op", scatter_op)):
        torch._dynamo.reset()
        spiky.torch.dynamic.reset_bucket_stats()
        compiled = torch.compile(fn, backend="nkipy", fullgraph=True, dynamic=True)
        for n in (2 * world, 3 * world, 5 * world, 8 * world):
            t = torch.randn(n, 3, generator=gen)
            checks.compare("dynamic", "float32", compiled(t), fn(t))
        graphs[label] = [s.calls for s in spiky.bucket_stats()]  # one symbolic graph served every length
        if label == "reduce_scatter":  # funcol.reduce_scatter_tensor asserts divisibility itself (below)
            continue
        try:
            compiled(torch.randn(odd, 3, generator=gen))
        except spiky.SpikyError as exc:
            errors[label] = f"{type(exc).__name__}: {exc}"
        else:
            raise AssertionError(f"{label} of {odd} rows did not raise")
    torch._dynamo.reset()
    spiky.torch.dynamic.reset_bucket_stats()
    compiled_pair = torch.compile(reduce_pair, backend="nkipy", fullgraph=True, dynamic=True)
    for n in (3, 7, 12):
        t, u = torch.randn(n, 2, generator=gen), torch.randn(n + 1, generator=gen)
        checks.compare("dynamic", "float32", compiled_pair(t, u), reduce_pair(t, u))
    graphs["all_reduce_coalesced"] = [s.calls for s in spiky.bucket_stats()]
    # torch's own check in funcol.reduce_scatter_tensor refuses an indivisible length before any
    # collective runs, eagerly and compiled alike (Dynamo breaks the graph there and runs it eagerly)
    torch._dynamo.reset()
    for label, fn in (("eager", scatter), ("compiled", torch.compile(scatter, backend="nkipy", dynamic=True))):
        try:
            fn(torch.randn(odd, 3, generator=gen))
        except AssertionError as exc:
            errors[f"funcol_reduce_scatter_{label}"] = str(exc)
        else:
            raise AssertionError(f"{label} funcol.reduce_scatter_tensor of {odd} rows did not raise")
    return errors, graphs


def main() -> None:
    dist.init_process_group("gloo", timeout=timedelta(seconds=120))
    spiky.torch.init_nkipy_backend(nkipy_cache=os.environ["SPIKY_TEST_CACHE"], target="host")
    rank, world = dist.get_rank(), dist.get_world_size()
    group = dist.group.WORLD
    assert group is not None
    parts = os.environ.get("SPIKY_TEST_PARTS", "coalesced,fallback,dynamic").split(",")
    unfixed = os.environ.get("SPIKY_TEST_WAIT_COMPILED") == "1"
    if unfixed:  # every wait lowers, as before the fix: a compiled partition reads an in-flight buffer
        spiky.torch.fallback._waits_on_compiled = lambda wait: True  # type: ignore[assignment]
    checks = Checks(strict=not unfixed)
    gen = torch.Generator().manual_seed(200 + rank)
    errors: dict[str, str] = {}
    graphs: dict[str, list[int]] = {}
    if "coalesced" in parts:
        coalesced(checks, group, world, gen)
    if "fallback" in parts:
        fallback(checks, group, rank, world, gen)
    if "dynamic" in parts:
        errors, graphs = dynamic(checks, group, world, gen)

    dist.barrier()
    dist.destroy_process_group()
    result = {"rank": rank, "checks": checks.counts, "diffs": checks.diffs, "mismatches": checks.mismatches,
              "errors": errors, "graphs": graphs}
    sys.stdout.write(f"RESULT {json.dumps(result)}\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
