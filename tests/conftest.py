"""Every valid graph built by a spiky-ir test must round-trip through the text form.

``host_executor``: runs a test with each host executor; ``neuron_target``: on the neuron target (fake stack).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

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
