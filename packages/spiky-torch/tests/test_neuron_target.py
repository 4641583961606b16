"""``target="neuron"`` end to end on the emulated Neuron stack (:func:`spiky.testing.fake_neuron`).

The ``neuron`` fixture is ``fake_neuron`` with this test's compile cache: the fake ``neuronx-cc``
reads the HLO module proto like the real one and writes a NEFF in the fake libnrt's format with
the HLO embedded; the fake libnrt's execute rule runs that HLO on XLA:CPU, so the numbers a
compiled model returns on the neuron path are real. Other test modules reuse the fixture
(``neuron``, and ``fake_lib``: the process's fake libnrt). The emulator's own API and its
strictness are tested in test_fake_neuron.py.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax  # noqa: F401  a pinned dev dependency: missing jax must fail collection, not skip
import pytest
import torch
from torch import nn

import spiky
import spiky.torch
import spiky_runtime as rt
from spiky import SpikyTargetError
from spiky.reference_models import TransformerBlock
from spiky.testing import NRT_HW_ERROR, FakeNeuron, fake_libnrt, fake_neuron
from spiky.torch.targets import resolve_target


@pytest.fixture(scope="session")
def fake_lib() -> Path:
    """The fake libnrt this process loads (the same file the runtime's tests use)."""
    return fake_libnrt()


@pytest.fixture
def neuron(fake_lib: Path) -> Iterator[FakeNeuron]:
    """The fake Neuron stack (``spiky.testing.fake_neuron``, trn1) on this test's cache (``SPIKY_CACHE``)."""
    assert fake_lib.exists()
    with fake_neuron(Path(os.environ["SPIKY_CACHE"])) as handle:
        yield handle


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))


Block = TransformerBlock


def test_neuron_needs_libnrt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPIKY_LIBNRT", "/nonexistent/libnrt.so.1")
    with pytest.raises(SpikyTargetError, match=r"target 'neuron' cannot run here: no libnrt.so.1 found"):
        resolve_target("neuron")
    assert resolve_target("auto") == "host"


@pytest.mark.smoke
def test_neuron_resolves_with_libnrt_and_a_core(neuron: FakeNeuron) -> None:
    assert resolve_target("neuron") == "neuron" and resolve_target("auto") == "neuron"
    assert spiky.torch.current_config().target == "neuron"
    assert spiky.device_count() == rt.device_count("nrt") >= 1


@pytest.mark.smoke
def test_mlp_matches_eager_through_neff_and_nrt(neuron: FakeNeuron) -> None:
    model = _mlp()
    fast = torch.compile(model, backend="nkipy")
    x = torch.randn(4, 16)
    with torch.no_grad():
        expected = model(x)
        got = fast(x)
        again = fast(x + 1)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(again, model(x + 1), rtol=1e-5, atol=1e-5)
    assert neuron.execute_count() == 2 and neuron.call_count("nrt_load") == 1
    entries = spiky.cache.list_entries(Path(os.environ["SPIKY_CACHE"]))
    assert len(entries) == 1 and entries[0].target == "neuron-trn1"
    assert "Compiler status PASS" in entries[0].file("compile.log").read_text()
    assert spiky.get_stats().total_executions == 2


def test_transformer_block_matches_eager(neuron: FakeNeuron) -> None:
    torch.manual_seed(0)
    model = Block().eval()
    fast = torch.compile(model, backend="nkipy")
    x = torch.randn(2, 8, 32)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-4, atol=1e-5)
    assert neuron.execute_count() >= 1


def test_training_step_gradients_match(neuron: FakeNeuron) -> None:
    model = _mlp()
    reference = _mlp()
    fast = torch.compile(model, backend="nkipy")
    x = torch.randn(4, 16)
    fast(x).square().sum().backward()
    reference(x).square().sum().backward()
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        assert p.grad is not None and q.grad is not None
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-5)
    assert neuron.call_count("nrt_load") == 2  # forward and backward NEFFs


def test_execute_failure_surfaces_and_the_next_call_works(neuron: FakeNeuron) -> None:
    model = _mlp()
    fast = torch.compile(model, backend="nkipy")
    x = torch.randn(4, 16)
    with torch.no_grad():
        fast(x)
        neuron.fail_next_execute(NRT_HW_ERROR)
        with pytest.raises(rt.NrtError, match=r"nrt_execute returned HW_ERROR \(6\) for model 'kernel_") as info:
            fast(x)
        assert info.value.code == 6
        torch.testing.assert_close(fast(x), model(x), rtol=1e-5, atol=1e-5)


def test_save_ntff_on_neuron_writes_chosen_executions(neuron: FakeNeuron, tmp_path: Path) -> None:
    model = _mlp()
    out_dir = tmp_path / "profiles"
    fast = torch.compile(model, backend="nkipy",
                         options={"save_ntff": True, "save_ntff_dir": str(out_dir), "save_ntff_exe_idx": [0, 2]})
    with torch.no_grad():
        for _ in range(4):
            fast(torch.randn(4, 16))
    (kernel,) = list(out_dir.iterdir())
    assert kernel.name.startswith("kernel_")
    assert sorted(p.name for p in kernel.iterdir()) == ["0.ntff", "2.ntff", f"{kernel.name}.neff"]
    assert (kernel / "0.ntff").read_text() == f"FAKE-NTFF\nneff_id {kernel.name}\nexecutions 1\n"
    assert (kernel / f"{kernel.name}.neff").read_bytes()[:4] == b"NEFF"
    assert neuron.call_count("nrt_profile_start") == 2 and neuron.call_count("nrt_profile_stop") == 2


def test_save_ntff_only_on_rank_0_by_default(
    neuron: FakeNeuron, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEURON_RT_ROOT_COMM_ID", "127.0.0.1:62182")  # a 2-rank Neuron run's rendezvous
    spiky.torch.reset_nkipy_backend()
    spiky.torch.init_nkipy_backend(target="neuron", rank=1, world_size=2)
    fast = torch.compile(_mlp(), backend="nkipy", options={"save_ntff": True, "save_ntff_dir": str(tmp_path / "p")})
    with torch.no_grad():
        fast(torch.randn(4, 16))
    assert not (tmp_path / "p").exists() and neuron.call_count("nrt_profile_start") == 0


def test_save_ntff_on_host_writes_traces_and_says_ntff_needs_neuron(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spiky.torch.init_nkipy_backend(target="host")
    fast = torch.compile(_mlp(), backend="nkipy",
                         options={"save_ntff": True, "save_ntff_dir": str(tmp_path / "p"), "save_ntff_exe_idx": [1]})
    with caplog.at_level(logging.WARNING, logger="spiky.runtime"), torch.no_grad():
        for _ in range(3):
            fast(torch.randn(4, 16))
    (kernel,) = list((tmp_path / "p").iterdir())
    assert [p.name for p in kernel.iterdir()] == ["1.trace.json"]
    assert '"name": "execute"' in (kernel / "1.trace.json").read_text().replace('"name":"execute"', '"name": "execute"')
    assert any("NTFF profiles need Neuron" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("options", "message"),
    [({"save_ntff": "yes"}, r"option 'save_ntff' got 'yes'; expected True or False"),
     ({"save_ntff_exe_idx": [0, -1]}, r"option 'save_ntff_exe_idx' got \[0, -1\]"),
     ({"save_ntff_ranks": 0}, r"option 'save_ntff_ranks' got 0; expected a list of ranks")],
)
def test_ntff_options_are_validated(options: dict[str, Any], message: str) -> None:
    with pytest.raises(spiky.SpikyOptionError, match=message):
        spiky.torch.validate_options(options)
