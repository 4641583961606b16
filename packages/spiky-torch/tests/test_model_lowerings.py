"""What real models need from the FX lowering, end to end through torch.compile(backend="nkipy").

Each test compiles a small module the way users write it, runs it on the host target and
compares with eager (fp32; tolerances per test): lifted constant tensors, Python float
attributes under ``dynamic=True``, ConvNeXt's restride after average pooling, the fused
``nn.TransformerEncoderLayer`` inference path, training batch norm (output, gradients and the
module's running stats after the step) and gradients through SDPA.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch import nn

import spiky.torch
from spiky.errors import SpikyShapeError
from spiky_ir import fx

F = nn.functional
TOL: dict[str, float] = {"rtol": 1e-5, "atol": 1e-5}


@pytest.fixture(autouse=True)
def _host() -> Iterator[None]:
    spiky.torch.init_nkipy_backend(target="host")
    yield


class Lowered:
    """Counts the lowerings of chosen ATen overloads (names) that ran: proves a test reached them."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.monkeypatch = monkeypatch
        self.counts: dict[str, int] = {}

    def watch(self, *names: str) -> Lowered:
        for name in names:
            target = next(t for t in fx.LOWERINGS if str(t) == name)
            original = fx.LOWERINGS[target]

            def counted(ctx: Any, node: Any, original: Any = original, name: str = name) -> Any:
                self.counts[name] = self.counts.get(name, 0) + 1
                return original(ctx, node)

            self.monkeypatch.setitem(fx.LOWERINGS, target, counted)
        return self


@pytest.fixture
def lowered(monkeypatch: pytest.MonkeyPatch) -> Lowered:
    return Lowered(monkeypatch)


# --- constants and float attributes -------------------------------------------------------------------


class WithConstants(nn.Module):
    """A cache that starts from ``torch.tensor([])`` (as transformers' DynamicCache does) and a table."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cache = torch.tensor([]).reshape(x.shape[0], 0, x.shape[2])
        keys = torch.cat([cache, x], dim=1)
        return keys * torch.tensor([0.5, -1.0, 2.0, 0.25]), keys.sum(1)


@pytest.mark.smoke
def test_lifted_constants(monkeypatch: pytest.MonkeyPatch) -> None:
    constants: list[str] = []
    original = fx._lower_get_attr
    monkeypatch.setattr(fx, "_lower_get_attr", lambda ctx, gm, node: constants.append(node.target) or original(
        ctx, gm, node))
    model = WithConstants()
    x = torch.randn(2, 3, 4)
    compiled = torch.compile(model, backend="nkipy")
    for got, want in zip(compiled(x), model(x), strict=True):
        torch.testing.assert_close(got, want, rtol=0.0, atol=0.0)
    assert len(constants) == 2


class RMSNorm(nn.Module):
    """A float attribute (eps): under dynamic=True Dynamo passes it as a float64 scalar input."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.eps = 1e-6
        self.weight = nn.Parameter(torch.rand(dim) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


@pytest.mark.smoke
def test_float_attribute_under_dynamic_shapes(lowered: Lowered) -> None:
    lowered.watch("prims.convert_element_type.default")
    model = RMSNorm(8)
    compiled = torch.compile(model, backend="nkipy", dynamic=True)
    with torch.no_grad():
        for length in (5, 9, 16):
            x = torch.randn(2, length, 8)
            torch.testing.assert_close(compiled(x), model(x), **TOL)
    assert lowered.counts


# --- repeat by a symbolic count (BLOOM's ALiBi biases under dynamic=True) ----------------------------

# name -> (function of (x, table), x's shape): ``repeat`` counts taken from x's (dynamic) dims.
REPEATS: dict[str, tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor], tuple[int, ...]]] = {
    "unit_dim": (lambda x, t: t[None].repeat(x.shape[0], 1, 1) + x.sum(), (3, 5)),  # BLOOM: (1, h, l) per batch
    "whole_dims": (lambda x, t: t.repeat(x.shape[0], 2) * 2, (3, 5)),  # (h, l) -> (b*h, 2*l)
    "new_and_dynamic_dims": (lambda x, t: x.repeat(2, x.shape[0], 1), (3, 4)),
}


@pytest.mark.parametrize("name", list(REPEATS))
def test_repeat_by_symbolic_count(name: str, lowered: Lowered) -> None:
    lowered.watch("aten.repeat.default")
    fn, shape = REPEATS[name]
    compiled = torch.compile(fn, backend="nkipy", dynamic=True)
    table = torch.randn(4, 5)
    for batch in (shape[0], shape[0] + 4):
        x = torch.randn(batch, *shape[1:])
        torch.testing.assert_close(compiled(x, table), fn(x, table), **TOL)
    assert lowered.counts


def _offset_by(x: torch.Tensor, offset: int) -> torch.Tensor:
    return x * 2 + offset  # an int argument that may be 0 (as transformers' logits_to_keep=0 is)


def test_int_argument_zero_under_dynamic_shapes() -> None:
    """Under dynamic=True a Python int argument is a SymInt input of the graph; 0 is a valid value of it, a
    negative value is refused by name (the graph binds it as a size)."""
    compiled = torch.compile(_offset_by, backend="nkipy", dynamic=True)
    for length, offset in ((5, 0), (9, 0), (9, 3)):
        x = torch.randn(2, length, 4)
        torch.testing.assert_close(compiled(x, offset), _offset_by(x, offset), **TOL)
    with pytest.raises(SpikyShapeError, match=r"int argument s\d+ is -2; .* must be >= 0"):
        compiled(torch.randn(2, 9, 4), -2)


# --- ConvNeXt's restride ----------------------------------------------------------------------------


class ChannelsLastPool(nn.Module):
    """ConvNeXt's pattern: per-position Linear layers leave the activations channels-last, and
    adaptive average pooling decomposes to a mean restrided with as_strided."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.mix = nn.Linear(8, 8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mix(self.conv(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.head(self.pool(y).flatten(1))


@pytest.mark.smoke
@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_adaptive_pool_of_channels_last_activations(dynamic: bool, lowered: Lowered) -> None:
    lowered.watch("aten.as_strided.default")
    torch.manual_seed(0)
    model = ChannelsLastPool().eval()
    compiled = torch.compile(model, backend="nkipy", dynamic=dynamic)
    with torch.no_grad():
        for batch in (2, 3) if dynamic else (2,):
            x = torch.randn(batch, 3, 8, 8)
            torch.testing.assert_close(compiled(x), model(x), **TOL)
    assert lowered.counts


# --- nn.TransformerEncoderLayer under no_grad (torch's fused fast path) ---------------------------------

ENCODER_LAYERS: dict[str, dict[str, Any]] = {
    "post_norm_relu": {"norm_first": False, "activation": "relu"},
    "pre_norm_gelu": {"norm_first": True, "activation": "gelu"},
}


@pytest.mark.parametrize("name", ENCODER_LAYERS)
@pytest.mark.parametrize("padding", [False, True], ids=["no_mask", "key_padding_mask"])
@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_transformer_encoder_layer_inference(name: str, padding: bool, dynamic: bool, lowered: Lowered) -> None:
    lowered.watch("aten._transformer_encoder_layer_fwd.default")
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, 32, batch_first=True, **ENCODER_LAYERS[name]).eval()
    compiled = torch.compile(layer, backend="nkipy", dynamic=dynamic)
    with torch.no_grad():
        for length in (6, 9) if dynamic else (6,):
            x = torch.randn(2, length, 16)
            mask = torch.arange(length).expand(2, length) >= torch.tensor([[length], [length - 2]]) if padding \
                else None
            torch.testing.assert_close(compiled(x, src_key_padding_mask=mask), layer(x, src_key_padding_mask=mask),
                                       rtol=1e-5, atol=2e-5)
    assert lowered.counts  # the fused fast path, not the module's composite one


# --- training batch norm ---------------------------------------------------------------------------


def _conv_bn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6, momentum=0.2), nn.ReLU(),
                         nn.Conv2d(6, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))


def _linear_bn() -> nn.Module:
    return nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8, momentum=0.3), nn.Tanh(), nn.Linear(8, 3))


BN_NETS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "conv_bn": (_conv_bn, (4, 3, 6, 6)),
    "linear_bn": (_linear_bn, (6, 5)),
}


@pytest.mark.parametrize("name", BN_NETS)
def test_batch_norm_train_step(name: str, lowered: Lowered) -> None:
    """One SGD step: the output, every gradient, and the running stats the module holds after
    the step equal eager's (momentum, and the unbiased variance in the running update)."""
    lowered.watch("aten._native_batch_norm_legit_functional.default")
    factory, shape = BN_NETS[name]
    torch.manual_seed(0)
    eager = factory().train()
    ours = copy.deepcopy(eager)
    compiled = torch.compile(ours, backend="nkipy")
    opt_eager = torch.optim.SGD(eager.parameters(), lr=0.1)
    opt_ours = torch.optim.SGD(ours.parameters(), lr=0.1)
    for step in range(2):
        x = torch.randn(shape, generator=torch.Generator().manual_seed(step))
        want, got = eager(x), compiled(x)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        (want**2).mean().backward()
        (got**2).mean().backward()
        for (pname, p), q in zip(eager.named_parameters(), ours.parameters(), strict=True):
            assert q.grad is not None and p.grad is not None, pname
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-5, msg=lambda m, n=pname: f"{n}: {m}")
        for (bname, b), c in zip(eager.named_buffers(), ours.buffers(), strict=True):
            torch.testing.assert_close(c, b, rtol=1e-5, atol=1e-6, msg=lambda m, n=bname: f"buffer {n}: {m}")
        opt_eager.step()
        opt_ours.step()
        opt_eager.zero_grad()
        opt_ours.zero_grad()
    assert lowered.counts


# --- gradients through SDPA ------------------------------------------------------------------------

SDPA_CASES: dict[str, dict[str, Any]] = {
    "plain": {},
    "causal": {"is_causal": True},
    "float_mask": {"mask": "float"},
    "bool_mask": {"mask": "bool"},
}


def _sdpa_mask(kind: str | None, length: int) -> torch.Tensor | None:
    gen = torch.Generator().manual_seed(7)
    if kind == "float":
        return torch.randn(length, length, generator=gen)
    if kind == "bool":
        keep = torch.rand(length, length, generator=gen) > 0.3
        keep[:, 0] = True  # every query keeps a key
        return keep
    return None


@pytest.mark.parametrize("name", SDPA_CASES)
@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_sdpa_gradients(name: str, dynamic: bool, lowered: Lowered) -> None:
    lowered.watch("aten._scaled_dot_product_flash_attention_for_cpu_backward.default")
    case = dict(SDPA_CASES[name])
    kind = case.pop("mask", None)

    def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **case)

    compiled = torch.compile(attention, backend="nkipy", dynamic=dynamic)
    for length in (5, 8) if dynamic else (5,):
        gen = torch.Generator().manual_seed(length)
        base = [torch.randn(2, 2, length, 8, generator=gen) for _ in range(3)]
        grad = torch.randn(2, 2, length, 8, generator=gen)
        mask = _sdpa_mask(kind, length)
        q, k, v = (t.clone().requires_grad_() for t in base)
        q2, k2, v2 = (t.clone().requires_grad_() for t in base)
        out = compiled(q, k, v, mask)
        want = attention(q2, k2, v2, mask)
        torch.testing.assert_close(out, want, **TOL)
        out.backward(grad)
        want.backward(grad)
        for ours, theirs, label in ((q, q2, "q"), (k, k2, "k"), (v, v2, "v")):
            assert ours.grad is not None and theirs.grad is not None
            torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-4, atol=1e-5,
                                       msg=lambda m, n=label: f"grad of {n}: {m}")
    assert lowered.counts
