"""Every valid graph built by a spiky-ir test must round-trip through the text form.

``host_executor``: runs a test with each host executor; ``neuron_target``: on the neuron target (fake stack);
``torchrun``: multi-process workers under torch.distributed.run on loopback.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from spiky.testing import FakeNeuron, fake_neuron
from spiky_ir.testing import check_recorded, record_graphs


@pytest.fixture(autouse=True)
def _text_round_trip() -> Iterator[None]:
    with record_graphs() as graphs:
        yield
    check_recorded(graphs)


@pytest.fixture(params=["numpy", "xla"])
def host_executor(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Runs the test once per host executor (the backend initialised with it); xla needs jax."""
    import torch

    import spiky.torch

    info = spiky.torch.host_executor_info()
    if request.param == "xla" and not info.xla_available:
        pytest.skip(info.reason)
    spiky.torch.reset_nkipy_backend()
    torch._dynamo.reset()
    spiky.torch.init_nkipy_backend(nkipy_cache=tmp_path / "executor_cache", target="host", host_executor=request.param)
    yield request.param
    spiky.torch.reset_nkipy_backend()
    torch._dynamo.reset()


@pytest.fixture
def neuron_target(tmp_path: Path) -> Iterator[FakeNeuron]:
    """Runs the test on the neuron target through the fake Neuron stack (``spiky.testing.fake_neuron``:
    HLO -> fake neuronx-cc -> NEFF -> fake libnrt, executed on XLA:CPU); yields the ``FakeNeuron`` handle."""
    with fake_neuron(tmp_path / "neuron_cache") as handle:
        yield handle


def free_port() -> int:
    """A TCP port on loopback that nothing listens on (for a torchrun rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Torchrun:
    """``torchrun`` on loopback with gloo-friendly settings: ``run(script, nproc=2, env=...)``.

    Returns the finished process after asserting it succeeded (its output tails in the message);
    ``reports(result)`` parses the ``RESULT {json}`` lines workers print."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path

    free_port = staticmethod(free_port)

    def command(self, script: Path, nproc: int = 2, *launcher_args: str, port: int | None = None) -> list[str]:
        return [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
                "--master-addr=127.0.0.1", f"--master-port={port or free_port()}", *launcher_args, str(script)]

    def env(self, **values: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
        env.update({"SPIKY_TEST_CACHE": str(self.tmp_path / "cache"), "OMP_NUM_THREADS": "1", **values})
        return env

    def run(self, script: Path, nproc: int = 2, timeout: int = 600, **env: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(self.command(script, nproc), capture_output=True, text=True, timeout=timeout,
                                env=self.env(**env), check=False)
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-6000:]
        return result

    @staticmethod
    def reports(stdout: str) -> list[dict[str, Any]]:
        found = [json.loads(line.split("RESULT ", 1)[1]) for line in stdout.splitlines() if "RESULT " in line]
        return sorted(found, key=lambda r: int(r["rank"]))


@pytest.fixture
def torchrun(tmp_path: Path) -> Torchrun:
    return Torchrun(tmp_path)
