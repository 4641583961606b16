"""Per-tensor cost of handing a CPU tensor to a compiled call as a numpy array.

Compiled calls take CPU inputs as numpy views. ``Tensor.numpy()`` marks the tensor's storage as not
resizable for good (torch 2.13), which breaks FSDP2 (it frees unsharded parameters with
``untyped_storage().resize_(0)``), so inputs cross through DLPack (``spiky.torch.arrays.host_view``).
This prints the µs per tensor of: ``t.numpy()`` (the old path), ``np.from_dlpack(t)`` (torch's
Python ``__dlpack__``), ``host_view(t)`` (what calls use) and ``to_array`` of a bfloat16 tensor, plus a
whole small compiled call's µs with float32 inputs, and checks that the storage stays resizable.

    .venv/bin/python tools/bench/bench_host_view.py
"""

from __future__ import annotations

import argparse
import sys
import timeit


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--number", type=int, default=200_000, help="calls per timing (default 200000)")
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    import spiky.torch  # noqa: F401  (registers the backend)
    from spiky.torch.arrays import host_view, to_array

    t = torch.randn(64, 64)
    bf = torch.randn(64, 64).to(torch.bfloat16)
    param = torch.nn.Parameter(torch.randn(64, 64))

    def best(fn: object, number: int) -> float:
        return min(timeit.repeat(fn, number=number, repeat=7)) / number * 1e6  # type: ignore[arg-type]

    rows = [
        ("t.numpy()", best(t.numpy, args.number)),
        ("np.from_dlpack(t)", best(lambda: np.from_dlpack(t), args.number)),
        ("host_view(t)", best(lambda: host_view(t), args.number)),
        ("host_view(parameter)", best(lambda: host_view(param), args.number)),
        ("p.detach().numpy()", best(lambda: param.detach().numpy(), args.number)),
        ("to_array(bfloat16 t)", best(lambda: to_array(bf), args.number)),
    ]
    for name, micros in rows:
        print(f"{name:24s} {micros:6.2f} us per tensor")

    fresh = torch.randn(8, 8)
    compiled = torch.compile(lambda a, b: a @ b + 1, backend="nkipy")
    x, y = torch.randn(8, 8), torch.randn(8, 8)
    compiled(x, y)
    calls = max(1, args.number // 50)
    print(f"{'compiled call (2 inputs)':24s} {best(lambda: compiled(x, y), calls):6.2f} us per call")
    compiled(fresh, y)
    fresh.untyped_storage().resize_(0)  # raises if the call had marked the storage non-resizable
    print("storage of a compiled call's input is still resizable: yes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
