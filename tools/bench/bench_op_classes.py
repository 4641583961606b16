"""Tiny one-op graphs, one per op class, through backend="nkipy" (host target, default options) next to the floor.

    taskset -c 1 .venv/bin/python tools/bench/bench_op_classes.py [--calls 200] [--rounds 30] [--only TEXT]

The floor is torch.compile(backend="aot_eager"): Dynamo + aot_autograd with a backend that
does nothing, so the ratio nkipy / floor is what Spiky adds per call (the runtime, the host
executor's per-op work). Goal: each row <= 1.2x. Tiny graphs run on the numpy plan under
host_executor="auto", so the rows measure the plan's per-call work for each op class. The column
"numpy steps" is nkipy with the plan's native fused steps switched off
(host_executors.NATIVE_FUSION), compiled from its own copy of the call so that Dynamo keeps the two
apart: what the runtime's host_kernels give, side by side in the same rounds.
µs per call, best of --rounds rounds of --calls calls; the backends alternate round by round and
rounds are short, so that load on a shared machine hits both alike and the best round is a quiet
one. One thread, torch.no_grad, float32 unless stated.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import types
from collections.abc import Callable
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch
from torch import nn

import spiky.torch
from spiky.torch import host_executors

F = torch.nn.functional


def _inputs(*shapes: tuple[int, ...]) -> Callable[[], list[torch.Tensor]]:
    return lambda: [torch.randn(*s) for s in shapes]


# name -> (model factory, input factory)
CASES: dict[str, tuple[Callable[[], Callable[..., Any]], Callable[[], list[torch.Tensor]]]] = {
    "elementwise: a + 1 (1x8)": (lambda: lambda a: a + 1, _inputs((1, 8))),
    "elementwise: gelu (4x32)": (lambda: F.gelu, _inputs((4, 32))),
    "matmul: nn.Linear(32, 64) on 1x32": (lambda: nn.Linear(32, 64).eval(), _inputs((1, 32))),
    "matmul: a @ b (8x16 @ 16x8)": (lambda: lambda a, b: a @ b, _inputs((8, 16), (16, 8))),
    "reduction: sum(-1) (4x32)": (lambda: lambda a: a.sum(-1), _inputs((4, 32))),
    "reduction: amax(-1) (4x32)": (lambda: lambda a: a.amax(-1), _inputs((4, 32))),
    "softmax(-1) (4x32)": (lambda: lambda a: a.softmax(-1), _inputs((4, 32))),
    "norm: nn.LayerNorm(32) on 4x32": (lambda: nn.LayerNorm(32).eval(), _inputs((4, 32))),
    "shape: transpose + reshape (4x8)": (lambda: lambda a: a.t().reshape(-1), _inputs((4, 8))),
    "indexing: a[idx] (16x8, 4 rows)": (
        lambda: lambda a, i: a[i], lambda: [torch.randn(16, 8), torch.tensor([3, 0, 7, 15])]),
    "indexing: nn.Embedding(32, 8) on 1x4": (
        lambda: nn.Embedding(32, 8).eval(), lambda: [torch.tensor([[1, 5, 9, 31]])]),
    "conv: nn.Conv2d(3, 4, 3) on 1x3x8x8": (lambda: nn.Conv2d(3, 4, 3).eval(), _inputs((1, 3, 8, 8))),
    "norm: BatchNorm2d(4) eval on 1x4x4x4": (lambda: nn.BatchNorm2d(4).eval(), _inputs((1, 4, 4, 4))),
}


def _loop(fn: Callable[[], object], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def _own_code(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A call of ``fn`` through a function with a code object of its own (Dynamo caches per code object)."""

    def call(*args: Any) -> Any:
        return fn(*args)

    return types.FunctionType(call.__code__.replace(), call.__globals__, "call", None, call.__closure__)


def _without_native(model: Callable[..., Any], inputs: list[torch.Tensor], cache: str) -> Callable[..., Any]:
    """nkipy with the plan's native fused steps off: a fresh configuration, so the graph is loaded again."""
    spiky.torch.reset_nkipy_backend()
    spiky.torch.init_nkipy_backend(nkipy_cache=cache, target="host")
    host_executors.NATIVE_FUSION = False
    try:
        fn = torch.compile(_own_code(model), backend="nkipy", dynamic=False)
        fn(*inputs)
    finally:
        host_executors.NATIVE_FUSION = True
    return fn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200, help="calls per round")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--only", help="run only the rows whose name contains this")
    args = parser.parse_args()
    torch.set_num_threads(1)
    calls = args.calls
    with tempfile.TemporaryDirectory() as cache:
        spiky.torch.init_nkipy_backend(nkipy_cache=cache, target="host")
        print(f"torch {torch.__version__}, one thread, {spiky.torch.host_executor_info().describe()}")
        print(f"µs per call, best of {args.rounds} rounds of {calls} calls\n")
        print("| one-op graph | eager | aot_eager (floor) | nkipy | nkipy / floor | numpy steps "
              "| numpy steps / floor |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        ratios = []
        for name, (make_model, make_inputs) in CASES.items():
            if args.only and args.only not in name:
                continue
            torch.manual_seed(0)
            model, inputs = make_model(), make_inputs()
            with torch.no_grad():
                want = model(*inputs)
                torch._dynamo.reset()
                floor_fn = torch.compile(model, backend="aot_eager", dynamic=False)
                floor_fn(*inputs)
                nkipy_fn = torch.compile(model, backend="nkipy", dynamic=False)
                torch.testing.assert_close(nkipy_fn(*inputs), want, rtol=1e-4, atol=1e-5)
                plain_fn = _without_native(model, inputs, cache)
                torch.testing.assert_close(plain_fn(*inputs), want, rtol=1e-4, atol=1e-5)
                fns = {"eager": model, "floor": floor_fn, "nkipy": nkipy_fn, "plain": plain_fn}
                best = dict.fromkeys(fns, float("inf"))
                for fn in fns.values():  # warm
                    _loop(lambda fn=fn, inputs=inputs: fn(*inputs), min(calls, 200))
                for _ in range(args.rounds):
                    for key, fn in fns.items():
                        best[key] = min(best[key], _loop(lambda fn=fn, inputs=inputs: fn(*inputs), calls))
            ratio = best["nkipy"] / best["floor"]
            ratios.append(ratio)
            print(f"| {name} | {best['eager'] * 1e6:.1f} | {best['floor'] * 1e6:.1f} | {best['nkipy'] * 1e6:.1f} "
                  f"| {ratio:.2f}x | {best['plain'] * 1e6:.1f} | {best['plain'] / best['floor']:.2f}x |", flush=True)
        if ratios:
            print(f"\nworst {max(ratios):.2f}x, goal <= 1.2x for every row")


if __name__ == "__main__":
    main()
