"""``options={"fallback": "eager"}``: graphs with ops spiky-ir cannot lower still run.

The ATen graph is partitioned by what lowers (torch's capability-based partitioner over
:data:`spiky_ir.fx.LOWERINGS`); every partition that lowers is compiled by the backend as
usual, and the nodes between them run eagerly in torch, with one warning per graph naming
the ops. Without the option an unlowered op is an error (:class:`spiky.LoweringError`).

A functional collective that runs eagerly returns before its result is written; its
``wait_tensor`` runs eagerly with it, so no compiled partition reads the result before it is final.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import fx, nn
from torch.fx.passes.infra.partitioner import CapabilityBasedPartitioner
from torch.fx.passes.operator_support import OperatorSupportBase

from spiky_ir.fx import LOWERINGS, SYMBOLIC_OPS

log = logging.getLogger("spiky.compile")


def lowers(node: fx.Node) -> bool:
    """Whether spiky-ir has a lowering for this call node."""
    target = node.target
    return target in LOWERINGS or str(target) in LOWERINGS or target in SYMBOLIC_OPS


def _size_computation(node: fx.Node) -> bool:
    """A SymInt-valued node (``sym_size``, arithmetic on sizes): torch computes it next to the eager
    ops at no cost, and a partition that needs it takes it as a size input."""
    val = node.meta.get("val")
    return isinstance(val, torch.SymInt | torch.SymBool | torch.SymFloat) and (
        node.target in SYMBOLIC_OPS or not lowers(node))


_WAIT = torch.ops._c10d_functional.wait_tensor.default


def _compiled_source(node: fx.Node) -> bool:
    """Whether ``node`` (a getitem's source, a wait's operand) is a call that runs in a compiled partition."""
    return node.op == "call_function" and _Lowerable().is_node_supported({}, node)


def _waits_on_compiled(wait: fx.Node) -> bool:
    """Whether a ``wait_tensor`` waits on a collective that runs compiled (then it is the identity there).

    A collective that runs eagerly returns at once with the result still being written (torch's
    functional collectives are asynchronous), and only its ``wait_tensor`` waits for it. Lowered,
    that wait is the identity, so a compiled partition would read the buffer too early: the wait
    of an eager collective (or of anything that is not a lowered call) runs eagerly too.
    """
    source = wait.args[0] if wait.args else None
    if not isinstance(source, fx.Node):
        return False
    if source.target is operator.getitem:  # one result of a coalesced collective
        source = source.args[0]
        if not isinstance(source, fx.Node):
            return False
    return _compiled_source(source)


class _Lowerable(OperatorSupportBase):
    def is_node_supported(self, submodules: Mapping[str, nn.Module], node: fx.Node) -> bool:
        # getitem of an unlowered multi-output op must stay with that op, in eager
        if node.target is operator.getitem:
            source = node.args[0]
            return isinstance(source, fx.Node) and _compiled_source(source)
        if node.target is _WAIT:
            return _waits_on_compiled(node)
        return node.op == "call_function" and lowers(node) and not _size_computation(node)


class _Partition(nn.Module):
    """A fused partition replaced by its compiled callable (boxed calling convention)."""

    def __init__(self, compiled: Callable[[list[Any]], list[Any]], single: bool) -> None:
        super().__init__()
        self.compiled = compiled
        self.single = single

    def forward(self, *args: Any) -> Any:
        outs = self.compiled(list(args))
        return outs[0] if self.single else tuple(outs)


def unlowered_ops(gm: fx.GraphModule) -> list[str]:
    """Names of the call_function targets in ``gm`` that do not lower (sorted, unique); a getitem or
    ``wait_tensor`` that runs eagerly only because its source does is not one of them."""
    return sorted({str(n.target) for n in gm.graph.nodes
                   if n.op == "call_function" and not _size_computation(n)
                   and n.target not in (operator.getitem, _WAIT)
                   and not _Lowerable().is_node_supported({}, n)})


def compile_with_fallback(
    gm: fx.GraphModule, compile_part: Callable[[fx.GraphModule], Callable[[list[Any]], list[Any]]]
) -> Callable[..., Any]:
    """``gm`` with every lowerable partition compiled by ``compile_part`` and the rest eager."""
    missing = unlowered_ops(gm)
    partitioner = CapabilityBasedPartitioner(gm, _Lowerable(), allows_single_node_partition=True)
    fused = partitioner.fuse_partitions(partitioner.propose_partitions())
    for node in list(fused.graph.nodes):
        if node.op != "call_module":
            continue
        sub = getattr(fused, str(node.target))
        assert isinstance(sub, fx.GraphModule)
        for placeholder, arg in zip((n for n in sub.graph.nodes if n.op == "placeholder"), node.args, strict=True):
            if "val" not in placeholder.meta and isinstance(arg, fx.Node) and "val" in arg.meta:
                placeholder.meta["val"] = arg.meta["val"]
        output = next(n for n in sub.graph.nodes if n.op == "output")
        single = not isinstance(output.args[0], tuple | list)
        setattr(fused, str(node.target), _Partition(compile_part(sub), single))
    fused.recompile()
    log.warning("fallback='eager': %s run eagerly in torch (no spiky-ir lowering); the rest of the graph "
                "is compiled", ", ".join(missing))

    def run(args: list[Any]) -> Any:
        call_args = list(args)
        args.clear()  # boxed convention: the caller's list is ours to empty
        return fused(*call_args)

    run._boxed_call = True  # type: ignore[attr-defined]
    return run
