"""The decomposition table the ``"nkipy"`` backend hands aot_autograd.

It starts from torch's ``core_aten_decompositions()`` and removes every entry whose outputs
differ from the op's own: aot_autograd substitutes a decomposition for the op in the forward
graph while the backward still comes from the op's real derivative formula, so a decomposition
that returns something else in one of its outputs silently corrupts gradients (it did: Hugging
Face Llama trained with SDPA attention got the right loss and gradients 10-30x off).

``packages/spiky-torch/tests/test_decompositions.py`` compares every entry we keep against the
real op on random inputs (each output's shape, dtype and values) and lists, as data with a
reason, the entries it cannot build inputs for.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch._decomp import core_aten_decompositions, decomposition_table

from spiky_ir.fx import LOWERINGS

#: Entries of ``core_aten_decompositions()`` we do not use, each with why (:data:`REPLACED`
#: gives some of them a correct decomposition of our own).
EXCLUDED: Mapping[str, str] = {
    "aten._scaled_dot_product_flash_attention_for_cpu.default": (
        "export-only rewrite (torch/_decomp/decompositions.py says Inductor must exclude it): its "
        "second output is the attention-probability matrix (B, H, L, S) from "
        "_scaled_dot_product_attention_math, where the op returns the logsumexp (B, H, L) that "
        "its backward (_scaled_dot_product_flash_attention_for_cpu_backward) reads; gradients "
        "through SDPA came out 10-30x off"
    ),
    "aten.std.out": (
        "reads a positional bool after self as `unbiased` where the op's schema has `dim` "
        "(std.out(x, True) reduces dim 1 in the op, every dim in the decomposition)"
    ),
    "aten.im2col.default": "rejects the plain ints the op accepts for its int[2] arguments (TypeError)",
    "aten.im2col.out": "rejects the plain ints the op accepts for its int[2] arguments (TypeError)",
    "aten._weight_norm_interface.out": "does not take the op's out0=/out1= arguments (TypeError)",
    "aten.reflection_pad1d_backward.grad_input": "does not take the op's grad_input= argument (TypeError)",
    "aten.reflection_pad2d_backward.grad_input": "does not take the op's grad_input= argument (TypeError)",
    "aten.reflection_pad3d_backward.grad_input": "does not take the op's grad_input= argument (TypeError)",
}


def _sdpa_flash_for_cpu(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    *,
    attn_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``aten._scaled_dot_product_flash_attention_for_cpu`` as matmul + softmax, with both outputs.

    Returns the attention output (query's dtype) and the logsumexp of the
    scaled, masked scores over the key dim (float32, shape (B, H, L), the op's strides), which
    is what the op's backward reads. Reduced-precision inputs are computed in float32, as the
    CPU kernel accumulates.
    """
    if dropout_p != 0.0:
        raise ValueError(
            f"_scaled_dot_product_flash_attention_for_cpu with dropout_p={dropout_p} has no "
            "decomposition (dropout is random); call SDPA with dropout_p=0.0 (eval mode)"
        )
    dtype = query.dtype
    q, k, v = (t.float() for t in (query, key, value))
    if k.size(-3) != q.size(-3):  # grouped-query attention: each key/value head serves a group
        k = k.repeat_interleave(q.size(-3) // k.size(-3), dim=-3)
        v = v.repeat_interleave(q.size(-3) // v.size(-3), dim=-3)
    factor = scale if scale is not None else 1.0 / float(q.size(-1)) ** 0.5
    scores = torch.matmul(q, k.transpose(-2, -1)) * factor
    length, source = q.size(-2), k.size(-2)
    if is_causal:
        keep = torch.ones(length, source, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~keep, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask.float()
    lse = torch.logsumexp(scores, dim=-1)
    out = torch.matmul(torch.exp(scores - lse.unsqueeze(-1)), v).to(dtype)
    # The op's layouts: output contiguous, logsumexp (B, L, H)-contiguous seen as (B, H, L).
    lse = lse.transpose(1, 2).contiguous().transpose(1, 2)
    return out, lse


def _pair(value: int | Sequence[int]) -> list[int]:
    return [value, value] if isinstance(value, int) else list(value)


def _im2col(
    input: torch.Tensor,
    kernel_size: int | Sequence[int],
    dilation: int | Sequence[int],
    padding: int | Sequence[int],
    stride: int | Sequence[int],
) -> torch.Tensor:
    """torch's im2col decomposition, taking plain ints for its int[2] arguments as the op does."""
    decomposition = decomposition_table[torch.ops.aten.im2col.default]
    return decomposition(input, _pair(kernel_size), _pair(dilation), _pair(padding), _pair(stride))  # type: ignore[no-any-return]


#: Entries of ``core_aten_decompositions()`` we drop because spiky-ir lowers the op itself, onto an IR
#: op of its own: the graph keeps the real op (and aot_autograd its derivative formula) instead of
#: the composition torch would substitute. ``spiky_decompositions`` checks each still has a lowering.
LOWERED: Mapping[str, str] = {
    "aten.roll.default": "IR op roll (the decomposition gathers through an index_select of arange-built indices)",
    "aten.argsort.default": "IR op sort (the decomposition is sort too, through the composite kernel)",
    "aten.argsort.stable": "IR op sort (the decomposition is sort too, through the composite kernel)",
    "aten.logsumexp.default": "IR op logsumexp (the decomposition is max + exp + sum + log + where for infinities)",
    "aten.tril.default": "IR op tril (the decomposition builds the mask from two aranges and a compare)",
    "aten.triu.default": "IR op triu (the decomposition builds the mask from two aranges and a compare)",
}


#: Our own decompositions, in place of excluded ones (tested like the others).
REPLACED: Mapping[str, Callable[..., Any]] = {
    "aten._scaled_dot_product_flash_attention_for_cpu.default": _sdpa_flash_for_cpu,
    "aten.im2col.default": _im2col,
}


def spiky_decompositions() -> dict[torch._ops.OperatorBase, Callable[..., Any]]:
    """The reviewed table: ``core_aten_decompositions()`` less :data:`EXCLUDED` and :data:`LOWERED`,
    plus :data:`REPLACED`.

    Built on each call, as torch builds its own: the table includes the composite kernels of
    custom ops registered since the last call.
    """
    table = dict(core_aten_decompositions())
    names = {str(op): op for op in table}
    for listed, entries in (("EXCLUDED", EXCLUDED), ("LOWERED", LOWERED)):
        missing = sorted(set(entries) - set(names))
        if missing:  # a torch upgrade renamed or dropped one: review the list again
            raise RuntimeError(
                f"spiky.torch.decompositions.{listed} names ops that core_aten_decompositions() no "
                f"longer has: {missing}; review the list against this torch ({torch.__version__})"
            )
    unlowered = sorted(name for name in LOWERED if names[name] not in LOWERINGS and name not in LOWERINGS)
    if unlowered:
        raise RuntimeError(f"spiky.torch.decompositions.LOWERED names ops spiky-ir does not lower: {unlowered}")
    for name in LOWERED:
        del table[names[name]]
    for name in EXCLUDED:
        op = names[name]
        del table[op]
        if name in REPLACED:
            table[op] = REPLACED[name]
    return table
