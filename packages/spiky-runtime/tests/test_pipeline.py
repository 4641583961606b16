"""The pipelined stream: per-call correctness, device-resident chains, errors, threads, stats."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import numpy as np
import pytest

import spiky_runtime as rt

BUCKETS = (8, 16, 32)


def affine_bundle(dev: rt.Device, pipelined: bool, fn: Any = None) -> rt.Bundle:
    """y = 2x + 1 and row sums over (s0, 3) float32 inputs, buckets 8/16/32."""
    body = fn or (lambda xs: [xs[0] * 2 + 1, xs[0].sum(axis=1)])
    models = {
        b: dev.load_host_model(
            body,
            [rt.TensorSpec((b, 3), "float32")],
            [rt.TensorSpec((b, 3), "float32"), rt.TensorSpec((b,), "float32")],
            f"affine{b}",
        )
        for b in BUCKETS
    }
    return rt.Bundle(models, [{0: "s0"}], [{0: "s0"}, {0: "s0"}], name="affine", pipelined=pipelined)


def make_input(i: int) -> np.ndarray[Any, Any]:
    rows = 1 + (i * 7) % 32
    return (np.arange(rows * 3, dtype=np.float32).reshape(rows, 3) + 1000 * i).astype(np.float32)


def check(x: np.ndarray[Any, Any], outs: list[Any]) -> None:
    y, s = outs
    assert y.shape == x.shape and s.shape == (x.shape[0],)
    np.testing.assert_array_equal(y, x * 2 + 1)
    np.testing.assert_allclose(s, x.sum(axis=1), rtol=1e-6)


@pytest.mark.smoke
@pytest.mark.parametrize("to_host", [True, False])
def test_pipelined_loop_100_distinct_inputs(dev: rt.Device, to_host: bool) -> None:
    bundle = affine_bundle(dev, pipelined=True)
    inputs = [make_input(i) for i in range(100)]
    futures = [bundle.submit([x], to_host=to_host) for x in inputs]
    for x, fut in zip(inputs, futures, strict=True):
        outs = fut.result()
        check(x, outs if to_host else [t.numpy() for t in outs])
    dev.synchronize()
    assert dev.stats().total_executions == 100
    assert dev.memory_stats()["used_bytes"] == 0 or not to_host  # device outputs still held
    del futures, fut, outs  # the last call is still bound to the loop variables
    assert dev.memory_stats()["used_bytes"] == 0


def test_inputs_are_kept_alive_by_the_call(dev: rt.Device) -> None:
    # The caller drops its only reference right after submit: the call must own the array.
    bundle = affine_bundle(dev, pipelined=True)
    futures = [bundle.submit([make_input(i)]) for i in range(20)]
    for i, fut in enumerate(futures):
        check(make_input(i), fut.result())


def test_sync_and_pipelined_identical(dev: rt.Device) -> None:
    sync = affine_bundle(dev, pipelined=False)
    piped = affine_bundle(dev, pipelined=True)
    for i in range(30):
        x = make_input(i)
        a = sync.run([x])
        b = piped.run([x])
        for u, v in zip(a, b, strict=True):
            np.testing.assert_array_equal(u, v)
        a = sync.run([x], unpad=False)
        b = piped.run([x], unpad=False)
        for u, v in zip(a, b, strict=True):
            np.testing.assert_array_equal(u, v)


def test_sync_and_pipelined_identical_every_dtype(dev: rt.Device, dtype_case: Any) -> None:
    """Per dtype, bit for bit: a flip along the padded dim (so the fill value moves into the
    data) and the padded input itself, through host and device outputs, chained calls included."""
    fill = dtype_case.fills[1]
    bits = dtype_case.bits

    def bundle(pipelined: bool) -> rt.Bundle:
        models = {
            b: dev.load_host_model(lambda xs: [xs[0][::-1].copy(), np.array(xs[0])],
                                   [rt.TensorSpec((b, 3), dtype_case.name)],
                                   [rt.TensorSpec((b, 3), dtype_case.name)] * 2, f"flip{b}")
            for b in (4, 8)
        }
        return rt.Bundle(models, [{0: "s0"}], [{0: "s0"}, {0: "s0"}], fill_values=[fill], name="flip",
                         pipelined=pipelined)

    sync, piped = bundle(False), bundle(True)
    xs = [dtype_case.sample((1 + i % 8, 3), seed=i) for i in range(12)]
    futures = [piped.submit([x], to_host=i % 2 == 0) for i, x in enumerate(xs)]  # all in flight
    chained = piped.submit([futures[1].result()[1]], to_host=False)  # a pending device tensor as input
    for i, (x, fut) in enumerate(zip(xs, futures, strict=True)):
        want = sync.run([x])
        got = fut.result() if i % 2 == 0 else [t.numpy() for t in fut.result()]
        for u, v in zip(want, got, strict=True):
            assert u.dtype == v.dtype == dtype_case.np_dtype and u.shape == v.shape
            np.testing.assert_array_equal(bits(u), bits(v))
        padded = np.full((4 if len(x) <= 4 else 8, 3), dtype_case.convert(fill))
        padded[: len(x)] = x
        np.testing.assert_array_equal(bits(want[0]), bits(padded[::-1][: len(x)]))  # fill rows moved in
        np.testing.assert_array_equal(bits(want[1]), bits(x))
    np.testing.assert_array_equal(bits(chained.result()[1].numpy()), bits(xs[1]))
    dev.synchronize()


@pytest.mark.parametrize("pipelined", [False, True])
def test_stats_on_both_paths(dev: rt.Device, pipelined: bool) -> None:
    bundle = affine_bundle(dev, pipelined=pipelined)
    for i in range(10):
        bundle.submit([make_input(i)]).result()
    bundle.submit([np.ones((8, 3), np.float32)], to_host=False).result()
    dev.synchronize()
    s = dev.stats()
    assert s.total_executions == 11
    assert sum(s.bucket_hits.values()) == 11 and set(s.bucket_hits) <= set(BUCKETS)
    assert s.pad_ratio > 1.0
    for field in ("total_execution_time_ms", "total_h2d_time_ms", "total_exec_time_ms", "total_d2h_time_ms",
                  "total_pad_time_ms", "min_execution_time_ms", "max_execution_time_ms"):
        assert getattr(s, field) > 0, field
    assert s.min_execution_time_ms <= s.max_execution_time_ms <= s.total_execution_time_ms
    dev.reset_stats()
    s = dev.stats()
    assert (s.total_executions, s.bucket_hits, s.pad_ratio, s.total_pad_time_ms) == (0, {}, 0.0, 0.0)


@pytest.mark.parametrize(("rows", "pipelined", "h2d_bytes"), [
    (8, False, 0),        # used as it is: the host driver borrows the caller's array, no copy
    (5, False, 5 * 12),   # padded to bucket 8: the actual bytes are copied into a pool block
    (8, True, 0),         # pipelined calls borrow too (the call keeps the array alive)
])
def test_host_transfer_bytes_count_only_real_copies(dev: rt.Device, rows: int, pipelined: bool,
                                                     h2d_bytes: int) -> None:
    bundle = affine_bundle(dev, pipelined=pipelined)
    x = np.arange(rows * 3, dtype=np.float32).reshape(rows, 3)
    check(x, bundle.run([x]))
    s = dev.stats()
    assert s.call_h2d_bytes == s.total_h2d_bytes == h2d_bytes
    assert s.mean_h2d_bytes_per_call == h2d_bytes
    if rows == 8:  # unpadded outputs are written into the returned arrays in place: 0 bytes down
        assert s.call_d2h_bytes == s.total_d2h_bytes == 0


def test_device_resident_chain(dev: rt.Device) -> None:
    bundle = affine_bundle(dev, pipelined=True)
    x = make_input(3)
    t = dev.to_device(x)
    assert t.ready() and t.shape == x.shape and t.dtype == np.float32
    # Each call consumes the previous call's device output, possibly before it is ready.
    expected = x
    for _ in range(5):
        y, _s = bundle.submit([t], to_host=False).result()
        t = y
        expected = expected * 2 + 1
    t.wait()
    np.testing.assert_array_equal(t.numpy(), expected)
    assert "DeviceTensor(shape=" in repr(t)


def test_error_in_model_reaches_result_and_stream_recovers(dev: rt.Device) -> None:
    def body(xs: list[np.ndarray[Any, Any]]) -> list[np.ndarray[Any, Any]]:
        if xs[0][0, 0] < 0:
            raise KeyError("negative input")
        return [xs[0] * 2 + 1, xs[0].sum(axis=1)]

    for pipelined in (False, True):
        bundle = affine_bundle(dev, pipelined=pipelined, fn=body)
        bad = bundle.submit([-np.ones((4, 3), np.float32)], to_host=False)
        dependant = bundle.submit([bad.result()[0]])
        good = bundle.submit([make_input(1)])
        with pytest.raises(KeyError, match="negative input"):
            bad.wait()
        with pytest.raises(KeyError, match="negative input"):
            dependant.result()
        with pytest.raises(KeyError):
            bad.result()[1].numpy()
        check(make_input(1), good.result())
    dev.synchronize()
    assert dev.memory_stats()["used_bytes"] == 0


def test_submit_from_several_threads(dev: rt.Device) -> None:
    bundle = affine_bundle(dev, pipelined=True)
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            futures = [(i, bundle.submit([make_input(k * 100 + i)])) for i in range(25)]
            for i, fut in futures:
                check(make_input(k * 100 + i), fut.result())
        except BaseException as e:  # surfaced by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    dev.synchronize()
    assert dev.stats().total_executions == 100


def test_back_pressure_with_slow_model(dev: rt.Device) -> None:
    def slow(xs: list[np.ndarray[Any, Any]]) -> list[np.ndarray[Any, Any]]:
        time.sleep(0.002)
        return [xs[0] * 2 + 1, xs[0].sum(axis=1)]

    bundle = affine_bundle(dev, pipelined=True, fn=slow)
    futures = [bundle.submit([make_input(i)], to_host=False) for i in range(30)]
    dev.synchronize()
    assert all(f.done() for f in futures)
    for i, f in enumerate(futures):
        check(make_input(i), [t.numpy() for t in f.result()])


def test_interpreter_exit_with_pipelined_work_in_flight() -> None:
    script = textwrap.dedent(
        """
        import time
        import numpy as np
        import spiky_runtime as rt

        dev = rt.Device()
        def slow(xs):
            time.sleep(0.01)
            return [xs[0] + 1]
        spec = rt.TensorSpec((4,), "float32")
        bundle = rt.Bundle({4: dev.load_host_model(slow, [spec], [spec], "slow")}, pipelined=True)
        futures = [bundle.submit([np.ones(4, np.float32)]) for _ in range(6)]
        print("ok")
        """
    )
    proc = subprocess.run([sys.executable, "-X", "dev", "-c", script], check=False, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
