"""Verifier rejections (each names the node) and the text form."""

from __future__ import annotations

import numpy as np
import pytest

from spiky_ir import DType, Graph, IRError, TensorType, execute, print_graph, verify
from spiky_ir.ir import Value

pytestmark = pytest.mark.smoke


def _graph() -> Graph:
    g = Graph()
    x = g.add_input("x", TensorType((4, "s0"), DType.float32))
    c = g.add_op("constant", [], {"value": 2.0, "dtype": DType.float32})
    y = g.add_op("multiply", [x, c], name="scaled")
    g.set_outputs([g.add_op("exp", [y])])
    return g


def test_text_form() -> None:
    assert print_graph(_graph()) == (
        "spiky-ir v1\n"
        "graph main(%x: f32[4,s0]) {\n"
        "  %constant = constant() {dtype=f32, value=2.0} : f32[]\n"
        "  %scaled = multiply(%x, %constant) : f32[4,s0]\n"
        "  %exp = exp(%scaled) : f32[4,s0]\n"
        "  return %exp\n"
        "}\n"
    )


def test_valid_graph_verifies() -> None:
    verify(_graph())


def test_use_before_definition() -> None:
    g = _graph()
    g.nodes.reverse()
    with pytest.raises(IRError, match=r"node #0 %exp = exp.* uses %scaled before it is defined"):
        verify(g)


def test_wrong_recorded_type() -> None:
    g = _graph()
    g.nodes[-1].outputs[0].type = TensorType((4, 4), DType.float32)
    with pytest.raises(IRError, match=r"result %exp has type f32\[4,4\], op infers f32\[4,s0\]"):
        verify(g)


def test_undefined_output() -> None:
    g = _graph()
    g.outputs = [Value("ghost", TensorType((1,), DType.float32))]
    with pytest.raises(IRError, match=r"graph output %ghost is not defined"):
        verify(g)


def test_duplicate_definition() -> None:
    g = _graph()
    g.nodes.append(g.nodes[1])
    with pytest.raises(IRError, match=r"defined twice"):
        verify(g)


def test_no_outputs() -> None:
    g = Graph(name="empty")
    g.add_input("x", TensorType((1,), DType.float32))
    with pytest.raises(IRError, match=r"graph 'empty' has no outputs"):
        verify(g)


def test_execute_checks_inputs() -> None:
    g = Graph()
    x = g.add_input("x", TensorType((2,), DType.float32))
    g.set_outputs([x])
    with pytest.raises(IRError, match=r"input %x of graph 'main' expects f32\[2\], got f64\[3\]"):
        execute(g, [np.zeros(3)])
    (out,) = execute(g, [np.ones(2, np.float32)])
    out[0] = 5.0  # outputs are fresh arrays, never views of the inputs
    assert out.tolist() == [5.0, 1.0]


def test_symbolic_dims_bind_from_input_shapes() -> None:
    (out,) = execute(_graph(), [np.ones((4, 3), np.float32)])
    np.testing.assert_allclose(out, np.full((4, 3), np.exp(2.0), np.float32), rtol=1e-6)
    with pytest.raises(IRError, match=r"input %x expects rank 2"):
        execute(_graph(), [np.ones(3, np.float32)])
