"""Worker for test_pipeline.py, run under torchrun (2 ranks) on ``$SPIKY_TEST_TARGET``.

On host, the first graph this process compiles is a dynamic graph with an all_reduce across the
ranks (it must bind spiky-dist's host collectives itself). Then, on either target, the upstream
README's distributed example as written. Prints ``RESULT {...}``.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
from torch import nn

from spiky.torch import init_nkipy_backend


def _install_fake_neuron_rule() -> None:
    """The fake libnrt (``$SPIKY_LIBNRT``, set up by the test) runs each NEFF's HLO on XLA:CPU."""
    from spiky.testing import FakeNrt, XlaExecuteRule

    fake = FakeNrt(os.environ["SPIKY_LIBNRT"])
    fake.set_execute(XlaExecuteRule(fake))
    globals()["_fake"] = fake  # keep the callback alive


def main() -> None:
    target = os.environ["SPIKY_TEST_TARGET"]
    if target == "neuron":
        _install_fake_neuron_rule()
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    config = init_nkipy_backend()  # rank, world_size auto-detected from dist
    assert config.target == target, config
    rank = dist.get_rank()
    checks = 0
    if target == "host":
        def summed(x: torch.Tensor) -> torch.Tensor:
            return funcol.all_reduce(x * 2, "sum", dist.group.WORLD) - x

        first = torch.compile(summed, backend="nkipy", dynamic=True, fullgraph=True)
        for batch in (3, 5, 6):
            base = torch.arange(batch * 4, dtype=torch.float32).reshape(batch, 4)
            x = base * (rank + 1)
            expected = 2 * (1 + 2) * base - x  # the ranks hold base and 2 * base
            torch.testing.assert_close(first(x), expected, rtol=1e-5, atol=1e-5)
            checks += 1

    # The README example, as written.
    torch.manual_seed(0)
    model = nn.Linear(32, 64, bias=False)
    compiled = torch.compile(model, backend="nkipy", fullgraph=True)
    x = torch.randn(1, 32)
    with torch.no_grad():
        out = compiled(x)
        error = float((out - model(x)).abs().max())
    dist.barrier()
    dist.destroy_process_group()
    report = {"rank": rank, "target": config.target, "world_size": config.world_size, "max_error": error,
              "dynamic_collective_checks": checks}
    sys.stdout.write(f"RESULT {json.dumps(report)}\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
