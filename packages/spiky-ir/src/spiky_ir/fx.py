"""FX → NKIPy IR lowering (needs torch: ``pip install spiky-ir[torch]``).

Lowerings are a table keyed by ATen overload, filled with :func:`lowers`::

    @lowers(aten.exp.default)
    def _exp(ctx, node):
        return ctx.op("exp", ctx.arg(node, 0))

Each lowering returns the IR value of its node. After each node the lowered type is
checked against the FX node's fake tensor, so a lowering bug stops compilation with
the node's name instead of producing wrong numbers later.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import fx

from spiky_ir.dtypes import DType
from spiky_ir.errors import LoweringError, SpikyError
from spiky_ir.ir import Attr, Graph, TensorType, Value
from spiky_ir.verify import verify

aten = torch.ops.aten

Lowering = Callable[["LoweringContext", fx.Node], Value]
LOWERINGS: dict[Any, Lowering] = {}
"""ATen overload → lowering; read it to see what lowers."""

_TORCH_TO_IR = {
    torch.bool: DType.bool, torch.int8: DType.int8, torch.int16: DType.int16,
    torch.int32: DType.int32, torch.int64: DType.int64, torch.uint8: DType.uint8,
    torch.float16: DType.float16, torch.bfloat16: DType.bfloat16,
    torch.float32: DType.float32, torch.float64: DType.float64,
}


def ir_dtype(dtype: torch.dtype) -> DType:
    """The IR type of a torch dtype."""
    try:
        return _TORCH_TO_IR[dtype]
    except KeyError:
        valid = ", ".join(str(d) for d in _TORCH_TO_IR)
        raise LoweringError(f"torch dtype {dtype} has no IR type; supported: {valid}") from None


def lowers(*targets: Any) -> Callable[[Lowering], Lowering]:
    """Register the decorated function as the lowering of each ATen overload in ``targets``."""

    def register(fn: Lowering) -> Lowering:
        for target in targets:
            if target in LOWERINGS:
                raise SpikyError(f"{target} already has a lowering")
            LOWERINGS[target] = fn
        return fn

    return register


def source_of(node: fx.Node) -> str:
    """``aten.op (node 'name') at file:line`` for error messages, from the FX stack trace."""
    text = f"{node.target} (node '{node.name}')"
    trace = node.meta.get("stack_trace") or ""
    frames = [line.strip() for line in trace.splitlines() if line.strip().startswith("File ")]
    if frames:
        text += " at " + frames[-1].removeprefix("File ").replace('"', "")
    return text


class LoweringContext:
    """State of one FX graph's lowering, and the helpers lowerings build IR with."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.env: dict[fx.Node, Value] = {}
        self.node: fx.Node | None = None

    # -- operands ---------------------------------------------------------------------------

    def arg(self, node: fx.Node, index: int, kw: str | None = None) -> Any:
        """Positional argument ``index`` (or keyword ``kw``) of ``node``, FX nodes as Values."""
        if index < len(node.args):
            raw = node.args[index]
        elif kw is not None and kw in node.kwargs:
            raw = node.kwargs[kw]
        else:
            raise LoweringError(f"{source_of(node)} lacks argument #{index} ({kw or 'positional'})")
        return self.env[raw] if isinstance(raw, fx.Node) else raw

    def kwarg(self, node: fx.Node, index: int, kw: str, default: Any) -> Any:
        """Like :meth:`arg` but with a default when the argument is absent."""
        if index < len(node.args) or kw in node.kwargs:
            return self.arg(node, index, kw)
        return default

    def tensor(self, value: Any, like: Value | None = None) -> Value:
        """``value`` as an IR value: Python scalars become constants of torch's weak type."""
        if isinstance(value, Value):
            return value
        if isinstance(value, bool | int | float):
            return self.const(value, _scalar_dtype(value, like))
        raise LoweringError(f"{self._where()} has operand {value!r} that is not a tensor or scalar")

    def const(self, value: bool | int | float, dtype: DType) -> Value:
        return self.op("constant", attrs={"value": value, "dtype": dtype})

    # -- building ---------------------------------------------------------------------------

    def op(self, name: str, *inputs: Value, attrs: dict[str, Attr] | None = None) -> Value:
        source = source_of(self.node) if self.node is not None else None
        hint = self.node.name if self.node is not None else name
        return self.graph.add_op(name, inputs, attrs, name=hint, source=source)

    def binary(self, name: str, a: Any, b: Any) -> Value:
        """A binary op where either side may be a Python scalar (weakly typed, as in torch)."""
        if not isinstance(a, Value) and not isinstance(b, Value):
            raise LoweringError(f"{self._where()} has two scalar operands {a!r}, {b!r}")
        like = a if isinstance(a, Value) else b
        return self.op(name, self.tensor(a, like), self.tensor(b, like))

    def _where(self) -> str:
        return source_of(self.node) if self.node is not None else "<graph>"


def _scalar_dtype(value: bool | int | float, like: Value | None) -> DType:
    """torch's type for a Python scalar next to a tensor: the tensor's unless the scalar
    is of a higher category (a float next to an int tensor gives float32)."""
    if like is None:
        return DType.bool if isinstance(value, bool) else DType.int64 if isinstance(value, int) else DType.float32
    t = like.type.dtype
    if isinstance(value, bool):
        return t
    if isinstance(value, int):
        return t if t is not DType.bool else DType.int64
    return t if t.is_floating else DType.float32


def _fake_type(node: fx.Node) -> TensorType:
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor):
        kind = type(val).__name__
        raise LoweringError(
            f"{source_of(node)} carries a {kind}, not a tensor; symbolic sizes and non-tensor "
            "values are not lowered by this version of spiky-ir"
        )
    shape: list[int] = []
    for d in val.shape:
        if not isinstance(d, int):
            raise LoweringError(f"{source_of(node)} has a symbolic dim {d}; compile with static shapes")
        shape.append(d)
    return TensorType(tuple(shape), ir_dtype(val.dtype))


def lower_fx(gm: fx.GraphModule, name: str = "main") -> Graph:
    """Lower an ATen-level FX graph (as aot_autograd produces it) to a verified IR graph."""
    graph = Graph(name=name)
    ctx = LoweringContext(graph)
    for node in gm.graph.nodes:
        ctx.node = node
        if node.op == "placeholder":
            ctx.env[node] = graph.add_input(node.name, _fake_type(node))
        elif node.op == "call_function":
            lowering = LOWERINGS.get(node.target)
            if lowering is None:
                raise LoweringError(
                    f"{source_of(node)} has no spiky-ir lowering; lowered ops: "
                    f"{len(LOWERINGS)} (see spiky_ir.fx.LOWERINGS)"
                )
            ctx.env[node] = _checked(ctx, node, lowering(ctx, node))
        elif node.op == "output":
            outs = node.args[0] if isinstance(node.args[0], list | tuple) else (node.args[0],)
            values = []
            for out in outs:
                if not isinstance(out, fx.Node):
                    raise LoweringError(f"graph output {out!r} is not a tensor; not lowered yet")
                values.append(ctx.env[out])
            graph.set_outputs(values)
        else:
            raise LoweringError(f"FX node '{node.name}' of kind '{node.op}' is not lowered yet")
    verify(graph)
    return graph


def _checked(ctx: LoweringContext, node: fx.Node, value: Value) -> Value:
    """Match ``value`` to the FX node's fake tensor: cast to its dtype, reject shape mismatches."""
    expected = _fake_type(node)
    if value.type.shape != expected.shape:
        raise LoweringError(
            f"lowering of {source_of(node)} produced shape {value.type.shape}, "
            f"torch says {expected.shape}: this is a spiky-ir bug, please report it"
        )
    if value.type.dtype != expected.dtype:
        value = ctx.op("astype", value, attrs={"dtype": expected.dtype})
    return value


# --- the lowering table ----------------------------------------------------------------------


def _binary_lowering(ir_op: str, *targets: Any) -> None:
    def lower(ctx: LoweringContext, node: fx.Node) -> Value:
        return ctx.binary(ir_op, ctx.arg(node, 0), ctx.arg(node, 1))

    lowers(*targets)(lower)


def _unary_lowering(ir_op: str, *targets: Any) -> None:
    def lower(ctx: LoweringContext, node: fx.Node) -> Value:
        return ctx.op(ir_op, ctx.arg(node, 0))

    lowers(*targets)(lower)


_binary_lowering("multiply", aten.mul.Tensor, aten.mul.Scalar)
_binary_lowering("divide", aten.div.Tensor, aten.div.Scalar)
_unary_lowering("negative", aten.neg.default)
_unary_lowering("exp", aten.exp.default)
_unary_lowering("tanh", aten.tanh.default)
_unary_lowering("sigmoid", aten.sigmoid.default)


def _scaled(ctx: LoweringContext, value: Any, alpha: Any) -> Any:
    if alpha == 1:
        return value
    return ctx.binary("multiply", value, alpha)


@lowers(aten.add.Tensor, aten.add.Scalar)
def _add(ctx: LoweringContext, node: fx.Node) -> Value:
    other = _scaled(ctx, ctx.arg(node, 1), ctx.kwarg(node, 2, "alpha", 1))
    return ctx.binary("add", ctx.arg(node, 0), other)


@lowers(aten.sub.Tensor, aten.sub.Scalar)
def _sub(ctx: LoweringContext, node: fx.Node) -> Value:
    other = _scaled(ctx, ctx.arg(node, 1), ctx.kwarg(node, 2, "alpha", 1))
    return ctx.binary("subtract", ctx.arg(node, 0), other)


@lowers(aten.relu.default)
def _relu(ctx: LoweringContext, node: fx.Node) -> Value:
    return ctx.binary("maximum", ctx.arg(node, 0), 0)


@lowers(aten.silu.default)
def _silu(ctx: LoweringContext, node: fx.Node) -> Value:
    x = ctx.arg(node, 0)
    return ctx.op("multiply", x, ctx.op("sigmoid", x))


@lowers(aten.gelu.default)
def _gelu(ctx: LoweringContext, node: fx.Node) -> Value:
    x = ctx.arg(node, 0)
    approximate = ctx.kwarg(node, 1, "approximate", "none")
    if approximate == "none":
        # 0.5 * x * (1 + erf(x / sqrt(2)))
        inner = ctx.op("erf", ctx.binary("multiply", x, 1.0 / math.sqrt(2.0)))
    elif approximate == "tanh":
        # 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))
        cube = ctx.op("multiply", x, ctx.op("multiply", x, x))
        poly = ctx.op("add", x, ctx.binary("multiply", cube, 0.044715))
        inner = ctx.op("tanh", ctx.binary("multiply", poly, math.sqrt(2.0 / math.pi)))
    else:
        raise LoweringError(f"{source_of(node)}: gelu approximate={approximate!r} is not 'none' or 'tanh'")
    half_x = ctx.binary("multiply", x, 0.5)
    return ctx.op("multiply", half_x, ctx.binary("add", inner, 1.0))


@lowers(aten.mm.default, aten.bmm.default, aten.matmul.default)
def _matmul(ctx: LoweringContext, node: fx.Node) -> Value:
    return ctx.op("matmul", ctx.arg(node, 0), ctx.arg(node, 1))


@lowers(aten.addmm.default)
def _addmm(ctx: LoweringContext, node: fx.Node) -> Value:
    bias, a, b = ctx.arg(node, 0), ctx.arg(node, 1), ctx.arg(node, 2)
    beta = ctx.kwarg(node, 3, "beta", 1)
    alpha = ctx.kwarg(node, 4, "alpha", 1)
    product = _scaled(ctx, ctx.op("matmul", a, b), alpha)
    if beta == 0:  # torch ignores the bias (even NaNs in it) when beta is 0
        return product  # type: ignore[no-any-return]
    return ctx.binary("add", _scaled(ctx, bias, beta), product)


@lowers(aten.permute.default)
def _permute(ctx: LoweringContext, node: fx.Node) -> Value:
    x: Value = ctx.arg(node, 0)
    rank = x.type.rank
    axes = tuple(int(d) % rank for d in ctx.arg(node, 1, "dims")) if rank else ()
    return ctx.op("transpose", x, attrs={"axes": axes})


@lowers(aten.t.default)
def _t(ctx: LoweringContext, node: fx.Node) -> Value:
    x: Value = ctx.arg(node, 0)
    axes = tuple(reversed(range(x.type.rank)))
    return ctx.op("transpose", x, attrs={"axes": axes})


@lowers(aten.view.default, aten.reshape.default, aten._unsafe_view.default)
def _view(ctx: LoweringContext, node: fx.Node) -> Value:
    # The fake tensor holds the target shape with any -1 already resolved.
    shape = _fake_type(node).static_shape()
    return ctx.op("reshape", ctx.arg(node, 0), attrs={"shape": shape})


@lowers(aten.clone.default, aten.alias.default, aten.detach.default)
def _identity(ctx: LoweringContext, node: fx.Node) -> Value:
    # Values are immutable in the IR, so a copy is the value itself.
    value: Value = ctx.arg(node, 0)
    return value


def lowered_ops() -> Sequence[str]:
    """Names of the ATen overloads with a lowering, sorted."""
    return sorted(str(t) for t in LOWERINGS)
