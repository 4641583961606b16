"""CPU tensors cross into compiled calls as DLPack views that leave their storage resizable.

``Tensor.numpy()`` marks a storage as not resizable for good; FSDP2 frees the storage of its
unsharded parameters (``untyped_storage().resize_(0)``) after they went through a compiled call,
so inputs cross with :func:`spiky.torch.arrays.host_view` instead. Results are compared with eager
(rtol/atol 1e-5) to show the views read the right memory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from spiky.torch.arrays import host_view, to_array

DTYPES = [torch.float32, torch.float64, torch.int32, torch.int64, torch.bool, torch.bfloat16, torch.float16]


def _resizable(tensor: torch.Tensor) -> bool:
    storage = tensor.untyped_storage()
    size = storage.nbytes()
    try:
        storage.resize_(size + 8)
    except RuntimeError as exc:
        assert "not resizable" in str(exc)
        return False
    storage.resize_(size)
    return True


@pytest.mark.smoke
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_view_shares_memory_and_keeps_storage_resizable(dtype: torch.dtype) -> None:
    tensor = (torch.arange(12) - 5).reshape(3, 4).to(dtype)
    array = to_array(tensor)
    assert array.ctypes.data == tensor.data_ptr() and array.shape == (3, 4) and array.flags.writeable
    np.testing.assert_array_equal(array.astype(np.float64), np.array(tensor.double().tolist()))
    assert _resizable(tensor)


@pytest.mark.smoke
def test_view_of_strided_and_requires_grad_tensors() -> None:
    leaf = torch.randn(4, 6, requires_grad=True)
    array = host_view(leaf.t())
    assert array.strides == (4, 24)
    np.testing.assert_array_equal(array, np.array(leaf.detach().t().tolist(), dtype=np.float32))
    assert _resizable(leaf)


def test_negative_bit_is_refused_by_name() -> None:
    negated = torch.randn(3)._neg_view()
    with pytest.raises(RuntimeError, match=r"negative bit set .* \.resolve_neg\(\)"):
        host_view(negated)


def _mlp(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.tanh(x @ w.t() + b).sum(-1)


CALLS: dict[str, Callable[[], dict[str, Any]]] = {
    "static": lambda: {},
    "dynamic": lambda: {"dynamic": True},
}


@pytest.mark.parametrize("kind", sorted(CALLS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_compiled_call_leaves_input_storage_resizable(kind: str, dtype: torch.dtype) -> None:
    x = torch.randn(5, 8).to(dtype)
    w = torch.nn.Parameter(torch.randn(3, 8).to(dtype))
    b = torch.randn(3).to(dtype)
    compiled = torch.compile(_mlp, backend="nkipy", **CALLS[kind]())
    for rows in (5, 7):  # the second call takes the static / dynamic fast route
        x = torch.randn(rows, 8).to(dtype)
        got, expected = compiled(x, w, b), _mlp(x, w, b)
        tol = 2e-2 if dtype is torch.bfloat16 else 1e-5
        torch.testing.assert_close(got, expected, rtol=tol, atol=tol)
        assert all(_resizable(t) for t in (x, w, b))
    # What FSDP2 does with an unsharded parameter between steps: free it, refill it, reuse it.
    storage = w.untyped_storage()
    size = storage.nbytes()
    storage.resize_(0)
    storage.resize_(size)
    with torch.no_grad():
        w.copy_(torch.ones(3, 8))
    torch.testing.assert_close(compiled(x, w, b), _mlp(x, w, b), rtol=2e-2, atol=2e-2)


def test_training_step_leaves_parameters_resizable() -> None:
    # (Gradients are call outputs wrapped from the runtime's arrays: their memory is not torch's to resize.)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    compiled = torch.compile(model, backend="nkipy")
    compiled(torch.randn(4, 8)).sum().backward()
    for param in model.parameters():
        assert param.grad is not None and _resizable(param)


# -- InputViews: the views of inputs that stay put are kept -----------------------------------------


@pytest.mark.smoke
def test_input_views_keep_a_tensor_seen_twice_and_drop_it_when_it_changes() -> None:
    import gc
    import weakref

    from spiky.torch.arrays import InputViews

    views = InputViews(2, bf16=False)
    weight = torch.randn(3, 4)
    first = views([weight, torch.randn(2)])
    second = views([weight, torch.randn(2)])
    third = views([weight, torch.randn(2)])
    assert third[0] is second[0] and first[0] is not second[0]  # kept from its second call on
    weight.mul_(2)  # in place: the kept view shares the memory
    np.testing.assert_array_equal(views([weight, torch.randn(2)])[0], weight.numpy())
    swapped = torch.randn(3, 4)
    weight.data = swapped  # the same Parameter-like object over other memory
    np.testing.assert_array_equal(views([weight, torch.randn(2)])[0], swapped.numpy())
    # An input that changes every call is not kept alive by the views beyond the next call.
    activation = torch.randn(2)
    gone = weakref.ref(activation)
    views([weight, activation])
    del activation
    views([weight, torch.randn(2)])
    gc.collect()
    assert gone() is None


@pytest.mark.smoke
def test_input_views_of_a_tensor_resized_in_place_follow_its_shape() -> None:
    from spiky.torch.arrays import InputViews

    views = InputViews(1, bf16=False, check_shapes=[True])
    t = torch.arange(12.0).reshape(3, 4)
    for _ in range(3):
        assert views([t])[0].shape == (3, 4)
    t.resize_(2, 4)  # the same memory, a smaller shape: only the shape tells
    got = views([t])[0]
    assert got.shape == (2, 4) and got.ctypes.data == t.data_ptr()


@pytest.mark.smoke
@pytest.mark.parametrize("kind", sorted(CALLS))
def test_parameters_changed_between_calls_are_read_again(kind: str) -> None:
    """In place, swapped with ``.data``, or a new storage: every call reads the parameter's current values."""
    model = torch.nn.Linear(8, 3)
    compiled = torch.compile(model, backend="nkipy", **CALLS[kind]())
    x = torch.randn(5, 8)
    with torch.no_grad():
        for _ in range(3):
            torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)
        model.weight.mul_(-2)
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)
        model.weight.data = torch.randn(3, 8)
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)
        model.bias.set_(torch.randn(3))
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)
