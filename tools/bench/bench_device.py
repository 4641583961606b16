"""Device-resident compiled execution on the "nkipy" device, side by side (host target).

    .venv/bin/python tools/bench/bench_device.py [--quick]

Per-call time (µs, best of 3 loops) of one MLP forward (no grad):

- eager CPU: the model in torch eager on CPU tensors
- compiled CPU: torch.compile(backend="nkipy") on CPU tensors (numpy in, numpy out)
- compiled nkipy: weights and input on the "nkipy" device, outputs copied back through the host
  into new device tensors (keep_outputs_on_device=False, the default)
- compiled nkipy, keep_outputs_on_device=True: outputs stay in the pool, no copies

For two sizes: a small MLP (per-call overhead dominates) and a wider one (compute dominates).
The host target runs the graph with numpy; the point is the overhead of each path.
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable

import torch
from torch import nn

import spiky.torch  # noqa: F401  (registers the backend and the nkipy device)


def per_call_us(fn: Callable[[], object], n: int) -> float:
    for _ in range(min(n, 50)):
        fn()
    torch.nkipy.synchronize()  # type: ignore[attr-defined]
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        torch.nkipy.synchronize()  # type: ignore[attr-defined]
        best = min(best, (time.perf_counter() - start) / n)
    return best * 1e6


def mlp(width: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(width, 2 * width), nn.ReLU(), nn.Linear(2 * width, width)).eval()


def bench(batch: int, width: int, n: int) -> list[tuple[str, float]]:
    torch._dynamo.reset()  # sizes of another run must not make this one dynamic
    model = mlp(width)
    x = torch.randn(batch, width)
    dev_model = mlp(width).to("nkipy")
    xd = x.to("nkipy")
    compiled_cpu = torch.compile(mlp(width), backend="nkipy", dynamic=False)
    on_device = torch.compile(dev_model, backend="nkipy", dynamic=False)
    resident = torch.compile(dev_model, backend="nkipy", dynamic=False, options={"keep_outputs_on_device": True})
    rows = []
    with torch.no_grad():
        expected = model(x)
        for out in (compiled_cpu(x), on_device(xd).cpu(), resident(xd).cpu()):
            torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
        rows.append(("eager CPU", per_call_us(lambda: model(x), n)))
        rows.append(("compiled CPU tensors", per_call_us(lambda: compiled_cpu(x), n)))
        rows.append(("compiled nkipy (outputs via host)", per_call_us(lambda: on_device(xd), n)))
        rows.append(("compiled nkipy, keep_outputs_on_device", per_call_us(lambda: resident(xd), n)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    args = parser.parse_args()
    n = 50 if args.quick else 300
    warnings.simplefilter("ignore")
    sizes = [(8, 64), (64, 512)]
    results = {size: bench(*size, n) for size in sizes}
    names = [name for name, _ in results[sizes[0]]]
    header = f"{'per call (µs)':<42}" + "".join(f"{f'{b}x{w} MLP':>16}" for b, w in sizes)
    print(header)
    print("-" * len(header))
    for i, name in enumerate(names):
        print(f"{name:<42}" + "".join(f"{results[size][i][1]:>16.1f}" for size in sizes))


if __name__ == "__main__":
    main()
