"""One compile pipeline, every path, both targets: host, and neuron through the fake Neuron stack.

Every test that takes ``target`` runs on the host target and on the neuron target (fake
``neuronx-cc`` → fake NEFF → fake libnrt running the NEFF's HLO on XLA:CPU, the fixtures of
test_neuron_target.py), and compares with torch eager at fp32 tolerances (1e-5), or with the
synchronous / on-device-padded call exactly where an option must not change a single bit.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import socket
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
from torch import nn

import spiky
import spiky.testing
import spiky.torch
import spiky_runtime as rt
from spiky.torch import device as nkipy_device
from spiky.torch import pipeline
from spiky.torch.dynamic import BucketStats, bucket_stats, real_shape, reset_bucket_stats
from spiky.torch.targets import runtime_device

TOL: dict[str, Any] = {"rtol": 1e-5, "atol": 1e-5}
EXACT: dict[str, Any] = {"rtol": 0, "atol": 0}
HERE = Path(__file__).resolve().parent


def _load_neuron_fixtures() -> ModuleType:
    """test_neuron_target.py's fake Neuron stack (its ``neuron`` fixture is reused as is)."""
    spec = importlib.util.spec_from_file_location("_spiky_neuron_target_fixtures", HERE / "test_neuron_target.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


_fixtures = _load_neuron_fixtures()
fake_lib = _fixtures.fake_lib
neuron = _fixtures.neuron

TARGETS = [pytest.param("host", marks=pytest.mark.smoke), "neuron"]
both_targets = pytest.mark.parametrize("target", ["host", "neuron"], indirect=True)
"""For tests outside the smoke subset on either target (the fixture's default puts host in it)."""


@pytest.fixture(params=TARGETS)
def target(request: pytest.FixtureRequest) -> str:
    """The backend initialised for one target (neuron: the fake stack, as in test_neuron_target.py)."""
    if request.param == "neuron":
        request.getfixturevalue("neuron")
    else:
        spiky.torch.init_nkipy_backend(target="host")
        spiky.reset_stats()
    assert spiky.torch.current_config().target == request.param
    return str(request.param)


@pytest.fixture(autouse=True)
def _fresh_bucket_stats() -> None:
    reset_bucket_stats()


def _linear(d_in: int = 16, d_out: int = 8) -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(d_in, d_out).eval()


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))


def _stats() -> BucketStats:
    (stats,) = bucket_stats()
    return stats


def _trace(target: str, fn: Callable[[], object]) -> list[tuple[str, str]]:
    """(phase, thread name) of every runtime span recorded while ``fn()`` runs on the target's device."""
    device = runtime_device(target)
    device.start_trace()
    try:
        fn()
        device.synchronize()
    finally:
        trace = json.loads(device.stop_trace())
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    threads = {e["tid"]: e["args"]["name"] for e in events if e.get("name") == "thread_name"}
    return [(e["name"], threads.get(e["tid"], "")) for e in events if e.get("ph") == "X"]


def _neff_loads(target: str, fake: Any) -> int | None:
    return fake.call_count("nrt_load") if target == "neuron" else None


# --- static and dynamic graphs ---------------------------------------------------------------------------


def test_static_graph_matches_eager(target: str) -> None:
    model = _mlp()
    fast = torch.compile(model, backend="nkipy")
    with torch.no_grad():
        for _ in range(2):
            x = torch.randn(4, 16)
            torch.testing.assert_close(fast(x), model(x), **TOL)
    (entry,) = spiky.cache.list_entries()
    assert entry.target == ("neuron-trn1" if target == "neuron" else "host")
    assert spiky.get_stats().total_executions == 2 and spiky.get_stats().total_compile_count == 1


def test_dynamic_true_jit_buckets_match_eager(target: str, request: pytest.FixtureRequest) -> None:
    model = _linear()
    fast = torch.compile(model, backend="nkipy", dynamic=True, options={"buckets": [4, 16]})
    with torch.no_grad():
        for batch in (3, 5, 16, 2, 20):
            x = torch.randn(batch, 16)
            out = fast(x)
            assert out.shape == (batch, 8)
            torch.testing.assert_close(out, model(x), **TOL)
    stats = _stats()
    assert dict(stats.bucket_hits) == {(4,): 2, (16,): 2, (32,): 1}
    assert stats.compiles == stats.jit_compiles == 3
    assert "s0=20 fits no compiled bucket" in stats.recompile_reasons[-1]
    entries = spiky.cache.list_entries()
    assert len(entries) == 3 and {e.meta["key"]["buckets"][0][1][0] for e in entries} == {4, 16, 32}
    if target == "neuron":  # each bucket is its own NEFF, compiled by neuronx-cc and loaded on nrt
        fake = request.getfixturevalue("neuron")
        assert fake.call_count("nrt_load") == 3 and fake.execute_count() == 5
        assert all(e.target == "neuron-trn1" and "Compiler status PASS" in e.read_text("compile.log")
                   for e in entries)


@both_targets
def test_mark_dynamic_and_a_second_size_take_the_bucketed_path(target: str) -> None:
    model = _mlp().eval()
    fast = torch.compile(model, backend="nkipy")
    x = torch.randn(6, 16)
    torch._dynamo.mark_dynamic(x, 0)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), **TOL)
        y = torch.randn(11, 16)
        torch.testing.assert_close(fast(y), model(y), **TOL)
    assert dict(_stats().bucket_hits) == {(8,): 1, (16,): 1}


@both_targets
def test_a_plain_compile_called_with_a_second_batch_size(target: str) -> None:
    """Automatic dynamic: Dynamo recompiles the second size with a symbolic batch."""
    model = _mlp().eval()
    fast = torch.compile(model, backend="nkipy")
    with torch.no_grad():
        for batch in (4, 7, 9):
            x = torch.randn(batch, 16)
            torch.testing.assert_close(fast(x), model(x), **TOL)
    assert dict(_stats().bucket_hits) == {(8,): 1, (16,): 1}


@both_targets
def test_precompile_compiles_the_listed_buckets_before_the_first_call(
    target: str, caplog: pytest.LogCaptureFixture
) -> None:
    model = _linear()
    fast = torch.compile(model, backend="nkipy", dynamic=True, options={"buckets": [2, 4, 8], "precompile": True})
    with caplog.at_level(logging.INFO, logger="spiky.buckets"), torch.no_grad():
        for batch in (3, 8, 2):
            x = torch.randn(batch, 16)
            torch.testing.assert_close(fast(x), model(x), **TOL)
    stats = _stats()
    assert stats.compiles == 3 and stats.jit_compiles == 0
    assert dict(stats.bucket_hits) == {(4,): 1, (8,): 1, (2,): 1}
    if target == "neuron":  # compiled in parallel, one log line per finished bucket
        done = [r.getMessage() for r in caplog.records if "precompiled bucket" in r.getMessage()]
        assert len(done) == 3 and {m.split(": ")[2].split(" ")[0] for m in done} == {"s0=2", "s0=4", "s0=8"}
    else:
        assert "precompiling bucket 3/3: s0=8" in caplog.text


SLOW_COMPILER = textwrap.dedent("""\
    #!/bin/sh
    # The fake neuronx-cc, 1 s slower per compile, logging when each compile ran.
    [ "$1" = "--version" ] && exec {fake} "$@"
    echo "start $(date +%s.%N)" >> {log}
    sleep 1
    {fake} "$@"; status=$?
    echo "end $(date +%s.%N)" >> {log}
    exit $status
""")


def _intervals(log_path: Path) -> list[tuple[float, float]]:
    lines = log_path.read_text().split()
    starts = [float(v) for k, v in zip(lines[::2], lines[1::2], strict=True) if k == "start"]
    ends = [float(v) for k, v in zip(lines[::2], lines[1::2], strict=True) if k == "end"]
    return list(zip(sorted(starts), sorted(ends), strict=True))


def test_precompile_on_neuron_runs_compilers_in_parallel_bounded_by_cores(
    neuron: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """4 buckets, 2 usable cores: two neuronx-cc at a time, a progress bar on a terminal."""
    calls = tmp_path / "compiles.log"
    script = tmp_path / "slow-neuronx-cc"
    script.parent.mkdir(exist_ok=True)
    script.write_text(SLOW_COMPILER.format(fake=os.environ["SPIKY_NEURONX_CC"], log=calls))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("SPIKY_NEURONX_CC", str(script))
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1})
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    model = _linear()
    fast = torch.compile(model, backend="nkipy", dynamic=True, options={"buckets": [2, 4, 8, 16], "precompile": True})
    with torch.no_grad():
        x = torch.randn(5, 16)
        torch.testing.assert_close(fast(x), model(x), **TOL)
    spans = _intervals(calls)
    assert len(spans) == 4 and _stats().compiles == 4 and _stats().jit_compiles == 0
    overlap = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
    # bounded by the cores this process may use, and really parallel (the compilers' own logged
    # intervals overlap; no wall-clock assertion, which a loaded machine would make flaky)
    assert overlap == 2
    err = capsys.readouterr().err
    assert "precompile kernel_" in err and "] 4/4 buckets" in err
    assert neuron.call_count("nrt_load") == 4


def test_a_failed_parallel_compile_raises_with_the_compiler_log(
    neuron: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "broken-neuronx-cc"
    broken.parent.mkdir(exist_ok=True)
    broken.write_text(f'#!/bin/sh\n[ "$1" = "--version" ] && exec {os.environ["SPIKY_NEURONX_CC"]} "$@"\n'
                      'echo "ERROR: unsupported op in bucket"; exit 3\n')
    broken.chmod(broken.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("SPIKY_NEURONX_CC", str(broken))
    fast = torch.compile(_linear(), backend="nkipy", dynamic=True, options={"buckets": [2, 4], "precompile": True})
    with torch.no_grad(), pytest.raises(Exception, match=r"neuronx-cc failed with exit code 3(.|\n)*unsupported op"):
        fast(torch.randn(3, 16))


# --- the seed's options ------------------------------------------------------------------------------


@pytest.mark.parametrize("dynamic", [False, True])
def test_pipelined_calls_run_on_the_executor_threads_with_identical_results(target: str, dynamic: bool) -> None:
    model = _mlp().eval()
    sync = torch.compile(model, backend="nkipy", dynamic=dynamic)
    piped = torch.compile(_mlp().eval(), backend="nkipy", dynamic=dynamic, options={"pipelined": True})
    inputs = [torch.randn(b, 16) for b in (4, 7, 4)]
    with torch.no_grad():
        expected = [sync(x) for x in inputs]
        got = [piped(x) for x in inputs]
        spans = _trace(target, lambda: piped(inputs[0]))
    for a, b, x in zip(got, expected, inputs, strict=True):
        torch.testing.assert_close(a, b, **EXACT)
        torch.testing.assert_close(a, model(x), **TOL)
    # the executor's copy, execute and download threads ran it, not the calling thread
    assert ("execute", "execute") in spans and {thread for _, thread in spans} <= {"copy", "execute", "download"}
    with torch.no_grad():
        sync_spans = _trace(target, lambda: sync(inputs[0]))
    assert all(thread.startswith("caller") for _, thread in sync_spans)


def test_pad_on_device_false_pads_on_the_host_with_identical_results(target: str) -> None:
    torch.manual_seed(0)

    def fn(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.softmax(x, dim=0) * 2, x.sum(0)  # both reduce over the padded batch

    on_device = torch.compile(fn, backend="nkipy", dynamic=True, options={"buckets": [8]})
    on_host = torch.compile(fn, backend="nkipy", dynamic=True, options={"buckets": [8], "pad_on_device": False})
    x = torch.randn(5, 16)
    a, b = on_device(x), on_host(x)
    for got, same, expected in zip(b, a, fn(x), strict=True):
        torch.testing.assert_close(got, same, **EXACT)
        torch.testing.assert_close(got, expected, **TOL)
    assert "pad" in {name for name, _ in _trace(target, lambda: on_device(x))}
    assert "pad" not in {name for name, _ in _trace(target, lambda: on_host(x))}


def test_padded_layouts_chain_two_functions(target: str) -> None:
    torch.manual_seed(0)
    first, second = nn.Linear(16, 16).eval(), nn.Sequential(nn.Linear(16, 8), nn.Softmax(dim=0)).eval()
    produce = torch.compile(first, backend="nkipy", dynamic=True, options={"output_layout": "padded", "buckets": [8]})
    consume = torch.compile(second, backend="nkipy", dynamic=True, options={"input_layout": "padded", "buckets": [8]})
    with torch.no_grad():
        x = torch.randn(5, 16)
        hidden = produce(x)
        assert hidden.shape == (8, 16) and real_shape(hidden) == (5, 16)
        torch.testing.assert_close(consume(hidden), second(first(x)), **TOL)


@pytest.mark.filterwarnings("ignore:spiky.*is not implemented on the nkipy device")
@pytest.mark.parametrize("dynamic", [False, True])
def test_keep_outputs_on_device_with_cpu_inputs_returns_nkipy_tensors(target: str, dynamic: bool) -> None:
    model = _mlp().eval()
    fast = torch.compile(model, backend="nkipy", dynamic=dynamic, options={"keep_outputs_on_device": True})
    with torch.no_grad():
        for batch in (4, 6):
            x = torch.randn(batch, 16)
            out = fast(x)
            assert out.device.type == "nkipy" and out.shape == (batch, 8)
            torch.testing.assert_close(out.cpu(), model(x), **TOL)
            doubled = out * 2  # an ordinary tensor of the device
            assert doubled.device.type == "nkipy"
            torch.testing.assert_close(doubled.cpu(), model(x) * 2, **TOL)
    if runtime_device(target).driver_name == nkipy_device.DRIVER:  # outputs stay in pool memory: no download
        with torch.no_grad():
            spans = _trace(target, lambda: fast(torch.randn(4, 16)))
        assert "execute" in {n for n, _ in spans} and "D2H" not in {n for n, _ in spans}


@both_targets
def test_keep_outputs_on_device_in_training_keeps_cpu_outputs(target: str) -> None:
    """Autograd needs gradients next to the parameters: training graphs return CPU tensors."""
    model = _mlp()
    reference = _mlp()
    fast = torch.compile(model, backend="nkipy", options={"keep_outputs_on_device": True})
    x = torch.randn(4, 16)
    out = fast(x)
    assert out.device.type == "cpu"
    out.square().sum().backward()
    reference(x).square().sum().backward()
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        assert p.grad is not None and q.grad is not None
        torch.testing.assert_close(p.grad, q.grad, **TOL)


@both_targets
@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize("keep", [False, True])
def test_device_tensors_in_and_out(target: str, dynamic: bool, keep: bool) -> None:
    model = _mlp().eval()
    on_device = _mlp().eval().to("nkipy")
    fast = torch.compile(on_device, backend="nkipy", dynamic=dynamic, options={"keep_outputs_on_device": keep})
    with torch.no_grad():
        for batch in (4, 6):
            x = torch.randn(batch, 16)
            out = fast(x.to("nkipy"))
            assert out.device.type == "nkipy" and out.shape == (batch, 8)
            torch.testing.assert_close(out.cpu(), model(x), **TOL)


@pytest.mark.parametrize(
    ("options", "message"),
    [({"pipelined": 1}, r"option 'pipelined' got 1; expected True or False"),
     ({"pad_on_device": "yes"}, r"option 'pad_on_device' got 'yes'; expected True or False"),
     ({"pipline": True}, r"unknown option 'pipline' .*did you mean 'pipelined'\?"),
     ({"input_layout": "packed"}, r"option 'input_layout' got 'packed'; expected one of 'unpadded', 'padded'")],
)
@pytest.mark.smoke
def test_seed_options_are_validated(options: dict[str, Any], message: str) -> None:
    with pytest.raises(spiky.SpikyOptionError, match=message):
        spiky.torch.validate_options(options)


# --- per-graph work done once in the pipeline, for every bucket too ---------------------------------


@both_targets
def test_dump_ir_dir_on_dynamic_graphs_writes_the_symbolic_graph_and_every_bucket(target: str, tmp_path: Path) -> None:
    model = _linear(16, 3)
    fast = torch.compile(model, backend="nkipy", dynamic=True,
                         options={"buckets": [4, 8], "dump_ir_dir": str(tmp_path / "ir")})
    with torch.no_grad():
        for batch in (3, 6):
            fast(torch.randn(batch, 16))
    stats = _stats()
    files = sorted(p.name for p in (tmp_path / "ir").iterdir())
    assert f"{stats.name}.ir.txt" in files  # the symbolic graph: sizes are symbols
    assert "s0" in (tmp_path / "ir" / f"{stats.name}.ir.txt").read_text()
    buckets = [f for f in files if f.endswith(".ir.txt") and f != f"{stats.name}.ir.txt"]
    assert len(buckets) == 2
    texts = [(tmp_path / "ir" / f).read_text() for f in buckets]
    assert sorted("f32[4,16]" in t for t in texts) == sorted("f32[8,16]" not in t for t in texts) == [False, True]
    for name in buckets:
        kernel = name.removesuffix(".ir.txt")
        assert f"def {kernel}(" in (tmp_path / "ir" / f"{kernel}.kernel.py").read_text()


@both_targets
def test_save_ntff_on_dynamic_graphs_profiles_each_bucket(target: str, tmp_path: Path,
                                                         request: pytest.FixtureRequest) -> None:
    fast = torch.compile(_linear(), backend="nkipy", dynamic=True,
                         options={"buckets": [4, 8], "save_ntff": True, "save_ntff_dir": str(tmp_path / "p"),
                                  "save_ntff_exe_idx": [0]})
    with torch.no_grad():
        for batch in (3, 6, 3, 2):
            fast(torch.randn(batch, 16))
    kernels = sorted((tmp_path / "p").iterdir())
    assert len(kernels) == 2  # one directory per bucket, each bucket counting its own executions
    for kernel in kernels:
        names = sorted(p.name for p in kernel.iterdir())
        if target == "neuron":
            assert names == ["0.ntff", f"{kernel.name}.neff"]
            assert (kernel / "0.ntff").read_text() == f"FAKE-NTFF\nneff_id {kernel.name}\nexecutions 1\n"
        else:
            assert names == ["0.trace.json"]
    if target == "neuron":
        assert request.getfixturevalue("neuron").call_count("nrt_profile_start") == 2


@both_targets
def test_training_forward_and_backward_graphs(target: str) -> None:
    model = _mlp()
    reference = _mlp()
    fast = torch.compile(model, backend="nkipy", dynamic=True)
    for batch in (3, 6):
        x = torch.randn(batch, 16)
        fast(x).square().mean().backward()
        reference(x).square().mean().backward()
        for p, q in zip(model.parameters(), reference.parameters(), strict=True):
            assert p.grad is not None and q.grad is not None
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5)
        model.zero_grad()
        reference.zero_grad()
    names = {s.symbols for s in bucket_stats()}
    assert names == {("s0",)} and len(bucket_stats()) == 2  # a forward and a backward dynamic graph


@both_targets
def test_collectives_in_a_dynamic_graph_single_rank(target: str, tmp_path: Path) -> None:
    """World size 1: the all_reduce is the identity, run by spiky-dist on host and compiled into each
    bucket's NEFF on neuron (loaded with nrt_load_collectives). Across ranks: the torchrun test below."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        def fn(x: torch.Tensor) -> torch.Tensor:
            return funcol.all_reduce(x * 2, "sum", dist.group.WORLD) + 1

        fast = torch.compile(fn, backend="nkipy", dynamic=True, fullgraph=True)
        for batch in (3, 5):
            x = torch.randn(batch, 4)
            torch.testing.assert_close(fast(x), x * 2 + 1, **TOL)
        assert len(_stats().bucket_hits) == 2
    finally:
        dist.destroy_process_group()


# --- the upstream README's examples, as written ---------------------------------------------------------


def test_readme_dynamic_shapes_example(target: str) -> None:
    model = nn.Linear(32, 64, bias=False)
    compiled = torch.compile(model, backend="nkipy", dynamic=True)
    x = torch.randn(4, 32)
    torch._dynamo.maybe_mark_dynamic(x, 0)  # mark batch dim as dynamic
    with torch.no_grad():
        out1 = compiled(x)
        out2 = compiled(torch.randn(16, 32))  # different size, bucket auto-selected
    assert out1.shape == (4, 64) and out2.shape == (16, 64)
    torch.testing.assert_close(out1, model(x).detach(), **TOL)
    assert dict(_stats().bucket_hits) == {(4,): 1, (16,): 1}


def test_readme_per_function_options_example(target: str) -> None:
    model = nn.Linear(32, 64, bias=False)
    x = torch.randn(4, 32)
    torch._dynamo.maybe_mark_dynamic(x, 0)
    compiled = torch.compile(model, backend="nkipy", options={
        "pipelined": True,
        "pad_on_device": True,
        "output_layout": "padded",
        "input_layout": "padded",
        "keep_outputs_on_device": True,
    })
    with torch.no_grad():
        out = compiled(x)
        assert out.device.type == "nkipy" and real_shape(out) == (4, 64)
        torch.testing.assert_close(spiky.unpad(out).cpu(), model(x), **TOL)
        y = torch.randn(5, 32)  # padded to its bucket, and says so
        out5 = compiled(y)
        assert out5.shape == (8, 64) and real_shape(out5) == (5, 64) and out5.device.type == "nkipy"
        torch.testing.assert_close(spiky.unpad(out5).cpu(), model(y), **TOL)


def test_readme_memory_and_stats_example(target: str) -> None:
    fast = torch.compile(nn.Linear(32, 64, bias=False), backend="nkipy", dynamic=True)
    with torch.no_grad():
        fast(torch.randn(3, 32))
        fast(torch.randn(5, 32))
    stats = spiky.get_stats()
    assert stats.total_executions == 2 and sum(stats.bucket_hits.values()) == 2
    mem = spiky.get_memory_stats()
    assert {"used_bytes", "cached_bytes"} <= set(mem) and mem["cached_bytes"] > 0  # padded inputs used the pool
    spiky.trim_memory_pool(target_bytes=0)
    assert spiky.get_memory_stats()["cached_bytes"] == 0
    spiky.reset_stats()
    assert spiky.get_stats().total_executions == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@both_targets
@pytest.mark.slow
def test_readme_distributed_example_and_a_dynamic_collective_first(target: str, tmp_path: Path) -> None:
    """torchrun, 2 ranks: the README's example on each target; on host first (the first graph
    of each process) a dynamic graph with an all_reduce across the ranks."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    # neuron: the fixture's fake stack (SPIKY_LIBNRT, SPIKY_NEURONX_CC, ...) is in the environment
    env.update(SPIKY_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1", SPIKY_TEST_TARGET=target)
    if target == "host":
        env["SPIKY_LIBNRT"] = "/nonexistent/libnrt.so.1"  # target "auto" resolves to host
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-addr=127.0.0.1",
           f"--master-port={_free_port()}", str(HERE / "workers" / "readme_distributed.py")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    reports = [json.loads(line.split("RESULT ", 1)[1]) for line in result.stdout.splitlines() if "RESULT " in line]
    assert sorted(r["rank"] for r in reports) == [0, 1], result.stdout
    for report in reports:
        assert report["target"] == target and report["world_size"] == 2
        assert report["max_error"] < 1e-5
        assert report["dynamic_collective_checks"] == (3 if target == "host" else 0)


# --- the pipeline's pieces --------------------------------------------------------------------------------


@pytest.mark.smoke
def test_compile_workers_are_bounded_by_jobs_and_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(8)))
    assert [pipeline.compile_workers(n) for n in (1, 3, 8, 20)] == [1, 3, 8, 8]


@pytest.mark.smoke
def test_host_precompile_does_not_start_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Host compiles take milliseconds: build_many builds them in order on the calling thread."""
    spiky.torch.init_nkipy_backend(target="host")

    def no_parallel(*_args: object, **_kwargs: object) -> Iterator[object]:
        raise AssertionError("the host target must not compile in parallel")

    monkeypatch.setattr(pipeline, "_compile_in_parallel", no_parallel)
    model = _linear()
    fast = torch.compile(model, backend="nkipy", dynamic=True, options={"buckets": [2, 4, 8], "precompile": True})
    with torch.no_grad():
        x = torch.randn(3, 16)
        torch.testing.assert_close(fast(x), model(x), **TOL)
    assert _stats().compiles == 3


@pytest.mark.smoke
def test_context_merges_the_host_executor_default_once() -> None:
    config = spiky.torch.init_nkipy_backend(target="host", host_executor="numpy")
    ctx = pipeline.Context.create(spiky.torch.validate_options(None))
    assert ctx.options["host_executor"] == "numpy" and ctx.config is config
    assert ctx.device == rt.Device("host", 0) and not ctx.keep_cpu_outputs_on_device
    chosen = pipeline.Context.create(spiky.torch.validate_options({"host_executor": "xla",
                                                                   "keep_outputs_on_device": True}), inference=True)
    assert chosen.options["host_executor"] == "xla" and chosen.keep_cpu_outputs_on_device
