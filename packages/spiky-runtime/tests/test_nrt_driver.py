"""The nrt driver (csrc/nrt_driver.*) against the fake libnrt (spiky-torch's spiky/testing/fake_nrt).

One process holds one Neuron Runtime, so the tests here share the runtime of this pytest
process (SPIKY_LIBNRT points at a fake built once per session); what needs a fresh runtime
(missing symbols, the exit hook, busy cores, 1000 cycles under valgrind) runs in a subprocess.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import ml_dtypes
import numpy as np
import pytest

import spiky_runtime as rt

# The fake libnrt ships with spiky-torch (spiky.testing.fake_nrt); its build, control and NEFF modules
# use only the standard library, so they load by path here without installing spiky-torch.
FAKE_DIR = Path(__file__).resolve().parents[2] / "spiky-torch" / "src" / "spiky" / "testing" / "fake_nrt"
# The project's page on the Neuron interfaces: its function table is the libnrt API we use.
INTERFACES = Path(__file__).resolve().parents[3] / "docs" / "neuron-interfaces.md"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_fake_nrt_{name}", FAKE_DIR / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


build = _load("build")
neff = _load("neff")
control = _load("control")
C = control


@pytest.fixture(scope="module")
def fake_lib() -> Iterator[Path]:
    """The fake libnrt this process's runtime loads (SPIKY_LIBNRT, set for this module only:
    later modules must not find a "Neuron runtime" unless they ask for one)."""
    lib: Path = build.shared_fake_libnrt()
    old = os.environ.get("SPIKY_LIBNRT")
    os.environ["SPIKY_LIBNRT"] = str(lib)
    yield lib
    if old is None:
        os.environ.pop("SPIKY_LIBNRT", None)
    else:
        os.environ["SPIKY_LIBNRT"] = old


@pytest.fixture
def fake(fake_lib: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The fake (same file as the runtime's: same state) with injections and counters reset."""
    for var in ("NEURON_RT_VISIBLE_CORES", "NEURON_RT_NUM_CORES", "FAKE_NRT_TOTAL_CORES", "FAKE_NRT_LOCK_DIR"):
        monkeypatch.delenv(var, raising=False)
    f = control.FakeNrt(fake_lib)
    f.reset()
    f.set_execute(_rule)
    yield f
    gc.collect()
    for index in range(rt.device_count("nrt")):
        rt.Device("nrt", index, capacity_bytes=0).clear_cache()
    assert f.callback_errors == []
    f.reset()


@pytest.fixture
def nrt(fake: Any) -> rt.Device:
    dev = rt.Device("nrt", 0, capacity_bytes=0)
    dev.clear_cache()
    dev.reset_stats()
    return dev


# ---- NEFFs and the execute rule ------------------------------------------------------------

F32 = "float32"
ADD = neff.fake_neff_bytes([("a", F32, (4,)), ("b", F32, (4,))], [("output0", F32, (4,))], "kernel_add")
# Two outputs of different dtypes, listed in the NEFF in an order other than the caller's.
SPLIT = neff.fake_neff_bytes(
    [("x", F32, (2, 3)), ("cache.must_alias_input", F32, (2, 3))],
    [("output1", "bool", (2, 3)), ("output0", F32, (2, 3))],
    "kernel_split",
)


# bf16 and f16 I/O: NEFF dtype codes 6 and 7 (ml_dtypes.bfloat16 and numpy's float16 here).
BF16 = np.dtype(ml_dtypes.bfloat16)
HALF = neff.fake_neff_bytes([("x", "bfloat16", (2, 3)), ("y", "float16", (2, 3))],
                            [("out_bf16", "bfloat16", (2, 3)), ("out_f16", "float16", (2, 3))], "kernel_half")
half_seen: list[dict[str, bytes]] = []  # the input bytes kernel_half saw, per execution


def _f32(view: memoryview) -> np.ndarray[Any, Any]:
    return np.frombuffer(view, np.float32)


def _rule(neff_id: str, ins: dict[str, memoryview], outs: dict[str, memoryview]) -> int:
    """The execute rule of the fake: numerics per NEFF id (what a real NEFF would compute)."""
    if neff_id == "kernel_add":
        _f32(outs["output0"])[:] = _f32(ins["a"]) + _f32(ins["b"])
    elif neff_id == "kernel_split":
        x, cache = _f32(ins["x"]), _f32(ins["cache.must_alias_input"])
        _f32(outs["output0"])[:] = x * 2 + cache
        np.frombuffer(outs["output1"], np.uint8)[:] = x > 0
    elif neff_id == "kernel_half":  # bf16 x, f16 y -> x * 2 (bf16), y + 1 (f16), on the raw bytes
        half_seen.append({name: bytes(view) for name, view in ins.items()})
        x = np.frombuffer(ins["x"], BF16)
        np.frombuffer(outs["out_bf16"], BF16)[:] = (x.astype(np.float32) * 2).astype(BF16)
        np.frombuffer(outs["out_f16"], np.float16)[:] = np.frombuffer(ins["y"], np.float16) + np.float16(1)
    elif neff_id.startswith("kernel_echo"):  # output i = the bytes of input i (padding shows)
        for src, dst in zip(ins.values(), outs.values(), strict=True):
            dst[:] = src
    elif neff_id.startswith("kernel_rows"):  # (n, 3) -> row sums (n,) and x + 1
        x = _f32(ins["x"]).reshape(-1, 3)
        _f32(outs["output0"])[:] = x.sum(axis=1)
        _f32(outs["output1"])[:] = (x + 1).ravel()
    else:
        return C.NRT_FAILURE
    return C.NRT_SUCCESS


def _ab() -> list[np.ndarray[Any, Any]]:
    return [np.arange(4, dtype=np.float32), np.full(4, 10, np.float32)]


# ---- devices and memory --------------------------------------------------------------------


@pytest.mark.smoke
def test_devices_are_the_visible_cores(nrt: rt.Device) -> None:
    assert rt.device_count("nrt") == 2  # the fake's two cores, all visible
    assert "nrt" in rt.driver_names()
    assert rt.Device("nrt", 0) == nrt and nrt.driver_name == "nrt" and nrt.index == 0
    assert rt.Device("nrt", 1).index == 1
    with pytest.raises(rt.InvalidArgumentError, match=r"index 2 is out of range for driver 'nrt'"):
        rt.Device("nrt", 2)


@pytest.mark.smoke
def test_write_read_copy_through_libnrt(nrt: rt.Device, fake: Any) -> None:
    a = nrt.allocate(4096)
    b = nrt.allocate(4096)
    data = np.arange(1024, dtype=np.float32)
    a.write(data)
    a.write(np.array([7, 8], np.float32), offset=40)
    b.copy_from(a, src_offset=0, dst_offset=16, nbytes=64)
    got = b.read(np.float32, (16,), offset=16)
    expected = data[:16].copy()
    expected[10:12] = [7, 8]
    np.testing.assert_array_equal(got, expected)
    assert fake.call_count("nrt_tensor_write") == 2 and fake.call_count("nrt_tensor_read") == 1
    assert fake.call_count("nrt_tensor_copy") == 1
    with pytest.raises(rt.InvalidArgumentError, match=r"offset 4092 \+ 8 bytes = 4100 exceeds the buffer size of 4096"):
        a.write(np.zeros(2, np.float32), offset=4092)
    # The device bytes are libnrt's: one tensor per pool allocation.
    assert fake.live_tensors() == 2 and fake.device_bytes_in_use(0) == 2 * 4096


@pytest.mark.smoke
def test_to_device_and_back(nrt: rt.Device) -> None:
    x = np.random.default_rng(0).standard_normal((5, 7)).astype(np.float32)
    t = nrt.to_device(x)
    assert t.device == nrt
    np.testing.assert_array_equal(t.numpy(), x)


# ---- models --------------------------------------------------------------------------------


@pytest.mark.smoke
def test_load_discovers_io_and_executes(nrt: rt.Device, fake: Any) -> None:
    model = nrt.load_neff(ADD, "kernel_add")
    assert model.input_names == ["a", "b"] and model.output_names == ["output0"]
    assert model.inputs == [rt.TensorSpec((4,), F32)] * 2 and model.outputs == [rt.TensorSpec((4,), F32)]
    (out,) = model.run(_ab())
    np.testing.assert_array_equal(out, [10, 11, 12, 13])
    assert fake.execute_count() == 1 and fake.call_count("nrt_load") == 1
    assert fake.call_count("nrt_get_model_tensor_info") == 1 and fake.live_tensor_infos() == 0
    assert nrt.stats().total_executions == 1
    assert rt.Device("host").load_host_model(lambda xs: xs, [], [], "h").input_names is None


@pytest.mark.smoke
def test_io_is_bound_by_neff_name_in_the_callers_order(nrt: rt.Device) -> None:
    model = nrt.load_neff(
        SPLIT, "kernel_split", input_names=["x", "cache.must_alias_input"], output_names=["output0", "output1"],
        outputs=[rt.TensorSpec((2, 3), F32), rt.TensorSpec((2, 3), "bool")],
    )
    assert model.output_names == ["output0", "output1"]
    assert model.outputs[1].dtype == np.bool_  # declared bool, travels as u8
    x = np.array([[1, -2, 3], [-4, 5, -6]], np.float32)
    out0, out1 = model.run([x, np.ones((2, 3), np.float32)])
    np.testing.assert_array_equal(out0, x * 2 + 1)
    np.testing.assert_array_equal(out1, x > 0)
    # Without names the NEFF's order stands.
    assert nrt.load_neff(SPLIT, "kernel_split").output_names == ["output1", "output0"]


def test_declarations_that_disagree_with_the_neff_are_clear_errors(nrt: rt.Device, fake: Any) -> None:
    with pytest.raises(
        rt.InvalidArgumentError,
        match=r"model 'kernel_add' input 'b' is \(4,\) float32 \(16 bytes\) in the NEFF, but the caller declared "
        r"\(3,\) float32 \(12 bytes\)",
    ):
        nrt.load_neff(ADD, "kernel_add", inputs=[rt.TensorSpec((4,), F32), rt.TensorSpec((3,), F32)])
    with pytest.raises(rt.InvalidArgumentError, match=r"the NEFF has no input 'c'; its inputs are 'a', 'b'"):
        nrt.load_neff(ADD, "kernel_add", input_names=["a", "c"])
    with pytest.raises(rt.InvalidArgumentError, match=r"the caller names 1 inputs, the NEFF has 2"):
        nrt.load_neff(ADD, "kernel_add", input_names=["a"])
    model = nrt.load_neff(ADD, "kernel_add")
    bad = r"input 1: expected shape \(4,\) dtype float32, got shape \(3,\)"
    with pytest.raises(rt.InvalidArgumentError, match=bad):
        model.run([np.zeros(4, np.float32), np.zeros(3, np.float32)])
    gc.collect()
    assert fake.live_models() == 1  # the failed loads were unloaded
    np.testing.assert_array_equal(model.run(_ab())[0], [10, 11, 12, 13])


@pytest.mark.parametrize(
    ("data", "call", "status"),
    [
        (b"NOPE" + ADD[4:], "nrt_load", "UNSUPPORTED_NEFF_VERSION (10)"),
        (ADD[:1024] + b"\0" * 1024, "nrt_load", "INVALID (2)"),
    ],
)
def test_bad_neffs_raise_nrt_errors(nrt: rt.Device, fake: Any, data: bytes, call: str, status: str) -> None:
    with pytest.raises(rt.NrtError, match=rf"^{call} returned {re.escape(status)} for model 'bad' ") as info:
        nrt.load_neff(data, "bad")
    assert info.value.call == call and str(info.value.code) in status
    assert fake.live_models() == 0


def test_collective_neffs_load_with_rank_and_world_size(nrt: rt.Device, fake: Any) -> None:
    coll = neff.fake_neff_bytes([("a", F32, (4,)), ("b", F32, (4,))], [("output0", F32, (4,))], "kernel_add",
                                collectives=True)
    with pytest.raises(rt.NrtError, match=r"nrt_load returned INVALID \(2\).*must be loaded with rank and world_size"):
        nrt.load_neff(coll, "kernel_coll")
    model = nrt.load_neff(coll, "kernel_coll", rank=1, world_size=2)
    assert fake.call_count("nrt_load_collectives") == 1
    np.testing.assert_array_equal(model.run(_ab())[0], [10, 11, 12, 13])
    with pytest.raises(rt.NrtError, match=r"nrt_load_collectives returned INVALID \(2\) .*rank 2 of 2"):
        nrt.load_neff(coll, "kernel_coll", rank=2, world_size=2)
    with pytest.raises(rt.InvalidArgumentError, match=r"give both rank and world_size"):
        nrt.load_neff(coll, "kernel_coll", rank=0)


def test_host_models_and_neffs_do_not_mix(nrt: rt.Device) -> None:
    spec = rt.TensorSpec((2,), F32)
    with pytest.raises(rt.InvalidArgumentError, match=r"has no NEFF; the nrt driver runs compiled NEFFs"):
        nrt.load_host_model(lambda xs: xs, [spec], [spec], "h")


# ---- failures: each raises its documented error and leaves the process usable --------------


@pytest.mark.parametrize(
    ("status", "name"),
    [(C.NRT_TIMEOUT, "TIMEOUT"), (C.NRT_HW_ERROR, "HW_ERROR"), (1206, "EXEC_HW_ERR"),
     (C.NRT_EXEC_COMPLETED_WITH_NUM_ERR, "EXEC_COMPLETED_WITH_NUM_ERR"), (4242, "UNKNOWN")],
)
def test_execute_failures_raise_nrt_error(nrt: rt.Device, fake: Any, status: int, name: str) -> None:
    model = nrt.load_neff(ADD, "kernel_ab12")
    fake.fail_next_execute(status)
    with pytest.raises(rt.NrtError) as info:
        model.run(_ab())
    err = info.value
    assert str(err) == f"nrt_execute returned {name} ({status}) for model 'kernel_ab12'"
    assert (err.code, err.status_name, err.call, err.context) == (status, name, "nrt_execute", "model 'kernel_ab12'")
    assert isinstance(err, rt.SpikyRuntimeError)
    np.testing.assert_array_equal(model.run(_ab())[0], [10, 11, 12, 13])  # still usable
    gc.collect()
    assert fake.live_tensor_sets() == 0


def test_resource_on_an_allocation_is_retried_by_the_pool(nrt: rt.Device, fake: Any) -> None:
    keep = nrt.allocate(1 << 20)
    cached = nrt.allocate(4096)
    cached.free()  # in the pool's cache
    assert nrt.memory_stats()["cached_bytes"] == 4096
    fake.fail_allocation_at(1)
    buf = nrt.allocate(8192)  # RESOURCE -> the pool frees its cache and retries once
    full = nrt.memory_stats_full()
    assert full["num_alloc_retries"] == 1 and full["num_ooms"] == 0 and full["cached_bytes"] == 0
    buf.write(np.ones(2048, np.float32))
    del keep, buf


def test_device_full_is_out_of_memory_with_numbers(nrt: rt.Device, fake: Any) -> None:
    fake.set_device_capacity(1 << 20)
    held = nrt.allocate(512 * 1024)
    with pytest.raises(rt.OutOfMemoryError) as info:
        nrt.allocate(768 * 1024)
    message = str(info.value)
    assert "out of memory on device nrt:0: requested 786432 bytes" in message
    assert "used 524288 bytes" in message and "retried" in message
    assert nrt.memory_stats_full()["num_ooms"] == 1
    del held
    gc.collect()
    nrt.allocate(768 * 1024)  # room again once the first block is freed
    fake.set_device_capacity(0)


# ---- padding and pipelines run the driver's strided paths ----------------------------------


def _rows_model(dev: rt.Device, n: int) -> rt.Model:
    data = neff.fake_neff_bytes([("x", F32, (n, 3))], [("output0", F32, (n,)), ("output1", F32, (n, 3))],
                                f"kernel_rows{n}")
    return dev.load_neff(data, f"kernel_rows{n}", output_names=["output0", "output1"])


@pytest.mark.parametrize("pipelined", [False, True])
def test_bundle_pads_and_unpads_on_the_nrt_device(nrt: rt.Device, fake: Any, pipelined: bool) -> None:
    bundle = rt.Bundle({4: _rows_model(nrt, 4), 8: _rows_model(nrt, 8)}, input_dims=[{0: "n"}],
                       output_dims=[{0: "n"}, {0: "n"}], name="rows", pipelined=pipelined)
    rng = np.random.default_rng(1)
    for n in (1, 3, 4, 6, 8):
        x = rng.standard_normal((n, 3)).astype(np.float32)
        sums, plus = bundle.run([x])
        np.testing.assert_allclose(sums, x.sum(axis=1), rtol=1e-6)
        np.testing.assert_array_equal(plus, x + 1)
    assert fake.execute_count() == 5


def _rows_pad_bundle(nrt: rt.Device) -> rt.Bundle:
    """(x: (2, k)) -> (row sums, x + 1) at the (2, 3) bucket, padding along k with -1.5."""
    data = neff.fake_neff_bytes([("x", F32, (2, 3))], [("output0", F32, (2,)), ("output1", F32, (2, 3))],
                                "kernel_rows_pad")
    model = nrt.load_neff(data, "kernel_rows_pad", output_names=["output0", "output1"])
    return rt.Bundle({3: model}, input_dims=[{1: "k"}], output_dims=[None, {1: "k"}],
                     fill_values=[-1.5], name="fill")


def test_fill_values_other_than_zero_write_rows(nrt: rt.Device, fake: Any) -> None:
    # (2, 2) padded along dim 1 to the (2, 3) bucket: the pad column is written row by row.
    bundle = _rows_pad_bundle(nrt)
    x = np.array([[1, 2], [3, 4]], np.float32)
    sums, plus = bundle.run([x])
    np.testing.assert_array_equal(sums, [1 + 2 - 1.5, 3 + 4 - 1.5])  # the pad column holds -1.5
    np.testing.assert_array_equal(plus, x + 1)
    assert fake.call_count("nrt_tensor_write") >= 3  # the input rows, and the -1.5 pad rows


# ---- transfers: bytes and counts the driver reports match what crossed libnrt -----------------


def _transfer_events(trace: str) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {"H2D": [], "D2H": []}
    for e in json.loads(trace)["traceEvents"]:
        if e.get("ph") == "X" and e["name"] in found:
            found[e["name"]].append(e["args"]["bytes"])
    return found


@pytest.mark.parametrize("pipelined", [False, True])
def test_transfer_bytes_are_what_libnrt_moved(nrt: rt.Device, fake: Any, pipelined: bool) -> None:
    bundle = rt.Bundle({0: nrt.load_neff(ADD, "kernel_add")}, name="add", pipelined=pipelined)
    nrt.start_trace()
    for _ in range(3):
        np.testing.assert_array_equal(bundle.run(_ab())[0], np.arange(4) + 10)
    events = _transfer_events(nrt.stop_trace())
    s = nrt.stats()
    # Per call: two 16-byte inputs up, one 16-byte output down; one trace event per transfer.
    assert (s.call_h2d_bytes, s.call_d2h_bytes) == (3 * 32, 3 * 16)
    assert (s.mean_h2d_bytes_per_call, s.mean_d2h_bytes_per_call) == (32.0, 16.0)
    assert events == {"H2D": [16] * 6, "D2H": [16] * 3}
    assert (s.total_h2d_bytes, s.total_d2h_bytes) == (fake.bytes_written(), fake.bytes_read()) == (96, 48)
    assert (s.total_h2d_transfers, s.total_d2h_transfers) == (
        fake.call_count("nrt_tensor_write"), fake.call_count("nrt_tensor_read")) == (6, 3)
    assert "total_h2d_bytes=96" in repr(s) and "mean_d2h_bytes_per_call=16.0" in repr(s)
    nrt.reset_stats()
    s = nrt.stats()
    assert (s.total_h2d_bytes, s.total_d2h_bytes, s.call_h2d_bytes, s.total_h2d_transfers) == (0, 0, 0, 0)


def test_pipelined_100_distinct_inputs_equal_synchronous_under_the_timing_model(nrt: rt.Device, fake: Any) -> None:
    # 100 distinct inputs, all submitted before any result is read (at most four in flight, the
    # stream's back-pressure), with transfers and executions taking modelled time: every result is
    # the synchronous one. (How much faster is bench_pipeline.py's question, not a test's.)
    fake.set_timing(control.TimingModel(h2d_gbps=1.0, d2h_gbps=1.0, latency_us=20.0, execute_ms=0.2))
    model = nrt.load_neff(ADD, "kernel_add")
    sync = rt.Bundle({0: model}, name="sync")
    piped = rt.Bundle({0: model}, name="piped", pipelined=True)
    inputs = [[np.arange(4, dtype=np.float32) * i, np.full(4, -i, np.float32)] for i in range(100)]
    futures = [piped.submit(x) for x in inputs]
    for x, f in zip(inputs, futures, strict=True):
        np.testing.assert_array_equal(f.result()[0], sync.run(x)[0])
    assert fake.execute_count() == 200
    s = nrt.stats()
    assert (s.call_h2d_bytes, s.call_d2h_bytes) == (200 * 32, 200 * 16) == (fake.bytes_written(), fake.bytes_read())


def test_transfer_totals_count_padding_rows_and_device_tensors(nrt: rt.Device, fake: Any) -> None:
    bundle = _rows_pad_bundle(nrt)
    x = np.array([[1, 2], [3, 4]], np.float32)
    bundle.run([x])
    s = nrt.stats()
    # The call uploaded its 16 input bytes; the -1.5 pad column (2 rows of 4 bytes) crossed too.
    assert s.call_h2d_bytes == 16 and s.total_h2d_bytes == 16 + 8 == fake.bytes_written()
    assert s.call_d2h_bytes == 8 + 16 == s.total_d2h_bytes == fake.bytes_read()
    t = nrt.to_device(np.zeros(10, np.float32))  # outside any call: in the totals only
    t.numpy()
    s = nrt.stats()
    assert (s.call_h2d_bytes, s.total_h2d_bytes) == (16, 24 + 40)
    assert (s.call_d2h_bytes, s.total_d2h_bytes) == (24, 24 + 40)





@pytest.mark.smoke
def test_bf16_and_f16_neff_io_load_and_run(nrt: rt.Device, fake: Any) -> None:
    model = nrt.load_neff(HALF, "kernel_half")
    assert model.inputs == [rt.TensorSpec((2, 3), "bfloat16"), rt.TensorSpec((2, 3), "float16")]
    assert model.outputs == [rt.TensorSpec((2, 3), BF16), rt.TensorSpec((2, 3), np.float16)]
    assert [s.dtype for s in model.outputs] == [BF16, np.dtype(np.float16)]
    x = np.array([[1.0, -2.5, 0.1], [1e30, -np.inf, 3e-39]]).astype(BF16)  # 0.1 rounded; a subnormal
    y = np.array([[1.0, -2.5, 0.1], [65504, -np.inf, 6e-8]]).astype(np.float16)
    half_seen.clear()
    out_bf16, out_f16 = model.run([x, y])
    assert half_seen == [{"x": x.tobytes(), "y": y.tobytes()}]  # the device saw the caller's bits
    assert out_bf16.dtype == BF16 and out_f16.dtype == np.float16
    want_bf16 = (x.astype(np.float32) * 2).astype(BF16)
    np.testing.assert_array_equal(out_bf16.view(np.uint16), want_bf16.view(np.uint16))
    np.testing.assert_array_equal(out_f16.view(np.uint16), (y + np.float16(1)).view(np.uint16))
    # Declaring what the NEFF has (as names or numpy dtypes) loads the same model.
    declared = nrt.load_neff(HALF, "kernel_half", inputs=[rt.TensorSpec((2, 3), "bfloat16"),
                                                          rt.TensorSpec((2, 3), np.float16)],
                             outputs=[rt.TensorSpec((2, 3), ml_dtypes.bfloat16), rt.TensorSpec((2, 3), "float16")])
    np.testing.assert_array_equal(declared.run([x, y])[0].view(np.uint16), want_bf16.view(np.uint16))
    assert fake.execute_count() == 2


_BF16_X = rt.TensorSpec((2, 3), "bfloat16")
_F16_Y = rt.TensorSpec((2, 3), "float16")
_WHAT_TO_DO = "; declare {neff} as the NEFF has it, or recompile the model for {declared}$"


@pytest.mark.parametrize(
    ("inputs", "outputs", "message"),
    [
        # bf16 and f16 have the same size: only the dtype check stands between them.
        ([rt.TensorSpec((2, 3), "float16"), _F16_Y], None,
         r"input 'x' is \(2, 3\) bfloat16 \(12 bytes\) in the NEFF, but the caller declared \(2, 3\) float16 "
         r"\(12 bytes\): the dtypes differ \(NEFF bfloat16, declared float16\)"
         + _WHAT_TO_DO.format(neff=r"\(2, 3\) bfloat16", declared=r"\(2, 3\) float16")),
        ([_BF16_X, rt.TensorSpec((2, 3), "bfloat16")], None,
         r"input 'y' is \(2, 3\) float16 \(12 bytes\) in the NEFF, but the caller declared \(2, 3\) bfloat16 "
         r"\(12 bytes\): the dtypes differ \(NEFF float16, declared bfloat16\)"
         + _WHAT_TO_DO.format(neff=r"\(2, 3\) float16", declared=r"\(2, 3\) bfloat16")),
        # The wrong byte size: a bf16 tensor declared float32, or with another shape.
        ([rt.TensorSpec((2, 3), "float32"), _F16_Y], None,
         r"input 'x' is \(2, 3\) bfloat16 \(12 bytes\) in the NEFF, but the caller declared \(2, 3\) float32 "
         r"\(24 bytes\): the dtypes differ \(NEFF bfloat16, declared float32\)"),
        ([rt.TensorSpec((3, 3), "bfloat16"), _F16_Y], None,
         r"input 'x' is \(2, 3\) bfloat16 \(12 bytes\) in the NEFF, but the caller declared \(3, 3\) bfloat16 "
         r"\(18 bytes\): the shapes differ" + _WHAT_TO_DO.format(neff=r"\(2, 3\) bfloat16",
                                                                   declared=r"\(3, 3\) bfloat16")),
        (None, [_BF16_X, rt.TensorSpec((2, 3), "bfloat16")],
         r"output 'out_f16' is \(2, 3\) float16 \(12 bytes\) in the NEFF, but the caller declared \(2, 3\) "
         r"bfloat16 \(12 bytes\): the dtypes differ \(NEFF float16, declared bfloat16\)"),
    ],
    ids=["bf16-declared-f16", "f16-declared-bf16", "bf16-declared-f32", "bf16-wrong-shape", "f16-output-as-bf16"],
)
def test_16_bit_declarations_that_disagree_with_the_neff(
    nrt: rt.Device, fake: Any, inputs: list[rt.TensorSpec] | None, outputs: list[rt.TensorSpec] | None, message: str
) -> None:
    with pytest.raises(rt.InvalidArgumentError, match=r"^model 'kernel_half' " + message):
        nrt.load_neff(HALF, "kernel_half", inputs=inputs, outputs=outputs)
    gc.collect()
    assert fake.live_models() == 0  # the failed load was unloaded


@pytest.mark.parametrize("fill", [0.0, -np.inf, 3.0, 0.1, np.nan], ids=repr)
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_16_bit_padding_on_the_nrt_device_is_bit_exact(
    nrt: rt.Device, fake: Any, dtype_table: Any, dtype: str, fill: float
) -> None:
    # (3, 2) padded to the (4, 4) bucket along both dims: strided fill rows through libnrt. A
    # pattern of one repeated byte (0.0; bf16 3.0 is 0x4040) is an nrt_tensor_memset, others writes.
    case = dtype_table.BY_NAME[dtype]
    data = neff.fake_neff_bytes([("x", dtype, (4, 4))], [("output0", dtype, (4, 4))], f"kernel_echo_{dtype}")
    model = nrt.load_neff(data, f"kernel_echo_{dtype}")
    bundle = rt.Bundle({4: model}, [{0: "s0", 1: "s1"}], [None], fill_values=[fill], name="echo",
                       bucket_sizes={4: {"s0": 4, "s1": 4}})
    x = case.sample((3, 2), seed=5)
    (padded,) = bundle.run([x])
    want = np.full((4, 4), case.convert(fill))
    want[:3, :2] = x
    np.testing.assert_array_equal(case.bits(padded), case.bits(want))
    pattern = case.convert(fill).tobytes()
    assert (fake.call_count("nrt_tensor_memset") > 0) == (pattern[0] == pattern[1])


# ---- profiling -----------------------------------------------------------------------------


@pytest.mark.smoke
def test_ntff_profile_of_chosen_executions(nrt: rt.Device, tmp_path: Path) -> None:
    model = nrt.load_neff(ADD, "kernel_add")
    model.run(_ab())
    path = tmp_path / "1.ntff"
    model.profile_start(str(path))
    model.run(_ab())
    model.run(_ab())
    model.profile_stop(str(path))
    assert path.read_text() == "FAKE-NTFF\nneff_id kernel_add\nexecutions 2\n"
    with pytest.raises(rt.NrtError, match=r"nrt_profile_stop returned INVALID \(2\) for ntff"):
        model.profile_stop(str(path))
    host = rt.Device("host").load_host_model(lambda xs: xs, [], [], "h")
    with pytest.raises(rt.InvalidArgumentError, match=r"driver 'host' has no NTFF profiling; NTFF needs Neuron"):
        host.profile_start(str(path))


# ---- the API surface: exactly the documented symbols ---------------------------------------


def _documented_symbols() -> list[str]:
    """The first column of the function table of docs/neuron-interfaces.md."""
    assert INTERFACES.is_file(), f"{INTERFACES} is missing: it documents the libnrt API the nrt driver uses"
    section = INTERFACES.read_text().split("### Functions", 1)[1].split("\n### ", 1)[0]
    names = re.findall(r"^\| `(nrt_\w+)` \|", section, flags=re.M)
    assert len(names) == len(set(names)), names
    return sorted(names)


# Documented symbols the driver has no use for: it keeps tensor sizes itself, never maps device
# memory into the host, and reads the total core count only for a core index past the visible
# ones, which Device() rejects first.
UNUSED = {"nrt_tensor_get_size", "nrt_tensor_get_va", "nrt_get_total_nc_count"}


def test_driver_calls_exactly_the_documented_symbols(nrt: rt.Device, fake: Any, tmp_path: Path) -> None:
    documented = _documented_symbols()
    assert documented == sorted(build.NRT_SYMBOLS)  # the fake exports exactly these
    fake.reset()
    fake.set_execute(_rule)
    # A workload that touches every driver path.
    rt.device_count("nrt")
    buf = nrt.allocate(64)
    buf.write(np.arange(16, dtype=np.float32))
    other = nrt.allocate(64)
    other.copy_from(buf)
    other.read(np.float32, (16,))
    model = nrt.load_neff(ADD, "kernel_add")
    model.profile_start(str(tmp_path / "p.ntff"))
    model.run(_ab())
    model.profile_stop(str(tmp_path / "p.ntff"))
    coll = neff.fake_neff_bytes([("x", F32, (1,))], [("output0", F32, (1,))], "c", collectives=True)
    nrt.load_neff(coll, "c", rank=0, world_size=1)
    rt.Bundle({2: _rows_model(nrt, 2)}, input_dims=[{0: "n"}], output_dims=[{0: "n"}, {0: "n"}]).run(
        [np.ones((1, 3), np.float32)])
    del buf, other, model
    gc.collect()
    nrt.clear_cache()
    counts = {name: fake.call_count(name) for name in documented}
    called = {name for name, n in counts.items() if n > 0}
    assert called == set(documented) - UNUSED - {"nrt_init", "nrt_close"}, counts
    # init ran once for the process (before this test); close runs at exit (test below).


# ---- fresh runtimes (subprocesses) ---------------------------------------------------------


def _run(script: str, lib: Path, extra_env: dict[str, str] | None = None, prefix: tuple[str, ...] = ()) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPIKY_", "NEURON_", "FAKE_NRT_"))}
    env.update({"SPIKY_LIBNRT": str(lib), "PYTHONPATH": str(FAKE_DIR), **(extra_env or {})})
    proc = subprocess.run([*prefix, sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          env=env, timeout=240, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    return proc.stdout


@pytest.mark.smoke
def test_missing_symbol_is_named(tmp_path: Path) -> None:
    lib = build.build_fake_libnrt(tmp_path, omit_symbols=["nrt_execute"])
    out = _run("""
        import spiky_runtime as rt
        for attempt in (lambda: rt.device_count("nrt"), lambda: rt.Device("nrt", 0)):
            try:
                attempt()
            except rt.NrtLoadError as e:
                print(type(e).__name__, e)
    """, lib)
    lines = out.splitlines()
    assert len(lines) == 2 and all(f"NrtLoadError: {lib} lacks symbol nrt_execute that Spiky needs" in line
                                   or f"NrtLoadError {lib} lacks symbol nrt_execute that Spiky needs" in line
                                   for line in lines)
    assert "aws-neuronx-runtime-lib" in out


def test_runtime_closes_once_at_exit_with_nothing_live(fake_lib: Path) -> None:
    # The check is registered before spiky_runtime's hook, so it runs after it (atexit is LIFO).
    out = _run(f"""
        import atexit, sys
        from control import FakeNrt
        fake = FakeNrt({str(fake_lib)!r})
        def check():
            print("close", fake.call_count("nrt_close"), "init", fake.call_count("nrt_init"),
                  "tensors", fake.live_tensors(), "models", fake.live_models(),
                  "violations", fake.contract_violations(), flush=True)
        atexit.register(check)
        import numpy as np
        import spiky_runtime as rt
        from neff import fake_neff_bytes
        fake.set_execute(lambda nid, ins, outs: 0)
        dev = rt.Device("nrt", 1)
        buf = dev.allocate(1000)
        model = dev.load_neff(fake_neff_bytes([("x", "float32", (2,))], [("output0", "float32", (2,))], "k"), "k")
        model.run([np.zeros(2, np.float32)])
        del buf, model
    """, fake_lib)
    assert out.strip().splitlines()[-1] == "close 1 init 1 tensors 0 models 0 violations 0"


def test_second_process_on_the_same_core_gets_nc_busy(fake_lib: Path, tmp_path: Path) -> None:
    env = {"FAKE_NRT_LOCK_DIR": str(tmp_path), "NEURON_RT_VISIBLE_CORES": "0"}
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, spiky_runtime as rt; rt.Device('nrt', 0); print('up', flush=True); "
         "sys.stdin.read()"],
        env={**os.environ, "SPIKY_LIBNRT": str(fake_lib), **env}, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "up"
        out = _run("""
            import spiky_runtime as rt
            try:
                rt.Device("nrt", 0)
            except rt.NrtError as e:
                print(e.status_name, e.code, e.call)
                print(e)
        """, fake_lib, env)
        first, second = out.splitlines()[:2]
        assert first == "EXEC_NC_BUSY 1005 nrt_init"
        assert "NEURON_RT_VISIBLE_CORES=0" in second and "another process owns these cores" in second
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=60)


CYCLES = """
    import gc, sys
    import numpy as np
    import spiky_runtime as rt
    from control import FakeNrt
    from neff import fake_neff_bytes
    fake = FakeNrt(sys.argv[-1] if len(sys.argv) > 1 else {lib!r})
    fake.set_execute(lambda nid, ins, outs: (np.frombuffer(outs["output0"], np.float32).__setitem__(
        slice(None), np.frombuffer(ins["x"], np.float32) * 3), 0)[1])
    dev = rt.Device("nrt", 0)
    data = fake_neff_bytes([("x", "float32", (64,))], [("output0", "float32", (64,))], "kernel_cycle")
    x = np.arange(64, dtype=np.float32)
    for i in range({cycles}):
        model = dev.load_neff(data, "kernel_cycle")
        (out,) = model.run([x])
        assert out[5] == 15.0
        del model, out
    gc.collect()
    dev.clear_cache()
    print("cycles", {cycles}, "executions", fake.execute_count(), "live", fake.live_tensors(), fake.live_models(),
          fake.live_tensor_sets(), fake.live_tensor_infos(), "violations", fake.contract_violations(),
          "double_unloads", fake.double_unloads())
"""


@pytest.mark.slow
def test_1000_load_execute_unload_cycles_leave_nothing_live(fake_lib: Path) -> None:
    start = time.perf_counter()
    out = _run(CYCLES.format(lib=str(fake_lib), cycles=1000), fake_lib)
    assert out.strip() == "cycles 1000 executions 1000 live 0 0 0 0 violations 0 double_unloads 0"
    assert time.perf_counter() - start < 60
