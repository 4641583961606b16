"""One convolution per row on XLA:CPU: its own ``convolution`` against the window-slices + ``dot`` form
(spiky_ir.ops.conv.conv_as_dot picks per shape), next to torch eager.

    taskset -c 1 .venv/bin/python tools/bench/bench_conv.py [--rounds 15]

Shapes are the ones the zoo's CNNs (ResNet, MobileNet, EfficientNet, RegNet) run at their test
sizes, plus larger maps where XLA's own convolution wins. Prints ms per call (best of --rounds),
XLA compile ms and which form the rule picks. One thread everywhere.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np

# (batch, in channels, map size, out channels, kernel, stride, groups)
SHAPES = [
    (2, 3, 64, 64, 7, 2, 1),
    (2, 64, 16, 64, 3, 1, 1),
    (2, 64, 16, 128, 3, 2, 1),
    (2, 128, 8, 128, 3, 1, 1),
    (2, 256, 4, 256, 3, 1, 1),
    (2, 512, 2, 512, 3, 1, 1),
    (2, 64, 16, 128, 1, 2, 1),
    (2, 16, 32, 16, 3, 1, 16),
    (2, 96, 16, 96, 5, 1, 96),
    (2, 64, 16, 64, 3, 1, 8),
    (1, 64, 56, 64, 3, 1, 1),
    (8, 64, 32, 64, 3, 1, 1),
    (1, 3, 224, 64, 7, 2, 1),
    (2, 32, 32, 64, 1, 1, 1),
]


def best_ms(fn: Callable[[], Any], rounds: int) -> float:
    fn()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()

    import torch

    from spiky_ir import DType, Graph, TensorType
    from spiky_ir.hlo import emit_hlo, xla_cpu
    from spiky_ir.ops import conv

    torch.set_num_threads(1)
    xla_cpu.limit_threads()
    print("| N, C, map, O, k, stride, groups | form picked | XLA convolution ms | dot form ms | torch ms "
          "| compile ms (conv / dot) |")
    print("|---|---|---:|---:|---:|---|")
    rng = np.random.default_rng(0)
    for n, c, size, o, k, stride, groups in SHAPES:
        pad = k // 2
        g = Graph()
        x = g.add_input("x", TensorType((n, c, size, size), DType.float32))
        w = g.add_input("w", TensorType((o, c // groups, k, k), DType.float32))
        g.set_outputs([g.add_op("conv2d", [x, w], {"stride": (stride, stride), "pad_lo": (pad, pad),
                                                   "pad_hi": (pad, pad), "dilation": (1, 1), "groups": groups})])
        specs = [(v.type.static_shape(), np.dtype(np.float32)) for v in g.inputs]
        arrays = [rng.standard_normal(shape).astype(np.float32) for shape, _ in specs]
        tx, tw = (torch.from_numpy(a) for a in arrays)
        want = torch.conv2d(tx, tw, stride=stride, padding=pad, groups=groups).numpy()
        times, compiles = [], []
        picks = conv.conv_as_dot
        for forced in (False, True):  # the HLO rule looks conv_as_dot up when it runs: force each form
            conv.conv_as_dot = lambda *_args, forced=forced: forced  # type: ignore[misc]
            start = time.perf_counter()
            exe = xla_cpu.compile_hlo(emit_hlo(g).proto, specs)
            compiles.append((time.perf_counter() - start) * 1e3)
            got = exe(arrays)[0]
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))
            times.append(best_ms(lambda exe=exe, arrays=arrays: exe(arrays), args.rounds))
        conv.conv_as_dot = picks  # type: ignore[assignment]
        picked = "dot" if picks(x.type.static_shape(), w.type.static_shape(),
                                           g.outputs[0].type.static_shape(), groups) else "convolution"
        torch_ms = best_ms(lambda tx=tx, tw=tw, kw={"stride": stride, "padding": pad, "groups": groups}:  # type: ignore[misc]
                           torch.conv2d(tx, tw, **kw), args.rounds)
        print(f"| {n}, {c}, {size}, {o}, {k}, {stride}, {groups} | {picked} | {times[0]:.3f} | {times[1]:.3f} "
              f"| {torch_ms:.3f} | {compiles[0]:.0f} / {compiles[1]:.0f} |", flush=True)


if __name__ == "__main__":
    main()
