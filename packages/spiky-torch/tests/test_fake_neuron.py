"""``spiky.testing.fake_neuron``: the handle's API, and the emulator refusing what the real stack refuses.

Models are checked against torch eager at fp32 tolerances (1e-5), integer and boolean results
exactly; graphs built directly in the IR (for dtypes and shapes torch cannot reach here) against
numpy, bit-exact on small integers. Error paths check the message.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax  # noqa: F401  a pinned dev dependency: missing jax must fail collection, not skip
import ml_dtypes
import numpy as np
import pytest
import torch
from torch import nn
from torch._dynamo.exc import BackendCompilerFailed

import spiky
import spiky.torch
import spiky_runtime as rt
from spiky import SpikyConfigError, SpikyTargetError
from spiky.testing import (
    NRT_EXEC_BAD_INPUT,
    NRT_HW_ERROR,
    NRT_INVALID,
    NRT_INVALID_HANDLE,
    NRT_SUCCESS,
    NRT_TIMEOUT,
    NRT_UNINITIALIZED,
    NRT_UNSUPPORTED_NEFF_VERSION,
    FakeNeuron,
    FakeNrt,
    TimingModel,
    fake_libnrt,
    fake_neuron,
)
from spiky.testing.fake_nrt import build
from spiky.testing.fake_nrt.neff import fake_neff_bytes, read_fake_neff
from spiky_ir import DType, Graph, TensorType
from spiky_ir.hlo import emit_hlo

TOL: dict[str, Any] = {"rtol": 1e-5, "atol": 1e-5}


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def neuron(cache: Path) -> Iterator[FakeNeuron]:
    with fake_neuron(cache) as handle:
        yield handle


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).eval()


def _compile_ir(handle: FakeNeuron, graph: Graph, directory: Path, name: str) -> bytes:
    """Run the fake neuronx-cc on an IR graph's HLO with the real command line; the NEFF's bytes."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.hlo.pb").write_bytes(emit_hlo(graph, name=name).proto)
    cmd = [str(handle.compiler), "compile", "--framework", "XLA", str(directory / "model.hlo.pb"),
           "--pipeline", "compile", "SaveTemps", "--target", "trn1", "--output", str(directory / "model.neff")]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=directory, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return (directory / "model.neff").read_bytes()


# ---- the handle ------------------------------------------------------------------------------


@pytest.mark.smoke
def test_counts_calls_bytes_and_compiled_neffs(cache: Path) -> None:
    model = _mlp()
    x = torch.randn(4, 16)
    with fake_neuron(cache) as neuron, torch.no_grad():
        fast = torch.compile(model, backend="nkipy")
        torch.testing.assert_close(fast(x), model(x), **TOL)
        torch.testing.assert_close(fast(x + 1), model(x + 1), **TOL)
        assert neuron.call_count("nrt_load") == 1
        assert neuron.call_count("nrt_execute") == neuron.execute_count() == 2
        out_bytes = 4 * 8 * 4
        assert neuron.bytes_read() == 2 * out_bytes, "each call reads its output back, nothing else"
        params = sum(p.numel() * 4 for p in model.parameters())
        assert neuron.bytes_written() >= params + 2 * x.numel() * 4
    (compiled,) = neuron.neffs
    assert compiled.neff_id.startswith("kernel_") and compiled.chip == "trn1"
    assert compiled.extra_args == () and not compiled.native_int64 and not compiled.collectives
    assert sorted(shape for _, _, shape in compiled.inputs) == [(4, 16), (8,), (8, 32), (32,), (32, 16)]
    assert {dtype for _, dtype, _ in compiled.inputs} == {"float32"}
    assert compiled.outputs == (("output0", "float32", (4, 8)),)
    # After the block the counters keep their final values and injections are refused.
    assert neuron.call_count("nrt_execute") == neuron.execute_count() == 2
    assert neuron.call_count("nrt_not_a_function") == -1
    with pytest.raises(RuntimeError, match=r"FakeNeuron.fail_next_execute: the fake_neuron block has ended"):
        neuron.fail_next_execute(NRT_TIMEOUT)


@pytest.mark.smoke
def test_bytes_through_the_runtime_are_counted_exactly(neuron: FakeNeuron) -> None:
    device = rt.Device("nrt", 0)
    written, read = neuron.bytes_written(), neuron.bytes_read()
    data = np.arange(10, dtype=np.float32)
    tensor = device.to_device(data)
    np.testing.assert_array_equal(tensor.numpy(), data)
    assert (neuron.bytes_written() - written, neuron.bytes_read() - read) == (40, 40)


@pytest.mark.parametrize("options", [{}, {"pipelined": True}], ids=["synchronous", "pipelined"])
def test_timing_model_keeps_results_and_stats_count_the_fakes_bytes(cache: Path, options: dict[str, Any]) -> None:
    # Transfers and executions take modelled time (short here); the numbers are XLA:CPU's as without
    # it, and spiky.get_stats() counts exactly the bytes the fake libnrt moved.
    model = _mlp()
    xs = [torch.randn(4, 16) + i for i in range(6)]
    timing = TimingModel(h2d_gbps=1.0, d2h_gbps=1.0, latency_us=50.0, execute_ms=0.5)
    with fake_neuron(cache, timing=timing) as neuron, torch.no_grad():
        fast = torch.compile(model, backend="nkipy", options=options)
        for x in xs:
            torch.testing.assert_close(fast(x), model(x), **TOL)
        s = spiky.get_stats()
        assert (s.total_h2d_bytes, s.total_d2h_bytes) == (neuron.bytes_written(), neuron.bytes_read())
        assert (s.total_h2d_transfers, s.total_d2h_transfers) == (
            neuron.call_count("nrt_tensor_write"), neuron.call_count("nrt_tensor_read"))
        assert s.call_d2h_bytes == 6 * 4 * 8 * 4 and s.mean_d2h_bytes_per_call == 4 * 8 * 4
        assert s.mean_h2d_bytes_per_call >= x.numel() * 4  # the input, and the weights unless resident


def test_backend_state_and_environment_are_restored(cache: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    before = {"SPIKY_LIBNRT": "/elsewhere/libnrt.so.1", "SPIKY_NEURON_TARGET": "inf2", "NEURON_RT_VISIBLE_CORES": "7"}
    for name, value in before.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("SPIKY_NEURONX_CC", raising=False)
    monkeypatch.delenv("NEURON_RT_NUM_CORES", raising=False)
    spiky.torch.init_nkipy_backend(nkipy_cache=tmp_path / "host-cache", target="host", host_executor="numpy")
    with fake_neuron(cache) as neuron:
        config = spiky.torch.current_config()
        assert (config.target, config.nkipy_cache) == ("neuron", cache)
        assert os.environ["SPIKY_LIBNRT"] == str(neuron.path) == str(fake_libnrt())
        assert os.environ["SPIKY_NEURONX_CC"] == str(neuron.compiler) and neuron.compiler.is_file()
        assert os.environ["SPIKY_NEURON_TARGET"] == "trn1"
        assert os.environ["NEURON_RT_VISIBLE_CORES"] == "0", "rank 0's core, set by init_nkipy_backend"
    assert {name: os.environ.get(name) for name in before} == before
    assert "SPIKY_NEURONX_CC" not in os.environ and not neuron.compiler.exists()
    config = spiky.torch.current_config()
    assert (config.target, config.nkipy_cache, config.host_executor) == ("host", tmp_path / "host-cache", "numpy")


def test_chip_and_compiler_args_reach_the_compiler(cache: Path) -> None:
    with fake_neuron(cache, chip="inf2", additional_compiler_args="--lnc 1 -O2") as neuron, torch.no_grad():
        torch.compile(lambda x: x * 2 + 1, backend="nkipy")(torch.ones(3))
    (compiled,) = neuron.neffs
    assert (compiled.chip, compiled.extra_args) == ("inf2", ("--lnc", "1", "-O2"))
    (entry,) = spiky.cache.list_entries(cache)
    assert entry.target == "neuron-inf2"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"chip": "trn9"}, r"fake_neuron: unknown chip 'trn9'; valid: trn1, trn2, inf2"),
     ({"device_capacity_bytes": -1}, r"device_capacity_bytes must be an int >= 0, got -1"),
     ({"timing": {"h2d_gbps": 1.0}}, r"timing must be a spiky.testing.TimingModel or None, got \{'h2d_gbps': 1.0\}")],
)
def test_bad_arguments_are_refused(cache: Path, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(SpikyConfigError, match=message), fake_neuron(cache, **kwargs):
        pass


def test_no_c_compiler_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(build.SHARED_ENV, raising=False)
    monkeypatch.setenv(build.CACHE_ENV, str(tmp_path / "empty-cache"))
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "no-tools"))
    with pytest.raises(SpikyTargetError, match=r"cannot build its fake libnrt: .*no C compiler found"):
        fake_libnrt()


def test_a_process_on_another_libnrt_is_refused(tmp_path: Path) -> None:
    """The runtime loads libnrt once per process: a block after another libnrt was loaded must say so."""
    other = build.build_fake_libnrt(tmp_path / "other")
    script = (
        "import os, sys\n"
        "import spiky_runtime as rt\n"
        "from spiky.testing import fake_neuron\n"
        f"os.environ['SPIKY_LIBNRT'] = {str(other)!r}\n"
        "assert rt.device_count('nrt') >= 1  # the runtime now holds the other library\n"
        f"with fake_neuron({str(tmp_path / 'cache')!r}):\n"
        "    sys.exit('fake_neuron accepted a process whose runtime uses another libnrt')\n"
    )
    env = {**os.environ, build.SHARED_ENV: str(fake_libnrt())}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300,
                          check=False)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "SpikyTargetError: fake_neuron: this process's Neuron runtime does not use the fake libnrt at " \
           f"{fake_libnrt()}" in done.stderr, done.stderr


def test_the_library_is_cached_by_source_hash(tmp_path: Path) -> None:
    first = build.cached_fake_libnrt(tmp_path)
    assert first == tmp_path / build.source_hash() / "libnrt.so.1" and first.is_file()
    stamp = first.stat().st_mtime_ns
    assert build.cached_fake_libnrt(tmp_path) == first and first.stat().st_mtime_ns == stamp, "not rebuilt"


# ---- fault injection -------------------------------------------------------------------------

INJECTIONS = [
    pytest.param("fail_next_execute", NRT_TIMEOUT, r"nrt_execute returned TIMEOUT \(5\)", id="execute"),
    pytest.param("fail_next_load", NRT_UNSUPPORTED_NEFF_VERSION,
                 r"nrt_load returned UNSUPPORTED_NEFF_VERSION \(10\) for model 'kernel_", id="load"),
    pytest.param("fail_next_allocate", NRT_HW_ERROR, r"nrt_tensor_allocate returned HW_ERROR \(6\)", id="allocate"),
]


@pytest.mark.parametrize(("inject", "status", "message"), INJECTIONS)
def test_injected_failures_surface_once(neuron: FakeNeuron, inject: str, status: int, message: str) -> None:
    model = _mlp()
    x = torch.randn(4, 16)
    fast = torch.compile(model, backend="nkipy")
    with torch.no_grad():
        if inject == "fail_next_execute":
            fast(x)  # compiled and loaded; the failure hits the next execution
        spiky.clear_memory_pool()  # so the next call allocates device memory
        getattr(neuron, inject)(status)
        with pytest.raises(Exception, match=message):
            fast(x)
        torch.testing.assert_close(fast(x), model(x), **TOL)


def test_device_capacity_limits_memory(cache: Path) -> None:
    with fake_neuron(cache, device_capacity_bytes=1024) as neuron, torch.no_grad():
        spiky.clear_memory_pool()
        fast = torch.compile(lambda x: x * 2, backend="nkipy")
        torch.testing.assert_close(fast(torch.ones(8, 8)), torch.full((8, 8), 2.0))  # 256 bytes fit
        with pytest.raises(spiky.OutOfMemoryError, match=r"out of memory on device nrt:0: requested 16384 bytes"):
            fast(torch.ones(64, 64))
        assert "do not fit on core 0" in neuron.last_error()
        spiky.clear_memory_pool()


def test_a_failing_execute_rule_fails_the_block(cache: Path, caplog: pytest.LogCaptureFixture) -> None:
    neff = fake_neff_bytes([("x", "float32", (2,))], [("output0", "float32", (2,))], neff_id="no_hlo")
    expected = r"the execute rule failed 1 time\(s\); first: ValueError\(.*no model.hlo.pb member"
    with caplog.at_level(logging.ERROR, logger="spiky.testing"), pytest.raises(RuntimeError, match=expected), \
            fake_neuron(cache):
        model = rt.Device("nrt", 0).load_neff(neff, "no_hlo")
        with pytest.raises(rt.NrtError, match=r"nrt_execute returned FAILURE \(1\) for model 'no_hlo'"):
            model.run([np.ones(2, np.float32)])
    assert any("the execute rule failed for NEFF 'no_hlo'" in r.getMessage() for r in caplog.records)


# ---- strictness: what the real compiler declares ---------------------------------------------


class _Embed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.table = nn.Embedding(10, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table(ids) * 2


# name, module or function, its input, the declared dtype without and with --native-int64=enabled, and the
# load error when the graph's own types meet the NEFF's (None: Spiky bridges the narrowing)
NARROWING: list[tuple[str, Callable[[torch.Tensor], torch.Tensor], torch.Tensor, tuple[str, str], str | None]] = [
    ("int64 output", lambda x: x.argmax(-1), torch.randn(4, 16), ("int32", "int64"), None),
    ("int64 input", _Embed(), torch.tensor([1, 2, 7]), ("int32", "int64"), None),
    ("float64", lambda x: x * 2, torch.randn(4, 16, dtype=torch.float64), ("float32", "float32"),
     r"input '\w+' is \(4, 16\) float32 \(256 bytes\) in the NEFF, but the caller declared \(4, 16\) float64"),
]


@pytest.mark.parametrize(("native", "case"), [(native, case) for case in NARROWING for native in (False, True)],
                         ids=[f"{c[0]}-{'native' if n else 'default'}" for c in NARROWING for n in (False, True)])
def test_64_bit_types_are_narrowed_like_the_real_compiler(
    cache: Path, native: bool,
    case: tuple[str, Callable[[torch.Tensor], torch.Tensor], torch.Tensor, tuple[str, str], str | None],
) -> None:
    """Without ``--native-int64=enabled`` the NEFF declares int32 where the graph has int64 (float64 always
    becomes float32). Spiky hands the compiler int64 already narrowed and converts at the call (results are
    int64 as in eager); float64 is not bridged, so the driver refuses to load it against the graph's types."""
    _, fn, x, declared_as, message = case
    args = "--native-int64=enabled" if native else ""
    with fake_neuron(cache, additional_compiler_args=args) as neuron, torch.no_grad():
        fast = torch.compile(fn, backend="nkipy")
        if message is None:
            got, want = fast(x), fn(x)
            assert got.dtype == want.dtype
            torch.testing.assert_close(got, want, rtol=0, atol=0)
        else:
            with pytest.raises(Exception, match=message):
                fast(x)
    (compiled,) = neuron.neffs
    declared = {dtype for _, dtype, _ in compiled.inputs + compiled.outputs}
    assert compiled.native_int64 == native
    assert declared_as[native] in declared and "float64" not in declared
    assert ("int64" in declared) == (declared_as[native] == "int64")


def test_native_int64_takes_a_mode_like_the_real_flag(cache: Path) -> None:
    expected = r"(?s)SpikyCompileError: neuronx-cc failed with exit code 2.*--native-int64: expected one argument"
    with fake_neuron(cache, additional_compiler_args="--native-int64") as neuron, torch.no_grad(), \
            pytest.raises(BackendCompilerFailed, match=expected):
        torch.compile(lambda x: x + 1, backend="nkipy")(torch.ones(2))
    assert neuron.neffs == []


def test_bool_outputs_travel_as_uint8(neuron: FakeNeuron) -> None:
    x = torch.randn(4, 16)
    with torch.no_grad():
        got = torch.compile(lambda x: x > 0, backend="nkipy")(x)
    assert got.dtype == torch.bool and torch.equal(got, x > 0)
    (compiled,) = neuron.neffs
    assert compiled.outputs == (("output0", "uint8", (4, 16)),)
    (neff,) = neuron.cache_dir.rglob("model.neff")
    assert read_fake_neff(neff.read_bytes()).outputs[0].dtype == 0x3


@pytest.mark.parametrize(("dtype", "code"), [(DType.bfloat16, 0x6), (DType.float16, 0x7)])
def test_half_precision_io_uses_its_nrt_codes_and_runs_exactly(
    neuron: FakeNeuron, tmp_path: Path, dtype: DType, code: int
) -> None:
    g = Graph()
    x = g.add_input("x", TensorType((2, 3), dtype))
    y = g.add_input("y", TensorType((2, 3), dtype))
    g.set_outputs([g.add_op("add", [x, y])])
    neff = _compile_ir(neuron, g, tmp_path / "half", f"kernel_{dtype.name}")
    parsed = read_fake_neff(neff)
    assert [t.dtype for t in (*parsed.inputs, *parsed.outputs)] == [code, code, code]
    np_dtype = np.dtype(ml_dtypes.bfloat16) if dtype == DType.bfloat16 else np.dtype(np.float16)
    spec = rt.TensorSpec((2, 3), np_dtype)
    model = rt.Device("nrt", 0).load_neff(neff, f"kernel_{dtype.name}", input_names=["x", "y"],
                                          output_names=["output0"], inputs=[spec, spec], outputs=[spec])
    a = np.arange(-3, 3).reshape(2, 3).astype(np_dtype)  # small integers: every sum is exact
    b = np.arange(6, 0, -1).reshape(2, 3).astype(np_dtype)
    (out,) = model.run([a, b])
    assert out.dtype == np_dtype
    np.testing.assert_array_equal(out.view(np.uint16), (a.astype(np.float32) + b.astype(np.float32))
                                  .astype(np_dtype).view(np.uint16))


def test_zero_element_inputs_and_outputs_never_reach_the_neff(neuron: FakeNeuron, tmp_path: Path) -> None:
    g = Graph()
    x = g.add_input("x", TensorType((2, 3), DType.float32))
    g.set_outputs([g.add_op("zeros", [], {"shape": (0, 3), "dtype": DType.float32}), g.add_op("exp", [x])])
    parsed = read_fake_neff(_compile_ir(neuron, g, tmp_path / "zero", "kernel_zero"))
    assert [(t.name, t.shape) for t in parsed.outputs] == [("output1", (2, 3))]
    # The driver leaves such outputs unbound and gives their empty arrays back; empty inputs are
    # constants in the HLO (no NEFF input), so neither reaches the NEFF and results match eager.
    x, empty = torch.randn(4, 3), torch.ones(0, 3)
    for fn, args in (
        (lambda x: (x * 2, x[:0]), (x,)),
        (lambda x, e: (x * 2 + e.sum(), e * 3), (x, empty)),  # DDP's compiled-autograd backward has one
    ):
        torch._dynamo.reset()
        with torch.no_grad():
            got, expected = torch.compile(fn, backend="nkipy")(*args), fn(*args)
        for g, e in zip(got, expected, strict=True):
            assert g.shape == e.shape
            torch.testing.assert_close(g.cpu(), e)
    assert neuron.neffs and all(0 not in shape for n in neuron.neffs for _, _, shape in (*n.inputs, *n.outputs))


# ---- strictness: what the real runtime refuses -----------------------------------------------


class _Raw:
    """The process's fake libnrt driven directly (it is initialised by the runtime), cleaning up after."""

    def __init__(self, fake: FakeNrt) -> None:
        self.lib = fake.lib
        self.tensors: list[ctypes.c_void_p] = []
        self.sets: list[ctypes.c_void_p] = []

    def allocate(self, size: int) -> tuple[int, ctypes.c_void_p]:
        t = ctypes.c_void_p()
        status = int(self.lib.nrt_tensor_allocate(0, 0, size, b"raw", ctypes.byref(t)))
        if status == NRT_SUCCESS:
            self.tensors.append(t)
        return status, t

    def tensor_set(self, bindings: dict[str, ctypes.c_void_p]) -> ctypes.c_void_p:
        s = ctypes.c_void_p()
        assert self.lib.nrt_allocate_tensor_set(ctypes.byref(s)) == NRT_SUCCESS
        self.sets.append(s)
        for name, t in bindings.items():
            assert self.lib.nrt_add_tensor_to_tensor_set(s, name.encode(), t) == NRT_SUCCESS
        return s

    def close(self) -> None:
        for s in self.sets:
            self.lib.nrt_destroy_tensor_set(ctypes.byref(s))
        for t in self.tensors:
            self.lib.nrt_tensor_free(ctypes.byref(t))


@pytest.fixture
def raw(neuron: FakeNeuron) -> Iterator[_Raw]:
    handle = _Raw(neuron)
    yield handle
    handle.close()


ADD_NEFF = fake_neff_bytes([("a", "float32", (2, 3)), ("b", "float32", (2, 3))],
                           [("output0", "float32", (2, 3))], neff_id="kernel_add")
# How a binding goes wrong -> (input bindings, output bindings) by (name, bytes), and the message.
BAD_BINDINGS = {
    "unknown name": ({"a": 24, "x": 24}, {"output0": 24}, r"model 'kernel_add' has no input named 'x'"),
    "missing input": ({"a": 24}, {"output0": 24}, r"model 'kernel_add' input 'b' is missing from the set"),
    "wrong input size": ({"a": 24, "b": 20}, {"output0": 24},
                         r"model 'kernel_add' input 'b' is 20 bytes, the NEFF expects 24"),
    "wrong output size": ({"a": 24, "b": 24}, {"output0": 48},
                          r"model 'kernel_add' output 'output0' is 48 bytes, the NEFF expects 24"),
}


@pytest.mark.parametrize("case", BAD_BINDINGS)
def test_execute_checks_names_and_sizes_against_the_neff(neuron: FakeNeuron, raw: _Raw, case: str) -> None:
    ins, outs, message = BAD_BINDINGS[case]
    model = ctypes.c_void_p()
    assert raw.lib.nrt_load(ADD_NEFF, len(ADD_NEFF), 0, -1, ctypes.byref(model)) == NRT_SUCCESS
    try:
        in_set = raw.tensor_set({name: raw.allocate(size)[1] for name, size in ins.items()})
        out_set = raw.tensor_set({name: raw.allocate(size)[1] for name, size in outs.items()})
        assert raw.lib.nrt_execute(model, in_set, out_set) == NRT_EXEC_BAD_INPUT
        assert re.search(message, neuron.last_error()), neuron.last_error()
        assert neuron.execute_count() == 0
    finally:
        assert raw.lib.nrt_unload(model) == NRT_SUCCESS


def test_the_driver_checks_dtypes_at_load(neuron: FakeNeuron) -> None:
    """libnrt tensors are untyped bytes, so a same-size dtype mix-up is the driver's to catch, at load."""
    spec = rt.TensorSpec((2, 3), np.int32)  # 24 bytes, as the NEFF's float32 inputs
    with pytest.raises(rt.InvalidArgumentError, match=r"model 'kernel_add' input 'a' is \(2, 3\) float32 \(24 bytes\) "
                                                      r"in the NEFF, but the caller declared \(2, 3\) int32"):
        rt.Device("nrt", 0).load_neff(ADD_NEFF, "kernel_add", input_names=["a", "b"], output_names=["output0"],
                                      inputs=[spec, spec], outputs=[spec])
    assert neuron.call_count("nrt_unload") == 1, "the refused model is unloaded"


def test_zero_byte_allocations_and_double_unloads_are_refused(neuron: FakeNeuron, raw: _Raw) -> None:
    status, _ = raw.allocate(0)
    assert status == NRT_INVALID and "nrt_tensor_allocate: size 0 for tensor 'raw'" in neuron.last_error()
    model = ctypes.c_void_p()
    assert raw.lib.nrt_load(ADD_NEFF, len(ADD_NEFF), 0, -1, ctypes.byref(model)) == NRT_SUCCESS
    assert raw.lib.nrt_unload(model) == NRT_SUCCESS
    assert raw.lib.nrt_unload(model) == NRT_INVALID_HANDLE
    assert "is not loaded (unloaded twice?)" in neuron.last_error() and neuron.double_unloads() == 1


def test_calls_before_init_are_refused(tmp_path: Path) -> None:
    """A fresh copy of the library (this process's copy is initialised by the runtime)."""
    fresh = FakeNrt(build.build_fake_libnrt(tmp_path))
    fresh.set_execute(lambda _id, _ins, _outs: NRT_SUCCESS)
    assert fresh.lib.nrt_execute(None, None, None) == NRT_UNINITIALIZED
    assert fresh.last_error() == "nrt_execute called before nrt_init"
    t = ctypes.c_void_p()
    assert fresh.lib.nrt_tensor_allocate(0, 0, 8, b"t", ctypes.byref(t)) == NRT_UNINITIALIZED
    assert fresh.execute_count() == 0 and fresh.live_tensors() == 0
    fresh.set_execute(None)
