"""Bundles: bucket choice, on-device padding along any dim with fill values, unpadding."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import spiky_runtime as rt


def spec(shape: tuple[int, ...], dtype: str = "float32") -> rt.TensorSpec:
    return rt.TensorSpec(shape, dtype)


def identity_bundle(
    dev: rt.Device, shapes: dict[int, tuple[int, ...]], dims: dict[int, str], dtype: str, fill: float = 0.0
) -> rt.Bundle:
    """One bucket per entry; the model returns its (padded) input unchanged."""
    models = {
        b: dev.load_host_model(lambda xs: [np.array(xs[0])], [spec(s, dtype)], [spec(s, dtype)], f"id{b}")
        for b, s in shapes.items()
    }
    return rt.Bundle(models, input_dims=[dims], output_dims=[dims], fill_values=[fill], name="id")


def sample(shape: tuple[int, ...], dtype: str, seed: int = 0) -> np.ndarray[Any, Any]:
    rng = np.random.default_rng(seed)
    if dtype == "bool":
        return rng.integers(0, 2, shape).astype(bool)
    return rng.integers(1, 100, shape).astype(dtype)


@pytest.mark.smoke
@pytest.mark.parametrize("rank", [1, 2, 3, 4])
def test_pad_each_dim_every_dtype(dev: rt.Device, dtype_case: Any, rank: int) -> None:
    base = (5, 4, 3, 6)[:rank]
    fill = dtype_case.fills[1]  # bool 1, int -1 (uint8 7), float -inf
    bits = dtype_case.bits
    for d in range(rank):
        bucket_shape = tuple(8 if k == d else n for k, n in enumerate(base))
        bundle = identity_bundle(dev, {8: bucket_shape}, {d: "s0"}, dtype_case.name, fill)
        x = dtype_case.sample(base, seed=d)
        # The model sees the padded tensor: data in the corner, the fill value elsewhere.
        (padded,) = bundle.run([x], unpad=False)
        assert padded.shape == bucket_shape
        expected = np.full(bucket_shape, dtype_case.convert(fill))
        expected[tuple(slice(0, n) for n in base)] = x
        np.testing.assert_array_equal(bits(padded), bits(expected))
        # Unpadded on device back to the caller's shape.
        (out,) = bundle.run([x])
        assert out.shape == x.shape and out.dtype == x.dtype
        np.testing.assert_array_equal(bits(out), bits(x))


def test_fill_values_are_written_bit_exact(dev: rt.Device, dtype_case: Any) -> None:
    """Each fill value of the table (and, for floats, random ones) is padded with exactly the bits
    numpy (ml_dtypes for bfloat16) gives that float64 value: one bundle input per value, padded
    along the inner dim (strided fills) and the outer one (the contiguous tail)."""
    fills = list(dtype_case.fills)
    if dtype_case.kind == "float":
        rng = np.random.default_rng(7)
        fills += list(rng.standard_normal(48) * 10.0 ** rng.integers(-45, 45, 48))
    n = len(fills)
    bucket = [spec((4, 4), dtype_case.name)] * n
    model = dev.load_host_model(lambda xs: [np.array(x) for x in xs], bucket, bucket, "fills")
    bundle = rt.Bundle({4: model}, input_dims=[{0: "s0", 1: "s1"}] * n, output_dims=[None] * n,
                       fill_values=fills, name="fills", bucket_sizes={4: {"s0": 4, "s1": 4}})
    xs = [dtype_case.sample((3, 2), seed=i) for i in range(n)]
    padded = bundle.run(xs)
    for fill, x, out in zip(fills, xs, padded, strict=True):
        want = np.full((4, 4), dtype_case.convert(fill))
        want[:3, :2] = x
        np.testing.assert_array_equal(dtype_case.bits(out), dtype_case.bits(want), err_msg=f"fill value {fill!r}")


def test_unrepresentable_fill_values_are_rejected(dev: rt.Device, dtype_table: Any) -> None:
    # Floats take every value (rounded to nearest; out of range is +-inf): the others have limits.
    cases = [case for case in dtype_table.DTYPES if case.bad_fills]
    assert {case.kind for case in cases} == {"bool", "int"}
    for case in cases:
        s = spec((4,), case.name)
        model = dev.load_host_model(lambda xs: [xs[0]], [s], [s], "m")
        expected = ("is not a bool; expected 0 or 1" if case.kind == "bool"
                    else f"is not representable as {case.name}; expected an integer in range")
        for fill in case.bad_fills:
            with pytest.raises(rt.InvalidArgumentError, match=rf"^bundle 'b': input 0: fill value \S+ {expected}$"):
                rt.Bundle({4: model}, [{0: "s0"}], [{0: "s0"}], fill_values=[fill], name="b")


def test_pads_every_dim_at_once_with_one_symbol(dev: rt.Device) -> None:
    shapes = {b: (b, 3, b) for b in (4, 8, 16)}
    bundle = identity_bundle(dev, shapes, {0: "s0", 2: "s0"}, "float32", fill=-1.0)
    assert bundle.buckets == [4, 8, 16]
    for n, bucket in [(1, 4), (4, 4), (5, 8), (9, 16), (16, 16)]:
        x = sample((n, 3, n), "float32", seed=n)
        fut = bundle.submit([x])
        assert fut.bucket == bucket
        np.testing.assert_array_equal(fut.result()[0], x)
        (padded,) = bundle.run([x], unpad=False)
        assert padded.shape == (bucket, 3, bucket)
        assert (padded[n:] == -1).all() and (padded[:, :, n:] == -1).all()
    assert dev.stats().bucket_hits == {4: 4, 8: 2, 16: 4}


def test_outputs_unpad_only_declared_dims(dev: rt.Device) -> None:
    # out0: (s0, 4) -> unpadded along dim 0; out1: (8,) reduced over s0 -> static, kept.
    models = {
        b: dev.load_host_model(
            lambda xs: [xs[0] * 2, xs[0].sum(axis=0)],
            [rt.TensorSpec((b, 4), "float64")],
            [rt.TensorSpec((b, 4), "float64"), rt.TensorSpec((4,), "float64")],
            f"m{b}",
        )
        for b in (8, 32)
    }
    bundle = rt.Bundle(models, input_dims=[{0: "s0"}], output_dims=[{0: "s0"}, None], name="m")
    x = np.arange(20, dtype=np.float64).reshape(5, 4)
    y, s = bundle.run([x])
    np.testing.assert_array_equal(y, x * 2)
    np.testing.assert_array_equal(s, x.sum(axis=0))  # zero padding leaves the sum unchanged


def test_symbols_must_agree_and_fit(dev: rt.Device) -> None:
    models = {
        b: dev.load_host_model(
            lambda xs: [xs[0] + xs[1]], [spec((b, 2))] * 2, [spec((b, 2))], "add"
        )
        for b in (4, 8)
    }
    bundle = rt.Bundle(models, input_dims=[{0: "s0"}, {0: "s0"}], output_dims=[{0: "s0"}], name="add")
    a = np.ones((3, 2), np.float32)
    np.testing.assert_array_equal(bundle.run([a, a])[0], a + a)
    with pytest.raises(rt.InvalidArgumentError, match=r"bundle 'add': input 1: dim 0 \('s0'\) is 4 but 's0' is 3"):
        bundle.run([a, np.ones((4, 2), np.float32)])
    with pytest.raises(rt.InvalidArgumentError, match="no bucket fits: 's0' = 9 exceeds the largest bucket 8"):
        bundle.run([np.ones((9, 2), np.float32)] * 2)
    with pytest.raises(rt.InvalidArgumentError, match=r"input 0: static dim 1 is 3, expected 2"):
        bundle.run([np.ones((3, 3), np.float32)] * 2)
    with pytest.raises(rt.InvalidArgumentError, match="expected dtype float32"):
        bundle.run([np.ones((3, 2), np.int32)] * 2)
    with pytest.raises(rt.InvalidArgumentError, match=r"bundle 'add': input 1: expected dtype float32 and 2 dims, got"):
        bundle.run([a, np.ones((3, 2, 1), np.float32)])
    with pytest.raises(rt.InvalidArgumentError, match=r"bundle 'add': input 1: static dim 1 is 5, expected 2"):
        bundle.run([a, np.ones((3, 5), np.float32)])
    with pytest.raises(rt.InvalidArgumentError, match="bundle 'add': expected 2 inputs, got 1"):
        bundle.run([a])
    np.testing.assert_array_equal(bundle.run([a, a])[0], a + a)  # the refused calls left nothing behind
    assert bundle.select_bucket([rt.TensorSpec((5, 2), "float32")] * 2) == 8


def test_bundle_construction_errors(dev: rt.Device) -> None:
    m4 = dev.load_host_model(lambda xs: [xs[0]], [spec((4, 2))], [spec((4, 2))], "a")
    m8 = dev.load_host_model(lambda xs: [xs[0]], [spec((8, 3))], [spec((8, 3))], "b")
    with pytest.raises(rt.InvalidArgumentError, match="needs at least one bucket"):
        rt.Bundle({})
    with pytest.raises(rt.InvalidArgumentError, match=r"dynamic dim 0 \('s0'\) is 4; expected the bucket size 16"):
        rt.Bundle({16: m4}, input_dims=[{0: "s0"}], output_dims=[{0: "s0"}])
    with pytest.raises(rt.InvalidArgumentError, match="static dim 1 is 3 but 2 in the other buckets"):
        rt.Bundle({4: m4, 8: m8}, input_dims=[{0: "s0"}], output_dims=[{0: "s0"}])
    with pytest.raises(rt.InvalidArgumentError, match="uses symbol 's1' that no input has"):
        rt.Bundle({4: m4}, input_dims=[{0: "s0"}], output_dims=[{0: "s1"}])
    with pytest.raises(rt.InvalidArgumentError, match="dynamic dim 5 is out of range"):
        rt.Bundle({4: m4}, input_dims=[{5: "s0"}], output_dims=[None])
    with pytest.raises(rt.InvalidArgumentError, match=r"fill value 0\.500000 is not representable"):
        m_int = dev.load_host_model(lambda xs: [xs[0]], [spec((4,), "int32")], [spec((4,), "int32")], "i")
        rt.Bundle({4: m_int}, input_dims=[{0: "s0"}], output_dims=[{0: "s0"}], fill_values=[0.5])
    with pytest.raises(rt.InvalidArgumentError, match="expected a Model"):
        rt.Bundle({4: "nope"})  # type: ignore[dict-item]


def test_pad_ratio_and_pad_time(dev: rt.Device) -> None:
    bundle = identity_bundle(dev, {8: (8, 8)}, {0: "s0", 1: "s0"}, "float32")
    bundle.run([np.ones((4, 4), np.float32)])  # 64 / 16 = 4
    bundle.run([np.ones((8, 8), np.float32)])  # 1
    s = dev.stats()
    assert s.pad_ratio == pytest.approx(2.5)
    assert s.total_pad_time_ms > 0
    assert s.total_executions == 2
    dev.reset_stats()
    assert dev.stats().pad_ratio == 0.0 and dev.stats().total_pad_time_ms == 0.0


# (batch bucket, seq bucket) per bucket id; calls take the fitting bucket with the fewest elements.
TWO_SYMBOL_BUCKETS = {1: (4, 16), 2: (8, 8), 3: (4, 8), 4: (16, 32)}


@pytest.mark.smoke
@pytest.mark.parametrize(("batch", "seq", "bucket"), [
    (3, 7, 3), (4, 8, 3), (5, 8, 2), (2, 9, 1), (8, 9, 4), (16, 32, 4), (1, 1, 3),
])
def test_independent_symbols_pick_per_symbol_buckets(dev: rt.Device, batch: int, seq: int, bucket: int) -> None:
    models = {
        i: dev.load_host_model(lambda xs: [np.array(xs[0]) + 1, np.array(xs[0].sum(axis=1))],
                               [spec((b, s))], [spec((b, s)), spec((b,))], f"two{i}")
        for i, (b, s) in TWO_SYMBOL_BUCKETS.items()
    }
    sizes = {i: {"s0": b, "s1": s} for i, (b, s) in TWO_SYMBOL_BUCKETS.items()}
    bundle = rt.Bundle(models, input_dims=[{0: "s0", 1: "s1"}], output_dims=[{0: "s0", 1: "s1"}, {0: "s0"}],
                       fill_values=[0.0], name="two", bucket_sizes=sizes)
    x = sample((batch, seq), "float32")
    assert bundle.select_bucket([spec((batch, seq))]) == bucket
    assert bundle.bucket_sizes(bucket) == sizes[bucket]
    plus_one, row_sums = bundle.run([x])
    np.testing.assert_array_equal(plus_one, x + 1)
    np.testing.assert_array_equal(row_sums, x.sum(axis=1))  # zero padding along s1 changes no sum
    padded, _ = bundle.run([x], unpad=False)
    assert padded.shape == TWO_SYMBOL_BUCKETS[bucket]


def test_independent_symbols_errors(dev: rt.Device) -> None:
    model = dev.load_host_model(lambda xs: [np.array(xs[0])], [spec((4, 16))], [spec((4, 16))], "m")
    with pytest.raises(rt.InvalidArgumentError, match=r"bucket 1 has no entry in bucket_sizes"):
        rt.Bundle({1: model, 2: model}, input_dims=[{0: "s0", 1: "s1"}], bucket_sizes={2: {"s0": 4, "s1": 16}})
    with pytest.raises(rt.InvalidArgumentError, match=r"lacks a non-negative size for symbol 's1'"):
        rt.Bundle({1: model}, input_dims=[{0: "s0", 1: "s1"}], bucket_sizes={1: {"s0": 4}})
    with pytest.raises(rt.InvalidArgumentError, match=r"dynamic dim 1 \('s1'\) is 16; expected the bucket size 8"):
        rt.Bundle({1: model}, input_dims=[{0: "s0", 1: "s1"}], bucket_sizes={1: {"s0": 4, "s1": 8}})
    bundle = rt.Bundle({1: model}, input_dims=[{0: "s0", 1: "s1"}], bucket_sizes={1: {"s0": 4, "s1": 16}})
    with pytest.raises(rt.InvalidArgumentError, match=r"no bucket fits sizes \{s0=5, s1=3\}"):
        bundle.run([np.zeros((5, 3), np.float32)])
