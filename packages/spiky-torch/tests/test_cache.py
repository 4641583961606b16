"""The compile cache: hits and stats, keys, races between processes, damaged entries, the API/CLI."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import spiky
import spiky.torch
from spiky.cache import HLO_PROTO, HLO_TEXT, IR_TEXT, META, CacheKey, CompileCache
from spiky.torch.options import Options, validate_options
from spiky.torch.pipeline import cache_key


@pytest.fixture(autouse=True)
def _fresh_cache_stats() -> None:
    spiky.cache.reset_stats()


def _compile_and_run(model: nn.Module, x: torch.Tensor, options: Mapping[str, Any] | None = None) -> torch.Tensor:
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="nkipy", options=dict(options or {}))
    with torch.no_grad():
        out: torch.Tensor = compiled(x)
    return out


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))


@pytest.mark.smoke
def test_second_compile_hits_and_is_counted(tmp_path: Path) -> None:
    spiky.torch.init_nkipy_backend(nkipy_cache=tmp_path / "c", target="host")
    model, x = _model(), torch.randn(4, 16)
    spiky.reset_stats()
    first = _compile_and_run(model, x)
    assert spiky.cache.stats().misses == 1 and spiky.cache.stats().hits == 0
    second = _compile_and_run(model, x)
    stats = spiky.cache.stats()
    assert (stats.hits, stats.misses, stats.corrupt) == (1, 1, 0)
    assert spiky.get_stats().total_compile_count == 1  # the hit did not compile
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    torch.testing.assert_close(second, model(x), rtol=1e-5, atol=1e-5)
    (entry,) = spiky.cache.list_entries()
    assert entry.target == "host" and entry.kernel_name.startswith("kernel_")
    assert {IR_TEXT, HLO_PROTO, HLO_TEXT, "compile.log", "kernel.py"} <= set(entry.meta["files"])
    assert f"def {entry.kernel_name}(" in entry.read_text("kernel.py")
    assert entry.meta["hlo"]["available"] and entry.meta["hlo"]["outputs"] == ["output0"]
    assert "ENTRY main" in entry.read_text(HLO_TEXT)
    assert entry.size_bytes == sum(p.stat().st_size for p in entry.path.iterdir())


def _options(**values: Any) -> Options:
    return Options({**validate_options(None).values, **values})


@pytest.mark.smoke
def test_every_key_field_changes_the_key() -> None:
    config = spiky.torch.init_nkipy_backend(target="host", additional_compiler_args="-O1")
    base = cache_key("ir-a", "host", _options(), config)
    variants = [
        cache_key("ir-b", "host", _options(), config),
        cache_key("ir-a", "neuron-trn1", _options(), config),
        cache_key("ir-a", "host", _options(), config, buckets={"s0": [8, 16]}),
        cache_key("ir-a", "host", _options(), config, buckets={"s0": [8, 32]}),
    ]
    digests = {k.digest() for k in [base, *variants]}
    assert len(digests) == 1 + len(variants)
    from dataclasses import replace

    changes: list[dict[str, Any]] = [{"compiler_version": "2.0"}, {"compiler_args": "-O2"},
                                     {"spiky_version": "9.9"}, {"compiler": "/opt/other/neuronx-cc"},
                                     {"options": (("x", "1"),)}]
    for change in changes:
        assert replace(base, **change).digest() != base.digest()


# A valid non-default value of every option: none of them changes the artefact of a given IR and
# bucket, so none may split the cache (the IR text and the bucket sizes are key fields of their own).
OTHER_VALUES: dict[str, Any] = {
    "dump_ir_dir": "/tmp/x", "pipelined": True, "pad_on_device": False, "keep_outputs_on_device": True,
    "host_executor": "numpy", "fallback": "eager", "buckets": [8, 16], "jit": False, "precompile": True,
    "bucket_strategy": "linear", "min_bucket": 4, "max_bucket_size": 128, "linear_step": 8,
    "input_layout": "padded", "output_layout": "padded", "save_ntff": True, "save_ntff_dir": "/tmp/p",
    "save_ntff_exe_idx": [0], "save_ntff_ranks": [0, 1], "bucket_ratio": 1.3, "resident_weights": False,
}


@pytest.mark.smoke
def test_the_option_table_decides_what_enters_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from dataclasses import replace

    from spiky.torch.options import OPTIONS

    assert set(OTHER_VALUES) == set(OPTIONS)  # a new option needs a row here
    config = spiky.torch.init_nkipy_backend(target="host")
    base = cache_key("ir-a", "host", _options(), config).digest()
    for name, value in OTHER_VALUES.items():
        assert not OPTIONS[name].in_cache_key, name
        assert cache_key("ir-a", "host", validate_options({name: value}), config).digest() == base, name
    # an option whose row says it changes the artefact splits the cache by its value
    monkeypatch.setitem(OPTIONS, "linear_step", replace(OPTIONS["linear_step"], in_cache_key=True))
    keyed = cache_key("ir-a", "host", validate_options({"linear_step": 8}), config)
    assert keyed.options == (("linear_step", "8"),) and keyed.digest() != base
    assert cache_key("ir-a", "host", validate_options({"linear_step": 16}), config).digest() != keyed.digest()


def test_different_shapes_get_different_entries(tmp_path: Path) -> None:
    spiky.torch.init_nkipy_backend(nkipy_cache=tmp_path / "c", target="host")
    model = _model()
    _compile_and_run(model, torch.randn(4, 16))
    _compile_and_run(model, torch.randn(2, 16))
    _compile_and_run(model, torch.randn(4, 16), {"dump_ir_dir": str(tmp_path / "dump")})
    assert len(spiky.cache.list_entries()) == 2
    assert (spiky.cache.stats().misses, spiky.cache.stats().hits) == (2, 1)


@pytest.mark.smoke
def test_truncated_entry_is_detected_and_recompiled(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spiky.torch.init_nkipy_backend(nkipy_cache=tmp_path / "c", target="host")
    model, x = _model(), torch.randn(4, 16)
    _compile_and_run(model, x)
    (entry,) = spiky.cache.list_entries()
    proto = entry.path / HLO_PROTO
    proto.write_bytes(proto.read_bytes()[:10])
    with caplog.at_level(logging.WARNING, logger="spiky.cache"):
        out = _compile_and_run(model, x)
    assert "is damaged" in caplog.text and "truncated" in caplog.text
    stats = spiky.cache.stats()
    assert (stats.misses, stats.corrupt, stats.hits) == (2, 1, 0)
    (rebuilt,) = spiky.cache.list_entries()
    assert rebuilt.path == entry.path and rebuilt.file(HLO_PROTO).stat().st_size > 10
    torch.testing.assert_close(out, model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("damage", ["flip_byte", "delete_meta", "garbage_meta", "delete_file"])
def test_damaged_entries_are_rebuilt(tmp_path: Path, damage: str) -> None:
    cache = CompileCache(tmp_path)
    key = CacheKey("ir", "host", "test", "1")
    builds: list[Path] = []

    def build(directory: Path) -> dict[str, Any]:
        builds.append(directory)
        (directory / "blob.bin").write_bytes(b"x" * 100)
        return {}

    entry, hit = cache.get_or_build(key, build)
    assert not hit
    if damage == "flip_byte":
        (entry.path / "blob.bin").write_bytes(b"y" + b"x" * 99)
    elif damage == "delete_meta":  # what a compile killed before its last write would leave
        (entry.path / META).unlink()
    elif damage == "garbage_meta":
        (entry.path / META).write_text("{not json")
    else:
        (entry.path / "blob.bin").unlink()
    again, hit = cache.get_or_build(key, build)
    assert not hit and len(builds) == 2
    assert (again.path / "blob.bin").read_bytes() == b"x" * 100


def test_failed_build_leaves_no_entry(tmp_path: Path) -> None:
    cache = CompileCache(tmp_path)
    key = CacheKey("ir", "host", "test", "1")

    def build(directory: Path) -> dict[str, Any]:
        (directory / "half.bin").write_bytes(b"partial")
        raise RuntimeError("compiler crashed")

    with pytest.raises(RuntimeError, match="compiler crashed"):
        cache.get_or_build(key, build)
    assert cache.lookup(key) is None
    assert not cache.entry_path(key).exists()
    assert list((tmp_path / "staging").iterdir()) == []


_RACER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from spiky.cache import CacheKey, CompileCache
    root, go, record = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    while not go.exists():
        time.sleep(0.005)
    def build(directory):
        with open(record, "a") as f:
            f.write(f"{os.getpid()}\\n")
        time.sleep(0.5)
        (directory / "model.neff").write_bytes(b"N" * 4096)
        return {}
    entry, hit = CompileCache(root).get_or_build(CacheKey("same graph", "host", "test", "1"), build)
    print(f"{'hit' if hit else 'built'} {entry.path}", flush=True)
""")


def test_racing_processes_compile_once(tmp_path: Path) -> None:
    go, record = tmp_path / "go", tmp_path / "builds.txt"
    procs = [
        subprocess.Popen([sys.executable, "-c", _RACER, str(tmp_path / "cache"), str(go), str(record)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)  # each imports torch (via spiky): two keep the test short on two cores
    ]
    go.touch()
    results = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in results]
    assert len(record.read_text().split()) == 1, "exactly one process compiles"
    outcomes = sorted(out.split()[0] for out, _ in results)
    assert outcomes == ["built", "hit"]
    assert len({out.split()[1] for out, _ in results}) == 1


def test_list_show_clear_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = CompileCache(tmp_path)
    for name in ("a", "b"):
        cache.get_or_build(CacheKey(f"ir {name}", "host", "test", "1"),
                           lambda d: {"note": "x"}, kernel_name=f"kernel_{name}")
    entries = spiky.cache.list_entries(tmp_path)
    assert [e.kernel_name for e in entries] == ["kernel_a", "kernel_b"]
    assert all(e.size_bytes > 0 and 0 <= e.age_seconds < 60 for e in entries)
    assert spiky.cache.show("kernel_b", tmp_path).key == entries[1].key
    assert spiky.cache.show(entries[0].key[:10], tmp_path).kernel_name == "kernel_a"
    with pytest.raises(KeyError, match="no entry"):
        spiky.cache.show("zzz", tmp_path)

    assert spiky.cache.main(["--dir", str(tmp_path), "list"]) == 0
    listing = capsys.readouterr().out
    assert "kernel_a" in listing and "2 entries" in listing
    assert spiky.cache.main(["--dir", str(tmp_path), "show", "kernel_a"]) == 0
    assert json.loads(capsys.readouterr().out.split("\n", 1)[1])["kernel_name"] == "kernel_a"

    # age one entry by 10 days: "older than 5 days" removes only it
    meta_path = entries[0].path / META
    meta = json.loads(meta_path.read_text())
    meta["created"] -= 10 * 86400
    meta_path.write_text(json.dumps(meta))
    assert spiky.cache.clear(older_than_days=5, cache_dir=tmp_path) == 1
    assert [e.kernel_name for e in spiky.cache.list_entries(tmp_path)] == ["kernel_b"]
    assert spiky.cache.main(["--dir", str(tmp_path), "clear"]) == 0
    assert "removed 1 entries" in capsys.readouterr().out
    assert spiky.cache.list_entries(tmp_path) == []
    with pytest.raises(spiky.SpikyConfigError, match="older_than_days must be >= 0"):
        spiky.cache.clear(older_than_days=-1, cache_dir=tmp_path)


def test_cli_runs_as_a_module(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "spiky.cache", "--dir", str(tmp_path), "list"],
                          capture_output=True, text=True, timeout=120, env={**os.environ}, check=False)
    assert done.returncode == 0, done.stderr
    assert "0 entries" in done.stdout
