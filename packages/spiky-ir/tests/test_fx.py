"""FX → IR lowering, op by op against torch eager (one table, several shapes)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the FX lowering needs torch (spiky-ir[torch])")

from torch._decomp import core_aten_decompositions  # noqa: E402
from torch.fx.experimental.proxy_tensor import make_fx  # noqa: E402

from spiky_ir import LoweringError, execute, verify  # noqa: E402
from spiky_ir.fx import lower_fx  # noqa: E402

F = torch.nn.functional

# name → (function, input shapes). Each is traced to core ATen, lowered, run by the
# numpy reference executor and compared with eager at fp32 tolerance.
CASES: dict[str, tuple[Callable[..., Any], list[tuple[int, ...]]]] = {
    "add": (lambda a, b: a + b, [(4, 16), (4, 16)]),
    "add_broadcast": (lambda a, b: a + b, [(4, 16), (16,)]),
    "add_alpha": (lambda a, b: torch.add(a, b, alpha=3), [(4, 16), (4, 16)]),
    "add_scalar": (lambda a: a + 2.5, [(3, 5)]),
    "sub": (lambda a, b: a - b, [(4, 16), (1, 16)]),
    "sub_alpha": (lambda a, b: torch.sub(a, b, alpha=0.5), [(4, 16), (4, 16)]),
    "rsub_scalar": (lambda a: 1 - a, [(7,)]),
    "mul": (lambda a, b: a * b, [(2, 3, 4), (3, 1)]),
    "mul_scalar": (lambda a: a * 3, [(4, 4)]),
    "div": (lambda a, b: a / b, [(4, 16), (4, 16)]),
    "div_scalar": (lambda a: a / 3, [(4, 16)]),
    "neg": (lambda a: -a, [(5,)]),
    "exp": (torch.exp, [(4, 16)]),
    "tanh": (torch.tanh, [(4, 16)]),
    "sigmoid": (torch.sigmoid, [(1,)]),
    "relu": (lambda a: F.relu(a), [(4, 16)]),
    "silu": (lambda a: F.silu(a), [(4, 16)]),
    "gelu": (lambda a: F.gelu(a), [(4, 16)]),
    "gelu_tanh": (lambda a: F.gelu(a, approximate="tanh"), [(4, 16)]),
    "mm": (torch.mm, [(4, 8), (8, 3)]),
    "addmm": (lambda b, x, w: torch.addmm(b, x, w), [(3,), (4, 8), (8, 3)]),
    "addmm_scaled": (lambda b, x, w: torch.addmm(b, x, w, beta=0.5, alpha=2), [(4, 3), (4, 8), (8, 3)]),
    "bmm": (torch.bmm, [(2, 4, 8), (2, 8, 3)]),
    "permute": (lambda a: a.permute(2, 0, 1), [(2, 3, 4)]),
    "t": (lambda a: a.t(), [(3, 4)]),
    "view": (lambda a: a.view(-1, 8), [(4, 16)]),
    "reshape_of_transpose": (lambda a: a.t().reshape(64), [(4, 16)]),
    "linear": (lambda x, w, b: F.linear(x, w, b), [(4, 32), (64, 32), (64,)]),
    "linear_3d": (lambda x, w: F.linear(x, w), [(2, 4, 32), (64, 32)]),
}


@pytest.mark.smoke
@pytest.mark.parametrize("name", sorted(CASES))
def test_lowering_matches_eager(name: str) -> None:
    fn, shapes = CASES[name]
    gen = torch.Generator().manual_seed(0)
    inputs = [torch.randn(s, generator=gen) for s in shapes]
    gm = make_fx(fn, decomposition_table=core_aten_decompositions())(*inputs)
    graph = lower_fx(gm)
    verify(graph)
    outputs = execute(graph, [t.numpy() for t in inputs])
    expected = fn(*inputs)
    assert len(outputs) == 1
    assert outputs[0].dtype == np.float32
    np.testing.assert_allclose(outputs[0], expected.numpy(), rtol=1e-5, atol=1e-5)


def test_unsupported_op_names_aten_op_and_node() -> None:
    def fn(a: Any) -> Any:
        return torch.special.bessel_j0(a) + 1

    gm = make_fx(fn, decomposition_table=core_aten_decompositions())(torch.randn(3))
    message = r"aten\.special_bessel_j0\.default \(node 'special_bessel_j0'\).*no spiky-ir lowering"
    with pytest.raises(LoweringError, match=message):
        lower_fx(gm)


def test_int_tensor_with_float_scalar_follows_torch_dtype() -> None:
    def fn(a: Any) -> Any:
        return a * 2.5

    a = torch.arange(6, dtype=torch.int32)
    gm = make_fx(fn, decomposition_table=core_aten_decompositions())(a)
    (out,) = execute(lower_fx(gm), [a.numpy()])
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, fn(a).numpy())
