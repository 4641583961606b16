"""Saved activations cross from the forward to the backward as one packed tensor per dtype.

A training graph's forward returns every activation its backward needs, and each one is a tensor
of its own between the two compiled calls: an output of the forward's executable, a torch tensor
that autograd saves, then an input of the backward's executable. On the host target each of those
crossings costs ~5 µs per tensor (the output buffer, the torch tensor, its numpy view, the input
staging), whatever its size: llama_train's 2-layer forward saves 38 small activations.

:func:`pack_saved_activations` rewrites the partitioned pair (before either is compiled) so that
the small, static activations of one dtype leave the forward as one flat tensor: the forward ends
with ``cat([a.reshape(-1), b.reshape(-1), ...])`` and the backward takes that tensor in their place
and slices each one back out (``packed[o:o + n].view(shape)``). The values are the same elements in
the same row-major order, so nothing the backward computes changes; the compiled backward fuses
the slices into their consumers, and the forward's concatenation replaces the copies its own
output packing made anyway.

A saved transpose of another activation (``t``, ``transpose``, ``permute``: the min-cut partition
saves ``x.t()`` for a weight gradient) is stored as that activation and transposed again in the
backward, where a dot reads its operand transposed at no cost; stored as it is, it would cost the
forward a transposing copy.

Only rewritten when both graphs lower entirely (no eager fallback partitions: eager ``view`` and
``as_strided`` read memory layouts, and the slices are contiguous where the saved tensor may not
be). The replacement of each saved tensor keeps its fake tensor (sizes and strides), so lowerings
that read the layout (``as_strided``) see what they saw before.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import fx

aten = torch.ops.aten

PACK_SAVED_BYTES = 64 * 1024
"""Saved activations up to this size are packed; a bigger one costs more to copy than to cross alone."""
PACK_SAVED_MIN = 4
"""Fewer packable activations of one dtype than this are left as they are."""


def _small_static(node: fx.Node) -> torch.Tensor | None:
    """The fake tensor of a saved activation worth packing, or None."""
    if node.op != "call_function" or node.meta.get("saved_tensor_with_no_vc_check", False):
        return None
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor) or not val.dtype.is_floating_point:
        return None
    if not all(isinstance(d, int) for d in val.shape):
        return None
    nbytes = math.prod(val.shape) * val.element_size()
    return val if 0 < nbytes <= PACK_SAVED_BYTES else None


_TRANSPOSES = (aten.t.default, aten.transpose.int, aten.permute.default)


def _transposed_source(node: fx.Node) -> fx.Node | None:
    """The activation a saved transpose was made of, when it can be stored instead (computed in the
    forward, static, of the same dtype and size), else None."""
    if node.target not in _TRANSPOSES or not node.args or not isinstance(node.args[0], fx.Node):
        return None
    source = node.args[0]
    val = source.meta.get("val")
    if source.op != "call_function" or not isinstance(val, torch.Tensor):
        return None
    if not all(isinstance(d, int) for d in val.shape) or val.dtype != node.meta["val"].dtype:
        return None
    return source if val.numel() == node.meta["val"].numel() else None


def pack_saved_activations(fw: fx.GraphModule, bw: fx.GraphModule, num_fwd_outputs: int,
                           lowers_entirely: Callable[[fx.GraphModule], bool]) -> int:
    """Pack ``fw``'s small static saved activations into one tensor per dtype, and unpack them in
    ``bw`` (both rewritten in place). Returns how many activations were packed (0: graphs unchanged).

    ``num_fwd_outputs``: how many of ``fw``'s outputs are the forward's own (the rest are saved for
    the backward, which takes them as its first inputs, in the same order)."""
    if not (lowers_entirely(fw) and lowers_entirely(bw)):
        return 0
    output = next(iter(fw.graph.find_nodes(op="output")))
    outs = list(output.args[0])
    saved = outs[num_fwd_outputs:]
    placeholders = list(bw.graph.find_nodes(op="placeholder"))
    if [p.name for p in placeholders[:len(saved)]] != [getattr(n, "name", None) for n in saved]:
        return 0  # not the layout this rewrite knows
    own = {n for n in outs[:num_fwd_outputs] if isinstance(n, fx.Node)}
    groups: dict[torch.dtype, list[int]] = {}
    seen: set[fx.Node] = set()
    for index, node in enumerate(saved):
        if not isinstance(node, fx.Node) or node in own or node in seen:
            continue
        seen.add(node)
        val = _small_static(node)
        if val is not None:
            groups.setdefault(val.dtype, []).append(index)
    groups = {dtype: members for dtype, members in groups.items() if len(members) >= PACK_SAVED_MIN}
    if not groups:
        return 0

    packed_out: dict[int, fx.Node] = {}  # index of the group's first member -> the packed fw node
    first_body = next(n for n in bw.graph.nodes if n.op != "placeholder")
    for dtype, members in groups.items():
        # A saved transpose of another activation is stored as that activation, in its own order, and
        # transposed again in the backward (where a dot reads it transposed for free), instead of being
        # copied into transposed order by the forward; an activation stored for two members is stored once.
        stored: dict[fx.Node, int] = {}  # node whose elements are in the packed tensor -> offset
        offset, flats = 0, []
        plans = []
        for index in members:
            node = saved[index]
            base = _transposed_source(node)
            source = base if base is not None else node
            if source not in stored:
                val = source.meta["val"]
                stored[source] = offset
                with fw.graph.inserting_before(output):
                    flat = fw.graph.call_function(aten.reshape.default, (source, [val.numel()]))
                flat.meta["val"] = val.reshape(-1)
                flats.append(flat)
                offset += val.numel()
            plans.append((index, source, stored[source], base is not None))
        with fw.graph.inserting_before(output):
            cat = fw.graph.call_function(aten.cat.default, (flats,))
        cat.meta["val"] = torch.cat([f.meta["val"] for f in flats])
        packed_out[members[0]] = cat

        name = f"saved_packed_{str(dtype).removeprefix('torch.')}"
        with bw.graph.inserting_before(placeholders[members[0]]):
            ph = bw.graph.placeholder(name)
            ph.meta["val"] = cat.meta["val"]
        with bw.graph.inserting_before(first_body):
            for index, source, start, transposed in plans:
                old = placeholders[index]
                shape = list(source.meta["val"].shape)
                n = source.meta["val"].numel()
                part = bw.graph.call_function(aten.slice.Tensor, (ph, 0, start, start + n))
                part.meta["val"] = cat.meta["val"][start:start + n]
                value = bw.graph.call_function(aten.view.default, (part, shape))
                value.meta["val"] = source.meta["val"]
                if transposed:
                    node = saved[index]
                    value = bw.graph.call_function(node.target, (value, *node.args[1:]), dict(node.kwargs))
                # the saved tensor's own fake tensor, layout included (see the module doc)
                value.meta["val"] = old.meta["val"]
                value.meta["unpacked_from"] = old.name
                old.replace_all_uses_with(value)
                bw.graph.erase_node(old)

    dropped = {i for members in groups.values() for i in members[1:]}
    new_saved = [packed_out.get(i, node) for i, node in enumerate(saved) if i not in dropped]
    output.args = ((*outs[:num_fwd_outputs], *new_saved),)
    fw.graph.lint()
    bw.graph.lint()
    fw.recompile()
    bw.recompile()
    return sum(len(members) for members in groups.values())
