"""Quickstart: compile nn.Linear with backend="nkipy" and run it on the host target.

Run it with `tools/quickstart.sh` (sets up the venv first) or, inside the venv,
`python examples/quickstart.py`.
"""

from __future__ import annotations

import torch

import spiky
import spiky.torch


def main() -> None:
    torch.manual_seed(0)
    config = spiky.torch.init_nkipy_backend(target="auto")
    print(f"target: {config.target}  (cache: {config.nkipy_cache})")

    model = torch.nn.Linear(32, 64, bias=False)
    compiled = torch.compile(model, backend="nkipy")
    x = torch.randn(8, 32)
    with torch.no_grad():
        expected = model(x)
        out = compiled(x)
        out = compiled(x)  # second call reuses the compiled graph

    print(f"output shape: {tuple(out.shape)}")
    print(f"max |compiled - eager|: {(out - expected).abs().max().item():.3e}")
    print(f"stats: {spiky.get_stats()}")
    print(f"memory: {spiky.get_memory_stats()}")


if __name__ == "__main__":
    main()
