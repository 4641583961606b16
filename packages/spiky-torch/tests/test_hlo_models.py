"""Models through torch.compile → aot_autograd → lower_fx → HLO → XLA:CPU, against eager.

The backend here is the nkipy front end with XLA:CPU in place of the numpy reference: it
proves the emitted HLO of whole models, not just single ops, is right by execution.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax  # noqa: F401  a pinned dev dependency: a missing jax must fail collection, not skip
import pytest
import torch
from torch import fx, nn
from torch._decomp import core_aten_decompositions
from torch._dynamo.backends.common import aot_autograd

from spiky.reference_models import TransformerBlock
from spiky_ir.fx import lower_fx
from spiky_ir.hlo import HloModule, emit_hlo
from spiky_ir.hlo.xla_cpu import compile_hlo

RTOL = ATOL = 1e-5  # fp32, as in test_backend.py


def _xla_backend(emitted: list[HloModule]) -> Any:
    def compiler(gm: fx.GraphModule, _inputs: Sequence[torch.Tensor]) -> Callable[..., Any]:
        graph = lower_fx(gm)
        art = emit_hlo(graph, name="model")
        emitted.append(HloModule.decode(art.proto))
        exe = compile_hlo(art.proto)

        def run(*args: torch.Tensor) -> list[torch.Tensor]:
            outs = exe([a.detach().contiguous().numpy() for a in args])
            return [torch.from_numpy(o.copy()) for o in outs]

        return run

    return aot_autograd(fw_compiler=compiler, decompositions=core_aten_decompositions())


Block = TransformerBlock


class CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 16, 3, stride=2)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c1(x))
        x = torch.nn.functional.max_pool2d(torch.relu(self.c2(x)), 2)
        return torch.softmax(self.fc(x.mean((2, 3))), dim=-1)


MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "mlp": (lambda: nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)), (4, 16)),
    "mlp_gelu_silu": (lambda: nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 32), nn.SiLU()), (4, 16)),
    "cnn": (CNN, (2, 3, 16, 16)),
    "transformer_block": (Block, (2, 8, 32)),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_hlo_on_xla_cpu_matches_eager(name: str) -> None:
    factory, shape = MODELS[name]
    torch.manual_seed(0)
    model = factory().eval()
    x = torch.randn(shape)
    emitted: list[HloModule] = []
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=_xla_backend(emitted))
    with torch.no_grad():
        expected, actual = model(x), compiled(x)
    assert emitted, "the graph went through the HLO path"
    assert all(m.computations[-1].name == "main" for m in emitted)
    torch.testing.assert_close(actual, expected, rtol=RTOL, atol=ATOL)
