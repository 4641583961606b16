"""Host models: run path, input/output checks, error propagation, stats."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import textwrap
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest

import spiky_runtime as rt

F32 = np.float32


def matmul_model(dev: rt.Device, name: str = "mm") -> rt.Model:
    return dev.load_host_model(
        lambda xs: [xs[0] @ xs[1]],
        inputs=[rt.TensorSpec((3, 4), F32), rt.TensorSpec((4, 5), "float32")],
        outputs=[rt.TensorSpec((3, 5), F32)],
        name=name,
    )


def ab() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.standard_normal((3, 4)).astype(F32), rng.standard_normal((4, 5)).astype(F32)


@pytest.mark.smoke
def test_tensor_spec() -> None:
    spec = rt.TensorSpec((2, 3), "float16")
    assert spec.shape == (2, 3)
    assert spec.dtype == np.dtype(np.float16)
    assert spec.nbytes == 12
    assert spec == rt.TensorSpec([2, 3], np.float16)
    assert spec != rt.TensorSpec((3, 2), np.float16)
    assert hash(spec) == hash(rt.TensorSpec((2, 3), np.dtype("float16")))
    assert repr(spec) == "TensorSpec(shape=(2, 3), dtype=float16)"
    assert rt.TensorSpec((), "bool").nbytes == 1
    with pytest.raises(rt.InvalidArgumentError, match=r"unsupported dtype 'complex128'.*expected one of: bool"):
        rt.TensorSpec((1,), np.complex128)
    with pytest.raises(rt.InvalidArgumentError, match=r"dim 0 of shape \(-2,\) is negative"):
        rt.TensorSpec((-2,), "int8")
    with pytest.raises(rt.InvalidArgumentError, match="non-native byte order"):
        rt.TensorSpec((1,), np.dtype(">f4") if np.little_endian else np.dtype("<f4"))


@pytest.mark.smoke
def test_matmul_matches_numpy(dev: rt.Device) -> None:
    model = matmul_model(dev)
    assert model.name == "mm"
    assert [s.shape for s in model.inputs] == [(3, 4), (4, 5)]
    assert model.outputs == [rt.TensorSpec((3, 5), F32)]
    a, b = ab()
    outs = model.run([a, b])
    assert len(outs) == 1
    assert outs[0].dtype == F32 and outs[0].shape == (3, 5)
    np.testing.assert_allclose(outs[0], a @ b, rtol=1e-6, atol=1e-6)
    assert outs[0].flags.writeable  # fresh host array, not device memory


def test_multiple_outputs_and_dtypes(dev: rt.Device) -> None:
    def fn(xs: list[np.ndarray]) -> Sequence[Any]:
        x, mask = xs
        return (np.where(mask, x, 0).astype(np.int64), x.sum(dtype=np.float64), mask.any())

    model = dev.load_host_model(
        fn,
        [rt.TensorSpec((5,), np.int32), rt.TensorSpec((5,), bool)],
        [rt.TensorSpec((5,), np.int64), rt.TensorSpec((), np.float64), rt.TensorSpec((), "bool")],
        name="multi",
    )
    x = np.array([1, -2, 3, -4, 5], dtype=np.int32)
    mask = np.array([True, False, True, False, False])
    masked, total, anyv = model.run([x, mask])
    np.testing.assert_array_equal(masked, [1, 0, 3, 0, 0])
    assert masked.dtype == np.int64
    assert total.shape == () and float(total) == 3.0
    assert bool(anyv) is True


def test_inputs_are_read_only_views(dev: rt.Device) -> None:
    seen: dict[str, Any] = {}

    def fn(xs: list[np.ndarray]) -> list[np.ndarray]:
        x = xs[0]
        seen["writeable"] = x.flags.writeable
        seen["owndata"] = x.flags.owndata
        with pytest.raises(ValueError, match="read-only"):
            x[0] = 42.0
        return [x * 2]

    spec = rt.TensorSpec((4,), F32)
    model = dev.load_host_model(fn, [spec], [spec], name="ro")
    x = np.arange(4, dtype=F32)
    (y,) = model.run([x])
    assert seen == {"writeable": False, "owndata": False}
    np.testing.assert_array_equal(y, x * 2)
    np.testing.assert_array_equal(x, np.arange(4, dtype=F32))  # caller's array untouched


def test_an_input_at_the_same_address_is_the_same_view_object(dev: rt.Device) -> None:
    """The host fn gets the last call's view object again for an input at the same address (so it can
    reuse what it derived from it by identity), a new one elsewhere; either way it reads the memory now."""
    views: list[np.ndarray] = []

    def fn(xs: list[np.ndarray]) -> list[np.ndarray]:
        views.append(xs[0])
        return [xs[0] + 1]

    spec = rt.TensorSpec((4,), F32)
    model = dev.load_host_model(fn, [spec], [spec], name="views")
    x, other = np.zeros(4, F32), np.ones(4, F32)
    results = [model.run([x])[0]]
    x += 5  # same address, new contents
    results += [model.run([x])[0], model.run([other])[0], model.run([x])[0]]
    assert views[1] is views[0] and views[2] is not views[0] and views[3] is not views[2]
    for got, want in zip(results, [1, 6, 2, 6], strict=True):
        np.testing.assert_array_equal(got, np.full(4, want, F32))


STAGE_BYTES = 64


def test_staging_hands_an_input_in_new_memory_over_in_memory_of_the_models_own(dev: rt.Device) -> None:
    """stage_bytes: a small input at a new address is copied into the model's own memory, always the same
    view object (a host fn that keeps state per address, as XLA:CPU does, finds it again), until it has
    stayed in one place for a few calls; bigger inputs and the first call are never staged. Every call reads
    the values of its own input."""
    seen: list[tuple[np.ndarray, np.ndarray, int, int]] = []

    def fn(xs: list[np.ndarray]) -> list[np.ndarray]:
        seen.append((xs[0], xs[1], xs[0].ctypes.data, xs[1].ctypes.data))
        return [xs[0] * 2, xs[1] + 1]

    small, big = rt.TensorSpec((4,), F32), rt.TensorSpec((32,), F32)  # 16 and 128 bytes
    model = dev.load_host_model(fn, [small, big], [small, big], name="staged", stage_bytes=STAGE_BYTES)
    # The calls of a training loop: activations in fresh memory, step after step.
    inputs = [(np.full(4, i, F32), np.full(32, i, F32)) for i in range(6)]
    for i, (a, b) in enumerate(inputs):
        y, z = model.run([a, b])
        np.testing.assert_array_equal(y, np.full(4, 2 * i, F32))
        np.testing.assert_array_equal(z, np.full(32, i + 1, F32))
    small_views = [s[0] for s in seen]
    assert seen[0][2] == inputs[0][0].ctypes.data  # first call: the input itself
    assert all(v is small_views[1] for v in small_views[1:])  # then one staged view
    assert all(s[2] != a.ctypes.data for s, (a, _) in zip(seen[1:], inputs[1:], strict=True))
    assert all(s[3] == b.ctypes.data for s, (_, b) in zip(seen, inputs, strict=True))  # 128 bytes: itself

    # An input that stays put settles: staged for a few calls, then its own memory, one view object.
    a, b = inputs[0]
    seen.clear()
    for _ in range(6):
        y, _z = model.run([a, b])
        np.testing.assert_array_equal(y, a * 2)
    assert seen[0][0] is small_views[1] and seen[-1][2] == a.ctypes.data and seen[-1][0] is seen[-2][0]
    # Changed in place at the settled address: read again, not a stale staged copy.
    a += 10
    np.testing.assert_array_equal(model.run([a, b])[0], a * 2)


def test_staging_is_never_shared_by_concurrent_calls(dev: rt.Device) -> None:
    """Two threads call one staged model whose fn releases the GIL while it reads its inputs: each call's
    result is computed from its own inputs (a call that finds the staging memory in use is not staged)."""
    spec = rt.TensorSpec((8,), F32)
    barrier = threading.Barrier(2)

    def fn(xs: list[np.ndarray]) -> list[np.ndarray]:
        first = xs[0].copy()
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(timeout=0.2)  # both calls inside fn at once (GIL released while waiting)
        return [first + xs[0]]  # read again after the other call had its chance to overwrite

    model = dev.load_host_model(fn, [spec], [spec], name="staged2", stage_bytes=STAGE_BYTES)
    model.run([np.zeros(8, F32)])  # the first call is never staged
    errors: list[str] = []

    def worker(value: float) -> None:
        for i in range(20):
            x = np.full(8, value + i, F32)  # new memory at every call: staged when the lock is free
            y = model.run([x])[0]
            if not np.array_equal(y, 2 * x):
                errors.append(f"input {value + i}: got {y[0]}")
            barrier.reset()

    threads = [threading.Thread(target=worker, args=(v,)) for v in (100.0, 200.0)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def packed_model(dev: rt.Device, fn: Any) -> rt.Model:
    """Outputs 0 and 2 leave packed (offsets 8 and 0 of one byte buffer), output 1 on its own."""
    specs = [rt.TensorSpec((2,), F32), rt.TensorSpec((3,), "int64"), rt.TensorSpec((2,), F32)]
    return dev.load_host_model(fn, [rt.TensorSpec((2,), F32)], specs, name="packed", packed={0: 8, 2: 0})


def test_packed_outputs_are_copied_out_of_one_byte_buffer(dev: rt.Device) -> None:
    def fn(xs: list[np.ndarray]) -> list[np.ndarray]:
        buffer = np.zeros(16, np.uint8)
        buffer[8:16].view(F32)[:] = xs[0] * 2  # output 0
        buffer[0:8].view(F32)[:] = xs[0] + 1  # output 2
        return [np.arange(3, dtype=np.int64), buffer]

    x = np.array([1.5, -2.0], F32)
    a, b, c = packed_model(dev, fn).run([x])
    np.testing.assert_array_equal(a, x * 2)
    np.testing.assert_array_equal(b, np.arange(3))
    np.testing.assert_array_equal(c, x + 1)


I64 = np.int64


@pytest.mark.parametrize(("result", "match"), [
    (lambda: [np.arange(3, dtype=I64)], "returned 1 outputs, expected 2 .1 outputs, then the buffer of the 2 packed"),
    (lambda: [np.arange(3, dtype=I64), np.zeros(4, F32)], "packed outputs' buffer, a C-contiguous numpy array of"),
    (lambda: [np.arange(3, dtype=I64), b"bytes"], "packed outputs' buffer, a C-contiguous numpy array of"),
    (lambda: [np.arange(3, dtype=I64), np.zeros(12, np.uint8)], r"output 0: packed at bytes \[8, 16\) of a buffer"),
    (lambda: [np.zeros(3, F32), np.zeros(16, np.uint8)], r"output 1: host fn returned shape \(3,\) dtype float32"),
])
def test_packed_outputs_bad_results_are_named(dev: rt.Device, result: Any, match: str) -> None:
    model = packed_model(dev, lambda xs: result())
    with pytest.raises(rt.errors.InvalidArgumentError, match=match):
        model.run([np.zeros(2, F32)])


def test_packed_output_index_must_be_an_output(dev: rt.Device) -> None:
    spec = rt.TensorSpec((2,), F32)
    with pytest.raises(rt.errors.InvalidArgumentError, match="packed output 3 of model 'p' is not one of its 1"):
        dev.load_host_model(lambda xs: xs, [spec], [spec], name="p", packed={3: 0})


def test_staging_bytes_must_not_be_negative(dev: rt.Device) -> None:
    with pytest.raises(rt.errors.InvalidArgumentError, match="stage_bytes"):
        dev.load_host_model(lambda xs: xs, [rt.TensorSpec((4,), F32)], [rt.TensorSpec((4,), F32)],
                            name="bad", stage_bytes=-1)


def test_non_contiguous_input_accepted(dev: rt.Device) -> None:
    model = matmul_model(dev)
    a, b = ab()
    a_t = np.asfortranarray(a)
    assert not a_t.flags.c_contiguous
    np.testing.assert_allclose(model.run([a_t, b])[0], a @ b, rtol=1e-6, atol=1e-6)


@pytest.mark.smoke
def test_wrong_input_count(dev: rt.Device) -> None:
    model = matmul_model(dev)
    a, _ = ab()
    with pytest.raises(rt.InvalidArgumentError, match="model 'mm': expected 2 inputs, got 1"):
        model.run([a])
    with pytest.raises(rt.InvalidArgumentError, match=r"sequence .* got ndarray"):
        model.run(a)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("index", "bad", "got"),
    [
        (0, np.zeros((4, 3), F32), r"got shape \(4, 3\) dtype float32"),
        (1, np.zeros((4, 5), np.float64), r"got shape \(4, 5\) dtype float64"),
        (1, np.zeros((4, 5, 1), F32), r"got shape \(4, 5, 1\) dtype float32"),
    ],
)
def test_wrong_input_shape_or_dtype_names_index(dev: rt.Device, index: int, bad: np.ndarray, got: str) -> None:
    model = matmul_model(dev)
    args = list(ab())
    args[index] = bad
    expected = ["shape \\(3, 4\\) dtype float32", "shape \\(4, 5\\) dtype float32"][index]
    with pytest.raises(rt.InvalidArgumentError, match=f"model 'mm': input {index}: expected {expected}, {got}"):
        model.run(args)


def test_input_not_an_array_or_unsupported_dtype(dev: rt.Device) -> None:
    model = matmul_model(dev)
    a, b = ab()
    with pytest.raises(rt.InvalidArgumentError, match=r"model 'mm': input 1: expected a numpy\.ndarray .* got list"):
        model.run([a, b.tolist()])  # type: ignore[list-item]
    with pytest.raises(rt.InvalidArgumentError, match="model 'mm': input 0: unsupported dtype 'complex64'"):
        model.run([a.astype(np.complex64), b])


@pytest.mark.parametrize(
    ("fn", "message"),
    [
        (
            lambda xs: [np.zeros((5, 3), F32)],
            r"output 0: host fn returned shape \(5, 3\) dtype float32, expected shape \(3, 5\) dtype float32",
        ),
        (lambda xs: [np.zeros((3, 5), np.float64)], r"output 0: host fn returned shape \(3, 5\) dtype float64"),
        (lambda xs: [], "host fn returned 0 outputs, expected 1"),
        (lambda xs: np.zeros((3, 5), F32), "must return a sequence .* got ndarray"),
        (lambda xs: None, "must return a sequence .* got NoneType"),
    ],
)
def test_fn_returning_wrong_outputs(dev: rt.Device, fn: Any, message: str) -> None:
    model = dev.load_host_model(fn, [rt.TensorSpec((3, 4), F32)], [rt.TensorSpec((3, 5), F32)], name="badout")
    with pytest.raises(rt.InvalidArgumentError, match=f"model 'badout': .*{message}"):
        model.run([np.zeros((3, 4), F32)])
    assert dev.memory_stats()["used_bytes"] == 0
    assert dev.stats().total_executions == 0


@pytest.mark.smoke
def test_exception_in_fn_propagates_and_frees(dev: rt.Device) -> None:
    class BoomError(Exception):
        pass

    def fn(xs: list[np.ndarray]) -> list[np.ndarray]:
        raise BoomError("from the model")

    keep = dev.allocate(2048)
    start = dev.memory_stats()["used_bytes"]
    model = dev.load_host_model(fn, [rt.TensorSpec((8,), F32)], [rt.TensorSpec((8,), F32)], name="boom")
    with pytest.raises(BoomError, match="from the model") as info:
        model.run([np.zeros(8, F32)])
    assert type(info.value) is BoomError  # unchanged, not wrapped
    assert dev.memory_stats()["used_bytes"] == start
    assert dev.stats().total_executions == 0
    keep.free()


def test_load_host_model_rejects_non_callable(dev: rt.Device) -> None:
    spec = rt.TensorSpec((1,), F32)
    with pytest.raises(rt.InvalidArgumentError, match="fn of model 'x' must be callable, got int"):
        dev.load_host_model(3, [spec], [spec], name="x")  # type: ignore[arg-type]


@pytest.mark.smoke
def test_stats_count_executions_and_buckets(dev: rt.Device) -> None:
    model = matmul_model(dev)
    a, b = ab()
    empty = dev.stats()
    assert empty.total_executions == 0 and empty.bucket_hits == {}
    assert empty.min_execution_time_ms == 0.0
    model.run([a, b], bucket=8)
    model.run([a, b], bucket=8)
    model.run([a, b], bucket=16)
    model.run([a, b])
    s = dev.stats()
    assert s.total_executions == 4
    assert s.bucket_hits == {8: 2, 16: 1}
    assert s.total_compile_count == 0
    assert 0.0 < s.min_execution_time_ms <= s.max_execution_time_ms <= s.total_execution_time_ms
    assert s.total_exec_time_ms > 0.0
    assert s.total_h2d_time_ms >= 0.0 and s.total_d2h_time_ms >= 0.0
    phases = s.total_h2d_time_ms + s.total_exec_time_ms + s.total_d2h_time_ms
    assert phases <= s.total_execution_time_ms + 1e-9
    assert empty.total_executions == 0  # snapshots are not live
    assert "total_executions=4" in repr(s) and "bucket_hits={8: 2, 16: 1}" in repr(s)

    dev.record_compile()
    dev.record_compile()
    assert dev.stats().total_compile_count == 2
    dev.reset_stats()
    s = dev.stats()
    assert (s.total_executions, s.total_compile_count, s.bucket_hits) == (0, 0, {})
    assert s.total_execution_time_ms == 0.0


def test_host_calls_touch_no_pool_memory_and_device_outputs_do(dev: rt.Device) -> None:
    model = matmul_model(dev)
    a, b = ab()
    before = dev.memory_stats()
    (out,) = model.run([a, b])
    # The host driver runs on the input arrays in place (borrowed, no H2D copy) and writes the
    # output straight into the array it returns (no pool buffer, no D2H copy).
    assert dev.memory_stats() == before
    np.testing.assert_allclose(out, a @ b, rtol=1e-6)
    bundle = rt.Bundle({4: model}, [{}, {}], [{}], name="mm")
    (on_device,) = bundle.submit([a, b], to_host=False).result()  # device outputs: pool memory
    after = dev.memory_stats()
    assert after["allocation_count"] - before["allocation_count"] == 1
    assert after["used_bytes"] == 512  # 60 bytes, rounded to the pool's unit
    np.testing.assert_allclose(on_device.numpy(), a @ b, rtol=1e-6)
    del on_device
    again = dev.memory_stats()
    assert again["used_bytes"] == 0 and again["cached_bytes"] - before["cached_bytes"] == 512


def test_sync_host_calls_run_in_place_with_the_same_stats_and_spans(dev: rt.Device, tmp_path: Path) -> None:
    # Model.run on the host driver skips the executor's stages (no Call, no borrowed handles): the
    # stats and the trace must still say what happened, and a failing call must leave no trace in
    # the stats and no memory behind.
    model = matmul_model(dev)
    a, b = ab()
    bundle = rt.Bundle({3: model}, [{0: "s0"}, {}], [{0: "s0"}], name="mm")
    path = tmp_path / "trace.json"
    with rt.profile(path, dev):
        (out,) = model.run([a, b], bucket=3)
        (exact,) = bundle.run([a, b])  # a bundle call at its bucket's shape: in place too
    np.testing.assert_allclose(out, a @ b, rtol=1e-6)
    np.testing.assert_array_equal(exact, out)
    events = [e for e in json.loads(path.read_text())["traceEvents"] if e["ph"] == "X"]
    assert sorted(e["name"] for e in events) == ["call", "call", "execute", "execute"]
    for call in (e for e in events if e["name"] == "call"):
        (execute,) = (e for e in events if e["name"] == "execute" and e["args"]["call"] == call["args"]["call"])
        assert call["ts"] <= execute["ts"]
    s = dev.stats()
    assert (s.total_executions, s.bucket_hits, s.call_h2d_bytes, s.call_d2h_bytes) == (2, {3: 2}, 0, 0)
    assert 0.0 < s.total_exec_time_ms <= s.total_execution_time_ms and s.pad_ratio == 1.0
    (padded,) = bundle.run([a[:2], b])  # padding: the executor's stages
    np.testing.assert_allclose(padded, a[:2] @ b, rtol=1e-6)
    assert dev.stats().total_executions == 3 and dev.stats().pad_ratio > 1.0

    def fail(xs: list[np.ndarray]) -> list[np.ndarray]:
        raise ValueError("no result today")

    bad = dev.load_host_model(fail, model.inputs, model.outputs, "bad")
    before = dev.memory_stats()
    with pytest.raises(ValueError, match="no result today"):
        bad.run([a, b])
    with pytest.raises(ValueError, match="no result today"):
        rt.Bundle({3: bad}, [{0: "s0"}, {}], [{0: "s0"}], name="bad").run([a, b])
    assert dev.stats().total_executions == 3 and dev.memory_stats() == before


def test_padded_inputs_still_go_through_the_pool(dev: rt.Device) -> None:
    # Borrowing is only for inputs used as they are: a padded input needs a bucket-sized buffer.
    spec_in, spec_out = rt.TensorSpec((4, 3), F32), rt.TensorSpec((4,), F32)
    model = dev.load_host_model(lambda xs: [xs[0].sum(axis=1)], [spec_in], [spec_out], name="rows")
    bundle = rt.Bundle({4: model}, input_dims=[{0: "s0"}], output_dims=[{0: "s0"}])
    before = dev.memory_stats()
    (out,) = bundle.run([np.ones((3, 3), F32)])
    after = dev.memory_stats()
    np.testing.assert_array_equal(out, [3.0, 3.0, 3.0])
    assert after["allocation_count"] - before["allocation_count"] == 2  # padded input + output


def test_run_oom_raises_and_recovers(dev: rt.Device) -> None:
    big = rt.TensorSpec((1024, 1024), F32)  # 4 MiB
    model = dev.load_host_model(lambda xs: [xs[0] + 1], [big], [big], name="inc")
    rt.Device("host", 0, capacity_bytes=3 * 1024 * 1024)
    x = np.zeros((1024, 1024), F32)
    bundle = rt.Bundle({1024: model}, [{}], [{}], name="inc")
    with pytest.raises(rt.OutOfMemoryError, match="requested 4194304 bytes"):
        # the input is borrowed (no device copy); the device output does not fit
        bundle.submit([x], to_host=False).result()[0].numpy()
    assert dev.memory_stats()["used_bytes"] == 0
    np.testing.assert_array_equal(model.run([x])[0], x + 1)  # host outputs are not pool memory
    rt.Device("host", 0, capacity_bytes=0)
    np.testing.assert_array_equal(bundle.submit([x], to_host=False).result()[0].numpy(), x + 1)


def test_zero_size_tensors(dev: rt.Device) -> None:
    spec = rt.TensorSpec((0, 3), F32)
    model = dev.load_host_model(lambda xs: [xs[0] * 2], [spec], [spec], name="empty")
    (y,) = model.run([np.zeros((0, 3), F32)])
    assert y.shape == (0, 3)


def test_concurrent_runs(dev: rt.Device) -> None:
    model = matmul_model(dev)
    a, b = ab()
    expected = a @ b
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(50):
                np.testing.assert_allclose(model.run([a, b], bucket=1)[0], expected, rtol=1e-6)
        except BaseException as e:  # surfaced by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert dev.stats().total_executions == 200
    assert dev.stats().bucket_hits == {1: 200}
    assert dev.memory_stats()["used_bytes"] == 0


def test_model_repr(dev: rt.Device) -> None:
    model = matmul_model(dev, name="rep")
    assert repr(model) == (
        "Model(name='rep', inputs=[(3, 4) float32, (4, 5) float32], outputs=[(3, 5) float32], device=host:0)"
    )
    assert model.device == dev


def test_interpreter_exit_with_daemon_thread_running_models() -> None:
    # A daemon thread inside Model.run when the interpreter exits must not crash the process
    # (pybind11's gil_scoped_release would abort here), and leftover models/buffers, also in
    # reference cycles, must not be touched after Python is gone.
    script = textwrap.dedent(
        """
        import threading
        import numpy as np
        import spiky_runtime as rt

        dev = rt.Device()
        spec = rt.TensorSpec((4,), "float32")

        class Holder:
            pass

        h = Holder()
        h.self = h
        h.model = dev.load_host_model(lambda xs: [xs[0] + 1], [spec], [spec], "cycle")
        h.buf = dev.allocate(100)
        model = dev.load_host_model(lambda xs: [xs[0] * 2], [spec], [spec], "busy")
        started = threading.Event()

        def spin():
            while True:
                model.run([np.ones(4, np.float32)])
                started.set()

        threading.Thread(target=spin, daemon=True).start()
        started.wait()
        print("ok")
        """
    )
    for _ in range(2):
        proc = subprocess.run(
            [sys.executable, "-X", "dev", "-c", script], check=False, capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == "ok"


# ---- dtypes: every row of dtype_table.py (bfloat16 is ml_dtypes.bfloat16) -------------------


def test_supported_dtypes_are_the_table(dtype_table: Any) -> None:
    # The runtime lists its dtypes in error messages, in table order: the test table matches.
    with pytest.raises(rt.InvalidArgumentError) as info:
        rt.TensorSpec((1,), np.complex64)
    assert str(info.value) == (
        "TensorSpec: unsupported dtype 'complex64'; expected one of: " + ", ".join(dtype_table.NAMES)
    )


@pytest.mark.smoke
def test_tensor_spec_every_dtype(dtype_case: Any) -> None:
    np_dtype = dtype_case.np_dtype
    specs = [rt.TensorSpec((2, 3), dt) for dt in (dtype_case.name, np_dtype, np_dtype.type)]
    for spec in specs:
        assert spec.dtype == np_dtype and spec.nbytes == 6 * dtype_case.itemsize
        assert spec == specs[0] and hash(spec) == hash(specs[0])
        assert repr(spec) == f"TensorSpec(shape=(2, 3), dtype={dtype_case.name})"
    assert specs[0].dtype is specs[0].dtype  # one numpy dtype object per dtype, made once


@pytest.mark.smoke
def test_host_model_round_trip_every_dtype(dev: rt.Device, dtype_case: Any) -> None:
    seen: dict[str, Any] = {}

    def fn(xs: list[np.ndarray[Any, Any]]) -> list[np.ndarray[Any, Any]]:
        x = xs[0]
        seen.update(ptr=x.ctypes.data, dtype=x.dtype, writeable=x.flags.writeable)
        return [x[::-1].copy(), x]

    spec = rt.TensorSpec((4, 5), dtype_case.name)
    model = dev.load_host_model(fn, [spec], [spec, spec], name="flip")
    x = dtype_case.sample((4, 5), seed=3)
    flipped, same = model.run([x])
    # The fn saw the caller's array itself (borrowed: no copy, no conversion), read-only.
    assert seen == {"ptr": x.ctypes.data, "dtype": dtype_case.np_dtype, "writeable": False}
    assert flipped.dtype == same.dtype == dtype_case.np_dtype
    np.testing.assert_array_equal(dtype_case.bits(same), dtype_case.bits(x))
    np.testing.assert_array_equal(dtype_case.bits(flipped), dtype_case.bits(x[::-1]))
    # Device tensors: H2D, D2H and a device input of a bundle, bit for bit.
    t = dev.to_device(x)
    assert t.dtype == dtype_case.np_dtype and t.shape == (4, 5) and t.nbytes == x.nbytes
    assert repr(t) == f"DeviceTensor(shape=(4, 5), dtype={dtype_case.name}, device=host:0)"
    np.testing.assert_array_equal(dtype_case.bits(t.numpy()), dtype_case.bits(x))
    bundle = rt.Bundle({4: model}, [{}], [{}, {}], name="flip")
    out_t, _ = bundle.submit([t], to_host=False).result()
    np.testing.assert_array_equal(dtype_case.bits(out_t.numpy()), dtype_case.bits(x[::-1]))


# Same itemsize, different bits: a 16-bit array of the wrong type is never taken as another.
CONFUSABLE = [("bfloat16", "float16"), ("float16", "bfloat16"), ("bfloat16", "int16"), ("int16", "bfloat16")]


@pytest.mark.parametrize(("declared", "given"), CONFUSABLE)
def test_16_bit_dtypes_are_never_confused(dev: rt.Device, dtype_table: Any, declared: str, given: str) -> None:
    spec = rt.TensorSpec((4,), declared)
    wrong = np.zeros(4, dtype_table.BY_NAME[given].np_dtype)
    model = dev.load_host_model(lambda xs: [xs[0]], [spec], [spec], name="m")
    with pytest.raises(rt.InvalidArgumentError,
                       match=rf"^model 'm': input 0: expected shape \(4,\) dtype {declared}, got shape \(4,\) "
                             rf"dtype {given}$"):
        model.run([wrong])
    bad_out = dev.load_host_model(lambda xs: [wrong], [spec], [spec], name="out")
    with pytest.raises(rt.InvalidArgumentError,
                       match=rf"^model 'out': output 0: host fn returned shape \(4,\) dtype {given}, expected shape "
                             rf"\(4,\) dtype {declared}$"):
        bad_out.run([np.zeros(4, dtype_table.BY_NAME[declared].np_dtype)])
    bundle = rt.Bundle({4: model}, [{0: "n"}], [{0: "n"}], name="b")
    with pytest.raises(rt.InvalidArgumentError, match=rf"bundle 'b': input 0: expected dtype {declared} and 1 dims, "
                                                      rf"got shape \(4,\) dtype {given}"):
        bundle.run([wrong])


def test_bfloat16_lookalikes_are_rejected(dev: rt.Device) -> None:
    bf16 = np.dtype(ml_dtypes.bfloat16)
    with pytest.raises(rt.InvalidArgumentError, match=r"TensorSpec: unsupported dtype 'uint16'; expected one of: .*"):
        rt.TensorSpec((1,), np.uint16)  # the torch boundary's bit view: must be viewed as bfloat16
    with pytest.raises(rt.InvalidArgumentError, match=r"unsupported dtype 'void16'"):
        rt.TensorSpec((1,), np.dtype("V2"))  # raw 2-byte records are not bfloat16
    swapped = bf16.newbyteorder(">" if np.little_endian else "<")
    with pytest.raises(rt.InvalidArgumentError, match=r"has non-native byte order; expected native bfloat16"):
        rt.TensorSpec((1,), swapped)
    with pytest.raises(rt.InvalidArgumentError, match=r"Device.to_device: unsupported dtype 'float8_e4m3fn'"):
        dev.to_device(np.zeros(2, ml_dtypes.float8_e4m3fn))


def _python(script: str) -> str:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_ml_dtypes_is_imported_only_when_a_bfloat16_dtype_is_needed() -> None:
    out = _python("""
        import sys
        import numpy as np
        import spiky_runtime as rt
        print("import", "ml_dtypes" in sys.modules)
        spec = rt.TensorSpec((2,), "bfloat16")
        print("spec", "ml_dtypes" in sys.modules, spec.nbytes, spec)
        print("dtype", spec.dtype, "ml_dtypes" in sys.modules)
    """)
    assert out.splitlines() == ["import False", "spec False 4 TensorSpec(shape=(2,), dtype=bfloat16)",
                                "dtype bfloat16 True"]


def test_without_ml_dtypes_bfloat16_arrays_are_a_clear_error() -> None:
    out = _python("""
        import sys
        sys.modules["ml_dtypes"] = None  # as if not installed: importing it raises ImportError
        import numpy as np
        import spiky_runtime as rt
        spec = rt.TensorSpec((2,), "bfloat16")
        print(spec.nbytes)
        try:
            spec.dtype
        except rt.SpikyRuntimeError as e:
            print(type(e).__name__, e)
        try:  # a 2-byte extension-kind array is not mistaken for bfloat16, nor an import error
            rt.Device("host").to_device(np.zeros(2, "V2"))
        except rt.InvalidArgumentError as e:
            print(type(e).__name__, e)
    """)
    lines = out.splitlines()
    assert lines[0] == "4"
    assert lines[1].startswith("SpikyRuntimeError bfloat16 arrays need the ml_dtypes package (numpy has no bfloat16 "
                               "of its own); install it with 'pip install ml_dtypes' (importing it failed: ")
    assert lines[2].startswith("InvalidArgumentError Device.to_device: unsupported dtype 'void16'; expected one of")
