"""Saved activations cross from the forward to the backward packed (``spiky.torch.saved``).

The rewrite must not change a value: the packed graphs, run eagerly, hand the backward the very
elements the original forward saved and compute the same gradients; compiled on the host and on
the fake neuron target, training steps match eager. Graphs the rewrite does not know how to pack
(symbolic sizes, big activations, too few, eager fallback ops) are left exactly as they were.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch
from functorch.compile import make_boxed_func
from torch import fx, nn
from torch._functorch.aot_autograd import aot_function
from torch._functorch.partitioners import min_cut_rematerialization_partition
from torch.nn import functional

from spiky.testing import FakeNeuron
from spiky.torch import saved
from spiky.torch.decompositions import spiky_decompositions
from spiky.torch.fallback import unlowered_ops

Fn = Callable[..., torch.Tensor]


def _mlp(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    h = functional.gelu(x @ w1.t() + b1)
    h = functional.layer_norm(h, (h.shape[-1],), g)
    return torch.tanh(h @ w2.t()).softmax(-1)


def _attention(x: torch.Tensor, wq: torch.Tensor, wk: torch.Tensor, wv: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    # transposed and permuted activations: saved tensors whose layout is not contiguous
    q, k, v = ((x @ w).view(2, 5, 2, 4).transpose(1, 2) for w in (wq, wk, wv))
    scores = (q @ k.transpose(-1, -2)).softmax(-1)
    out = (scores @ v).transpose(1, 2).reshape(2, 5, 8)
    return functional.rms_norm(out * torch.sigmoid(out), (8,), g)


def _args(fn: Fn, dtype: torch.dtype) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    shapes = {_mlp: [(6, 8), (16, 8), (16,), (8, 16), (16,)],
              _attention: [(2, 5, 8), (8, 8), (8, 8), (8, 8), (8,)]}[fn]
    return [torch.randn(s, generator=gen).to(dtype).requires_grad_() for s in shapes]


CASES = [(_mlp, torch.float32), (_mlp, torch.bfloat16), (_attention, torch.float32)]
IDS = ["mlp-float32", "mlp-bfloat16", "attention-float32"]


def _partition(fn: Fn, args: Sequence[torch.Tensor]) -> tuple[fx.GraphModule, fx.GraphModule, int]:
    """aot_autograd's forward and backward of ``fn`` as the backend splits them (before packing)."""
    got: dict[str, Any] = {}

    def partition(joint: fx.GraphModule, inputs: Any, **kwargs: Any) -> tuple[fx.GraphModule, fx.GraphModule]:
        fw, bw = min_cut_rematerialization_partition(joint, inputs, compiler="inductor", **kwargs)
        got.update(fw=copy.deepcopy(fw), bw=copy.deepcopy(bw), n=kwargs["num_fwd_outputs"])
        return fw, bw

    compiled = aot_function(fn, fw_compiler=lambda gm, _: make_boxed_func(gm),
                            bw_compiler=lambda gm, _: make_boxed_func(gm), partition_fn=partition,
                            decompositions=spiky_decompositions())
    compiled(*args).sum().backward()
    return got["fw"], got["bw"], got["n"]


def _lowers(gm: fx.GraphModule) -> bool:
    return not unlowered_ops(gm)


def _run_pair(fw: fx.GraphModule, bw: fx.GraphModule, n: int, args: Sequence[torch.Tensor],
              tangents: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor], list[Any]]:
    """(forward outputs, backward results, saved values) of one eager run of a partitioned pair."""
    with torch.no_grad():
        outs = list(fw(*[a.detach() for a in args]))
        grads = list(bw(*outs[n:], *tangents))
    return outs[:n], grads, outs[n:]


def _placeholders(gm: fx.GraphModule) -> list[str]:
    return [p.name for p in gm.graph.find_nodes(op="placeholder")]


@pytest.mark.smoke
@pytest.mark.parametrize(("fn", "dtype"), CASES, ids=IDS)
def test_packed_graphs_hand_the_backward_the_same_values(fn: Fn, dtype: torch.dtype) -> None:
    args = _args(fn, dtype)
    fw, bw, n = _partition(fn, args)
    packed_fw, packed_bw = copy.deepcopy(fw), copy.deepcopy(bw)
    count = saved.pack_saved_activations(packed_fw, packed_bw, n, _lowers)
    assert count >= saved.PACK_SAVED_MIN  # the case is meant to pack
    assert len(_placeholders(packed_bw)) == len(_placeholders(bw)) - count + 1
    assert any(name.startswith("saved_packed_") for name in _placeholders(packed_bw))

    tangents = [torch.randn(p.meta["val"].shape, generator=torch.Generator().manual_seed(1)).to(dtype)
                for p in bw.graph.find_nodes(op="placeholder") if p.name.startswith("tangents")]
    outs, grads, kept = _run_pair(fw, bw, n, args, tangents)
    packed_outs, packed_grads, packed_kept = _run_pair(packed_fw, packed_bw, n, args, tangents)
    for a, b in zip(outs, packed_outs, strict=True):
        assert torch.equal(a, b)
    # the backward's own unpacking (slice, view, and the transpose of a saved transpose), evaluated on the
    # packed tensor, gives back every activation the original forward saved, element for element
    original = dict(zip(_placeholders(bw), kept, strict=False))
    packed = dict(zip(_placeholders(packed_bw), packed_kept, strict=False))

    def evaluate(node: Any) -> Any:
        if not isinstance(node, fx.Node):
            return node
        if node.op == "placeholder":
            return packed[node.name]
        return node.target(*[evaluate(a) for a in node.args], **node.kwargs)

    unpacked = [node for node in packed_bw.graph.nodes if "unpacked_from" in node.meta]
    assert len(unpacked) == count
    if fn is _attention:  # saved transposes of activations are stored untransposed and transposed back
        assert any(node.target in saved._TRANSPOSES for node in unpacked)
    for node in unpacked:
        got, want = evaluate(node), original[node.meta["unpacked_from"]]
        assert got.shape == want.shape and torch.equal(got, want)
    for a, b in zip(grads, packed_grads, strict=True):
        if a is None or b is None:
            assert a is None and b is None
            continue
        torch.testing.assert_close(b, a, rtol=1e-6 if dtype is torch.float32 else 1e-2, atol=1e-6)


def _unchanged(fw: fx.GraphModule, bw: fx.GraphModule, n: int,
               lowers: Callable[[fx.GraphModule], bool] = _lowers) -> None:
    before = (fw.code, bw.code)
    assert saved.pack_saved_activations(fw, bw, n, lowers) == 0
    assert (fw.code, bw.code) == before


def test_big_or_few_activations_are_not_packed(monkeypatch: pytest.MonkeyPatch) -> None:
    args = _args(_mlp, torch.float32)
    monkeypatch.setattr(saved, "PACK_SAVED_BYTES", 8)  # every activation is bigger
    _unchanged(*_partition(_mlp, args))
    monkeypatch.setattr(saved, "PACK_SAVED_BYTES", 64 * 1024)
    monkeypatch.setattr(saved, "PACK_SAVED_MIN", 1000)
    _unchanged(*_partition(_mlp, args))


def test_graphs_with_eager_ops_are_not_packed() -> None:
    _unchanged(*_partition(_mlp, _args(_mlp, torch.float32)), lowers=lambda gm: False)


def test_symbolic_activations_are_not_packed() -> None:
    def fn(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return torch.tanh(torch.tanh(torch.tanh(torch.tanh(x @ w) * 2) * 3) * 4)

    got: dict[str, Any] = {}

    def backend(gm: fx.GraphModule, inputs: Any) -> Any:
        from torch._dynamo.backends.common import aot_autograd

        def partition(joint: fx.GraphModule, inputs: Any, **kwargs: Any) -> tuple[fx.GraphModule, fx.GraphModule]:
            fw, bw = min_cut_rematerialization_partition(joint, inputs, compiler="inductor", **kwargs)
            got["count"] = saved.pack_saved_activations(fw, bw, kwargs["num_fwd_outputs"], _lowers)
            got["saved"] = len(next(iter(fw.graph.find_nodes(op="output"))).args[0]) - kwargs["num_fwd_outputs"]
            return fw, bw

        boxed = lambda g, _: make_boxed_func(g)  # noqa: E731
        return aot_autograd(fw_compiler=boxed, bw_compiler=boxed, partition_fn=partition,
                            decompositions=spiky_decompositions())(gm, inputs)

    x = torch.randn(5, 4, requires_grad=True)
    w = torch.randn(4, 4, requires_grad=True)
    out = torch.compile(fn, backend=backend, dynamic=True)(x, w)
    out.sum().backward()
    assert got["saved"] >= saved.PACK_SAVED_MIN  # tanh saves its outputs, all [s0, 4]
    assert got["count"] == 0


# -- compiled training steps against eager -------------------------------------------------------------


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(12, 24), nn.Linear(24, 24), nn.Linear(24, 6)
        self.norm = nn.LayerNorm(24)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = functional.gelu(self.fc1(x))
        h = self.norm(torch.tanh(self.fc2(h)) + h)
        return self.fc3(h).log_softmax(-1)


def _steps_match_eager(caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(0)
    model = _Net()
    twin = copy.deepcopy(model)
    compiled = torch.compile(model, backend="nkipy")
    opt, twin_opt = torch.optim.SGD(model.parameters(), lr=0.1), torch.optim.SGD(twin.parameters(), lr=0.1)
    with caplog.at_level(logging.DEBUG, logger="spiky.backend"):
        for step in range(3):
            x = torch.randn(7, 12, generator=torch.Generator().manual_seed(step))
            for m, o in ((compiled, opt), (twin, twin_opt)):
                o.zero_grad()
                m(x).square().mean().backward()
                o.step()
            for p, q in zip(model.parameters(), twin.parameters(), strict=True):
                torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert any("as packed tensors" in r.getMessage() for r in caplog.records)


def test_training_steps_with_packed_activations_match_eager_on_host(caplog: pytest.LogCaptureFixture) -> None:
    _steps_match_eager(caplog)


def test_training_steps_with_packed_activations_match_eager_on_neuron(
        neuron_target: FakeNeuron, caplog: pytest.LogCaptureFixture) -> None:
    _steps_match_eager(caplog)
    assert neuron_target.execute_count() >= 6
