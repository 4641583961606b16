"""Training: forward and backward graphs compile; compare three SGD steps with eager."""

from __future__ import annotations

import copy

import torch
from torch import nn

import spiky.torch


def main() -> None:
    torch.manual_seed(0)
    spiky.torch.init_nkipy_backend(target="host")
    eager = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))
    model = copy.deepcopy(eager)
    compiled = torch.compile(model, backend="nkipy")
    opt_eager = torch.optim.SGD(eager.parameters(), lr=0.1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(3):
        x, y = torch.randn(16, 8), torch.randn(16, 1)
        for m, o in ((eager, opt_eager), (compiled, opt)):
            o.zero_grad()
            loss = nn.functional.mse_loss(m(x), y)
            loss.backward()
            o.step()
        print(f"step {step}: loss {loss.item():.5f}")
    diff = max((p - q).abs().max().item() for p, q in zip(model.parameters(), eager.parameters(), strict=True))
    print(f"max weight difference from eager after 3 steps: {diff:.2e}")


if __name__ == "__main__":
    main()
