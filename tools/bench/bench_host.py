"""Host target speed: Spiky's numpy and XLA executors next to torch, per call, in one run and one thread.

    .venv/bin/python tools/bench/bench_host.py [--quick] [--only NAME]

1. per call (µs, best of 5 rounds): torch eager, torch.compile(backend="aot_eager") (the
   floor: Dynamo + aot_autograd with a backend that does nothing), Inductor, Spiky with
   host_executor="numpy", "xla" and "auto" (the default: the numpy plan for tiny graphs,
   XLA for the others), for a 1-op graph, an MLP and a GPT-style block.
   Targets: 1-op within 1.2x of aot_eager; MLP and GPT block on XLA within 1.2x of Inductor.
2. where a 1-op call spends its time, per executor (the host fn alone, the runtime's
   Model.run around it, the whole compiled function), next to the floor.
3. the pipelined-vs-plain loop of tools/bench/bench_runtime.py (section 2) with its compute
   as an IR graph run by each executor.

One thread: torch.set_num_threads(1) (eager, aot_eager, Inductor's generated code),
OPENBLAS_NUM_THREADS=1 (numpy's matmuls in the numpy executor) and XLA:CPU
without its Eigen intra-op pool (XLA_FLAGS, spiky_ir.hlo.xla_cpu.limit_threads) on a
synchronous client; and, because XLA's dot kernels still use the client's thread pool, the
whole process pinned to one core (os.sched_setaffinity). The CPU time of every other thread
during the XLA rows is printed as a check. Inference (torch.no_grad), float32.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from typing import Any

# One core for the whole process (threads created later inherit it): XLA:CPU's dot kernels use
# the client's own thread pool even with the XLA_FLAGS below (measured: ~1 s of CPU on other
# threads per second of MLP calls), so the flags alone do not make the comparison one-threaded.
ALL_CORES = os.sched_getaffinity(0)
os.sched_setaffinity(0, {min(ALL_CORES)})
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # numpy's BLAS: one thread too (before numpy loads)
os.environ.setdefault("OMP_NUM_THREADS", "1")

from spiky_ir.hlo import xla_cpu  # noqa: E402

xla_cpu.limit_threads()  # before anything starts XLA

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import spiky.torch  # noqa: E402
import spiky_runtime as rt  # noqa: E402
from spiky.reference_models import GPTBlock  # noqa: E402
from spiky.torch.host_executors import host_function  # noqa: E402
from spiky_ir import DType, Graph, TensorType  # noqa: E402

# -- the models --------------------------------------------------------------------------------


def one_op(a: torch.Tensor) -> torch.Tensor:
    return a + 1


CASES: dict[str, tuple[Callable[[], Callable[..., Any]], Callable[[], list[torch.Tensor]], int]] = {
    # name -> (model factory, inputs, calls per round); "dynamic" rows compile with dynamic=True
    "1-op (a + 1, 1x8)": (lambda: one_op, lambda: [torch.randn(1, 8)], 4000),
    "1-op dynamic (5x8)": (lambda: one_op, lambda: [torch.randn(5, 8)], 4000),
    "MLP 8x256->1024->256": (
        lambda: nn.Sequential(nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 256)).eval(),
        lambda: [torch.randn(8, 256)], 1000),
    "GPT block 2x64x32": (lambda: GPTBlock().eval(), lambda: [torch.randn(2, 64, 32)], 400),
}

VARIANTS = ("eager", "aot_eager", "inductor", "spiky numpy", "spiky xla", "spiky auto")


def per_call_us(fn: Callable[[], object], n: int, rounds: int = 5) -> float:
    for _ in range(min(n, 200)):
        fn()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - start) / n)
    return best * 1e6


def other_threads_cpu_s() -> float:
    """CPU seconds used so far by every thread of this process except the calling one."""
    me = str(__import__("threading").get_native_id())
    total = 0
    for tid in os.listdir("/proc/self/task"):
        if tid == me:
            continue
        try:
            with open(f"/proc/self/task/{tid}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime, clock ticks
    return total / os.sysconf("SC_CLK_TCK")


def compiled(variant: str, model: Callable[..., Any], dynamic: bool) -> Callable[..., Any]:
    if variant == "eager":
        return model
    if variant in ("aot_eager", "inductor"):
        return torch.compile(model, backend=variant, dynamic=dynamic)
    executor = variant.split()[1]
    return torch.compile(model, backend="nkipy", dynamic=dynamic, options={"host_executor": executor})


def bench_models(quick: bool, only: str | None) -> None:
    print("\n1. per call, µs (best of 5 rounds; torch.no_grad, float32, one thread)")
    print(f"   {'graph':<22}" + "".join(f"{v:>13}" for v in VARIANTS)
          + "   ratios (1-op: to the floor; models: to Inductor)   other-thread CPU during xla")
    for name, (make_model, make_inputs, calls) in CASES.items():
        if only and only not in name:
            continue
        n = max(50, calls // 5) if quick else calls
        torch.manual_seed(0)
        model = make_model()
        inputs = make_inputs()
        with torch.no_grad():
            expected = model(*inputs)
            times: dict[str, float] = {}
            other = 0.0
            for variant in VARIANTS:
                torch._dynamo.reset()
                fn = compiled(variant, model, "dynamic" in name)
                out = fn(*inputs)  # compile outside the timing
                torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
                before = other_threads_cpu_s()
                times[variant] = per_call_us(lambda fn=fn, inputs=inputs: fn(*inputs), n)
                if variant == "spiky xla":
                    other = other_threads_cpu_s() - before
        base = times["aot_eager"] if name.startswith("1-op") else times["inductor"]
        ratios = "  ".join(f"{v.split()[1]} {times[v] / base:5.2f}x" for v in VARIANTS if v.startswith("spiky"))
        print(f"   {name:<22}" + "".join(f"{times[v]:13.1f}" for v in VARIANTS) + f"   {ratios}   {other * 1e3:.0f} ms")
        sys.stdout.flush()


def bench_breakdown(quick: bool) -> None:
    n = 2000 if quick else 10000
    g = Graph()
    x = g.add_input("x", TensorType((1, 8), DType.float32))
    g.set_outputs([g.add_op("exp", [x])])
    dev = rt.Device("host", 0)
    spec = rt.TensorSpec((1, 8), "float32")
    a = np.ones((1, 8), np.float32)
    t = torch.ones(1, 8)
    torch._dynamo.reset()
    aot = torch.compile(torch.exp, backend="aot_eager", dynamic=False)
    aot(t)
    rows = [("torch.compile(aot_eager) (the floor)", per_call_us(lambda: aot(t), n))]
    for executor in ("numpy", "xla"):
        fn, used = host_function(g, f"one_op_{executor}", executor)
        assert used == executor
        model = dev.load_host_model(fn, [spec], [spec], f"one_op_{executor}")
        torch._dynamo.reset()
        whole = torch.compile(torch.exp, backend="nkipy", dynamic=False,
                              options={"host_executor": executor})
        whole(t)
        rows += [
            (f"{executor}: host fn called directly", per_call_us(lambda fn=fn: fn([a]), n)),
            (f"{executor}: runtime Model.run around it", per_call_us(lambda model=model: model.run([a]), n)),
            (f"{executor}: torch.compile(nkipy) whole call", per_call_us(lambda whole=whole: whole(t), n)),
        ]
    print("\n2. where a 1-op call spends its time (exp on 1x8 float32), µs")
    for label, us in rows:
        print(f"   {label:<42} {us:8.1f}")


def bench_pipeline(quick: bool) -> None:
    """tools/bench/bench_runtime.py section 2 with the compute as an IR graph on each executor.

    Runs on every core the process was given (overlap needs a second core); the runtime's
    threads, created by the bundles below, inherit that.
    """
    os.sched_setaffinity(0, ALL_CORES)
    calls = 10 if quick else 50
    rows_, cols = 2048, 1024  # 8 MiB float32 per input
    g = Graph()
    x = g.add_input("x", TensorType((rows_, cols), DType.float32))
    g.set_outputs([g.add_op("sin", [g.add_op("tanh", [x])])])
    spec = rt.TensorSpec((rows_, cols), "float32")
    dev = rt.Device("host", 0)
    inputs = [np.random.default_rng(i).standard_normal((rows_, cols)).astype(np.float32) for i in range(4)]
    print(f"\n3. pipelined vs plain, {calls} calls of sin(tanh(x)) on (2048, 1024) float32 (8 MiB in, 8 MiB out), "
          f"{len(ALL_CORES)} cores")
    for executor in ("numpy", "xla"):
        fn, used = host_function(g, f"work_{executor}", executor)
        model = dev.load_host_model(fn, [spec], [spec], f"work_{executor}")
        sync = rt.Bundle({rows_: model}, [{0: "s0"}], [{0: "s0"}], name="sync")
        piped = rt.Bundle({rows_: model}, [{0: "s0"}], [{0: "s0"}], name="piped", pipelined=True)
        for i in range(3):
            sync.run([inputs[i % 4]])
        dev.reset_stats()
        start = time.perf_counter()
        for i in range(calls):
            sync.run([inputs[i % 4]])
        sync_s = time.perf_counter() - start
        s = dev.stats()
        h2d, exe = s.total_h2d_time_ms / calls, s.total_exec_time_ms / calls
        for i in range(3):
            piped.run([inputs[i % 4]])
        start = time.perf_counter()
        window: deque[rt.Future] = deque()
        for i in range(calls):
            window.append(piped.submit([inputs[i % 4]], to_host=True))
            if len(window) > 3:
                window.popleft().result()
        while window:
            window.popleft().result()
        piped_s = time.perf_counter() - start
        print(f"   {used:<6} H2D {h2d:5.2f} ms, compute {exe:6.2f} ms per call   synchronous {calls / sync_s:6.1f} "
              f"calls/s   pipelined {calls / piped_s:6.1f} calls/s   speedup {sync_s / piped_s:4.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    parser.add_argument("--only", help="run only the graphs whose name contains this")
    parser.add_argument("--skip-pipeline", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as cache:
        spiky.torch.init_nkipy_backend(nkipy_cache=cache, target="host")
        print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; "
              f"{spiky.torch.host_executor_info().describe()}; {os.cpu_count()} cores")
        print(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; OPENBLAS_NUM_THREADS="
              f"{os.environ['OPENBLAS_NUM_THREADS']}")
        bench_models(args.quick, args.only)
        bench_breakdown(args.quick)
        if not args.skip_pipeline:
            bench_pipeline(args.quick)


if __name__ == "__main__":
    main()
