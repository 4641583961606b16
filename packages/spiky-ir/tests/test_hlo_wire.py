"""The proto3 codec: primitives, and agreement with XLA's own serializer in both directions."""

from __future__ import annotations

import re

import jax  # a pinned dev dependency: a missing jax must fail collection, not skip
import jax.numpy as jnp
import numpy as np
import pytest

from spiky_ir.hlo import HloModule, WireError
from spiky_ir.hlo import schema as s
from spiky_ir.hlo.builder import literal, literal_values
from spiky_ir.hlo.wire import decode_varint, encode_varint
from spiky_ir.hlo.xla_cpu import parse_with_xla

pytestmark = pytest.mark.smoke


@pytest.mark.parametrize(
    ("value", "encoded"),
    [(0, b"\x00"), (1, b"\x01"), (127, b"\x7f"), (128, b"\x80\x01"), (300, b"\xac\x02"),
     (-1, b"\xff" * 9 + b"\x01"), (2**63 - 1, b"\xff" * 8 + b"\x7f")],
)
def test_varint_matches_protobuf(value: int, encoded: bytes) -> None:
    assert encode_varint(value) == encoded
    decoded, end = decode_varint(encoded, 0)
    assert end == len(encoded)
    assert (decoded - (1 << 64) if decoded >= 1 << 63 else decoded) == value


def test_field_encoding_is_proto3() -> None:
    # element_type (field 2, varint) then dimensions (field 3, packed), defaults omitted
    assert s.Shape(element_type=11, dimensions=[2, 300]).encode() == b"\x10\x0b\x1a\x03\x02\xac\x02"
    assert s.Shape().encode() == b""
    # a set but empty sub-message is still written (presence matters for layouts)
    assert s.Shape(element_type=11, layout=s.Layout()).encode() == b"\x10\x0b\x2a\x00"
    # negative int64 round-trips
    assert s.SliceDimensions.decode(s.SliceDimensions(start=-3, limit=5).encode()).start == -3
    # maps are written in key order
    attrs = s.FrontendAttributes(map={"b": "2", "a": "1"})
    assert attrs.encode().index(b"a") < attrs.encode().index(b"b")
    assert s.FrontendAttributes.decode(attrs.encode()).map == {"a": "1", "b": "2"}


def test_unpacked_repeated_fields_are_read() -> None:
    # protobuf readers must accept unpacked repeated scalars too: dims 4 and 5 as two fields
    assert s.Shape.decode(b"\x18\x04\x18\x05").dimensions == [4, 5]


@pytest.mark.parametrize(
    ("data", "message"),
    [(b"\x18", "truncated varint"), (b"\x1a\x05\x01", "runs past the end"), (b"\x1b", "wire type 3"),
     (b"\x10\x0b\x2a\x02\x0a", "truncated|runs past")],
)
def test_malformed_bytes_raise(data: bytes, message: str) -> None:
    with pytest.raises(WireError, match=message):
        s.Shape.decode(data)


@pytest.mark.parametrize(
    ("values", "dtype_name"),
    [([1.5, -2.0], "float32"), ([1, -7], "int32"), ([2**40, -1], "int64"), ([True, False], "bool"),
     ([0.25, 3.0], "float16"), ([1.0, -8.5], "bfloat16"), ([200, 3], "uint8"), ([-100, 5], "int8"),
     ([0.1, 2.0], "float64"), ([-300, 7], "int16")],
)
def test_literal_round_trip(values: list[float], dtype_name: str) -> None:
    from spiky_ir import DType

    dtype = DType[dtype_name]
    lit = s.Literal.decode(literal(values, dtype, (2,)).encode())
    np.testing.assert_array_equal(literal_values(lit), np.asarray(values).astype(dtype.to_numpy()))


def test_reads_and_rewrites_xla_modules() -> None:
    """Decode a module XLA serialized, re-encode it, and XLA reads back the same module."""
    lowered = jax.jit(lambda a, b: (jnp.tanh(a) @ b).sum(axis=0)).lower(jnp.ones((2, 3)), jnp.ones((3, 4)))
    original = lowered.compiler_ir("hlo").as_serialized_hlo_module_proto()  # type: ignore[union-attr]
    module = HloModule.decode(original)
    assert module.entry_computation_name.startswith("main")
    assert [i.opcode for i in module.computations[-1].instructions].count("dot") == 1
    # Only debug info outside our subset (stack frame tables and their ids) is dropped.
    assert parse_with_xla(module.encode()) == _without_stack_frames(parse_with_xla(original))


def _without_stack_frames(text: str) -> str:
    text = re.sub(r"\nFileNames\n.*?\nStackFrames\n.*?\n\n", "", text, flags=re.S)
    return re.sub(r" stack_frame_id=\d+", "", text)
