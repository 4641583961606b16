"""``target="neuron"`` end to end against the fakes: fake ``neuronx-cc`` → fake NEFF → fake libnrt.

The fake compiler (FAKE below) reads the HLO module proto like the real one, writes a NEFF in
the fake libnrt's format (spiky_io.txt: the I/O from the module's parameters and root, named
by its ``neff_input_names``/``neff_output_names``) and embeds the HLO. The fake libnrt's execute
rule (``_xla_rule``) finds the NEFF by its id and runs the embedded HLO on XLA:CPU, so the
numbers a compiled model returns on the neuron path are real.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import stat
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import jax  # noqa: F401  a pinned dev dependency: missing jax must fail collection, not skip
import numpy as np
import pytest
import torch
from torch import nn

import spiky
import spiky.torch
import spiky_runtime as rt
from spiky import SpikyTargetError
from spiky.reference_models import TransformerBlock
from spiky.torch.targets import resolve_target
from spiky_ir.hlo.xla_cpu import compile_hlo

FAKE_NRT = Path(__file__).resolve().parents[2] / "spiky-runtime" / "tests" / "fake_nrt"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_fake_nrt_{name}", FAKE_NRT / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


build = _load("build")
neff = _load("neff")
control = _load("control")

FAKE = textwrap.dedent("""\
    #!{python}
    # Fake neuronx-cc: HLO module proto -> fake NEFF (spiky_io.txt from the module, HLO embedded).
    import os, sys
    if sys.argv[1:] == ["--version"]:
        print("NeuronX Compiler version 2.99.2.0+fake")
        sys.exit(0)
    sys.path.insert(0, {fake_nrt!r})
    from neff import write_fake_neff
    from spiky_ir.hlo import HloModule
    args = sys.argv[1:]
    assert args[:3] == ["compile", "--framework", "XLA"], args
    proto = open(args[3], "rb").read()
    module = HloModule.decode(proto)
    entry = module.computations[-1]
    assert entry.name == module.entry_computation_name == "main"
    # PrimitiveType -> dtype name; bool travels as u8, zero-element outputs are dropped.
    names = {{1: "bool", 2: "int8", 3: "int16", 4: "int32", 5: "int64", 6: "uint8", 7: "uint16",
              8: "uint32", 9: "uint64", 10: "float16", 11: "float32", 16: "bfloat16"}}
    shape = module.host_program_shape
    params = sorted((i for i in entry.instructions if i.opcode == "parameter"), key=lambda i: i.parameter_number)
    inputs = [(p.frontend_attributes.map["neff_input_names"], names[s.element_type], list(s.dimensions))
              for p, s in zip(params, shape.parameters)]
    root = next(i for i in entry.instructions if i.id == entry.root_id)
    out_names = root.frontend_attributes.map["neff_output_names"].split(",")
    results = shape.result.tuple_shapes if shape.result.element_type == 13 else [shape.result]
    outputs = [(n, names[s.element_type], list(s.dimensions)) for n, s in zip(out_names, results)
               if all(d > 0 for d in s.dimensions)]
    print(f"Parsed HLO module {{module.name}}: {{len(inputs)}} inputs, {{len(outputs)}} outputs", flush=True)
    collectives = any(i.opcode in ("all-reduce", "all-gather", "reduce-scatter", "all-to-all")
                      for i in entry.instructions)
    out = args[args.index("--output") + 1]
    write_fake_neff(out, inputs, outputs, module.name, collectives=collectives,
                    extra_members={{"model.hlo.pb": proto}})
    print("Compiler status PASS", flush=True)
""")


@pytest.fixture(scope="session")
def fake_lib() -> Path:
    path: Path = build.shared_fake_libnrt()  # the same file the runtime's tests load in this process
    return path


class XlaRule:
    """The fake libnrt's execute rule: run a NEFF's embedded HLO on XLA:CPU."""

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = cache_dir
        self.programs: dict[str, tuple[Any, Any]] = {}

    def _program(self, neff_id: str) -> tuple[Any, Any]:
        if neff_id not in self.programs:
            for path in self.cache_dir.rglob("model.neff"):
                parsed = neff.read_fake_neff(path.read_bytes())
                if parsed.neff_id == neff_id:
                    self.programs[neff_id] = (parsed, compile_hlo(parsed.members["model.hlo.pb"]))
                    break
            else:
                raise KeyError(f"no NEFF with id {neff_id} under {self.cache_dir}")
        return self.programs[neff_id]

    def __call__(self, neff_id: str, ins: dict[str, memoryview], outs: dict[str, memoryview]) -> int:
        parsed, exe = self._program(neff_id)
        dtypes = {code: name for name, code in neff.DTYPE_CODES.items() if name != "bool"}
        arrays = [np.frombuffer(ins[t.name], dtypes[t.dtype]).reshape(t.shape) for t in parsed.inputs]
        results = exe(arrays)
        for t, result in zip(parsed.outputs, results, strict=True):
            np.frombuffer(outs[t.name], np.uint8)[:] = np.ascontiguousarray(result).view(np.uint8).ravel()
        return 0


@pytest.fixture
def neuron(fake_lib: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The fake Neuron stack: libnrt, neuronx-cc (trn1) and an XLA:CPU execute rule."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "neuronx-cc"
    script.write_text(FAKE.format(python=sys.executable, fake_nrt=str(FAKE_NRT)))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("SPIKY_NEURONX_CC", str(script))
    monkeypatch.setenv("SPIKY_NEURON_TARGET", "trn1")
    monkeypatch.setenv("SPIKY_LIBNRT", str(fake_lib))
    for var in ("NEURON_RT_VISIBLE_CORES", "NEURON_RT_NUM_CORES"):
        monkeypatch.delenv(var, raising=False)
    fake = control.FakeNrt(fake_lib)
    fake.reset()
    fake.set_execute(XlaRule(Path(os.environ["SPIKY_CACHE"])))
    spiky.torch.init_nkipy_backend(target="neuron")
    spiky.reset_stats()  # the nrt device may have run models for earlier tests in this process
    yield fake
    assert fake.callback_errors == []
    fake.reset()


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
def test_neuron_resolves_with_libnrt_and_a_core(neuron: Any) -> None:
    assert resolve_target("neuron") == "neuron" and resolve_target("auto") == "neuron"
    assert spiky.torch.current_config().target == "neuron"
    assert spiky.device_count() == rt.device_count("nrt") >= 1


@pytest.mark.smoke
def test_mlp_matches_eager_through_neff_and_nrt(neuron: Any) -> None:
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


def test_transformer_block_matches_eager(neuron: Any) -> None:
    torch.manual_seed(0)
    model = Block().eval()
    fast = torch.compile(model, backend="nkipy")
    x = torch.randn(2, 8, 32)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-4, atol=1e-5)
    assert neuron.execute_count() >= 1


def test_training_step_gradients_match(neuron: Any) -> None:
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


def test_execute_failure_surfaces_and_the_next_call_works(neuron: Any) -> None:
    model = _mlp()
    fast = torch.compile(model, backend="nkipy")
    x = torch.randn(4, 16)
    with torch.no_grad():
        fast(x)
        neuron.fail_next_execute(control.NRT_HW_ERROR)
        with pytest.raises(rt.NrtError, match=r"nrt_execute returned HW_ERROR \(6\) for model 'kernel_") as info:
            fast(x)
        assert info.value.code == 6
        torch.testing.assert_close(fast(x), model(x), rtol=1e-5, atol=1e-5)


def test_save_ntff_on_neuron_writes_chosen_executions(neuron: Any, tmp_path: Path) -> None:
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


def test_save_ntff_only_on_rank_0_by_default(neuron: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
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
