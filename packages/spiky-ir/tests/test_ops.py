"""The op registry: shape/dtype rules and numpy references, one table for all elementwise ops."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from spiky_ir import (
    DType,
    Graph,
    IRError,
    ShapeError,
    TensorType,
    broadcast_shapes,
    execute,
    promote,
)

pytestmark = pytest.mark.smoke

# op name → numpy function computing the expected float64 result
UNARY: dict[str, Callable[[Any], Any]] = {
    "negative": np.negative,
    "abs": np.abs,
    "exp": np.exp,
    "log": np.log,
    "sqrt": np.sqrt,
    "rsqrt": lambda x: 1 / np.sqrt(x),
    "tanh": np.tanh,
    "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
    "erf": np.vectorize(__import__("math").erf),
}
BINARY: dict[str, Callable[[Any, Any], Any]] = {
    "add": np.add,
    "subtract": np.subtract,
    "multiply": np.multiply,
    "divide": np.divide,
    "power": np.power,
    "maximum": np.maximum,
    "minimum": np.minimum,
    "equal": np.equal,
    "less": np.less,
    "greater_equal": np.greater_equal,
}
SHAPES = [((4, 16), (4, 16)), ((1,), (3, 1)), ((2, 1, 5), (4, 1)), ((), (3,))]


def _positive(shape: tuple[int, ...], seed: int) -> np.ndarray[Any, Any]:
    return np.random.default_rng(seed).uniform(0.5, 2.0, shape).astype(np.float32)


@pytest.mark.parametrize("op", sorted(UNARY))
@pytest.mark.parametrize("shape", [(), (1,), (3, 5), (2, 3, 4)])
def test_unary_matches_numpy(op: str, shape: tuple[int, ...]) -> None:
    g = Graph()
    x = g.add_input("x", TensorType(shape, DType.float32))
    g.set_outputs([g.add_op(op, [x])])
    a = _positive(shape, 0)
    (out,) = execute(g, [a])
    assert out.dtype == np.float32 and out.shape == shape
    np.testing.assert_allclose(out, UNARY[op](a.astype(np.float64)), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("op", sorted(BINARY))
@pytest.mark.parametrize(("sa", "sb"), SHAPES)
def test_binary_broadcasts_like_numpy(op: str, sa: tuple[int, ...], sb: tuple[int, ...]) -> None:
    g = Graph()
    x = g.add_input("x", TensorType(sa, DType.float32))
    y = g.add_input("y", TensorType(sb, DType.float32))
    g.set_outputs([g.add_op(op, [x, y])])
    a, b = _positive(sa, 1), _positive(sb, 2)
    (out,) = execute(g, [a, b])
    expected = BINARY[op](a.astype(np.float64), b.astype(np.float64))
    assert out.shape == np.broadcast_shapes(sa, sb)
    assert g.outputs[0].type.shape == out.shape
    np.testing.assert_allclose(out, expected, rtol=1e-6)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (DType.float32, DType.float16, DType.float32),
        (DType.int32, DType.float16, DType.float16),
        (DType.bfloat16, DType.float16, DType.float32),
        (DType.uint8, DType.int8, DType.int16),
        (DType.int64, DType.int8, DType.int64),
        (DType.bool, DType.int32, DType.int32),
        (DType.uint8, DType.int32, DType.int32),
    ],
)
def test_promotion_table(a: DType, b: DType, expected: DType) -> None:
    assert promote(a, b) is expected and promote(b, a) is expected


def test_integer_divide_gives_float32() -> None:
    g = Graph()
    x = g.add_input("x", TensorType((3,), DType.int32))
    g.set_outputs([g.add_op("divide", [x, x])])
    (out,) = execute(g, [np.array([1, 2, 3], np.int32)])
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [1.0, 1.0, 1.0])


def test_mixed_int_half_computes_in_half() -> None:
    # numpy alone would compute int32 + float16 in float64; the IR follows torch.
    g = Graph()
    x = g.add_input("x", TensorType((2,), DType.int32))
    y = g.add_input("y", TensorType((2,), DType.float16))
    g.set_outputs([g.add_op("add", [x, y])])
    (out,) = execute(g, [np.array([1, 2], np.int32), np.array([0.5, 0.25], np.float16)])
    assert out.dtype == np.float16
    np.testing.assert_array_equal(out, np.array([1.5, 2.25], np.float16))


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [((4, "s0"), ("s0",), (4, "s0")), (("s0", 1), (1, "s1"), ("s0", "s1")), ((1,), ("s0",), ("s0",))],
)
def test_symbolic_broadcast(a: tuple[Any, ...], b: tuple[Any, ...], expected: tuple[Any, ...]) -> None:
    assert broadcast_shapes(a, b) == expected


def test_incompatible_shapes_name_the_node() -> None:
    g = Graph()
    x = g.add_input("x", TensorType((4, 3), DType.float32))
    y = g.add_input("y", TensorType((5,), DType.float32))
    with pytest.raises(ShapeError, match=r"do not broadcast.*in node %add = add"):
        g.add_op("add", [x, y])


@pytest.mark.parametrize(
    ("sa", "sb", "expected"),
    [((4, 3), (3, 5), (4, 5)), ((2, 4, 3), (2, 3, 5), (2, 4, 5)), ((3,), (3, 5), (5,)), ((2, 4, 3), (3,), (2, 4))],
)
def test_matmul(sa: tuple[int, ...], sb: tuple[int, ...], expected: tuple[int, ...]) -> None:
    g = Graph()
    x = g.add_input("x", TensorType(sa, DType.float32))
    y = g.add_input("y", TensorType(sb, DType.float32))
    g.set_outputs([g.add_op("matmul", [x, y])])
    a, b = _positive(sa, 3), _positive(sb, 4)
    (out,) = execute(g, [a, b])
    assert out.shape == expected == g.outputs[0].type.shape
    np.testing.assert_allclose(out, a.astype(np.float64) @ b.astype(np.float64), rtol=1e-5)


def test_matmul_contraction_mismatch() -> None:
    g = Graph()
    x = g.add_input("x", TensorType((4, 3), DType.float32))
    y = g.add_input("y", TensorType((4, 3), DType.float32))
    with pytest.raises(ShapeError, match=r"contraction dims differ"):
        g.add_op("matmul", [x, y])


@pytest.mark.parametrize(
    ("op", "attrs", "message"),
    [
        ("transpose", {}, r"needs attribute 'axes'"),
        ("transpose", {"axes": (0, 0)}, r"not a permutation"),
        ("transpose", {"axes": (1, 0), "bogus": 1}, r"has no attribute\(s\) \['bogus'\]"),
        ("reshape", {"shape": (5, 2)}, r"element counts differ"),
        ("reshape", {"shape": 12}, r"must be dims"),
        ("broadcast_to", {"shape": (2, 4, 3)}, r"cannot broadcast"),
    ],
)
def test_bad_attributes(op: str, attrs: dict[str, Any], message: str) -> None:
    g = Graph()
    x = g.add_input("x", TensorType((3, 4), DType.float32))
    with pytest.raises(IRError, match=message):
        g.add_op(op, [x], attrs)


def test_transform_ops() -> None:
    g = Graph()
    x = g.add_input("x", TensorType((3, 4), DType.float32))
    t = g.add_op("transpose", [x], {"axes": (1, 0)})
    r = g.add_op("reshape", [t], {"shape": (2, 6)})
    b = g.add_op("broadcast_to", [g.add_op("reshape", [x], {"shape": (1, 12)})], {"shape": (2, 12)})
    c = g.add_op("astype", [r], {"dtype": DType.int32})
    g.set_outputs([r, b, c])
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    r_out, b_out, c_out = execute(g, [a])
    np.testing.assert_array_equal(r_out, a.T.reshape(2, 6))
    np.testing.assert_array_equal(b_out, np.broadcast_to(a.reshape(1, 12), (2, 12)))
    assert c_out.dtype == np.int32


def test_unknown_op() -> None:
    g = Graph()
    with pytest.raises(IRError, match=r"unknown op 'fft'; known ops: .*add"):
        g.add_op("fft", [])
