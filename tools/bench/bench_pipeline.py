"""Pipelined vs synchronous calls on the emulated Neuron stack with its timing model on.

The fake libnrt (spiky.testing) can make transfers take latency + bytes / bandwidth and executions a
set time (``TimingModel``), so the overlap of the runtime's copy and execute threads shows on any
machine. Sections:

1. runtime: one NEFF (y = 2x over n float32) through ``rt.Bundle``, 100 distinct inputs, synchronous
   ``run`` vs pipelined ``submit`` (all 100 submitted, then collected), with the execution time set
   equal to the modelled H2D + D2H time. Results are checked equal to the synchronous ones.
2. torch: ``torch.compile(model, backend="nkipy")`` under ``fake_neuron(timing=...)``, a loop of 100
   distinct CPU inputs with ``pipelined`` off and on: CPU outputs (each call waits for its result), and
   ``keep_outputs_on_device`` (``"nkipy"`` tensors of NeuronCore memory, returned while still being
   produced: the script runs itself with ``SPIKY_LIBNRT`` set so the device is the fake NeuronCore's).
3. dynamic shapes: a ``dynamic=True`` function over 100 lengths, padding on device vs on the host,
   with bytes per call from ``spiky.get_stats()``.

    .venv/bin/python tools/bench/bench_pipeline.py            # ~1 min
    .venv/bin/python tools/bench/bench_pipeline.py --quick    # fewer rounds
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

CALLS = 100


def _best(fn: Callable[[], None], rounds: int) -> float:
    """Best wall time of ``rounds`` runs of ``fn`` (seconds)."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _inputs(n: int, calls: int = CALLS) -> list[np.ndarray[Any, Any]]:
    """``calls`` distinct contiguous inputs of n float32: windows of one base array (little memory)."""
    base = np.random.default_rng(0).standard_normal(n + calls).astype(np.float32)
    return [base[i:i + n] for i in range(calls)]


def section_runtime(rounds: int) -> None:
    import spiky_runtime as rt
    from spiky.testing import FakeNrt, TimingModel, fake_libnrt
    from spiky.testing.fake_nrt.neff import fake_neff_bytes

    lib = fake_libnrt()
    os.environ["SPIKY_LIBNRT"] = str(lib)
    fake = FakeNrt(lib)
    fake.reset()

    def rule(neff_id: str, ins: dict[str, memoryview], outs: dict[str, memoryview]) -> int:
        np.multiply(np.frombuffer(ins["x"], np.float32), 2, out=np.frombuffer(outs["output0"], np.float32))
        return 0

    fake.set_execute(rule)
    dev = rt.Device("nrt", 0)
    print("1. runtime: y = 2x, 100 distinct inputs; execution time = modelled H2D + D2H time")
    print(f"   {'link':<22} {'MiB in/out':>10} {'H2D+D2H ms':>10} {'exec ms':>8} {'sync calls/s':>12} "
          f"{'pipelined calls/s':>17} {'speedup':>7} {'model: sync':>11} {'pipelined':>9} {'speedup':>7}")
    configs = [
        ("Trn1 PCIe 31.5 GB/s", 1 << 18, 31.5),
        ("Trn1 PCIe 31.5 GB/s", 1 << 22, 31.5),
        ("slow link 2 GB/s", 1 << 18, 2.0),
        ("slow link 2 GB/s", 1 << 20, 2.0),
    ]
    for label, n, gbps in configs:
        nbytes = 4 * n
        base = TimingModel(h2d_gbps=gbps, d2h_gbps=gbps)
        transfer_ms = base.transfer_ms(nbytes) + base.transfer_ms(nbytes, h2d=False)
        fake.set_timing(TimingModel(h2d_gbps=gbps, d2h_gbps=gbps, execute_ms=transfer_ms))
        model = dev.load_neff(fake_neff_bytes([("x", "float32", (n,))], [("output0", "float32", (n,))],
                                              f"kernel_double{n}"), f"double{n}")
        sync = rt.Bundle({0: model}, name="sync", pipelined=False)
        piped = rt.Bundle({0: model}, name="piped", pipelined=True)
        xs = _inputs(n)
        want = [sync.run([x])[0] for x in xs]
        got = [f.result()[0] for f in [piped.submit([x]) for x in xs]]
        assert all(np.array_equal(a, b) for a, b in zip(want, got, strict=True)), "pipelined != synchronous"
        del want, got

        def run_sync(b: Any = sync, xs: list[Any] = xs) -> None:
            for x in xs:
                b.run([x])

        def run_piped(b: Any = piped, xs: list[Any] = xs) -> None:
            futures = [b.submit([x]) for x in xs]
            for f in futures:
                f.result()

        t_sync, t_piped = _best(run_sync, rounds), _best(run_piped, rounds)
        # What the model alone allows: a synchronous call is H2D + execute + D2H; the pipeline's
        # three workers (copy, execute, download) bound it by the slowest stage.
        h2d_ms, d2h_ms = base.transfer_ms(nbytes), base.transfer_ms(nbytes, h2d=False)
        ideal_sync, ideal_piped = 1e3 / (h2d_ms + transfer_ms + d2h_ms), 1e3 / max(h2d_ms, transfer_ms, d2h_ms)
        print(f"   {label:<22} {nbytes / 2**20:>10.2f} {transfer_ms:>10.3f} {transfer_ms:>8.3f} "
              f"{CALLS / t_sync:>12.1f} {CALLS / t_piped:>17.1f} {t_sync / t_piped:>6.2f}x "
              f"{ideal_sync:>11.1f} {ideal_piped:>9.1f} {ideal_piped / ideal_sync:>6.2f}x")
        dev.reset_stats()
        dev.start_trace()
        run_piped()
        trace = dev.stop_trace()
        if n == 1 << 20:
            path = Path(tempfile.gettempdir()) / "spiky_bench_pipeline.json"
            path.write_text(trace)
            from spiky.trace_summary import summarize_trace
            print("   trace of the pipelined 4 MiB run (" + str(path) + "):")
            print("   " + summarize_trace(path).format().replace("\n", "\n   "))
        s = dev.stats()
        print(f"      pipelined: H2D {s.mean_h2d_bytes_per_call / 2**20:.2f} MiB/call, "
              f"D2H {s.mean_d2h_bytes_per_call / 2**20:.2f} MiB/call, "
              f"H2D {s.total_h2d_time_ms / s.total_executions:.3f} ms/call, "
              f"exec {s.total_exec_time_ms / s.total_executions:.3f} ms/call, "
              f"D2H {s.total_d2h_time_ms / s.total_executions:.3f} ms/call")
    fake.set_timing(None)


def section_torch(rounds: int, dynamic: bool) -> None:
    import torch

    import spiky
    from spiky.testing import TimingModel, fake_neuron

    class Net(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.tanh(x * 2 + 1)

    n = 1 << 18  # 1 MiB in, 1 MiB out
    gbps = 2.0
    base = TimingModel(h2d_gbps=gbps, d2h_gbps=gbps)
    transfer_ms = base.transfer_ms(4 * n) + base.transfer_ms(4 * n, h2d=False)
    timing = TimingModel(h2d_gbps=gbps, d2h_gbps=gbps, execute_ms=transfer_ms)
    if not dynamic:
        print(f"\n2. torch.compile on fake_neuron, 1 MiB in/out, 2 GB/s link, execute {transfer_ms:.3f} ms "
              "(= H2D + D2H), 100 distinct CPU inputs")
        xs = [torch.from_numpy(x) for x in _inputs(n)]
        keep = {"keep_outputs_on_device": True}
        # (label, options, read each result this many calls behind; 0: all calls, then all reads)
        rows: list[tuple[str, dict[str, Any], int]] = [
            ("synchronous", {}, 0), ("pipelined", {"pipelined": True}, 0), ("keep_outputs_on_device", keep, 0),
            ("pipelined + keep_outputs_on_device", {"pipelined": True, **keep}, 0),
            ("pipelined + keep, read 1 call behind", {"pipelined": True, **keep}, 1),
            ("pipelined + keep, read 2 calls behind", {"pipelined": True, **keep}, 2)]
    else:
        print("\n3. dynamic=True on fake_neuron, lengths 1..4096 of (L, 64) float32, 2 GB/s link, "
              "execute 0.5 ms, 100 calls")
        rng = np.random.default_rng(1)
        lengths = rng.integers(1, 4097, CALLS)
        xs = [torch.randn(int(length), 64) for length in lengths]
        timing = TimingModel(h2d_gbps=gbps, d2h_gbps=gbps, execute_ms=0.5)
        rows = [("pad on device", {"pad_on_device": True}, 0), ("pad on host", {"pad_on_device": False}, 0),
                ("pad on device, pipelined", {"pad_on_device": True, "pipelined": True}, 0),
                ("pad on device, pipelined + keep, 2 behind",
                 {"pad_on_device": True, "pipelined": True, "keep_outputs_on_device": True}, 2)]
    with tempfile.TemporaryDirectory() as tmp:
        for label, options, behind in rows:
            with fake_neuron(Path(tmp) / "cache", timing=timing), torch.no_grad():
                fn = torch.compile(Net(), backend="nkipy", options=options, dynamic=dynamic or None)
                want = [torch.tanh(x * 2 + 1) for x in xs]
                got = [fn(x) for x in xs]  # compiles (each bucket once), then checks the numbers
                for a, b in zip(want, got, strict=True):
                    torch.testing.assert_close(b.cpu(), a, rtol=1e-5, atol=1e-5)
                del got

                def loop(fn: Any = fn) -> None:
                    outs = [fn(x) for x in xs]  # every call in flight, then every result read
                    for o in outs:
                        o.cpu()

                def loop_behind(fn: Any = fn, depth: int = behind) -> None:
                    queued: collections.deque[Any] = collections.deque()  # as a CUDA loop: read call i's
                    for x in xs:                                # result once call i + depth is queued
                        queued.append(fn(x))
                        if len(queued) > depth:
                            queued.popleft().cpu()
                    while queued:
                        queued.popleft().cpu()

                torch.nkipy.synchronize()  # type: ignore[attr-defined]
                spiky.reset_stats()
                t = _best(loop_behind if behind else loop, rounds)
                s = spiky.get_stats()
                calls = max(s.total_executions, 1)
                # bytes per call include the reads of kept outputs (.cpu()), which are not the call's own
                print(f"   {label:<40} {CALLS / t:>8.1f} calls/s   "
                      f"H2D {s.total_h2d_bytes / calls / 2**10:>8.1f} KiB/call"
                      f"   D2H {s.total_d2h_bytes / calls / 2**10:>8.1f} KiB/call   "
                      f"H2D {s.total_h2d_time_ms / calls:.3f} ms   exec {s.total_exec_time_ms / calls:.3f} ms   "
                      f"D2H {s.total_d2h_time_ms / calls:.3f} ms   pad {s.total_pad_time_ms / calls:.3f} ms")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 round per measurement instead of 3")
    parser.add_argument("--section", type=int, choices=(1, 2, 3), help="run one section only")
    args = parser.parse_args(argv)
    if os.environ.get("SPIKY_LIBNRT") is None:
        # The "nkipy" device is NeuronCore memory only when libnrt is found at import (here the
        # fake one), as on a Trn host: run again with it in the environment, before anything imports spiky.
        lib = subprocess.run([sys.executable, "-c", "from spiky.testing import fake_libnrt; print(fake_libnrt())"],
                             capture_output=True, text=True, check=True).stdout.strip()
        os.execve(sys.executable, [sys.executable, __file__, *argv], {**os.environ, "SPIKY_LIBNRT": lib})
    rounds = 1 if args.quick else 3
    if args.section in (None, 1):
        section_runtime(rounds)
    if args.section in (None, 2):
        section_torch(rounds, dynamic=False)
    if args.section in (None, 3):
        section_torch(rounds, dynamic=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
