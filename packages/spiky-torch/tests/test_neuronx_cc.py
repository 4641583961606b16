"""The neuronx-cc driver against a fake ``neuronx-cc`` honouring the real one's contract.

The fake (written by :func:`fake_compiler`) records its argv and cwd, checks that its input
parses as an ``xla.HloModuleProto`` with the Neuron conventions, prints phases like the real
compiler and writes a NEFF-shaped file: a 1024-byte header followed by a tar archive.
``FAKE_NEURONX_CC_MODE`` selects a failure: ``fail`` (exit 2), ``no_output``, ``hang``.
"""

from __future__ import annotations

import io
import json
import os
import stat
import sys
import tarfile
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

import spiky.torch
from spiky import SpikyCompileError, SpikyConfigError, SpikyTargetError
from spiky.torch.neuronx_cc import NeuronCompiler, compile_command, compile_neff, detect_target, find_neuronx_cc
from spiky.torch.options import validate_options
from spiky.torch.pipeline import compile_neuron
from spiky_ir import DType, Graph, TensorType
from spiky_ir.hlo import emit_hlo

FAKE = textwrap.dedent("""\
    #!{python}
    import io, json, os, sys, tarfile, time
    if sys.argv[1:] == ["--version"]:
        print("NeuronX Compiler version 2.99.1.0+fake1234")
        sys.exit(0)
    mode = os.environ.get("FAKE_NEURONX_CC_MODE", "ok")
    with open(os.environ["FAKE_NEURONX_CC_RECORD"], "a") as f:
        f.write(json.dumps({{"argv": sys.argv[1:], "cwd": os.getcwd()}}) + "\\n")
    args = sys.argv[1:]
    assert args[:3] == ["compile", "--framework", "XLA"], args
    from spiky_ir.hlo import HloModule
    module = HloModule.decode(open(args[3], "rb").read())
    entry = module.computations[-1]
    assert module.entry_computation_name == entry.name == "main", module.entry_computation_name
    params = [i for i in entry.instructions if i.opcode == "parameter"]
    assert all("neff_input_names" in p.frontend_attributes.map for p in params)
    print(f"Parsed HLO module {{module.name}} with {{len(entry.instructions)}} instructions", flush=True)
    for phase in ("Running HLO passes", "Running penguin", "Running backend"):
        print(phase, flush=True)
        time.sleep(float(os.environ.get("FAKE_NEURONX_CC_DELAY", "0")))
    if mode == "fail":
        print("ERROR: Unsupported operator: bessel_j0", flush=True)
        sys.exit(2)
    if mode == "hang":
        time.sleep(600)
    if mode != "no_output":
        out = args[args.index("--output") + 1]
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            data = json.dumps({{"inputs": [p.frontend_attributes.map["neff_input_names"] for p in params]}}).encode()
            info = tarfile.TarInfo("neff.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        with open(out, "wb") as f:
            f.write(b"NEFF".ljust(1024, b"\\0") + buf.getvalue())
    print("Compiler status PASS", flush=True)
""")


@pytest.fixture
def fake_compiler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake ``neuronx-cc`` first on PATH; returns the file its invocations are recorded in."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "neuronx-cc"
    script.write_text(FAKE.format(python=sys.executable))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    record = tmp_path / "invocations.jsonl"
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_NEURONX_CC_RECORD", str(record))
    monkeypatch.delenv("SPIKY_NEURONX_CC", raising=False)
    monkeypatch.delenv("SPIKY_NEURON_TARGET", raising=False)
    return record


def _invocations(record: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []


def _graph() -> Graph:
    g = Graph(name="mlp")
    x = g.add_input("x", TensorType((4, 8), DType.float32))
    w = g.add_input("w", TensorType((8, 16), DType.float32))
    g.set_outputs([g.add_op("tanh", [g.add_op("matmul", [x, w])])])
    return g


@pytest.mark.smoke
def test_finds_the_compiler_and_its_version(fake_compiler: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    compiler = find_neuronx_cc()
    assert compiler.path.endswith("bin/neuronx-cc") and compiler.version == "2.99.1.0+fake1234"
    monkeypatch.setenv("SPIKY_NEURONX_CC", compiler.path)
    assert find_neuronx_cc() == compiler
    monkeypatch.setenv("SPIKY_NEURONX_CC", "/nonexistent/neuronx-cc")
    with pytest.raises(SpikyTargetError, match=r"'/nonexistent/neuronx-cc' \(from SPIKY_NEURONX_CC\) is not"):
        find_neuronx_cc()


@pytest.mark.smoke
def test_missing_compiler_says_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("SPIKY_NEURONX_CC", raising=False)
    with pytest.raises(SpikyTargetError, match=r"not found on PATH; install the Neuron compiler"):
        find_neuronx_cc()


@pytest.mark.smoke
@pytest.mark.parametrize(
    ("product", "expected"),
    [("trn1.32xlarge", "trn1"), ("trn1n.32xlarge", "trn1"), ("trn2.48xlarge", "trn2"), ("inf2.xlarge", "inf2")],
)
def test_target_from_product_name(tmp_path: Path, product: str, expected: str,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPIKY_NEURON_TARGET", raising=False)
    name = tmp_path / "product_name"
    name.write_text(product + "\n")
    assert detect_target(product_name_file=name) == expected
    assert detect_target("inf2", product_name_file=name) == "inf2"


@pytest.mark.smoke
def test_unknown_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPIKY_NEURON_TARGET", raising=False)
    name = tmp_path / "product_name"
    name.write_text("m5.large\n")
    with pytest.raises(SpikyTargetError, match=r"product name 'm5.large'.*SPIKY_NEURON_TARGET"):
        detect_target(product_name_file=name)
    with pytest.raises(SpikyConfigError, match=r"unknown Neuron target 'trn9'"):
        detect_target("trn9", product_name_file=name)


@pytest.mark.smoke
def test_compile_runs_the_documented_command(fake_compiler: Path, tmp_path: Path) -> None:
    compiler = find_neuronx_cc()
    workdir = tmp_path / "work"
    art = emit_hlo(_graph(), name="kernel_test")
    result = compile_neff(compiler, workdir, art.proto, target="trn2", extra_args="--lnc 1 -O2", progress=False)
    (call,) = _invocations(fake_compiler)
    assert call["argv"] == [
        "compile", "--framework", "XLA", f"{workdir}/model.hlo.pb", "--pipeline", "compile", "SaveTemps",
        "--target", "trn2", "--output", f"{workdir}/model.neff", "--lnc", "1", "-O2",
    ]
    assert call["argv"] == compile_command(compiler, workdir, "trn2", ["--lnc", "1", "-O2"])[1:]
    assert call["cwd"] == str(workdir)
    neff = result.neff_path.read_bytes()
    assert neff[:4] == b"NEFF" and len(neff) > 1024
    with tarfile.open(fileobj=io.BytesIO(neff[1024:])) as tar:
        listing = json.loads(tar.extractfile("neff.json").read())  # type: ignore[union-attr]
    assert listing == {"inputs": ["x", "w"]}
    log_text = result.log_path.read_text()
    assert "Parsed HLO module kernel_test" in log_text and "Compiler status PASS" in log_text
    assert "# neuronx-cc 2.99.1.0+fake1234" in log_text


def test_progress_shows_elapsed_time_and_phase(fake_compiler: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FAKE_NEURONX_CC_DELAY", "0.6")
    art = emit_hlo(_graph())
    compile_neff(find_neuronx_cc(), tmp_path / "w", art.proto, target="trn1", progress=True)
    err = capsys.readouterr().err
    assert "neuronx-cc:" in err and " s  Running" in err


@pytest.mark.parametrize(
    ("mode", "message"),
    [("fail", r"failed with exit code 2 .*\n.*last lines.*\n(.*\n)*ERROR: Unsupported operator: bessel_j0"),
     ("no_output", r"exited 0 but wrote no NEFF at .*model\.neff(.*\n)*.*Compiler status PASS")],
)
def test_failures_raise_with_the_log_tail(fake_compiler: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          mode: str, message: str) -> None:
    monkeypatch.setenv("FAKE_NEURONX_CC_MODE", mode)
    with pytest.raises(SpikyCompileError, match=message) as info:
        compile_neff(find_neuronx_cc(), tmp_path / "w", emit_hlo(_graph()).proto, target="trn1", progress=False)
    assert info.value.log_path is not None and Path(info.value.log_path).is_file()


def test_timeout_kills_the_compiler(fake_compiler: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_NEURONX_CC_MODE", "hang")
    start = time.monotonic()
    # 5 s: the fake compiler must have started and printed its phase (a loaded CI machine takes seconds)
    with pytest.raises(SpikyCompileError, match=r"timed out after 5 s .*killed(.*\n)*.*Running backend"):
        compile_neff(find_neuronx_cc(), tmp_path / "w", emit_hlo(_graph()).proto, target="trn1",
                     timeout=5.0, progress=False)
    assert time.monotonic() - start < 30


def test_neuron_compile_is_cached_and_passes_compiler_args(fake_compiler: Path, tmp_path: Path) -> None:
    config = spiky.torch.init_nkipy_backend(nkipy_cache=tmp_path / "cache", target="host",
                                            additional_compiler_args="--lnc 1 --auto-cast none")
    options = validate_options(None)
    entry, hit = compile_neuron(_graph(), options, config, neuron_target="trn1", progress=False)
    assert not hit
    assert {"model.neff", "model.hlo.pb", "model.hlo.txt", "compile.log", "ir.txt"} <= set(entry.meta["files"])
    assert entry.meta["key"]["compiler_version"] == "2.99.1.0+fake1234"
    assert entry.meta["neff"]["inputs"] == ["x", "w"] and entry.meta["neff"]["outputs"] == ["output0"]
    again, hit = compile_neuron(_graph(), options, config, neuron_target="trn1", progress=False)
    assert hit and again.path == entry.path
    (call,) = _invocations(fake_compiler)  # the second lookup did not run the compiler
    assert call["argv"][-4:] == ["--lnc", "1", "--auto-cast", "none"]
    assert call["cwd"] != str(entry.path)  # compiled in staging, then renamed into place
    # another target or other compiler args are other entries
    other, hit = compile_neuron(_graph(), options, config, neuron_target="inf2", progress=False)
    assert not hit and other.key != entry.key


def test_failed_neuron_compile_keeps_its_log_and_no_entry(fake_compiler: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_NEURONX_CC_MODE", "fail")
    config = spiky.torch.init_nkipy_backend(nkipy_cache=tmp_path / "cache", target="host")
    with pytest.raises(SpikyCompileError) as info:
        compile_neuron(_graph(), validate_options(None), config, neuron_target="trn1", progress=False)
    kept = Path(str(info.value.log_path))
    assert kept.parent == tmp_path / "cache" / "failed" and "bessel_j0" in kept.read_text()
    assert spiky.cache.list_entries(tmp_path / "cache") == []


def test_compiler_identity_is_in_the_key(tmp_path: Path) -> None:
    config = spiky.torch.init_nkipy_backend(nkipy_cache=tmp_path / "cache", target="host")
    from spiky.torch.pipeline import cache_key

    options = validate_options(None)
    a = cache_key("ir", "neuron-trn1", options, config, compiler=NeuronCompiler("/x/neuronx-cc", "2.1"))
    b = cache_key("ir", "neuron-trn1", options, config, compiler=NeuronCompiler("/x/neuronx-cc", "2.2"))
    assert a.digest() != b.digest()
