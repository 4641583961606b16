"""spiky-runtime benchmarks (host driver), printed side by side in one run.

    .venv/bin/python tools/bench/bench_runtime.py [--quick]

1. per-call overhead of a tiny graph: numpy fn directly vs Model.run vs Bundle.run (µs)
2. pipelined vs synchronous throughput over a loop whose transfers and compute are comparable
3. pool allocation (cache hit) vs a fresh driver allocation (cache cleared first) (µs)
4. on-device padding: outer dim (prefix write + fill) vs inner dim (strided copy) (ms/call)

Numbers depend on the machine; the point is the ratios. Speed is checked here, never by
timed assertions in tests.
"""

from __future__ import annotations

import argparse
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

import spiky_runtime as rt


def per_call_us(fn: Callable[[], object], n: int) -> float:
    for _ in range(min(n, 200)):
        fn()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - start) / n)
    return best * 1e6


def bench_overhead(dev: rt.Device, n: int) -> None:
    spec = rt.TensorSpec((4,), "float32")

    def tiny(xs: list[np.ndarray[Any, Any]]) -> list[np.ndarray[Any, Any]]:
        return [xs[0] + 1]

    model = dev.load_host_model(tiny, [spec], [spec], "tiny")
    bundle = rt.Bundle({4: model}, [{0: "s0"}], [{0: "s0"}], name="tiny")
    piped = rt.Bundle({4: model}, [{0: "s0"}], [{0: "s0"}], name="tiny", pipelined=True)
    x = np.ones(4, np.float32)
    x3 = np.ones(3, np.float32)
    rows = [
        ("numpy fn directly", per_call_us(lambda: tiny([x]), n)),
        ("Model.run", per_call_us(lambda: model.run([x]), n)),
        ("Bundle.run (exact bucket)", per_call_us(lambda: bundle.run([x]), n)),
        ("Bundle.run (padded 3 -> 4)", per_call_us(lambda: bundle.run([x3]), n)),
        ("pipelined Bundle.run (round trip)", per_call_us(lambda: piped.run([x]), n // 4)),
    ]
    base = rows[0][1]
    print("\n1. per-call overhead, tiny graph (4,) float32, host driver")
    for name, us in rows:
        print(f"   {name:<36} {us:8.1f} µs   (+{us - base:6.1f} µs over numpy)")


def bench_pipeline(dev: rt.Device, calls: int) -> None:
    rows_, cols = 2048, 1024  # 8 MiB float32 per input

    def compute(xs: list[np.ndarray[Any, Any]]) -> list[np.ndarray[Any, Any]]:
        # Compute-bound (sin releases the GIL) on 1/8 of the rows, sized so compute and the
        # 8 MiB upload take comparable time; a memory-bound body would compete with the memcpy.
        y = np.zeros_like(xs[0])
        np.sin(xs[0][: rows_ // 8], out=y[: rows_ // 8])
        return [y]

    spec = rt.TensorSpec((rows_, cols), "float32")
    model = dev.load_host_model(compute, [spec], [spec], "work")
    sync = rt.Bundle({rows_: model}, [{0: "s0"}], [{0: "s0"}], name="sync")
    piped = rt.Bundle({rows_: model}, [{0: "s0"}], [{0: "s0"}], name="piped", pipelined=True)
    inputs = [np.random.default_rng(i).standard_normal((rows_, cols)).astype(np.float32) for i in range(4)]

    dev.reset_stats()
    for i in range(3):
        sync.run([inputs[i % 4]])
    dev.reset_stats()
    start = time.perf_counter()
    for i in range(calls):
        sync.submit([inputs[i % 4]], to_host=False).result()
    sync_s = time.perf_counter() - start
    s = dev.stats()
    h2d, exe = s.total_h2d_time_ms / calls, s.total_exec_time_ms / calls

    def piped_loop(to_host: bool) -> float:
        # A steady loop keeps a few calls in flight and consumes results in order, so the pool
        # recycles the same blocks (holding every output would measure fresh page faults).
        for i in range(3):
            piped.run([inputs[i % 4]])
        start = time.perf_counter()
        window: deque[rt.Future] = deque()
        for i in range(calls):
            window.append(piped.submit([inputs[i % 4]], to_host=to_host))
            if len(window) > 3:
                consume(window.popleft(), to_host)
        while window:
            consume(window.popleft(), to_host)
        return time.perf_counter() - start

    def consume(fut: rt.Future, to_host: bool) -> None:
        outs = fut.result()
        if not to_host:
            outs[0].wait()

    piped_dev_s = piped_loop(to_host=False)
    start = time.perf_counter()
    for i in range(calls):
        sync.run([inputs[i % 4]])
    sync_host_s = time.perf_counter() - start
    piped_host_s = piped_loop(to_host=True)
    print(f"\n2. throughput, {calls} calls of (2048, 1024) float32: H2D {h2d:.2f} ms, compute {exe:.2f} ms per call")
    print(f"   outputs on device:  synchronous {calls / sync_s:7.1f} calls/s   pipelined {calls / piped_dev_s:7.1f} "
          f"calls/s   speedup {sync_s / piped_dev_s:4.2f}x")
    print(f"   outputs to host:    synchronous {calls / sync_host_s:7.1f} calls/s   pipelined "
          f"{calls / piped_host_s:7.1f} calls/s   speedup {sync_host_s / piped_host_s:4.2f}x")


def bench_pool(dev: rt.Device, n: int) -> None:
    print("\n3. allocation cost: pool cache hit vs fresh driver allocation (cache cleared each time)")
    print("   (Python call included; 'first write' adds writing the block once: fresh pages fault in)")
    for nbytes in (4096, 1 << 20, 16 << 20):
        data = np.ones(nbytes, np.uint8)

        def hit(nb: int = nbytes, touch: bool = False, data: np.ndarray[Any, Any] = data) -> None:
            buf = dev.allocate(nb)
            if touch:
                buf.write(data)
            buf.free()

        def fresh(nb: int = nbytes, touch: bool = False) -> None:
            hit(nb, touch)
            dev.clear_cache()

        dev.clear_cache()
        h, m = per_call_us(hit, n), per_call_us(fresh, n // 4)
        reps = max(20, n // 50)
        ht = per_call_us(lambda nb=nbytes: hit(nb, True), reps)
        mt = per_call_us(lambda nb=nbytes: fresh(nb, True), reps)
        print(f"   {nbytes:>9} B   alloc: pool hit {h:6.2f} µs  fresh {m:7.2f} µs ({m / h:4.1f}x)   "
              f"alloc + first write: pool hit {ht:8.1f} µs  fresh {mt:8.1f} µs ({mt / ht:4.1f}x)")


def bench_padding(dev: rt.Device, n: int) -> None:
    print("\n4. on-device padding of a (1000, 1000) float32 input to (1024, 1024)")

    def ident(xs: list[np.ndarray[Any, Any]]) -> list[np.ndarray[Any, Any]]:
        return [np.asarray(xs[0])]

    for dims, label in (({0: "s0"}, "outer dim only (1000, 1024) -> (1024, 1024)"),
                        ({1: "s0"}, "inner dim only (1024, 1000) -> (1024, 1024)"),
                        ({0: "s0", 1: "s0"}, "both dims (1000, 1000) -> (1024, 1024)")):
        spec = rt.TensorSpec((1024, 1024), "float32")
        model = dev.load_host_model(ident, [spec], [spec], "ident")
        bundle = rt.Bundle({1024: model}, [dims], [dims], name="pad")
        shape = tuple(1000 if d in dims else 1024 for d in range(2))
        x = np.ones(shape, np.float32)
        dev.reset_stats()
        for _ in range(n):
            bundle.run([x])
        s = dev.stats()
        print(f"   {label:<46} pad+unpad {s.total_pad_time_ms / n:6.3f} ms   H2D {s.total_h2d_time_ms / n:6.3f} ms"
              f"   pad_ratio {s.pad_ratio:5.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    args = parser.parse_args()
    scale = 1 if args.quick else 5
    dev = rt.Device("host", 0)
    print(f"spiky-runtime {rt.__version__} benchmarks on {dev!r}")
    bench_overhead(dev, 2000 * scale)
    bench_pipeline(dev, 10 * scale)
    bench_pool(dev, 1000 * scale)
    bench_padding(dev, 10 * scale)


if __name__ == "__main__":
    main()
