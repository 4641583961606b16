"""The "nkipy" torch device in eager mode: factories, copies, views, resize_, modules, torch.nkipy.

Values are compared with CPU tensors exactly (copies and views move bytes, no arithmetic).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

import spiky.torch
import spiky_runtime
from spiky.torch import device as nkipy_device

pytestmark = pytest.mark.skipif(not nkipy_device.is_available(), reason="nkipy device extension unavailable")

DEV = "nkipy"


def _base() -> torch.Tensor:
    return torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)


@pytest.mark.smoke
def test_registered_once_and_named_nkipy() -> None:
    assert spiky.torch.register_device() is True  # idempotent
    assert torch._C._get_privateuse1_backend_name() == "nkipy"
    assert torch.nkipy.is_available() and torch.nkipy.device_count() == 1  # type: ignore[attr-defined]
    x = torch.empty(3, device=DEV)
    assert x.device == torch.device("nkipy:0") and x.is_nkipy  # type: ignore[attr-defined]
    assert x.untyped_storage().nbytes() == 12 and x.data_ptr() != 0  # real storage from the pool


FACTORIES: dict[str, Callable[[str], torch.Tensor]] = {
    "zeros": lambda d: torch.zeros(2, 3, device=d),
    "ones": lambda d: torch.ones(2, 3, dtype=torch.int64, device=d),
    "full": lambda d: torch.full((4,), 2.5, device=d),
    "arange": lambda d: torch.arange(1, 11, 3, device=d),
    "empty_then_fill": lambda d: torch.empty(5, device=d).fill_(-1.0),
    "zeros_like": lambda d: torch.zeros_like(torch.ones(2, 2, device=d)),
}


@pytest.mark.smoke
@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_factories(name: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # arange runs through the CPU fallback
        got = FACTORIES[name](DEV)
    assert got.device.type == DEV
    torch.testing.assert_close(got.cpu(), FACTORIES[name]("cpu"), rtol=0, atol=0)


def test_randn_draws_from_the_seeded_cpu_generator() -> None:
    torch.manual_seed(3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = torch.randn(4, 5, device=DEV)
    torch.manual_seed(3)
    torch.testing.assert_close(got.cpu(), torch.randn(4, 5), rtol=0, atol=0)


VIEWS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "view": lambda t: t.view(6, 4),
    "reshape": lambda t: t.reshape(4, -1),
    "transpose": lambda t: t.transpose(0, 2),
    "permute": lambda t: t.permute(2, 0, 1),
    "slice": lambda t: t[:, 1:, ::2],
    "select": lambda t: t[1, 2],
    "squeeze_unsqueeze": lambda t: t.unsqueeze(1).unsqueeze(-1).squeeze(1),
    "as_strided": lambda t: t.as_strided((3, 2), (4, 1), 5),
    "flatten_of_transpose": lambda t: t.transpose(1, 2).reshape(-1),
    "expand": lambda t: t[:, :1, :].expand(2, 3, 4),
}


@pytest.mark.smoke
@pytest.mark.parametrize("name", sorted(VIEWS))
def test_views_read_correct_data(name: str) -> None:
    fn = VIEWS[name]
    d = _base().to(DEV)
    view = fn(d)
    assert view.device.type == DEV
    torch.testing.assert_close(view.cpu(), fn(_base()), rtol=0, atol=0)
    contiguous = view.contiguous()
    assert contiguous.is_contiguous()
    torch.testing.assert_close(contiguous.cpu(), fn(_base()).contiguous(), rtol=0, atol=0)


@pytest.mark.smoke
def test_views_alias_their_base() -> None:
    d = _base().to(DEV)
    d.transpose(0, 2)[1].copy_(torch.full((3, 2), -7.0))  # strided write into the base
    expected = _base()
    expected.transpose(0, 2)[1].copy_(torch.full((3, 2), -7.0))
    torch.testing.assert_close(d.cpu(), expected, rtol=0, atol=0)


@pytest.mark.smoke
def test_copy_in_every_direction_and_dtype_conversion() -> None:
    cpu = _base()
    d1 = cpu.to(DEV)
    d2 = torch.empty(2, 3, 4, device=DEV)
    d2.copy_(d1)  # device -> device
    back = torch.empty(2, 3, 4)
    back.copy_(d2)  # device -> host
    torch.testing.assert_close(back, cpu, rtol=0, atol=0)
    half = d1.to(torch.float64)
    assert half.device.type == DEV and half.dtype == torch.float64
    torch.testing.assert_close(half.cpu(), cpu.double(), rtol=0, atol=0)
    ints = torch.empty(2, 3, 4, dtype=torch.int32, device=DEV)
    ints.copy_(d1)  # converting device -> device
    torch.testing.assert_close(ints.cpu(), cpu.int(), rtol=0, atol=0)
    clone = d1.clone()
    d1.zero_()
    torch.testing.assert_close(clone.cpu(), cpu, rtol=0, atol=0)
    assert d1.cpu().abs().sum().item() == 0


@pytest.mark.smoke
def test_resize_keeps_data_and_grows_storage() -> None:
    d = torch.arange(4, dtype=torch.float32).to(DEV)
    d.resize_(3, 5)
    assert d.shape == (3, 5) and d.untyped_storage().nbytes() >= 60
    torch.testing.assert_close(d.cpu().flatten()[:4], torch.arange(4, dtype=torch.float32), rtol=0, atol=0)
    d.resize_(2)
    assert d.shape == (2,)


def test_module_to_device_and_context_device() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
    reference = [p.detach().clone() for p in model.parameters()]
    model.to(DEV)
    for param, ref in zip(model.parameters(), reference, strict=True):
        assert param.device.type == DEV and isinstance(param, nn.Parameter)
        torch.testing.assert_close(param.detach().cpu(), ref, rtol=0, atol=0)
    with torch.device("nkipy:0"):
        assert torch.empty(2).device == torch.device("nkipy:0")
        assert nn.Linear(2, 2).weight.device.type == DEV


def test_torch_nkipy_module_and_accelerator() -> None:
    mod = torch.nkipy  # type: ignore[attr-defined]
    assert mod.current_device() == 0
    mod.set_device(0)
    mod.set_device("nkipy:0")
    mod.synchronize()
    x = torch.empty(1000, device=DEV)
    stats = mod.memory_stats()
    assert stats["used_bytes"] >= 4000 and stats["used_bytes"] == mod.memory_allocated()
    del x
    mod.empty_cache()
    assert mod.memory_stats()["cached_bytes"] == 0
    if hasattr(torch, "accelerator"):
        assert torch.accelerator.is_available()
        current = torch.accelerator.current_accelerator()
        assert current is not None and current.type == DEV
        assert torch.accelerator.device_count() == 1
        torch.accelerator.synchronize()


# What torch's device-agnostic code (FSDP2, DeviceMesh, DTensor) calls on the device module.
ACCELERATOR_SURFACE = ["is_available", "is_initialized", "device_count", "current_device", "set_device",
                       "synchronize", "current_stream", "default_stream", "Stream", "Event", "stream"]


@pytest.mark.smoke
def test_device_module_has_what_distributed_code_asks_for() -> None:
    from torch.distributed.device_mesh import _get_device_handle

    handle = _get_device_handle(DEV)
    assert handle is torch.get_device_module(DEV)
    missing = [name for name in ACCELERATOR_SURFACE if not hasattr(handle, name)]
    assert not missing, missing
    assert handle.is_initialized()  # DeviceMesh then leaves the device alone (no set_device(LOCAL_RANK))
    stream = handle.Stream(priority=-1)  # one stream per device: every Stream() is it
    assert stream == handle.current_stream() == handle.default_stream() == torch.accelerator.current_stream()
    x = torch.ones(3, device=DEV)
    event = handle.Event()
    event.record()
    handle.current_stream().wait_event(event)
    with handle.stream(stream):
        y = x + 1
    stream.wait_stream(handle.current_stream())
    event.synchronize()
    assert event.query() and y.cpu().tolist() == [2.0, 2.0, 2.0]
    with pytest.raises(ValueError, match="takes an nkipy stream"):
        handle.stream(torch.Stream(device="cpu"))


@pytest.mark.smoke
def test_parameter_data_moves_between_cpu_and_device() -> None:
    """``p.data = t`` across CPU and nkipy keeps the Parameter object (FSDP2 moves a CPU model
    onto its mesh's device this way; torch leaves the check to private backends)."""
    layer = nn.Linear(4, 2)
    weight = layer.weight
    expected = weight.detach().clone()
    weight.data = weight.data.to(DEV)
    assert layer.weight is weight and weight.device.type == DEV and isinstance(weight, nn.Parameter)
    torch.testing.assert_close(weight.detach().cpu(), expected)
    weight.data = weight.data.cpu()
    assert weight.device.type == "cpu"
    torch.testing.assert_close(weight.detach(), expected)


@pytest.mark.smoke
def test_fallback_warns_once_per_op_and_is_correct() -> None:
    a, b = torch.randn(3, 4), torch.randn(3, 4)
    da, db = a.to(DEV), b.to(DEV)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = torch.atan2(da, db)
        second = torch.atan2(db, da)
    messages = [str(w.message) for w in caught if "atan2" in str(w.message)]
    assert len(messages) <= 1  # once per op per process (an earlier test may have used it)
    assert first.device.type == DEV
    torch.testing.assert_close(first.cpu(), torch.atan2(a, b))
    torch.testing.assert_close(second.cpu(), torch.atan2(b, a))
    inplace = a.clone().to(DEV)
    inplace.mul_(3)  # in-place through the fallback lands in the device tensor
    torch.testing.assert_close(inplace.cpu(), a * 3)
    assert "aten::atan2.out" in nkipy_device.extension().fallback_ops_warned()


def test_fallback_error_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPIKY_DEVICE_FALLBACK", "error")
    d = torch.ones(3, device=DEV)  # memory ops still work
    with pytest.raises(RuntimeError, match=r"aten::cos.*SPIKY_DEVICE_FALLBACK=error"):
        torch.cos(d)


def test_extension_builds_against_the_runtime_header(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from spiky.torch import device_ext

    # One header, the runtime's: spiky-torch ships no copy of it.
    assert not list(device_ext.source_dir().rglob("*.h"))
    include = Path(spiky_runtime.get_include())
    assert device_ext.runtime_headers() == [include / "spiky_runtime" / "c_abi.h"]
    # A changed ABI header is a different build (the cache key hashes the header's bytes).
    key = device_ext.build_key()
    fake = tmp_path / "spiky_runtime" / "c_abi.h"
    fake.parent.mkdir()
    fake.write_bytes((include / "spiky_runtime" / "c_abi.h").read_bytes())
    monkeypatch.setattr(spiky_runtime, "get_include", lambda: str(tmp_path))
    assert device_ext.build_key() == key  # same bytes, same key (the path does not matter)
    fake.write_text(fake.read_text().replace("SPIKY_ALLOCATOR_ABI_VERSION 1u", "SPIKY_ALLOCATOR_ABI_VERSION 2u"))
    assert device_ext.build_key() != key
    fake.unlink()
    with pytest.raises(FileNotFoundError, match=r"spiky_runtime/c_abi.h not found under spiky_runtime.get_include"):
        device_ext.build_key()


def test_extension_build_is_cached_by_torch_version_and_source_hash() -> None:
    from spiky.torch import device_ext

    key = device_ext.build_key()
    builds = list(device_ext.cache_root().glob(f"torch-{torch.__version__}-{key}/spiky_nkipy_{key}*.so"))
    assert builds, "the loaded extension is not in the cache directory"
    assert device_ext.load_extension() is nkipy_device.extension()  # loaded once per process
