"""Every decomposition the backend hands aot_autograd, checked against the real op.

Inputs come from torch's own OpInfo database (``torch.testing._internal``): each OpInfo's first
float32 CPU samples run forward and backward under a dispatch mode that records every call of an
op in our table (that reaches the ops composite ops break into, and backward ops); OpInfos
whose aten op is a composite op in the table are called on that op directly too. In-place and
``out=`` overloads reuse the samples of their functional overload. A few ops get hand-made
samples. Each recorded call then runs both ways and every output must agree in shape, dtype
and value.

Entries no sample reaches are listed below as data with a reason; the test is strict both ways
(an entry that gains a sample must leave the list). Entries that run the op's own composite
kernel are checked structurally as well: they cannot differ from the op.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch._decomp import core_aten_decompositions
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

from spiky.torch.decompositions import EXCLUDED, LOWERED, REPLACED, spiky_decompositions
from spiky_ir.fx import LOWERINGS

Op = torch._ops.OpOverload
CIA = torch._C.DispatchKey.CompositeImplicitAutograd

#: Samples recorded per op (the first ones seen).
SAMPLES_PER_OP = 3
#: float32 tolerance: decompositions reorder sums and use other formulas (e.g. logsumexp).
RTOL, ATOL = 1e-4, 1e-5

#: Outputs that are random or uninitialised: only shape and dtype are compared.
VALUES_NOT_COMPARABLE: dict[str, str] = {
    "aten.bernoulli.default": "random draws",
    "aten.empty_like.default": "uninitialised memory",
    "aten.empty_like.out": "uninitialised memory",
    "aten.new_empty.default": "uninitialised memory",
    "aten.new_empty.out": "uninitialised memory",
}


@dataclass(frozen=True)
class Call:
    op: Op
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    origin: str


def _clone(x: Any) -> Any:
    return x.detach().clone() if isinstance(x, torch.Tensor) else x


def _hand_samples() -> Iterator[Call]:
    """Ops the OpInfo samples do not reach, or not in the shapes models use."""
    aten = torch.ops.aten
    g = torch.Generator().manual_seed(0)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    def pos(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=g) + 0.5

    q, k, v = r(2, 3, 5, 8), r(2, 3, 7, 8), r(2, 3, 7, 8)
    fa = aten._scaled_dot_product_flash_attention_for_cpu.default
    img, vol = r(2, 3, 6, 5), r(1, 2, 4, 3, 5)
    logits, target = r(2, 4, 3, 5), torch.randint(0, 4, (2, 3, 5), generator=g)
    nll_out, nll_total = aten.nll_loss2d_forward.default(logits.log_softmax(1), target, None, 1, -100)
    table: list[tuple[Any, tuple[Any, ...], dict[str, Any], str]] = [
        (fa, (q, k, v), {}, "SDPA on CPU, 2x3 heads, L=5, S=7"),
        (fa, (q, k, v), {"attn_mask": r(5, 7)}, "SDPA with an additive mask"),
        (fa, (r(2, 3, 6, 8), r(2, 3, 6, 8), r(2, 3, 6, 8), 0.0, True), {}, "causal SDPA"),
        (aten.upsample_nearest2d.default, (img, [12, 7]), {}, "nearest 2d"),
        (aten.upsample_nearest3d.default, (vol, [8, 6, 7]), {}, "nearest 3d"),
        (aten.upsample_nearest1d.vec, (r(2, 3, 5), None, [2.0]), {}, "nearest 1d, scale"),
        (aten.upsample_nearest3d.vec, (vol, [8, 6, 7], None), {}, "nearest 3d, sizes"),
        (aten._upsample_nearest_exact2d.default, (img, [12, 7]), {}, "nearest-exact 2d"),
        (aten._upsample_nearest_exact2d.vec, (img, None, [2.0, 1.5]), {}, "nearest-exact 2d, scales"),
        (aten._upsample_nearest_exact3d.default, (vol, [8, 6, 7]), {}, "nearest-exact 3d"),
        (aten._upsample_nearest_exact3d.vec, (vol, [8, 6, 7], None), {}, "nearest-exact 3d, sizes"),
        (aten._upsample_nearest_exact1d.vec, (r(2, 3, 5), [9], None), {}, "nearest-exact 1d, size"),
        (aten.upsample_linear1d.vec, (r(2, 3, 5), [9], False, None), {}, "linear 1d"),
        (aten.upsample_bicubic2d.vec, (img, [9, 8], False, None), {}, "bicubic 2d"),
        (aten.upsample_trilinear3d.vec, (vol, [6, 5, 7], True, None), {}, "trilinear 3d"),
        (aten._upsample_bicubic2d_aa.vec, (img, [9, 8], False, None), {}, "bicubic 2d antialiased"),
        (aten._upsample_lanczos2d_aa.vec, (img, [9, 8], False, None), {}, "lanczos 2d antialiased"),
        (aten.reflection_pad2d.default, (img, [1, 2, 2, 1]), {}, "reflection pad 2d"),
        (aten.reflection_pad3d.default, (vol, [1, 1, 1, 2, 2, 1]), {}, "reflection pad 3d"),
        (aten.replication_pad3d.default, (vol, [1, 1, 1, 2, 2, 1]), {}, "replication pad 3d"),
        (aten.reflection_pad2d_backward.default, (r(2, 3, 9, 8), img, [1, 2, 2, 1]), {}, "grad of reflection pad 2d"),
        (aten.reflection_pad3d_backward.default, (r(1, 2, 7, 6, 7), vol, [1, 1, 1, 2, 2, 1]), {},
         "grad of reflection pad 3d"),
        (aten.nll_loss2d_forward.default, (logits.log_softmax(1), target, None, 1, -100), {}, "2d NLL loss"),
        (aten.nll_loss2d_backward.default,
         (torch.tensor(1.0), logits.log_softmax(1), target, None, 1, -100, nll_total), {},
         "grad of 2d NLL loss"),
        (aten.lerp.Tensor, (r(4, 5), r(4, 5), torch.rand(4, 5, generator=g)), {}, "lerp with a tensor weight"),
        (aten.fill.Tensor, (r(4, 5), torch.tensor(3.0)), {}, "fill with a 0-d tensor"),
        (aten.fill_.Tensor, (r(4, 5), torch.tensor(3.0)), {}, "fill in place with a 0-d tensor"),
        (aten.zero.default, (r(4, 5),), {}, "zero"),
        (aten.one_hot.default, (torch.randint(0, 6, (3, 4), generator=g), 6), {}, "one_hot"),
        (aten._unsafe_index.Tensor, (r(5, 6), [torch.randint(0, 5, (3,), generator=g)]), {}, "index with a tensor"),
        (aten._unsafe_index_put.default, (r(5, 6), [torch.tensor([0, 3])], r(2, 6), False), {}, "index_put"),
        (aten.gelu_.default, (r(4, 5),), {}, "gelu in place"),
        (aten.hardtanh_.default, (r(4, 5), -0.5, 0.5), {}, "hardtanh in place"),
        (aten.leaky_relu_.default, (r(4, 5), 0.1), {}, "leaky_relu in place"),
        (aten.elu_.default, (r(4, 5),), {}, "elu in place"),
        (aten.clamp_max.default, (r(4, 5), 0.3), {}, "clamp_max with a scalar"),
        (aten.floor_divide.Scalar, (r(4, 5) * 10, 3), {}, "floor_divide by a scalar"),
        (aten.xlogy.Scalar_Other, (pos(4, 5), 2.5), {}, "xlogy, scalar other"),
        (aten.xlogy.Scalar_Self, (2.5, pos(4, 5)), {}, "xlogy, scalar self"),
        (aten.xlogy_.Scalar_Other, (pos(4, 5), 2.5), {}, "xlogy in place, scalar other"),
        (aten.special_xlog1py.other_scalar, (pos(4, 5), 2.5), {}, "xlog1py, scalar other"),
        (aten.special_xlog1py.self_scalar, (2.5, pos(4, 5)), {}, "xlog1py, scalar self"),
        (aten.norm.ScalarOpt_dtype, (r(4, 5), 2), {"dtype": torch.float64}, "norm to float64"),
        (aten.norm.ScalarOpt_dim_dtype, (r(4, 5), 3, [1], True), {"dtype": torch.float64},
         "3-norm over dim 1 to float64"),
        (aten.count_nonzero.dim_IntList, (torch.relu(r(4, 5, 3)), [0, 2]), {}, "count_nonzero over two dims"),
        (aten.broadcast_tensors.default, ([r(4, 1), r(1, 5)],), {}, "broadcast_tensors"),
        (aten._reshape_alias.default, (r(4, 6), [6, 4], [4, 1]), {}, "reshape alias"),
        (aten._fused_rms_norm.default, (r(3, 8), [8], r(8), 1e-6), {}, "fused RMSNorm"),
        (aten.isin.Tensor_Scalar, (torch.randint(0, 5, (4, 5), generator=g), 3), {}, "isin, scalar test set"),
        (aten.isin.Scalar_Tensor, (3, torch.randint(0, 5, (7,), generator=g)), {}, "isin, scalar element"),
        (aten.squeeze_copy.dim, (r(4, 1, 5), 1), {}, "squeeze_copy one dim"),
        (aten.squeeze_copy.dims, (r(4, 1, 5, 1), [1, 3]), {}, "squeeze_copy dims"),
        (aten.unsafe_split_with_sizes.default, (r(7, 3), [2, 5]), {}, "unsafe_split_with_sizes"),
        (aten.native_channel_shuffle.default, (r(2, 6, 3, 3), 3), {}, "channel shuffle"),
        (aten._euclidean_dist.default, (r(4, 3), r(5, 3)), {}, "euclidean distance"),
        (aten._weight_norm_interface.default, (r(4, 5), pos(4, 1), 0), {}, "weight norm"),
        (aten.affine_grid_generator.default, (r(2, 2, 3), [2, 3, 4, 5], False), {}, "affine grid 2d"),
        (aten.linspace.Scalar_Tensor, (0.5, torch.tensor(3.0), 7), {"device": torch.device("cpu")},
         "linspace, tensor end"),
        (aten.logspace.Scalar_Tensor, (0.5, torch.tensor(3.0), 7), {"device": torch.device("cpu")},
         "logspace, tensor end"),
        (aten.hann_window.default, (8,), {}, "hann window"),
        (aten.hann_window.periodic, (8, False), {}, "symmetric hann window"),
    ]
    for op, args, kwargs, what in table:
        yield Call(op, args, kwargs, f"hand: {what}")
    del nll_out


class _Recorder(TorchDispatchMode):
    def __init__(self, table: dict[Any, Any], out: dict[Op, list[Call]], origin: str) -> None:
        super().__init__()
        self.table, self.out, self.origin = table, out, origin

    def __torch_dispatch__(
        self, func: Op, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        calls = self.out.setdefault(func, []) if func in self.table else None
        if calls is not None and len(calls) < SAMPLES_PER_OP:
            calls.append(Call(func, tree_map(_clone, args), tree_map(_clone, kwargs), self.origin))
        return func(*args, **kwargs)


def _tensors(x: Any) -> list[torch.Tensor]:
    return [t for t in tree_flatten(x)[0] if isinstance(t, torch.Tensor)]


@functools.cache
def _samples() -> dict[Op, list[Call]]:
    from torch.testing._internal.common_methods_invocations import op_db

    table = core_aten_decompositions()
    found: dict[Op, list[Call]] = {}
    for info in op_db:
        grad = bool(info.supports_autograd)
        try:
            samples = list(info.sample_inputs("cpu", torch.float32, requires_grad=grad))[:2]
        except Exception:
            continue
        name = info.aten_name or info.name
        packet = getattr(torch.ops.aten, name, None) if "." not in name else None
        direct = [o for o in _overloads(packet) if o in table] if packet is not None else []
        for s in samples:
            origin = f"OpInfo {info.name}"
            try:
                with _Recorder(table, found, origin):
                    out = info.op(s.input, *s.args, **s.kwargs)
                    diff = [t for t in _tensors(out) if t.requires_grad]
                    if diff:
                        torch.autograd.backward([t.float().sum() for t in diff])
            except Exception:
                pass
            for op in direct:  # composite ops never reach a dispatch mode: call them directly
                args = tree_map(_clone, (s.input, *s.args))
                kwargs = tree_map(_clone, dict(s.kwargs))
                try:
                    op(*args, **kwargs)
                except Exception:
                    continue
                calls = found.setdefault(op, [])
                if len(calls) < SAMPLES_PER_OP:
                    calls.append(Call(op, args, kwargs, origin + " (direct)"))
    for call in _hand_samples():
        found.setdefault(call.op, []).append(call)
    _derive_mutating(found, table)
    return found


def _overloads(packet: Any) -> list[Op]:
    return [getattr(packet, n) for n in packet.overloads()]


def _inputs_schema(op: Op) -> list[tuple[str, str]]:
    return [(a.name, str(a.type)) for a in op._schema.arguments if not a.is_out]


def _derive_mutating(found: dict[Op, list[Call]], table: dict[Any, Any]) -> None:
    """Samples for in-place and out= overloads from their functional overload's samples."""
    for op in list(table):
        if not isinstance(op, Op) or op in found:
            continue
        schema = op._schema
        outs = [a for a in schema.arguments if a.is_out]
        if schema.is_mutable and not outs and op._opname.endswith("_"):
            base = getattr(torch.ops.aten, op._opname[:-1], None)
            functional = base and getattr(base, op._overloadname, None)
            if functional is not None and functional in found:
                found[op] = [
                    Call(op, tree_map(_clone, c.args), tree_map(_clone, c.kwargs), c.origin + " (in place)")
                    for c in found[functional]
                    if isinstance(c.args[0], torch.Tensor)
                ]
            continue
        if not outs:
            continue
        packet = getattr(torch.ops.aten, op._opname)
        wanted = _inputs_schema(op)
        for functional in _overloads(packet):
            if functional is op or functional not in found or functional._schema.is_mutable:
                continue
            if _inputs_schema(functional) != wanted:
                continue
            derived = []
            for c in found[functional]:
                results = _tensors(functional(*tree_map(_clone, c.args), **tree_map(_clone, c.kwargs)))
                if len(results) != len(outs):
                    break
                kwargs = dict(tree_map(_clone, c.kwargs))
                for a, res in zip(outs, results, strict=True):
                    kwargs[a.name] = torch.empty_like(res)
                derived.append(Call(op, tree_map(_clone, c.args), kwargs, c.origin + " (out=)"))
            if derived:
                found[op] = derived
            break


def _compare(call: Call, decomposition: Callable[..., Any]) -> None:
    name = str(call.op)
    expected = call.op(*tree_map(_clone, call.args), **tree_map(_clone, call.kwargs))
    got = decomposition(*tree_map(_clone, call.args), **tree_map(_clone, call.kwargs))
    want_leaves, got_leaves = tree_flatten(expected)[0], tree_flatten(got)[0]
    where = f"{name} on a sample from {call.origin}"
    assert len(got_leaves) == len(want_leaves), f"{where}: {len(got_leaves)} outputs, op has {len(want_leaves)}"
    for i, (w, g) in enumerate(zip(want_leaves, got_leaves, strict=True)):
        if not isinstance(w, torch.Tensor):
            assert not isinstance(g, torch.Tensor) and w == g, f"{where}: output {i} is {g!r}, op gives {w!r}"
            continue
        assert isinstance(g, torch.Tensor), f"{where}: output {i} is {type(g).__name__}, not a tensor"
        assert g.shape == w.shape, f"{where}: output {i} has shape {tuple(g.shape)}, op {tuple(w.shape)}"
        assert g.dtype == w.dtype, f"{where}: output {i} has dtype {g.dtype}, op {w.dtype}"
        if name in VALUES_NOT_COMPARABLE:
            continue
        label = f"{where}, output {i}"
        torch.testing.assert_close(
            g, w, rtol=RTOL, atol=ATOL, equal_nan=True, msg=lambda m, label=label: f"{label}: {m}"
        )


def _runs_own_kernel(op: Any, fn: Callable[..., Any]) -> bool:
    """True when the entry calls the op's own composite kernel, which eager runs too."""
    if not (isinstance(fn, functools.partial) and fn.keywords.get("kernel") is op):
        return False
    if getattr(fn.func, "__name__", "") != "_special_op_to_decompose_cia":
        return False
    other = (torch._C.DispatchKey.CPU, torch._C.DispatchKey.CompositeExplicitAutograd)
    name = op.name()
    return torch._C._dispatch_has_kernel_for_dispatch_key(name, CIA) and not any(
        torch._C._dispatch_has_kernel_for_dispatch_key(name, key) for key in other
    )


_CUDA_ONLY = "CUDA/ROCm-only op: no CPU kernel to compare with; never in a host or Neuron graph"
_OUT = (
    "out= overload: aot_autograd functionalizes graphs before the table applies, so it never reaches "
    "us; no sample derived (no functional overload with its input schema has a sample)"
)
_RNN = "RNN entry point: needs flat weight lists (and packed sequences for .data); no hand sample yet"

#: Entries with a Python decomposition that no sample reaches, each with why.
NO_SAMPLE: dict[str, str] = {
    **dict.fromkeys(
        [
            "aten.baddbmm.dtype", "aten.baddbmm.dtype_out", "aten.cudnn_batch_norm.default",
            "aten.cudnn_batch_norm.out", "aten.cudnn_batch_norm_backward.default",
            "aten.cudnn_batch_norm_backward.out", "aten.miopen_batch_norm_backward.default",
            "aten.miopen_batch_norm_backward.out",
        ],
        _CUDA_ONLY,
    ),
    **dict.fromkeys(
        [
            "aten.empty_like.out", "aten.eye.m_out", "aten.eye.out", "aten.hann_window.out",
            "aten.hann_window.periodic_out", "aten.linspace.Scalar_Tensor_out", "aten.linspace.Tensor_Scalar_out",
            "aten.linspace.Tensor_Tensor_out", "aten.linspace.out", "aten.logspace.Scalar_Tensor_out",
            "aten.logspace.Tensor_Scalar_out", "aten.logspace.Tensor_Tensor_out", "aten.logspace.out",
            "aten.new_empty.out", "aten.new_full.out", "aten.new_ones.out", "aten.new_zeros.out",
            "aten.ones_like.out", "aten.zeros_like.out", "aten.split_with_sizes_copy.out",
            "aten.upsample_bilinear2d.out", "aten.upsample_trilinear3d.out", "aten.resize_as.out",
        ],
        _OUT,
    ),
    **dict.fromkeys(
        [
            "aten.gru.data", "aten.gru.input", "aten.lstm.data", "aten.lstm.input", "aten.rnn_relu.data",
            "aten.rnn_relu.input", "aten.rnn_tanh.data", "aten.rnn_tanh.input",
        ],
        _RNN,
    ),
    "aten.istft.default": "needs a complex STFT (the samples are float32 only); no hand sample yet",
    "aten.pad_sequence.default": "takes a list of variable-length tensors; no OpInfo or hand sample yet",
    "aten.resize_as.default": "resizes its input (a storage operation, not a value): no meaningful sample",
    "aten._fused_rms_norm_backward.default": "needs _fused_rms_norm's rstd output as input; no hand sample yet",
}

_TABLE = spiky_decompositions()
_NAMES = sorted(str(op) for op in _TABLE)
_BY_NAME = {str(op): op for op in _TABLE}


def test_excluded_entries_are_not_in_the_table() -> None:
    core = {str(op) for op in core_aten_decompositions()}
    for name, reason in EXCLUDED.items():
        assert name in core, f"{name} is no longer in core_aten_decompositions(): drop it from EXCLUDED"
        assert reason
        if name in REPLACED:
            assert _TABLE[_BY_NAME[name]] is REPLACED[name]
        else:
            assert name not in _NAMES
    assert set(REPLACED) <= set(EXCLUDED)


def test_lowered_entries_are_not_in_the_table_and_lower() -> None:
    core = {str(op): op for op in core_aten_decompositions()}
    for name, reason in LOWERED.items():
        assert name in core, f"{name} is no longer in core_aten_decompositions(): drop it from LOWERED"
        assert reason and name not in _NAMES and name not in EXCLUDED
        assert core[name] in LOWERINGS or name in LOWERINGS, f"{name} has no spiky-ir lowering"


def test_the_excluded_flash_attention_decomposition_is_wrong() -> None:
    """Why it is excluded: its second output is not the op's logsumexp."""
    op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default
    q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 8)
    _, lse = op(q, k, v)
    _, second = core_aten_decompositions()[op](q, k, v)
    assert lse.shape == (2, 3, 5)
    assert second.shape == (2, 3, 5, 7)  # the attention matrix
    assert "logsumexp" in EXCLUDED[str(op)]


def test_no_sample_list_names_table_entries() -> None:
    stale = sorted(set(NO_SAMPLE) - set(_NAMES))
    assert not stale, f"NO_SAMPLE names ops the table no longer has: {stale}"


@pytest.mark.parametrize("name", _NAMES)
def test_decomposition_matches_the_op(name: str) -> None:
    op, fn = _BY_NAME[name], _TABLE[_BY_NAME[name]]
    calls = _samples().get(op, [])
    own = _runs_own_kernel(op, fn)
    if name in NO_SAMPLE:
        assert not calls, f"{name} now has samples ({calls[0].origin}): remove it from NO_SAMPLE"
        assert not own, f"{name} runs the op's own kernel: it needs no NO_SAMPLE entry"
        return
    if not calls:
        # No sample, but the entry is the op's own composite kernel: what eager runs on CPU.
        assert own, f"{name}: a Python decomposition no sample reaches; add a hand sample or a NO_SAMPLE reason"
        return
    for call in calls:
        _compare(call, fn)
