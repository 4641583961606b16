"""Host driver through Buffer: round trips per dtype (the table of dtype_table.py), offsets, bounds,
device copies."""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np
import pytest

import spiky_runtime as rt


@pytest.mark.smoke
def test_write_read_round_trip(dev: rt.Device, dtype_case: Any) -> None:
    x = dtype_case.sample((3, 5, 7))
    buf = dev.allocate(x.nbytes)
    buf.write(x)
    y = buf.read(dtype_case.name, (3, 5, 7))
    assert y.dtype == dtype_case.np_dtype
    assert y.shape == (3, 5, 7)
    np.testing.assert_array_equal(dtype_case.bits(y), dtype_case.bits(x))  # bit-exact (NaN payloads too)
    assert y.flags.writeable and y.flags.owndata  # a new array, not a view of device memory
    y[...] = y.dtype.type(0)
    np.testing.assert_array_equal(dtype_case.bits(buf.read(dtype_case.np_dtype, (3, 5, 7))), dtype_case.bits(x))
    # At an offset, in a dtype of the same size: raw bytes, reinterpreted.
    buf.write(x[0, 0, :2], offset=dtype_case.itemsize)
    got = buf.read(dtype_case.name, (3,))
    np.testing.assert_array_equal(dtype_case.bits(got), dtype_case.bits(np.concatenate([x.ravel()[:1], x[0, 0, :2]])))


@pytest.mark.parametrize(
    "dtype",
    [np.float32, np.dtype("float32"), "float32", "f4", ml_dtypes.bfloat16, np.dtype(ml_dtypes.bfloat16), "bfloat16"],
    ids=repr,
)
def test_read_accepts_numpy_types_and_dtypes(dev: rt.Device, dtype: Any) -> None:
    x = np.arange(6, dtype=np.float32).astype(dtype)
    buf = dev.allocate(x.nbytes)
    buf.write(x)
    got = buf.read(dtype, (2, 3))
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got.astype(np.float32), np.arange(6, dtype=np.float32).reshape(2, 3))


def test_offsets(dev: rt.Device) -> None:
    buf = dev.allocate(64)
    buf.write(np.zeros(16, dtype=np.int32))
    buf.write(np.array([7, 8, 9], dtype=np.int32), offset=20)
    got = buf.read(np.int32, (16,))
    expected = np.zeros(16, dtype=np.int32)
    expected[5:8] = [7, 8, 9]
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(buf.read(np.int32, (2,), offset=24), [8, 9])
    # The last byte is reachable; an empty read at the end is in bounds.
    buf.write(np.array([255], dtype=np.uint8), offset=63)
    assert buf.read(np.uint8, (1,), offset=63)[0] == 255
    assert buf.read(np.uint8, (0,), offset=64).shape == (0,)


def test_non_contiguous_write_is_copied(dev: rt.Device) -> None:
    x = np.arange(24, dtype=np.int64).reshape(4, 6)
    view = x[:, ::2]  # not C-contiguous
    buf = dev.allocate(view.nbytes)
    buf.write(view)
    np.testing.assert_array_equal(buf.read(np.int64, (4, 3)), view)
    np.testing.assert_array_equal(buf.read(np.int64, (4, 3)), [[0, 2, 4], [6, 8, 10], [12, 14, 16], [18, 20, 22]])


@pytest.mark.smoke
def test_out_of_bounds_write(dev: rt.Device) -> None:
    buf = dev.allocate(16)
    with pytest.raises(rt.InvalidArgumentError, match=r"offset 8 \+ 16 bytes = 24 exceeds the buffer size of 16"):
        buf.write(np.zeros(4, dtype=np.float32), offset=8)
    with pytest.raises(rt.InvalidArgumentError, match="exceeds the buffer size of 16"):
        buf.write(np.zeros(17, dtype=np.uint8))
    with pytest.raises(rt.InvalidArgumentError, match="offset must be >= 0, got -1"):
        buf.write(np.zeros(1, dtype=np.uint8), offset=-1)
    with pytest.raises(ValueError):  # InvalidArgumentError is a ValueError too
        buf.write(np.zeros(1, dtype=np.uint8), offset=16)


def test_out_of_bounds_read(dev: rt.Device) -> None:
    buf = dev.allocate(16)
    with pytest.raises(rt.InvalidArgumentError, match=r"offset 0 \+ 24 bytes = 24 exceeds the buffer size of 16"):
        buf.read(np.float64, (3,))
    with pytest.raises(rt.InvalidArgumentError, match=r"offset 12 \+ 8 bytes"):
        buf.read(np.float32, (2,), offset=12)
    with pytest.raises(rt.InvalidArgumentError, match=r"dim 1 of shape .* is negative"):
        buf.read(np.float32, (2, -1))
    with pytest.raises(rt.InvalidArgumentError, match="unsupported dtype 'complex64'"):
        buf.read(np.complex64, (1,))


def test_rounded_capacity_is_not_addressable(dev: rt.Device) -> None:
    # The pool hands out a 512-byte block, but the buffer is 100 bytes: I/O stays within 100.
    buf = dev.allocate(100)
    with pytest.raises(rt.InvalidArgumentError, match="exceeds the buffer size of 100"):
        buf.write(np.zeros(101, dtype=np.uint8))


def test_freed_buffer_io_raises(dev: rt.Device) -> None:
    buf = dev.allocate(8)
    buf.free()
    buf.free()  # double free is harmless
    assert dev.memory_stats()["used_bytes"] == 0
    with pytest.raises(rt.SpikyRuntimeError, match="already freed"):
        buf.write(np.zeros(2, dtype=np.float32))
    with pytest.raises(rt.SpikyRuntimeError, match="already freed"):
        buf.read(np.float32, (2,))


@pytest.mark.smoke
def test_copy_from(dev: rt.Device) -> None:
    x = np.arange(32, dtype=np.float32)
    src = dev.allocate(x.nbytes)
    src.write(x)
    dst = dev.allocate(x.nbytes)
    dst.write(np.full(32, -1, dtype=np.float32))
    dst.copy_from(src)  # whole buffer
    np.testing.assert_array_equal(dst.read(np.float32, (32,)), x)

    dst.write(np.full(32, -1, dtype=np.float32))
    dst.copy_from(src, src_offset=8 * 4, dst_offset=4 * 4, nbytes=3 * 4)
    expected = np.full(32, -1, dtype=np.float32)
    expected[4:7] = x[8:11]
    np.testing.assert_array_equal(dst.read(np.float32, (32,)), expected)

    dst.copy_from(src, src_offset=30 * 4)  # nbytes=None: the rest of src (2 floats)
    expected[0:2] = x[30:32]
    np.testing.assert_array_equal(dst.read(np.float32, (32,)), expected)


def test_copy_from_bounds_and_overlap(dev: rt.Device) -> None:
    src = dev.allocate(16)
    dst = dev.allocate(8)
    with pytest.raises(rt.InvalidArgumentError, match=r"copy_from \(destination\)"):
        dst.copy_from(src)  # 16 bytes do not fit into 8
    with pytest.raises(rt.InvalidArgumentError, match=r"copy_from \(source\)"):
        dst.copy_from(src, src_offset=12, nbytes=8)
    # Overlapping copy within one buffer behaves like memmove.
    x = np.arange(4, dtype=np.int32)
    src.write(x)
    src.copy_from(src, src_offset=0, dst_offset=4, nbytes=12)
    np.testing.assert_array_equal(src.read(np.int32, (4,)), [0, 0, 1, 2])


def test_buffer_repr(dev: rt.Device) -> None:
    buf = dev.allocate(10)
    assert repr(buf) == "Buffer(nbytes=10, device=host:0)"
    buf.free()
    assert repr(buf) == "Buffer(nbytes=10, device=host:0, freed)"
