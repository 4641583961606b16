"""Collectives: all_reduce, all_gather, reduce_scatter, broadcast, all_to_all over a named process group.

The numpy reference runs them through the registered backend (:mod:`spiky_ir.collectives`,
spiky-dist over torch.distributed); HLO emits XLA's collectives over the replica groups
``emit_hlo`` is given. They have no kernel-source form (a NumPy kernel has no process group),
and only all_reduce has a padding rule (it is position-wise); each op records why.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from spiky_ir.collectives import CollectiveBackend, collective_backend
from spiky_ir.errors import ShapeError
from spiky_ir.hlo.builder import HloValue
from spiky_ir.hlo.rules import HloContext, HloRule, hlo_rule
from spiky_ir.ir import Node
from spiky_ir.padding import pad_rule, positionwise
from spiky_ir.registry import Array, ShapeRule, attr_dims, attr_int, attr_ints, define_op
from spiky_ir.symbolic import Dim, dim_add, dim_floor, dim_mul
from spiky_ir.types import Attr, TensorType

_NO_KERNEL = ("a NumPy kernel has no process group; collectives run through spiky-dist "
              "(spiky_ir.collectives.set_collective_backend)")
_MOVES_ROWS = "it moves dim-0 rows between ranks, so each rank's padding would land among real rows"

_GROUP = {"group_name": "str"}
_REDUCE_OPS = ("sum", "avg", "product", "min", "max")
_REDUCE_KIND = {"sum": "add", "avg": "add", "product": "mul", "min": "min", "max": "max"}
"""Collective reduce_op → HLO reducer."""


def _collective(name: str, attrs: Mapping[str, str], rule: ShapeRule, doc: str,
                call: Callable[[CollectiveBackend, Array, Mapping[str, Attr]], Array], hlo: HloRule,
                padding: str | None = None) -> None:
    """Define collective ``name``: its reference calls the registered backend; ``padding`` is why it has
    no padding rule (None: it is position-wise)."""

    def reference(xs: Sequence[Array], attrs: Mapping[str, Attr]) -> list[Array]:
        return [np.asarray(call(collective_backend(name), xs[0], attrs))]

    no_rule = {"kernel_source": _NO_KERNEL}
    if padding is not None:
        no_rule["padding"] = padding
    define_op(name, "collective", 1, attrs, rule, reference, doc, no_rule=no_rule)
    hlo_rule(name)(hlo)
    if padding is None:
        pad_rule(name)(positionwise)


def _group(attrs: Mapping[str, Attr]) -> str:
    return str(attrs["group_name"])


def _check_reduce_op(attrs: Mapping[str, Attr]) -> None:
    if attrs["reduce_op"] not in _REDUCE_OPS:
        raise ShapeError(f"reduce_op {attrs['reduce_op']!r} is not one of {_REDUCE_OPS}")


def _groups(ctx: HloContext) -> Sequence[Sequence[int]]:
    name = str(ctx.node.attrs["group_name"])
    if name not in ctx.replica_groups:
        known = ", ".join(map(repr, ctx.replica_groups)) or "none"
        raise ctx.fail(f"process group {name!r} has no replica groups; pass emit_hlo(..., replica_groups="
                       f"{{{name!r}: [[0, 1, ...]]}}) (known: {known})")
    groups = ctx.replica_groups[name]
    size = ctx.node.attrs.get("group_size")
    if isinstance(size, int) and any(len(g) != size for g in groups):
        raise ctx.fail(f"group_size {size} does not match replica groups {[list(g) for g in groups]}")
    return groups


def _averaged(ctx: HloContext, out: HloValue, groups: Sequence[Sequence[int]]) -> HloValue:
    """Divide a sum by the group size when the node's reduce_op is avg."""
    if str(ctx.node.attrs["reduce_op"]) != "avg":
        return out
    return ctx.b.elementwise("divide", [out, ctx.b.full(len(groups[0]), out.dtype, out.dims)])


# --- all_reduce -------------------------------------------------------------------------------------


def _all_reduce_type(types: Sequence[TensorType], attrs: Mapping[str, Attr]) -> list[TensorType]:
    _check_reduce_op(attrs)
    return [types[0]]


def _all_reduce_hlo(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    groups = _groups(ctx)
    return [_averaged(ctx, ctx.b.all_reduce(xs[0], _REDUCE_KIND[str(node.attrs["reduce_op"])], groups), groups)]


_collective("all_reduce", {"reduce_op": "str", **_GROUP}, _all_reduce_type, "reduce over the ranks of ``group_name``",
            lambda b, x, attrs: b.all_reduce(x, str(attrs["reduce_op"]), _group(attrs)), _all_reduce_hlo)


# --- all_gather ---------------------------------------------------------------------------------------


def _all_gather_type(types: Sequence[TensorType], attrs: Mapping[str, Attr]) -> list[TensorType]:
    t = types[0]
    if t.rank == 0:
        raise ShapeError("all_gather needs rank >= 1")
    return [TensorType((dim_mul(t.shape[0], attr_int(attrs, "group_size")), *t.shape[1:]), t.dtype)]


_collective("all_gather", {"group_size": "int", **_GROUP}, _all_gather_type,
            "concatenate every rank's tensor along dim 0", lambda b, x, attrs: b.all_gather(x, _group(attrs)),
            lambda ctx, node, xs: [ctx.b.all_gather(xs[0], 0, _groups(ctx))], padding=_MOVES_ROWS)


# --- reduce_scatter -----------------------------------------------------------------------------------


def _reduce_scatter_type(types: Sequence[TensorType], attrs: Mapping[str, Attr]) -> list[TensorType]:
    _check_reduce_op(attrs)
    t, size = types[0], attr_int(attrs, "group_size")
    if t.rank == 0:
        raise ShapeError("reduce_scatter needs rank >= 1")
    if size <= 0:
        raise ShapeError(f"reduce_scatter group_size {size} must be positive")
    rows = t.shape[0]
    if isinstance(rows, int) and rows % size:
        raise ShapeError(f"reduce_scatter input dim 0 ({rows}) is not divisible by the group size {size}")
    # A symbolic dim 0 (dynamic=True) gives the quotient symbol ``s0//size``, as torch's own size;
    # divisibility is checked once the size is known (above, when the graph is specialised).
    return [TensorType((dim_floor(rows, size), *t.shape[1:]), t.dtype)]


def _reduce_scatter_hlo(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    groups = _groups(ctx)
    kind = _REDUCE_KIND[str(node.attrs["reduce_op"])]
    return [_averaged(ctx, ctx.b.reduce_scatter(xs[0], kind, 0, groups), groups)]


_collective("reduce_scatter", {"reduce_op": "str", "group_size": "int", **_GROUP}, _reduce_scatter_type,
            "reduce over ranks, each rank keeping its dim-0 shard",
            lambda b, x, attrs: b.reduce_scatter(x, str(attrs["reduce_op"]), _group(attrs)), _reduce_scatter_hlo,
            padding=_MOVES_ROWS)


# --- broadcast ----------------------------------------------------------------------------------------


def _broadcast_hlo(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    # HLO has no broadcast collective in our opcode subset: gather every rank's tensor
    # along a new leading dim, then keep group rank ``src``'s slice.
    b, groups, x = ctx.b, _groups(ctx), xs[0]
    src = node.attrs["src"]
    assert isinstance(src, int)  # the op registry checked the attribute kind
    if not 0 <= src < len(groups[0]):
        raise ctx.fail(f"broadcast src {src} is outside the group of {len(groups[0])} ranks")
    gathered = b.all_gather(b.reshape(x, (1, *x.dims)), 0, groups)
    picked = b.slice(gathered, [src, *[0] * x.rank], [src + 1, *x.dims], [1] * (x.rank + 1))
    return [b.reshape(picked, x.dims)]


_collective("broadcast", {"src": "int", **_GROUP}, lambda types, _attrs: [types[0]],
            "every rank gets group rank ``src``'s tensor",
            lambda b, x, attrs: b.broadcast(x, attr_int(attrs, "src"), _group(attrs)), _broadcast_hlo,
            padding="the source rank's real lengths need not be this rank's, so its padding could land in "
                    "this rank's real region")


# --- all_to_all ---------------------------------------------------------------------------------------


def _total(dims: Sequence[Dim]) -> Dim:
    out: Dim = 0
    for d in dims:
        out = dim_add(out, d)
    return out


def _all_to_all_type(types: Sequence[TensorType], attrs: Mapping[str, Attr]) -> list[TensorType]:
    # Split sizes are dims: under dynamic=True torch passes even splits as ``s0//size`` each.
    t = types[0]
    if t.rank == 0:
        raise ShapeError("all_to_all needs rank >= 1")
    in_splits, out_splits = attr_dims(attrs, "input_split_sizes"), attr_dims(attrs, "output_split_sizes")
    rows = t.shape[0]
    if in_splits and all(isinstance(d, int) for d in in_splits) and isinstance(rows, int) \
            and sum(int(d) for d in in_splits) != rows:
        if len(set(in_splits)) == 1:  # the even split torch derives from dim 0 // group size
            raise ShapeError(f"all_to_all input dim 0 ({rows}) is not divisible by the group size "
                             f"{len(in_splits)} (input splits {list(in_splits)})")
        raise ShapeError(f"all_to_all input splits {list(in_splits)} do not add up to dim 0 ({rows})")
    if not out_splits:
        return [t]
    return [TensorType((_total(out_splits), *t.shape[1:]), t.dtype)]


def _all_to_all_hlo(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    groups = _groups(ctx)
    for key in ("input_split_sizes", "output_split_sizes"):
        dims = attr_dims(node.attrs, key)
        if not all(isinstance(d, int) for d in dims):
            raise ctx.fail(f"{key} {list(dims)} are symbolic; specialise the graph to sizes first")
        splits = ctx.ints(key)
        if splits and len(set(splits)) != 1:
            raise ctx.fail(f"{key} {list(splits)} are unequal; HLO all-to-all splits dim 0 evenly")
    return [ctx.b.all_to_all(xs[0], 0, groups)]


_collective("all_to_all", {"output_split_sizes": "dims", "input_split_sizes": "dims", **_GROUP}, _all_to_all_type,
            "exchange dim-0 chunks between ranks",
            lambda b, x, attrs: b.all_to_all(x, _group(attrs), attr_ints(attrs, "output_split_sizes") or None,
                                             attr_ints(attrs, "input_split_sizes") or None),
            _all_to_all_hlo, padding=_MOVES_ROWS)
