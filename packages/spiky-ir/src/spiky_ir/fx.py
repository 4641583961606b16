"""FX → NKIPy IR lowering (needs torch: ``pip install spiky-ir[torch]``).

Lowerings are a table keyed by ATen overload (:data:`LOWERINGS`). ATen overloads that map
one to one onto an IR op are declared on the op itself (``OpDef.aten``, e.g. ``exp`` declares
``"aten.exp.default"``) and their lowerings are built here from the registry
(:func:`direct_lowerings`): unary and attribute-free ops take their tensor operands, binary
ops also take Python scalars, reductions map ``dim``/``keepdim``/``dtype`` by name.
Composite lowerings (gelu, layer_norm, ...) are written here with :func:`lowers`::

    @lowers(aten.relu.default)
    def _relu(ctx, node):
        return ctx.binary("maximum", ctx.value(node, 0), 0)

Each lowering returns the IR value of its node. After each node the lowered type is
checked against the FX node's fake tensor, so a lowering bug stops compilation with
the node's name instead of producing wrong numbers later.
"""

from __future__ import annotations

import difflib
import functools
import itertools
import logging
import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import fx

from spiky_ir.dtypes import DType
from spiky_ir.errors import LoweringError, SpikyError
from spiky_ir.ir import Graph, Value
from spiky_ir.registry import OpDef, all_ops, get_op
from spiky_ir.symbolic import Dim, canonical, dim_add, dim_floor, dim_mul, dim_sub, dims_product
from spiky_ir.types import Attr, DenseArray, TensorType
from spiky_ir.verify import verify

aten = torch.ops.aten
c10d = torch.ops._c10d_functional
log = logging.getLogger("spiky.ir.fx")

Lowered = Value | tuple[Value | None, ...] | Dim | None
"""What a lowering produces for its FX node: a value, several (multi-result ops), a
dim (SymInt-valued nodes), or nothing (assertion nodes)."""
Lowering = Callable[["LoweringContext", fx.Node], Lowered]
LOWERINGS: dict[Any, Lowering] = {}
"""ATen overload (or its name, for ops torch registers late) → lowering; read it to see what lowers."""

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
    """``aten.op (node 'name') at file, line N, in fn (`code`)`` for error messages, from the FX stack trace."""
    text = f"{node.target} (node '{node.name}')"
    trace = [line.strip() for line in (node.meta.get("stack_trace") or "").splitlines()]
    frames = [i for i, line in enumerate(trace) if line.startswith("File ")]
    if frames:
        last = frames[-1]
        text += " at " + trace[last].removeprefix("File ").replace('"', "")
        code = trace[last + 1] if last + 1 < len(trace) else ""
        if code and not code.startswith("File "):  # the user's line of code itself
            text += f" (`{code}`)"
    return text


class LoweringContext:
    """State of one FX graph's lowering, and the helpers lowerings build IR with."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.env: dict[fx.Node, Any] = {}
        self.node: fx.Node | None = None

    # -- operands ---------------------------------------------------------------------------

    def _map(self, raw: Any) -> Any:
        if isinstance(raw, fx.Node):
            return self.env[raw]
        if isinstance(raw, list | tuple):
            return type(raw)(self._map(r) for r in raw)
        if isinstance(raw, torch.SymInt):
            return _sym_dim(raw)
        return raw  # SymFloat and SymBool stay symbolic scalars (ctx.tensor builds them)

    def arg(self, node: fx.Node, index: int, kw: str | None = None) -> Any:
        """Positional argument ``index`` (or keyword ``kw``) of ``node``, FX nodes mapped to
        their IR values (lists too) and SymInts to dims."""
        if index < len(node.args):
            raw = node.args[index]
        elif kw is not None and kw in node.kwargs:
            raw = node.kwargs[kw]
        else:
            raise LoweringError(f"{source_of(node)} lacks argument #{index} ({kw or 'positional'})")
        return self._map(raw)

    def kwarg(self, node: fx.Node, index: int, kw: str, default: Any) -> Any:
        """Like :meth:`arg` but with a default when the argument is absent."""
        if index < len(node.args) or kw in node.kwargs:
            return self.arg(node, index, kw)
        return default

    def value(self, node: fx.Node, index: int, kw: str | None = None) -> Value:
        """Argument ``index`` which must be a tensor."""
        v = self.arg(node, index, kw)
        if not isinstance(v, Value):
            raise LoweringError(f"{source_of(node)}: argument #{index} is {v!r}, not a tensor")
        return v

    def tensor(self, value: Any, like: Value | None = None) -> Value:
        """``value`` as an IR value: Python scalars become constants of torch's weak type."""
        if isinstance(value, Value):
            return value
        if isinstance(value, bool | int | float):
            return self.const(value, _scalar_dtype(value, like))
        if isinstance(value, str):  # a symbolic size used as a number (SymInt), e.g. a mean's count
            return self.op("dim_value", attrs={"value": value, "dtype": _scalar_dtype(1, like)})
        if isinstance(value, torch.SymInt | torch.SymFloat | torch.SymBool):  # arithmetic on sizes
            kind: bool | int | float = (1.0 if isinstance(value, torch.SymFloat)
                                        else True if isinstance(value, torch.SymBool) else 1)
            return self.astype(_sym_scalar(self, value.node.expr), _scalar_dtype(kind, like))
        raise LoweringError(f"{self._where()} has operand {value!r} that is not a tensor or scalar")

    def const(self, value: bool | int | float, dtype: DType) -> Value:
        if dtype is DType.bool:
            value = bool(value)
        elif dtype.is_integer:
            value = int(value)
        elif not isinstance(value, float):
            value = float(value)
        return self.op("constant", attrs={"value": value, "dtype": dtype})

    # -- building ---------------------------------------------------------------------------

    def op(self, name: str, *inputs: Value, attrs: dict[str, Attr] | None = None) -> Value:
        return self.graph.add_node(name, inputs, attrs, name=self._hint(name), source=self._source()).output

    def ops(self, name: str, *inputs: Value, attrs: dict[str, Attr] | None = None) -> tuple[Value, ...]:
        """A multi-result op; returns all its results."""
        return self.graph.add_node(name, inputs, attrs, name=self._hint(name), source=self._source()).outputs

    def _hint(self, name: str) -> str:
        return self.node.name if self.node is not None else name

    def _source(self) -> str | None:
        return source_of(self.node) if self.node is not None else None

    def binary(self, name: str, a: Any, b: Any) -> Value:
        """A binary op where either side may be a Python scalar (weakly typed, as in torch)."""
        if not isinstance(a, Value) and not isinstance(b, Value):
            raise LoweringError(f"{self._where()} has two scalar operands {a!r}, {b!r}")
        like = a if isinstance(a, Value) else b
        return self.op(name, self.tensor(a, like), self.tensor(b, like))

    def astype(self, value: Value, dtype: DType) -> Value:
        return value if value.type.dtype is dtype else self.op("astype", value, attrs={"dtype": dtype})

    def reshape(self, value: Value, shape: Sequence[Dim]) -> Value:
        shape = tuple(canonical(d) for d in shape)
        return value if value.type.shape == shape else self.op("reshape", value, attrs={"shape": shape})

    def broadcast(self, value: Value, shape: Sequence[Dim]) -> Value:
        shape = tuple(shape)
        return value if value.type.shape == shape else self.op("broadcast_to", value, attrs={"shape": shape})

    def reduce(self, name: str, value: Value, axes: Sequence[int], keepdims: bool, **attrs: Attr) -> Value:
        return self.op(name, value, attrs={"axes": tuple(axes), "keepdims": keepdims, **attrs})

    def transpose(self, value: Value, axes: Sequence[int]) -> Value:
        axes = tuple(axes)
        if axes == tuple(range(len(axes))):
            return value
        return self.op("transpose", value, attrs={"axes": axes})

    def slice(self, value: Value, axis: int, start: Dim, stop: Dim, step: int = 1) -> Value:
        shape = value.type.shape
        starts = tuple(start if i == axis else 0 for i in range(len(shape)))
        stops = tuple(stop if i == axis else d for i, d in enumerate(shape))
        steps = tuple(step if i == axis else 1 for i in range(len(shape)))
        if starts == (0,) * len(shape) and stops == shape and step == 1:
            return value
        return self.op("slice", value, attrs={"start": starts, "stop": stops, "step": steps})

    def full(self, shape: Sequence[Dim], value: bool | int | float, dtype: DType) -> Value:
        return self.op("full", attrs={"shape": tuple(shape), "value": _scalar_attr(value, dtype), "dtype": dtype})

    def _where(self) -> str:
        return source_of(self.node) if self.node is not None else "<graph>"


def _scalar_attr(value: Any, dtype: DType) -> bool | int | float:
    if dtype is DType.bool:
        return bool(value)
    if dtype.is_integer:
        return int(value)
    return float(value)


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


def _sym_dim(value: Any) -> Dim:
    """A torch SymInt (or int) as an IR dim: its sympy expression in canonical form."""
    if isinstance(value, int):
        return value
    expr = value.node.expr
    if getattr(expr, "is_Integer", False):
        return int(expr)
    try:
        return canonical(str(expr))
    except SpikyError:
        pass
    try:  # e.g. (s0**2)//s0 when Dynamo gave two equal sizes one symbol
        import sympy  # type: ignore[import-untyped]
        from torch.utils._sympy.functions import FloorDiv

        plain = expr.replace(FloorDiv, lambda a, b: sympy.floor(a / b))
        return canonical(str(sympy.expand(sympy.simplify(plain))))
    except (SpikyError, TypeError, ValueError):
        pass
    try:  # floor divisions ((s0 - 1)//2 + 1 after a strided window, s0//s1 in a view by an int)
        return _floor_dim(expr)
    except (SpikyError, TypeError, ValueError):
        raise LoweringError(
            f"symbolic size {expr} is not built from the input sizes with +, -, * and //; "
            "mark fewer dims dynamic or compile with static shapes"
        ) from None


def _floor_dim(expr: Any) -> Dim:
    """A sympy size expression over +, *, integer powers and FloorDiv as a dim (floor divisions become
    derived symbols, :func:`spiky_ir.symbolic.dim_floor`)."""
    if getattr(expr, "is_Integer", False):
        return int(expr)
    if getattr(expr, "is_Symbol", False):
        return canonical(str(expr))
    name = type(expr).__name__
    if name == "Add":
        return functools.reduce(dim_add, (_floor_dim(a) for a in expr.args))
    if name == "Mul":
        return functools.reduce(dim_mul, (_floor_dim(a) for a in expr.args))
    if name in ("Pow", "PowByNatural") and getattr(expr.args[1], "is_Integer", False) and int(expr.args[1]) >= 0:
        return dims_product([_floor_dim(expr.args[0])] * int(expr.args[1]))
    if name in ("FloorDiv", "CleanDiv"):
        return dim_floor(_floor_dim(expr.args[0]), _floor_dim(expr.args[1]))
    raise ValueError(f"{name} in a size")


def _sym_scalar(ctx: LoweringContext, expr: Any) -> Value:
    """A sympy expression over size symbols (a SymInt/SymFloat's) as a rank-0 IR value, int64 or
    float32: sizes are ``dim_value`` ops (bound when a bucket is specialised; real lengths under
    padding), the arithmetic is IR ops."""
    from torch.utils._sympy import functions as symfn

    def both_float(a: Value, b: Value) -> tuple[Value, Value]:
        if a.type.dtype.is_floating or b.type.dtype.is_floating:
            return ctx.astype(a, DType.float32), ctx.astype(b, DType.float32)
        return a, b

    def fold(name: str, args: Sequence[Any]) -> Value:
        out = walk(args[0])
        for arg in args[1:]:
            out = ctx.op(name, *both_float(out, walk(arg)))
        return out

    def power(base: Any, exponent: Any) -> Value:
        if getattr(exponent, "is_Integer", False):
            n = int(exponent)
            out = ctx.const(1, DType.int64)
            for _ in range(abs(n)):
                out = ctx.op("multiply", *both_float(out, walk(base)))
            return out if n >= 0 else ctx.op("reciprocal", ctx.astype(out, DType.float32))
        return ctx.op("power", *both_float(ctx.astype(walk(base), DType.float32), walk(exponent)))

    def walk(e: Any) -> Value:
        if getattr(e, "is_Integer", False) or e is True or e is False:
            return ctx.const(int(e), DType.int64)
        if getattr(e, "is_Number", False):
            return ctx.const(float(e), DType.float32)
        if getattr(e, "is_Symbol", False):
            return ctx.op("dim_value", attrs={"value": str(e), "dtype": DType.int64})
        name = type(e).__name__
        if name == "Add":
            return fold("add", e.args)
        if name == "Mul":
            return fold("multiply", e.args)
        if name in ("Pow", "PowByNatural", "FloatPow"):
            return power(*e.args)
        if isinstance(e, symfn.FloorDiv):
            return ctx.op("floor_divide", *both_float(walk(e.args[0]), walk(e.args[1])))
        if name in ("Mod", "PythonMod"):
            return ctx.op("remainder", *both_float(walk(e.args[0]), walk(e.args[1])))
        if name in ("IntTrueDiv", "FloatTrueDiv"):
            numerator, denominator = (ctx.astype(walk(a), DType.float32) for a in e.args)
            return ctx.op("divide", numerator, denominator)
        if name == "ToFloat":
            return ctx.astype(walk(e.args[0]), DType.float32)
        if name in ("TruncToInt", "TruncToFloat"):
            truncated = ctx.op("trunc", ctx.astype(walk(e.args[0]), DType.float32))
            return ctx.astype(truncated, DType.int64 if name == "TruncToInt" else DType.float32)
        if name in ("Max", "Min"):
            return fold("maximum" if name == "Max" else "minimum", e.args)
        if name == "Identity":
            return walk(e.args[0])
        raise LoweringError(
            f"{ctx._where()}: the symbolic scalar {expr} uses {name}, which spiky-ir cannot compute from sizes "
            "(+, -, *, //, %, /, powers, min, max, float()); compile with static shapes or "
            "options={'fallback': 'eager'}")

    return walk(expr)


def sym_dim(value: Any) -> Dim:
    """A SymInt (a graph input's ``val``, say) as the IR dim the lowering gives it."""
    return _sym_dim(value)


def _fake_type(node: fx.Node, val: Any = None) -> TensorType:
    val = node.meta.get("val") if val is None else val
    if not isinstance(val, torch.Tensor):
        kind = type(val).__name__
        raise LoweringError(f"{source_of(node)} carries a {kind}, not a tensor")
    return TensorType(tuple(_sym_dim(d) for d in val.shape), ir_dtype(val.dtype))


def _is_sym(val: Any) -> bool:
    return isinstance(val, torch.SymInt | torch.SymBool | torch.SymFloat | int | float | bool)


OutputSlot = int | None
"""Where one FX output comes from: an index into the IR graph's outputs, or ``None``
for an FX output that is ``None`` (a backward graph's gradient of a non-leaf)."""


@dataclass
class LoweredGraph:
    """An FX graph's IR and how its outputs map back to the FX output list."""

    graph: Graph
    output_slots: list[OutputSlot]
    dim_outputs: dict[int, Dim] = field(default_factory=dict)
    """FX output index → the symbolic size it returns (forward graphs of dynamic-shape training
    save sizes for the backward); its slot is ``None``. Evaluate with the call's symbol values."""
    node_values: dict[str, Value] = field(default_factory=dict)
    """FX node name → the IR value it lowered to (tensor-valued nodes), for debugging tools
    that compare a graph's intermediate values with torch's."""


def lower_fx_graph(gm: fx.GraphModule, name: str = "main") -> LoweredGraph:
    """Lower an ATen-level FX graph (as aot_autograd produces it), keeping ``None`` outputs.

    Tensor placeholders become graph inputs; SymInt placeholders become symbolic dims
    (named by the SymInt's symbol) and are not inputs of the IR graph.
    """
    _pin_sizes(gm)
    graph = Graph(name=name)
    ctx = LoweringContext(graph)
    slots: list[OutputSlot] = []
    dim_outputs: dict[int, Dim] = {}
    for node in gm.graph.nodes:
        ctx.node = node
        val = node.meta.get("val")
        if node.op == "placeholder":
            if isinstance(val, torch.Tensor):
                ctx.env[node] = graph.add_input(node.name, _fake_type(node))
            elif isinstance(val, torch.SymFloat | torch.SymBool):
                ctx.env[node] = val  # a symbolic scalar: built from sizes where a lowering uses it
            elif _is_sym(val):
                ctx.env[node] = _sym_dim(val)
            else:
                kind = type(val).__name__
                raise LoweringError(f"graph input '{node.name}' is a {kind}; only tensors and SymInts lower")
        elif node.op == "call_function":
            lowering = LOWERINGS.get(node.target) or LOWERINGS.get(str(node.target))
            if lowering is None and _is_sym(val) and not isinstance(val, torch.Tensor):
                ctx.env[node] = _sym_dim(val) if isinstance(val, torch.SymInt | int) else val
                continue
            if lowering is None:
                close = difflib.get_close_matches(str(node.target), [str(t) for t in LOWERINGS], n=2, cutoff=0.6)
                nearest = f"nearest lowered ops: {', '.join(close)}; " if close else ""
                raise LoweringError(
                    f"{source_of(node)} has no spiky-ir lowering; {nearest}rewrite it with lowered ops, or "
                    "compile with options={'fallback': 'eager'} to run it in torch "
                    "(lowered ops: python -m spiky_ir.coverage)"
                )
            ctx.env[node] = _checked(ctx, node, lowering(ctx, node))
        elif node.op == "output":
            outs = node.args[0] if isinstance(node.args[0], list | tuple) else (node.args[0],)
            values: list[Value] = []
            for out in outs:
                mapped = ctx.env[out] if isinstance(out, fx.Node) else out
                if mapped is None:
                    slots.append(None)
                elif isinstance(mapped, Value):
                    slots.append(len(values))
                    values.append(mapped)
                elif isinstance(mapped, int | str) and not isinstance(mapped, bool):
                    dim_outputs[len(slots)] = canonical(mapped)
                    slots.append(None)
                else:
                    raise LoweringError(
                        f"graph output {out} is {mapped!r}, not a tensor; symbolic-size outputs "
                        "are not lowered (compile with static shapes)"
                    )
            graph.set_outputs(values)
        elif node.op == "get_attr":
            ctx.env[node] = _lower_get_attr(ctx, gm, node)
        else:
            raise LoweringError(f"FX node '{node.name}' of kind '{node.op}' is not lowered (only ATen graphs are)")
    verify(graph)
    node_values = {n.name: v for n, v in ctx.env.items() if isinstance(v, Value)}
    return LoweredGraph(graph, slots, dim_outputs, node_values)


def _encoder_layer_sizes(node: fx.Node) -> list[tuple[Any, int, str]]:
    src = node.args[0].meta.get("val") if isinstance(node.args[0], fx.Node) else None
    embed = node.args[1]
    if not isinstance(src, torch.Tensor) or src.dim() != 3 or not isinstance(embed, int):
        return []
    return [(src.shape[2], embed, "the input's last dim is the embedding dim")]


SIZE_REQUIREMENTS: dict[Any, Callable[[fx.Node], list[tuple[Any, int, str]]]] = {
    aten._transformer_encoder_layer_fwd.default: _encoder_layer_sizes,
}
"""ATen overload → the (size, value, why) its kernel requires but its fake kernel does not check.
Under ``dynamic=True`` such a size stays symbolic; :func:`_pin_sizes` makes it the value."""


def _pin_sizes(gm: fx.GraphModule) -> None:
    """Sizes some ops require to equal a constant (e.g. the fused encoder layer's embedding dim)
    are pinned in torch's shape environment before lowering: ``size == value`` on a SymInt adds
    a guard (a call with another size recompiles) and makes the symbol that value in every fake
    tensor of the graph, inputs included."""
    for node in gm.graph.nodes:
        rule = SIZE_REQUIREMENTS.get(node.target) if node.op == "call_function" else None
        for size, value, why in rule(node) if rule is not None else []:
            if isinstance(size, torch.SymInt) and not bool(size == value):
                raise LoweringError(f"{source_of(node)}: {why}, {value}, but it is {size}; torch's own kernel "
                                    "rejects this call too")


def tensor_to_numpy(t: torch.Tensor) -> np.ndarray[Any, Any]:
    """A CPU copy of a real (not fake) tensor as a numpy array of its IR type (bfloat16 as ml_dtypes').

    Works inside a fake-tensor mode (backends compile under one): the copy runs outside it."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    dtype = ir_dtype(t.dtype)
    with unset_fake_temporarily():
        t = t.detach().to("cpu").contiguous()
        array: np.ndarray[Any, Any] = t.view(torch.int16).numpy().view(dtype.to_numpy()) if dtype is DType.bfloat16 \
            else t.numpy()
        copy: np.ndarray[Any, Any] = array.copy()
        return copy


def _lower_get_attr(ctx: LoweringContext, gm: fx.GraphModule, node: fx.Node) -> Value:
    """A tensor the graph module holds (a constant lifted into the graph, e.g. ``torch.tensor([])``
    in model code) becomes a ``literal``: its data is part of the IR, so its text and the compile
    cache key change when the data does."""
    target = str(node.target)
    try:
        held: Any = functools.reduce(getattr, target.split("."), gm)
    except AttributeError:
        raise LoweringError(f"FX node '{node.name}' reads attribute {target!r}, which the graph module "
                            "does not have") from None
    if not isinstance(held, torch.Tensor):
        raise LoweringError(f"FX node '{node.name}' reads attribute {target!r}, a {type(held).__name__}; only "
                            "tensor attributes (constants) lower")
    from torch._subclasses.fake_tensor import is_fake

    if is_fake(held) or held.is_meta:
        raise LoweringError(f"FX node '{node.name}' reads tensor attribute {target!r} that has no data (a fake or "
                            "meta tensor); lower the graph module that holds the real constant")
    dense = DenseArray.from_numpy(tensor_to_numpy(held))
    log.debug("constant %s %s (%d bytes) becomes a literal", target, dense.type, len(dense.data))
    return ctx.op("literal", attrs={"value": dense})


def lower_fx(gm: fx.GraphModule, name: str = "main") -> Graph:
    """Lower an ATen-level FX graph whose outputs are all tensors to a verified IR graph."""
    lowered = lower_fx_graph(gm, name)
    if lowered.dim_outputs:
        raise LoweringError(
            f"graph '{name}' returns symbolic sizes at output(s) {sorted(lowered.dim_outputs)}; "
            "use lower_fx_graph"
        )
    if None in lowered.output_slots:
        raise LoweringError(
            f"graph '{name}' returns None at output(s) "
            f"{[i for i, s in enumerate(lowered.output_slots) if s is None]}; use lower_fx_graph"
        )
    return lowered.graph


def _checked(ctx: LoweringContext, node: fx.Node, result: Lowered) -> Lowered:
    """Match results to the FX node's fake tensors: cast to their dtypes, reject shape mismatches."""
    val = node.meta.get("val")
    if isinstance(result, tuple):
        if not isinstance(val, list | tuple) or len(val) != len(result):
            raise LoweringError(f"lowering of {source_of(node)} returned {len(result)} values; torch says {val!r}")
        return tuple(_check_optional(ctx, node, r, v) for r, v in zip(result, val, strict=True))
    if isinstance(result, Value):
        return _check_one(ctx, node, result, val)
    return result


def _check_optional(ctx: LoweringContext, node: fx.Node, value: Value | None, val: Any) -> Value | None:
    """One result of a multi-result lowering: None where torch has None too (a gradient that
    convolution_backward's output_mask did not ask for)."""
    if value is None:
        if val is not None:
            raise LoweringError(f"lowering of {source_of(node)} returned None where torch has {val!r}: "
                                "this is a spiky-ir bug, please report it")
        return None
    return _check_one(ctx, node, value, val)


def _check_one(ctx: LoweringContext, node: fx.Node, value: Value, val: Any) -> Value:
    expected = _fake_type(node, val)
    if value.type.shape != expected.shape:
        raise LoweringError(
            f"lowering of {source_of(node)} produced shape {value.type.shape}, "
            f"torch says {expected.shape}: this is a spiky-ir bug, please report it"
        )
    return ctx.astype(value, expected.dtype)


# --- the lowering table ----------------------------------------------------------------------


def _rank_dim(d: int, rank: int) -> int:
    return d % rank if rank else 0


def _dims_arg(ctx: LoweringContext, node: fx.Node, index: int, kw: str, rank: int) -> tuple[int, ...]:
    """A ``dim`` argument that may be an int, a list, or None/[] for all dims."""
    dims = ctx.kwarg(node, index, kw, None)
    if dims is None or dims == []:
        return tuple(range(rank))
    if isinstance(dims, int):
        dims = [dims]
    return tuple(sorted({_rank_dim(int(d), rank) for d in dims}))


def _overload(name: str) -> Any:
    """The ATen overload object named ``"aten.exp.default"``."""
    namespace, op, overload = name.split(".")
    try:
        return getattr(getattr(getattr(torch.ops, namespace), op), overload)
    except (AttributeError, RuntimeError):
        raise SpikyError(f"ATen overload {name!r} does not exist in torch {torch.__version__}; fix the op's "
                         "``aten`` field in spiky_ir/ops") from None


def _direct_lowering(opdef: OpDef, overload: Any) -> Lowering:
    """The lowering of an ATen overload declared on ``opdef`` (``OpDef.aten``): operands map one to one."""
    name = opdef.name
    if opdef.category == "binary":  # either side may be a Python scalar, weakly typed as in torch

        def binary(ctx: LoweringContext, node: fx.Node) -> Value:
            return ctx.binary(name, ctx.arg(node, 0), ctx.arg(node, 1))

        return binary
    if opdef.category == "reduce" and set(opdef.attrs) == {"axes", "keepdims"}:
        return _reduction_lowering(name, overload)
    if not opdef.attrs and opdef.arity is not None:

        def tensors(ctx: LoweringContext, node: fx.Node) -> Value:
            return ctx.op(name, *(ctx.value(node, i) for i in range(opdef.arity or 0)))

        return tensors
    raise SpikyError(f"op '{name}' declares ATen overloads {list(opdef.aten)}, but its operands do not map one to "
                     "one (it has attributes); lower them with @lowers in spiky_ir/fx.py instead")


def _reduction_lowering(ir_op: str, overload: Any) -> Lowering:
    """``(self, dim, keepdim, *, dtype)`` by name from the overload's schema; any may be absent."""
    names = [a.name for a in overload._schema.arguments]
    dim, keepdim, dtype = (names.index(n) if n in names else None for n in ("dim", "keepdim", "dtype"))

    def lower(ctx: LoweringContext, node: fx.Node) -> Value:
        x = ctx.value(node, 0)
        cast = ctx.kwarg(node, dtype, "dtype", None) if dtype is not None else None
        if cast is not None:
            x = ctx.astype(x, ir_dtype(cast))
        axes = _dims_arg(ctx, node, dim, "dim", x.type.rank) if dim is not None else tuple(range(x.type.rank))
        keep = bool(ctx.kwarg(node, keepdim, "keepdim", False)) if keepdim is not None else False
        return ctx.reduce(ir_op, x, axes, keep)

    return lower


def direct_lowerings() -> dict[str, str]:
    """ATen overload name → the IR op it lowers onto one to one (from every op's ``aten`` field)."""
    return {overload: name for name, opdef in all_ops().items() for overload in opdef.aten}


for _aten_name, _ir_op in direct_lowerings().items():
    _target = _overload(_aten_name)
    lowers(_target)(_direct_lowering(get_op(_ir_op), _target))


def _scaled(ctx: LoweringContext, value: Any, alpha: Any) -> Any:
    if alpha == 1:
        return value
    if not isinstance(value, Value):
        return value * alpha
    return ctx.binary("multiply", value, alpha)


@lowers(aten.add.Tensor, aten.add.Scalar)
def _add(ctx: LoweringContext, node: fx.Node) -> Value:
    other = _scaled(ctx, ctx.arg(node, 1), ctx.kwarg(node, 2, "alpha", 1))
    return ctx.binary("add", ctx.arg(node, 0), other)


# By name: torch registers prims.fma only once Inductor's decompositions are imported.
@lowers("prims.fma.default")
def _fma(ctx: LoweringContext, node: fx.Node) -> Value:
    """a * b + c, rounded twice (lerp decomposes to it: AdamW's moment updates)."""
    product = ctx.binary("multiply", ctx.arg(node, 0), ctx.arg(node, 1))
    return ctx.binary("add", product, ctx.arg(node, 2))


@lowers(aten.sub.Tensor, aten.sub.Scalar)
def _sub(ctx: LoweringContext, node: fx.Node) -> Value:
    other = _scaled(ctx, ctx.arg(node, 1), ctx.kwarg(node, 2, "alpha", 1))
    return ctx.binary("subtract", ctx.arg(node, 0), other)


@lowers(aten.rsub.Tensor, aten.rsub.Scalar)
def _rsub(ctx: LoweringContext, node: fx.Node) -> Value:
    other = _scaled(ctx, ctx.arg(node, 0), ctx.kwarg(node, 2, "alpha", 1))
    return ctx.binary("subtract", ctx.arg(node, 1), other)


@lowers(aten.div.Tensor_mode, aten.div.Scalar_mode)
def _div_mode(ctx: LoweringContext, node: fx.Node) -> Value:
    a, b = ctx.arg(node, 0), ctx.arg(node, 1)
    mode = ctx.kwarg(node, 2, "rounding_mode", None)
    if mode is None:
        return ctx.binary("divide", a, b)
    if mode == "floor":
        return ctx.binary("floor_divide", a, b)
    if mode == "trunc":
        like = a if isinstance(a, Value) else b
        if like.type.dtype.is_floating:
            return ctx.op("trunc", ctx.binary("divide", a, b))
        # Integer truncating division, exact in float64 for |values| < 2**53.
        a64 = ctx.astype(ctx.tensor(a, like), DType.float64)
        b64 = ctx.astype(ctx.tensor(b, like), DType.float64)
        return ctx.op("trunc", ctx.op("divide", a64, b64))
    raise LoweringError(f"{source_of(node)}: rounding_mode={mode!r} is not None, 'trunc' or 'floor'")


@lowers(aten.relu.default)
def _relu(ctx: LoweringContext, node: fx.Node) -> Value:
    return ctx.binary("maximum", ctx.value(node, 0), 0)


@lowers(aten.silu.default)
def _silu(ctx: LoweringContext, node: fx.Node) -> Value:
    x = ctx.value(node, 0)
    return ctx.op("multiply", x, ctx.op("sigmoid", x))


@lowers(aten.gelu.default)
def _gelu(ctx: LoweringContext, node: fx.Node) -> Value:
    x = ctx.value(node, 0)
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


@lowers(aten.log2.default, aten.log10.default)
def _log_base(ctx: LoweringContext, node: fx.Node) -> Value:
    base = 2.0 if node.target is aten.log2.default else 10.0
    return ctx.binary("multiply", ctx.op("log", ctx.value(node, 0)), 1.0 / math.log(base))


@lowers(aten.leaky_relu.default)
def _leaky_relu(ctx: LoweringContext, node: fx.Node) -> Value:
    x = ctx.value(node, 0)
    slope = ctx.kwarg(node, 1, "negative_slope", 0.01)
    return ctx.op("where", ctx.binary("greater", x, 0), x, ctx.binary("multiply", x, slope))


@lowers(aten.hardtanh.default)
def _hardtanh(ctx: LoweringContext, node: fx.Node) -> Value:
    x = ctx.value(node, 0)
    lo, hi = ctx.kwarg(node, 1, "min_val", -1.0), ctx.kwarg(node, 2, "max_val", 1.0)
    return ctx.binary("minimum", ctx.binary("maximum", x, lo), hi)


@lowers(aten.elu.default)
def _elu(ctx: LoweringContext, node: fx.Node) -> Value:
    x = ctx.value(node, 0)
    alpha, scale = ctx.kwarg(node, 1, "alpha", 1.0), ctx.kwarg(node, 2, "scale", 1.0)
    input_scale = ctx.kwarg(node, 3, "input_scale", 1.0)
    negative = ctx.binary("multiply", ctx.op("expm1", _scaled(ctx, x, input_scale)), alpha * scale)
    return ctx.op("where", ctx.binary("greater", x, 0), _scaled(ctx, x, scale), negative)


@lowers(aten.clamp.default, aten.clamp.Tensor)
def _clamp(ctx: LoweringContext, node: fx.Node) -> Value:
    x: Any = ctx.value(node, 0)
    lo, hi = ctx.kwarg(node, 1, "min", None), ctx.kwarg(node, 2, "max", None)
    if lo is not None:
        x = ctx.binary("maximum", x, lo)
    if hi is not None:
        x = ctx.binary("minimum", x, hi)
    return x  # type: ignore[no-any-return]


@lowers(aten.where.self)
def _where(ctx: LoweringContext, node: fx.Node) -> Value:
    cond, a, b = ctx.value(node, 0), ctx.arg(node, 1), ctx.arg(node, 2)
    like = a if isinstance(a, Value) else b if isinstance(b, Value) else None
    return ctx.op("where", ctx.astype(cond, DType.bool), ctx.tensor(a, like), ctx.tensor(b, like))


# -- reductions (sum, mean, amax, ... lower one to one: see spiky_ir/ops/reduce.py) --


@lowers(aten.var.correction, aten.var.dim)
def _var(ctx: LoweringContext, node: fx.Node) -> Value:
    x = ctx.value(node, 0)
    axes = _dims_arg(ctx, node, 1, "dim", x.type.rank)
    if node.target is aten.var.dim:  # var(x, dim, unbiased=True, keepdim=False)
        correction = 1.0 if ctx.kwarg(node, 2, "unbiased", True) else 0.0
        keepdim = bool(ctx.kwarg(node, 3, "keepdim", False))
        return ctx.reduce("var", x, axes, keepdim, correction=correction)
    raw: Any = node.kwargs.get("correction")
    correction = 1.0 if raw is None else float(raw)
    keepdim = bool(node.kwargs.get("keepdim", False))
    return ctx.reduce("var", x, axes, keepdim, correction=correction)


@lowers(aten.linalg_vector_norm.default)
def _linalg_vector_norm(ctx: LoweringContext, node: fx.Node) -> Value:
    """``linalg_vector_norm(x, ord=2, dim=None, keepdim=False, *, dtype=None)`` from abs, powers and a
    sum (max/min for ord=±inf, a count of non-zeros for ord=0). Every reduction is an ordinary one, so
    padded positions are masked by its padding rule (0 for sum, -inf/+inf for max/min) before they count.
    Half and bfloat16 accumulate in float32, as torch's kernel does."""
    x = ctx.value(node, 0)
    cast: Any = node.kwargs.get("dtype")
    if cast is not None:
        x = ctx.astype(x, ir_dtype(cast))
    if not x.type.dtype.is_floating:
        raise LoweringError(f"{source_of(node)}: linalg_vector_norm of a {x.type.dtype.name} tensor; torch needs a "
                            "floating-point input (pass dtype=torch.float32)")
    val = node.meta.get("val")
    out_dtype = ir_dtype(val.dtype) if isinstance(val, torch.Tensor) else x.type.dtype
    raw = ctx.kwarg(node, 1, "ord", 2)
    if not isinstance(raw, int | float) or isinstance(raw, bool):
        raise LoweringError(f"{source_of(node)}: linalg_vector_norm ord={raw!r} is not a number")
    order = float(raw)
    axes = _dims_arg(ctx, node, 2, "dim", x.type.rank)
    keepdim = bool(ctx.kwarg(node, 3, "keepdim", False))
    work = DType.float32 if x.type.dtype in (DType.float16, DType.bfloat16) else x.type.dtype
    x = ctx.astype(x, work)
    if order == 0:  # the number of non-zero entries
        nonzero = ctx.astype(ctx.binary("not_equal", x, 0.0), work)
        return ctx.astype(ctx.reduce("sum", nonzero, axes, keepdim), out_dtype)
    magnitude = ctx.op("abs", x)
    if math.isinf(order):
        return ctx.astype(ctx.reduce("max" if order > 0 else "min", magnitude, axes, keepdim), out_dtype)
    if order == 1:
        return ctx.astype(ctx.reduce("sum", magnitude, axes, keepdim), out_dtype)
    if order == 2:
        total = ctx.reduce("sum", ctx.op("multiply", x, x), axes, keepdim)
        return ctx.astype(ctx.op("sqrt", total), out_dtype)
    total = ctx.reduce("sum", ctx.binary("power", magnitude, order), axes, keepdim)
    return ctx.astype(ctx.binary("power", total, 1.0 / order), out_dtype)


@lowers(aten.argmax.default, aten.argmin.default)
def _argmax(ctx: LoweringContext, node: fx.Node) -> Value:
    x = ctx.value(node, 0)
    dim = ctx.kwarg(node, 1, "dim", None)
    keepdim = bool(ctx.kwarg(node, 2, "keepdim", False))
    name = "argmax" if node.target is aten.argmax.default else "argmin"
    if dim is None:
        flat = ctx.reshape(x, (_numel(x),))
        out = ctx.op(name, flat, attrs={"axis": 0, "keepdims": False})
        return ctx.reshape(out, _fake_type(node).shape)
    return ctx.op(name, x, attrs={"axis": _rank_dim(dim, x.type.rank), "keepdims": keepdim})


def _numel(x: Value) -> Dim:
    return dims_product(x.type.shape)


@lowers(aten.max.dim, aten.min.dim)
def _max_dim(ctx: LoweringContext, node: fx.Node) -> tuple[Value, Value]:
    x = ctx.value(node, 0)
    dim = _rank_dim(ctx.arg(node, 1, "dim"), x.type.rank)
    keepdim = bool(ctx.kwarg(node, 2, "keepdim", False))
    kind = "max" if node.target is aten.max.dim else "min"
    values = ctx.reduce(kind, x, (dim,), keepdim)
    return values, ctx.op(f"arg{kind}", x, attrs={"axis": dim, "keepdims": keepdim})


@lowers(aten.histc.default)
def _histc(ctx: LoweringContext, node: fx.Node) -> Value:
    """Counts of the values in ``bins`` equal bins over [min, max] (values outside are not
    counted; max falls in the last bin). Each value's bin is ``(x - min) * bins / (max - min)``
    rounded down, computed in the input's dtype in that order, as torch's CPU kernel does; the
    counts are a one-hot sum, so the padding pass masks padded elements like any sum."""
    x = ctx.value(node, 0)
    bins = int(ctx.kwarg(node, 1, "bins", 100))
    lo, hi = ctx.kwarg(node, 2, "min", 0), ctx.kwarg(node, 3, "max", 0)
    if not x.type.dtype.is_floating:
        raise LoweringError(f"{source_of(node)}: histc of a {x.type.dtype} tensor; torch.histc takes floating "
                            "tensors (convert the input with .float())")
    if bins <= 0:
        raise LoweringError(f"{source_of(node)}: histc bins must be positive, got {bins}")
    if not isinstance(lo, int | float) or not isinstance(hi, int | float):
        raise LoweringError(f"{source_of(node)}: histc min and max must be numbers, got {lo!r}, {hi!r}")
    if lo > hi:
        raise LoweringError(f"{source_of(node)}: histc min {lo} is above max {hi}; pass min <= max")
    dtype = x.type.dtype
    flat = ctx.reshape(x, (_numel(x),))
    if lo == hi:  # torch takes the data's own range (widened by 1 each way if it is one value)
        lo_v = ctx.reduce("min", flat, (0,), False)
        hi_v = ctx.reduce("max", flat, (0,), False)
        single = ctx.op("equal", lo_v, hi_v)
        lo_v = ctx.op("where", single, ctx.binary("subtract", lo_v, 1), lo_v)
        hi_v = ctx.op("where", single, ctx.binary("add", hi_v, 1), hi_v)
    else:
        lo_v, hi_v = ctx.const(lo, dtype), ctx.const(hi, dtype)
    inside = ctx.op("logical_and", ctx.op("greater_equal", flat, lo_v), ctx.op("less_equal", flat, hi_v))
    scaled = ctx.op("divide", ctx.binary("multiply", ctx.op("subtract", flat, lo_v), bins),
                    ctx.op("subtract", hi_v, lo_v))
    pos = ctx.binary("minimum", ctx.astype(ctx.op("floor", scaled), DType.int64), bins - 1)
    pos = ctx.op("where", inside, pos, ctx.const(bins, DType.int64))  # outside: no bin
    n = flat.type.shape[0]
    ids = ctx.op("iota", attrs={"shape": (n, bins), "axis": 1, "dtype": DType.int64})
    hits = ctx.op("equal", ctx.broadcast(ctx.reshape(pos, (n, 1)), (n, bins)), ids)
    return ctx.reduce("sum", ctx.astype(hits, dtype), (0,), False)


# -- linalg (mm, bmm, matmul, dot lower one to one onto matmul: see spiky_ir/ops/linalg.py) --


@lowers(aten.addmm.default, aten.baddbmm.default)
def _addmm(ctx: LoweringContext, node: fx.Node) -> Value:
    bias, a, b = ctx.value(node, 0), ctx.value(node, 1), ctx.value(node, 2)
    beta = ctx.kwarg(node, 3, "beta", 1)
    alpha = ctx.kwarg(node, 4, "alpha", 1)
    product = _scaled(ctx, ctx.op("matmul", a, b), alpha)
    if beta == 0:  # torch ignores the bias (even NaNs in it) when beta is 0
        return product  # type: ignore[no-any-return]
    return ctx.binary("add", _scaled(ctx, bias, beta), product)


#: transformers' float32 stand-in for ``torch._grouped_mm`` under torch.compile (mixture-of-experts
#: models: Mixtral, Qwen2-MoE, ...): the same (input, weight, offs) contract, zeros past offs[-1].
_HF_GROUPED_MM = "transformers.grouped_mm_fallback.default"


@lowers(aten._grouped_mm.default, _HF_GROUPED_MM)
def _grouped_mm(ctx: LoweringContext, node: fx.Node) -> Value:
    """Grouped matmul of a mixture of experts: rows ``offs[g-1]:offs[g]`` of the (rows, in) input
    times expert g's (in, out) weight; rows past ``offs[-1]`` give zeros. Lowered densely: each
    expert's matmul sees only its own rows (the others selected to zero), and the experts' results
    are summed, so every row gets exactly its expert's product."""
    x, w = ctx.value(node, 0), ctx.value(node, 1)
    offs = ctx.kwarg(node, 2, "offs", None)
    if str(node.target) != _HF_GROUPED_MM and ctx.kwarg(node, 3, "bias", None) is not None:
        raise LoweringError(f"{source_of(node)}: _grouped_mm with a bias is not supported; add the bias after it")
    if x.type.rank != 2 or w.type.rank != 3 or not isinstance(offs, Value):
        raise LoweringError(
            f"{source_of(node)}: only the mixture-of-experts form of grouped_mm lowers: a (rows, in) input, "
            f"(experts, in, out) weights and offs; got input {x.type}, weights {w.type}, offs {offs!r}")
    experts, rows = w.type.shape[0], x.type.shape[0]
    # The expert of each row: how many groups end at or before it (experts for rows past the last).
    row = ctx.op("iota", attrs={"shape": (rows, experts), "axis": 0, "dtype": DType.int64})
    ends = ctx.broadcast(ctx.reshape(ctx.astype(offs, DType.int64), (1, experts)), (rows, experts))
    group = ctx.reduce("sum", ctx.astype(ctx.op("less_equal", ends, row), DType.int64), (1,), False)
    expert = ctx.op("iota", attrs={"shape": (experts, rows), "axis": 0, "dtype": DType.int64})
    mine = ctx.op("equal", expert, ctx.broadcast(ctx.reshape(group, (1, rows)), (experts, rows)))
    shape3 = (experts, rows, x.type.shape[1])
    own = ctx.op("where", ctx.broadcast(ctx.reshape(mine, (experts, rows, 1)), shape3),
                 ctx.broadcast(ctx.reshape(x, (1, *x.type.shape)), shape3), ctx.const(0, x.type.dtype))
    out = ctx.reduce("sum", ctx.op("matmul", own, w), (0,), False)
    return ctx.astype(out, _fake_type(node).dtype)


# -- shape and layout --


@lowers(aten.permute.default)
def _permute(ctx: LoweringContext, node: fx.Node) -> Value:
    x = ctx.value(node, 0)
    rank = x.type.rank
    return ctx.op("transpose", x, attrs={"axes": tuple(_rank_dim(int(d), rank) for d in ctx.arg(node, 1, "dims"))})


@lowers(aten.t.default)
def _t(ctx: LoweringContext, node: fx.Node) -> Value:
    x = ctx.value(node, 0)
    return ctx.op("transpose", x, attrs={"axes": tuple(reversed(range(x.type.rank)))})


@lowers(aten.transpose.int)
def _transpose(ctx: LoweringContext, node: fx.Node) -> Value:
    x = ctx.value(node, 0)
    rank = x.type.rank
    a, b = _rank_dim(ctx.arg(node, 1), rank), _rank_dim(ctx.arg(node, 2), rank)
    axes = list(range(rank))
    axes[a], axes[b] = axes[b], axes[a]
    return ctx.op("transpose", x, attrs={"axes": tuple(axes)})


@lowers(aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.squeeze.default,
        aten.squeeze.dim, aten.squeeze.dims, aten.unsqueeze.default, aten.flatten.using_ints,
        aten.view_copy.default)
def _view(ctx: LoweringContext, node: fx.Node) -> Value:
    # The fake tensor holds the target shape with any -1 already resolved.
    return ctx.reshape(ctx.value(node, 0), _fake_type(node).shape)


@lowers(aten.expand.default, aten.expand_copy.default)
def _expand(ctx: LoweringContext, node: fx.Node) -> Value:
    return ctx.broadcast(ctx.value(node, 0), _fake_type(node).shape)


@lowers(aten.clone.default, aten.alias.default, aten.detach.default, aten.lift_fresh_copy.default,
        c10d.wait_tensor.default)
def _identity(ctx: LoweringContext, node: fx.Node) -> Value:
    # Values are immutable in the IR, so a copy is the value itself.
    return ctx.value(node, 0)


@lowers(aten._to_copy.default)
def _to_copy(ctx: LoweringContext, node: fx.Node) -> Value:
    return ctx.astype(ctx.value(node, 0), _fake_type(node).dtype)


# By name, like prims.fma: Dynamo's float inputs (e.g. a norm's eps under dynamic=True) arrive
# as float64 rank-0 tensors that the graph casts with this prim.
@lowers("prims.convert_element_type.default")
def _convert_element_type(ctx: LoweringContext, node: fx.Node) -> Value:
    return ctx.astype(ctx.value(node, 0), ir_dtype(ctx.arg(node, 1, "dtype")))


@lowers(aten.copy.default)
def _copy(ctx: LoweringContext, node: fx.Node) -> Value:
    dst, src = ctx.value(node, 0), ctx.value(node, 1)
    return ctx.broadcast(ctx.astype(src, dst.type.dtype), dst.type.shape)


@lowers(aten.cat.default)
def _cat(ctx: LoweringContext, node: fx.Node) -> Value:
    tensors: list[Value] = list(ctx.arg(node, 0))
    rank = _fake_type(node).rank
    # torch's legacy rule: 1-D empty tensors are skipped whatever the others' rank.
    tensors = [t for t in tensors if not (t.type.shape == (0,) and rank != 1)] or tensors[:1]
    dim = _rank_dim(ctx.kwarg(node, 1, "dim", 0), rank)
    if len(tensors) == 1:
        return tensors[0]
    return ctx.op("concatenate", *tensors, attrs={"axis": dim})


@lowers(aten.split.Tensor, aten.split_with_sizes.default)
def _split(ctx: LoweringContext, node: fx.Node) -> tuple[Value, ...]:
    x = ctx.value(node, 0)
    dim = _rank_dim(ctx.kwarg(node, 2, "dim", 0), x.type.rank)
    val = node.meta["val"]
    sizes = tuple(_sym_dim(v.shape[dim]) for v in val)
    if len(sizes) == 1:
        return (x,)
    return ctx.ops("split", x, attrs={"sizes": sizes, "axis": dim})


def _slice_bounds(size: Dim, start: Any, end: Any) -> tuple[Dim, Dim]:
    """torch's slice bounds (None, negative and out-of-range ends) made explicit."""
    start = 0 if start is None else start
    if end is None or (isinstance(end, int) and end >= 2**62):
        end = size
    if isinstance(size, int):
        if isinstance(start, int):
            start = min(max(start + size if start < 0 else start, 0), size)
        if isinstance(end, int):
            end = min(max(end + size if end < 0 else end, 0), size)
        if isinstance(start, int) and isinstance(end, int):
            end = max(end, start)
    else:  # negative ends count from the symbolic size (torch guarded that they stay in range;
        # the lowered shape is checked against torch's, so a clamped case cannot pass silently)
        if isinstance(start, int) and start < 0:
            start = dim_add(size, start)
        if isinstance(end, int) and end < 0:
            end = dim_add(size, end)
    return start, end


@lowers(aten.slice.Tensor)
def _slice(ctx: LoweringContext, node: fx.Node) -> Value:
    x = ctx.value(node, 0)
    dim = _rank_dim(ctx.kwarg(node, 1, "dim", 0), x.type.rank)
    start, end = _slice_bounds(x.type.shape[dim], ctx.kwarg(node, 2, "start", None), ctx.kwarg(node, 3, "end", None))
    return ctx.slice(x, dim, start, end, int(ctx.kwarg(node, 4, "step", 1)))


@lowers(aten.select.int)
def _select(ctx: LoweringContext, node: fx.Node) -> Value:
    x = ctx.value(node, 0)
    dim = _rank_dim(ctx.arg(node, 1, "dim"), x.type.rank)
    index = ctx.arg(node, 2, "index")
    size = x.type.shape[dim]
    if isinstance(index, int) and index < 0:
        index = dim_add(size, index)
    one = ctx.slice(x, dim, index, dim_add(index, 1))
    return ctx.op("squeeze", one, attrs={"axes": (dim,)})


# -- as_strided: a restride that reshape, transpose, slice and broadcast express --


def _layout_of(val: torch.Tensor) -> tuple[tuple[Dim, ...], tuple[Dim, ...], Dim]:
    return (tuple(_sym_dim(d) for d in val.shape), tuple(_sym_dim(d) for d in val.stride()),
            _sym_dim(val.storage_offset()))


def _significant(shape: Sequence[Dim], strides: Sequence[Dim]) -> list[tuple[int, Dim, Dim]]:
    """``(dim, size, stride)`` of the dims whose stride matters (size other than 1)."""
    return [(i, n, t) for i, (n, t) in enumerate(zip(shape, strides, strict=True)) if n != 1]


@lowers(aten.as_strided.default, aten.as_strided_copy.default)
def _as_strided(ctx: LoweringContext, node: fx.Node) -> Value:
    """``as_strided(x, size, stride, offset)`` reads x's storage at ``offset + sum(i_k * stride_k)``.

    Lowered only where the layouts prove it is a view: x (with the strides torch gives it) must
    be a dense block of its storage, and the output's dims, by decreasing stride, must nest
    (each dim's stride exceeds the span of the dims inside it) and stay inside that block. Then
    the result is x in storage order, sliced (or zero-padded past the end, at positions no
    output element reads) and reshaped dim by dim, transposed back, and broadcast along
    stride-0 dims. Anything else (overlapping windows, storage outside x) is refused.
    """
    x = ctx.value(node, 0)
    src = node.args[0].meta.get("val") if isinstance(node.args[0], fx.Node) else None
    if not isinstance(src, torch.Tensor):
        raise LoweringError(f"{source_of(node)}: as_strided needs torch's layout (fake tensor) of its input")
    x_shape, x_strides, x_offset = _layout_of(src)
    # The arguments, not the output's fake tensor (whose storage offset need not be the argument).
    # (ctx.arg maps SymInts to dims.) Layouts are torch's fake tensors' (exact in aot_autograd and
    # Dynamo graphs; make_fx's real-mode tracing drops the storage offsets of views).
    shape = tuple(canonical(d) for d in ctx.arg(node, 1, "size"))
    strides = tuple(canonical(d) for d in ctx.arg(node, 2, "stride"))
    raw_offset = ctx.kwarg(node, 3, "storage_offset", None)
    offset = x_offset if raw_offset is None else canonical(raw_offset)
    if _significant(shape, strides) == _significant(x_shape, x_strides) and offset == x_offset:
        return ctx.reshape(x, shape)  # the same elements in the same order; only size-1 strides differ
    static = [d for d in (*x_shape, *x_strides, x_offset, *shape, *strides, offset) if not isinstance(d, int)]
    if static:
        raise LoweringError(
            f"{source_of(node)}: as_strided from {_describe_layout(x_shape, x_strides, x_offset)} to "
            f"{_describe_layout(shape, strides, offset)} with symbolic sizes is lowered only when it keeps "
            "the input's layout; compile with static shapes or options={'fallback': 'eager'}")
    return _restride(ctx, node, x, _static_layout(x_shape, x_strides, x_offset), _static_layout(shape, strides, offset))


def _describe_layout(shape: Sequence[Dim], strides: Sequence[Dim], offset: Dim) -> str:
    return f"size {list(shape)} stride {list(strides)} offset {offset}"


Layout3 = tuple[tuple[int, ...], tuple[int, ...], int]


def _static_layout(shape: Sequence[Dim], strides: Sequence[Dim], offset: Dim) -> Layout3:
    def static(d: Dim) -> int:
        assert isinstance(d, int)
        return d

    return tuple(map(static, shape)), tuple(map(static, strides)), static(offset)


def _restride(ctx: LoweringContext, node: fx.Node, x: Value, src: Layout3, dst: Layout3) -> Value:
    (x_shape, x_strides, x_offset), (shape, strides, offset) = src, dst
    refuse = (f"{source_of(node)}: as_strided from {_describe_layout(*src)} to {_describe_layout(*dst)} is not a "
              "view that reshape/transpose/slice can express")
    if math.prod(shape) == 0:
        return ctx.op("zeros", attrs={"shape": tuple(shape), "dtype": x.type.dtype})
    numel = math.prod(x_shape)
    # x in storage order: its dims by decreasing stride must tile a dense block.
    inner = sorted(((d, n, t) for d, (n, t) in enumerate(zip(x_shape, x_strides, strict=True)) if n != 1),
                   key=lambda d: -d[2])
    expected = 1
    for _dim, n, t in reversed(inner):
        if t != expected:
            raise LoweringError(f"{refuse}: the input is not a dense block of its storage (dim of size {n} has "
                                f"stride {t}, a dense layout has {expected})")
        expected *= n
    order = [d for d, _n, _t in inner] + [d for d in range(len(x_shape)) if x_shape[d] == 1]
    buffer = ctx.reshape(ctx.transpose(x, order), (numel,))
    base = offset - x_offset
    dims = sorted(((d, n, t) for d, (n, t) in enumerate(zip(shape, strides, strict=True)) if n != 1 and t != 0),
                  key=lambda d: -d[2])
    last = base + sum((n - 1) * t for _d, n, t in dims)
    if base < 0 or last >= numel:
        raise LoweringError(f"{refuse}: it reads storage {base + x_offset}..{last + x_offset}, outside the input's "
                            f"{x_offset}..{x_offset + numel - 1}")
    for k in range(1, len(dims)):
        span = sum((n - 1) * t for _d, n, t in dims[k:])
        if span >= dims[k - 1][2]:
            raise LoweringError(f"{refuse}: its elements overlap or interleave (the dims inside stride "
                                f"{dims[k - 1][2]} span {span + 1} elements)")
    # Peel one dim at a time off the last axis: rows of length stride, sliced or zero-padded.
    v = ctx.slice(buffer, 0, base, numel)
    sizes: list[int] = []
    for _d, n, t in dims:
        length = v.type.shape[-1]
        assert isinstance(length, int)
        want = n * t
        if want > length:  # the padding lies past the last element any output position reads
            rank = v.type.rank
            v = ctx.op("pad", v, attrs={"lo": (0,) * rank, "hi": (0,) * (rank - 1) + (want - length,),
                                        "value": _scalar_attr(0, v.type.dtype)})
        v = ctx.slice(v, v.type.rank - 1, 0, want)
        sizes.append(n)
        v = ctx.reshape(v, (*sizes, t))
    v = ctx.slice(v, v.type.rank - 1, 0, 1)
    v = ctx.reshape(v, tuple(sizes))
    # Back to the output's dim order, then size-1 and stride-0 dims.
    placed = sorted(range(len(dims)), key=lambda k: dims[k][0])
    v = ctx.transpose(v, placed)
    kept = {d for d, _n, _t in dims}
    v = ctx.reshape(v, tuple(n if d in kept else 1 for d, n in enumerate(shape)))
    return ctx.broadcast(v, tuple(shape))


@lowers(aten.flip.default)
def _flip(ctx: LoweringContext, node: fx.Node) -> Value:
    x = ctx.value(node, 0)
    axes = tuple(sorted({_rank_dim(d, x.type.rank) for d in ctx.arg(node, 1, "dims")}))
    return ctx.op("flip", x, attrs={"axes": axes}) if axes else x


@lowers(aten.repeat.default)
def _repeat(ctx: LoweringContext, node: fx.Node) -> Value:
    x = ctx.value(node, 0)
    reps: list[Dim] = [r if isinstance(r, str) else int(r) for r in ctx.arg(node, 1, "repeats")]
    x = ctx.reshape(x, (1,) * (len(reps) - x.type.rank) + x.type.shape)
    if all(isinstance(r, int) for r in reps):
        return ctx.op("tile", x, attrs={"reps": tuple(int(r) for r in reps)})
    # A symbolic count (``alibi.repeat(batch, 1, 1)`` under dynamic shapes): tile as
    # (..., d, ...) → broadcast (..., r, d, ...) → merge (..., r*d, ...).
    shape = x.type.shape
    x = ctx.reshape(x, [d for dim in shape for d in (1, dim)])
    x = ctx.broadcast(x, [d for r, dim in zip(reps, shape, strict=True) for d in (r, dim)])
    return ctx.reshape(x, [dim_mul(r, dim) for r, dim in zip(reps, shape, strict=True)])


@lowers(aten.constant_pad_nd.default)
def _pad(ctx: LoweringContext, node: fx.Node) -> Value:
    x = ctx.value(node, 0)
    pads = [int(p) for p in ctx.arg(node, 1, "pad")]
    value = ctx.kwarg(node, 2, "value", 0)
    rank = x.type.rank
    lo, hi = [0] * rank, [0] * rank
    for i in range(len(pads) // 2):
        axis = rank - 1 - i
        lo[axis], hi[axis] = pads[2 * i], pads[2 * i + 1]
    # Negative padding crops.
    for axis in range(rank):
        if lo[axis] < 0 or hi[axis] < 0:
            size = x.type.shape[axis]
            stop = dim_add(size, hi[axis]) if hi[axis] < 0 else size
            x = ctx.slice(x, axis, max(-lo[axis], 0), stop)
            lo[axis], hi[axis] = max(lo[axis], 0), max(hi[axis], 0)
    if not any(lo) and not any(hi):
        return x
    return ctx.op("pad", x, attrs={"lo": tuple(lo), "hi": tuple(hi), "value": _scalar_attr(value, x.type.dtype)})


@lowers(aten.tril.default, aten.triu.default)
def _tril(ctx: LoweringContext, node: fx.Node) -> Value:
    op = "tril" if node.target is aten.tril.default else "triu"
    return ctx.op(op, ctx.value(node, 0), attrs={"k": int(ctx.kwarg(node, 1, "diagonal", 0))})


# -- creation --


@lowers(aten.fill.Scalar)
def _fill(ctx: LoweringContext, node: fx.Node) -> Value:
    t = _fake_type(node)
    return ctx.full(t.shape, ctx.arg(node, 1, "value"), t.dtype)


@lowers(aten.full.default, aten.full_like.default, aten.new_full.default)
def _full(ctx: LoweringContext, node: fx.Node) -> Value:
    t = _fake_type(node)
    index = 2 if node.target is aten.new_full.default else 1
    value = ctx.arg(node, index, "fill_value")
    if isinstance(value, Value):
        raise LoweringError(f"{source_of(node)}: a tensor fill value is not supported; use expand")
    return ctx.full(t.shape, value, t.dtype)


@lowers(aten.empty.memory_format, aten.empty_strided.default, aten.zeros.default, aten.zeros_like.default,
        aten.new_zeros.default, aten.new_empty.default, aten.new_empty_strided.default, aten.empty_like.default,
        aten.empty_permuted.default)
def _zeros(ctx: LoweringContext, node: fx.Node) -> Value:
    # Uninitialised memory may hold anything; zeros keeps results deterministic.
    t = _fake_type(node)
    return ctx.op("zeros", attrs={"shape": t.shape, "dtype": t.dtype})


@lowers(aten.ones.default, aten.ones_like.default, aten.new_ones.default)
def _ones(ctx: LoweringContext, node: fx.Node) -> Value:
    t = _fake_type(node)
    return ctx.full(t.shape, 1, t.dtype)


@lowers(aten.scalar_tensor.default)
def _scalar_tensor(ctx: LoweringContext, node: fx.Node) -> Value:
    t = _fake_type(node)
    return ctx.const(ctx.arg(node, 0), t.dtype)


@lowers(aten.arange.start_step, aten.arange.start, aten.arange.default)
def _arange(ctx: LoweringContext, node: fx.Node) -> Value:
    t = _fake_type(node)
    if node.target is aten.arange.default:
        start, step = 0, 1
    else:
        start = ctx.arg(node, 0)
        step = ctx.kwarg(node, 2, "step", 1) if node.target is aten.arange.start_step else 1
    if not isinstance(start, int | float) or not isinstance(step, int | float):
        raise LoweringError(f"{source_of(node)}: arange start/step must be static numbers, got {start!r}, {step!r}")
    return ctx.op("arange", attrs={"start": start, "step": step, "size": t.shape[0], "dtype": t.dtype})


# -- indexing --


def _normalized_index(ctx: LoweringContext, idx: Value, size: Dim) -> Value:
    """Negative indices wrap (as in torch); over a symbolic dim by its real length at run time
    (``dim_value``, which the padding pass rebuilds from the real lengths of padded symbols)."""
    if isinstance(size, int):
        length = ctx.const(size, idx.type.dtype)
    else:
        length = ctx.op("dim_value", attrs={"value": size, "dtype": idx.type.dtype})
    wrapped = ctx.op("add", idx, length)
    negative = ctx.op("less", idx, ctx.const(0, idx.type.dtype))
    return ctx.op("where", negative, wrapped, idx)


def _linear_index(ctx: LoweringContext, x: Value, indices: list[Value | None]) -> tuple[Value, int, int, Value]:
    """Collapse adjacent advanced indices into one index over one merged dim.

    Returns ``(x reshaped, first indexed dim, number of indexed dims, linear index)``.
    """
    dims = [i for i, idx in enumerate(indices) if idx is not None]
    if any(idx is not None and idx.type.dtype is DType.bool for idx in indices):
        raise LoweringError(
            f"{ctx._where()}: boolean-mask indexing has a data-dependent shape; use torch.where instead"
        )
    if dims != list(range(dims[0], dims[-1] + 1)):
        raise LoweringError(f"{ctx._where()}: advanced indices at non-adjacent dims {dims} are not supported")
    first, count = dims[0], len(dims)
    shape = x.type.shape
    if count == 1:
        idx = indices[first]
        assert idx is not None
        return x, first, 1, idx
    linear: Value | None = None
    for d in dims:
        idx = indices[d]
        assert idx is not None
        idx = _normalized_index(ctx, ctx.astype(idx, DType.int64), shape[d])
        # A symbolic size multiplies as its value (dim_value). Under padding this cannot mix
        # real and padded strides: ``take`` along an axis holding a padded symbol is refused by
        # its padding rule, so such a symbol is compiled at exact sizes.
        linear = idx if linear is None else ctx.op("add", ctx.binary("multiply", linear, shape[d]), idx)
    merged = (*shape[:first], dims_product(shape[first:first + count]), *shape[first + count:])
    assert linear is not None
    return ctx.reshape(x, merged), first, count, linear


def _static_int(ctx: LoweringContext, dim: Dim) -> int:
    if not isinstance(dim, int):
        raise LoweringError(f"{ctx._where()}: needs a static size, got symbolic {dim!r}")
    return dim


@lowers(aten.index.Tensor)
def _index(ctx: LoweringContext, node: fx.Node) -> Value:
    x = ctx.value(node, 0)
    indices: list[Value | None] = list(ctx.arg(node, 1, "indices"))
    indices += [None] * (x.type.rank - len(indices))
    merged, first, _count, idx = _linear_index(ctx, x, indices)
    out = ctx.op("take", merged, idx, attrs={"axis": first})
    return ctx.reshape(out, _fake_type(node).shape)


@lowers(aten.index_select.default)
def _index_select(ctx: LoweringContext, node: fx.Node) -> Value:
    x = ctx.value(node, 0)
    axis = _rank_dim(ctx.arg(node, 1, "dim"), x.type.rank)
    return ctx.op("take", x, ctx.value(node, 2, "index"), attrs={"axis": axis})


@lowers(aten.embedding.default)
def _embedding(ctx: LoweringContext, node: fx.Node) -> Value:
    return ctx.op("take", ctx.value(node, 0), ctx.value(node, 1), attrs={"axis": 0})


@lowers(aten.gather.default)
def _gather(ctx: LoweringContext, node: fx.Node) -> Value:
    x = ctx.value(node, 0)
    return ctx.op("take_along_axis", x, ctx.value(node, 2, "index"),
                  attrs={"axis": _rank_dim(ctx.arg(node, 1, "dim"), x.type.rank)})


@lowers(aten.scatter.src, aten.scatter.value, aten.scatter_add.default)
def _scatter(ctx: LoweringContext, node: fx.Node) -> Value:
    x, index = ctx.value(node, 0), ctx.value(node, 2, "index")
    src = ctx.arg(node, 3)
    if not isinstance(src, Value):
        src = ctx.full(index.type.shape, src, x.type.dtype)
    op = "scatter_add" if node.target is aten.scatter_add.default else "scatter"
    return ctx.op(op, x, index, src, attrs={"axis": _rank_dim(ctx.arg(node, 1, "dim"), x.type.rank)})


@lowers(aten.index_put.default)
def _index_put(ctx: LoweringContext, node: fx.Node) -> Value:
    x = ctx.value(node, 0)
    indices: list[Value | None] = list(ctx.arg(node, 1, "indices"))
    values = ctx.value(node, 2, "values")
    accumulate = bool(ctx.kwarg(node, 3, "accumulate", False))
    indices += [None] * (x.type.rank - len(indices))
    merged, first, _count, idx = _linear_index(ctx, x, indices)
    if first != 0:
        raise LoweringError(f"{source_of(node)}: index_put with leading full slices is not supported yet")
    idx = _normalized_index(ctx, ctx.astype(idx, DType.int64), merged.type.shape[0])
    # Rows of ``merged`` picked by idx (any shape) receive values broadcast to idx.shape + row shape.
    rows = merged.type.shape[1:]
    upd_shape = idx.type.shape + rows
    updates = ctx.broadcast(ctx.astype(values, x.type.dtype), upd_shape)
    flat_n = _numel(idx)
    updates = ctx.reshape(updates, (flat_n, *rows))
    flat_idx = ctx.reshape(idx, (flat_n,) + (1,) * len(rows))
    flat_idx = ctx.broadcast(flat_idx, (flat_n, *rows))
    op = "scatter_add" if accumulate else "scatter"
    out = ctx.op(op, merged, flat_idx, updates, attrs={"axis": 0})
    return ctx.reshape(out, x.type.shape)


def _positions(ctx: LoweringContext, shape: Sequence[Dim], axis: int, start: Dim, step: int) -> Value:
    """int64 tensor of ``shape`` holding ``start + step * i`` for position i along ``axis``."""
    iota = ctx.op("iota", attrs={"shape": tuple(shape), "axis": axis, "dtype": DType.int64})
    scaled = ctx.binary("multiply", iota, step) if step != 1 else iota
    return ctx.binary("add", scaled, _static_int(ctx, start)) if start != 0 else scaled


@lowers(aten.slice_scatter.default)
def _slice_scatter(ctx: LoweringContext, node: fx.Node) -> Value:
    x, src = ctx.value(node, 0), ctx.value(node, 1)
    dim = _rank_dim(ctx.kwarg(node, 2, "dim", 0), x.type.rank)
    start, _end = _slice_bounds(x.type.shape[dim], ctx.kwarg(node, 3, "start", None), ctx.kwarg(node, 4, "end", None))
    step = int(ctx.kwarg(node, 5, "step", 1))
    src = ctx.astype(src, x.type.dtype)
    if step == 1 and isinstance(start, int) and all(isinstance(d, int) for d in (*x.type.shape, *src.type.shape)):
        # A contiguous static window: a dynamic_update_slice at constant starts, which XLA updates in
        # place (or folds into a pad when x is a broadcast zero, as in the backward of a slice)
        # where a scatter with computed indices is a loop over index tuples. Same elements written.
        starts = [ctx.const(start if axis == dim else 0, DType.int64) for axis in range(x.type.rank)]
        return ctx.op("dynamic_update_slice", x, src, *starts)
    index = _positions(ctx, src.type.shape, dim, start, step)
    return ctx.op("scatter", x, index, src, attrs={"axis": dim})


@lowers(aten.select_scatter.default)
def _select_scatter(ctx: LoweringContext, node: fx.Node) -> Value:
    x, src = ctx.value(node, 0), ctx.value(node, 1)
    dim = _rank_dim(ctx.arg(node, 2, "dim"), x.type.rank)
    index = ctx.arg(node, 3, "index")
    if isinstance(index, int) and index < 0:
        index += _static_int(ctx, x.type.shape[dim])
    src = ctx.op("expand_dims", ctx.astype(src, x.type.dtype), attrs={"axis": dim})
    return ctx.op("scatter", x, _positions(ctx, src.type.shape, dim, index, 1), src, attrs={"axis": dim})


@lowers(aten.topk.default)
def _topk(ctx: LoweringContext, node: fx.Node) -> tuple[Value, ...]:
    x = ctx.value(node, 0)
    k = ctx.arg(node, 1, "k")
    dim = _rank_dim(ctx.kwarg(node, 2, "dim", -1), x.type.rank)
    largest = bool(ctx.kwarg(node, 3, "largest", True))
    return ctx.ops("topk", x, attrs={"k": int(k), "axis": dim, "largest": largest})


def _sorted(ctx: LoweringContext, node: fx.Node) -> tuple[Value, Value]:
    """sort/argsort ``(self, dim=-1, descending=False)``, keyword-only in the ``stable`` overloads
    (always stable here: a stable order is also a valid unstable one)."""
    x = ctx.value(node, 0)
    dim = int(ctx.kwarg(node, 1, "dim", -1))
    descending = bool(ctx.kwarg(node, 2, "descending", False))
    if x.type.rank == 0:
        return x, ctx.const(0, DType.int64)
    values, indices = ctx.ops("sort", x, attrs={"axis": _rank_dim(dim, x.type.rank), "descending": descending})
    return values, indices


@lowers(aten.sort.default, aten.sort.stable)
def _sort(ctx: LoweringContext, node: fx.Node) -> tuple[Value, Value]:
    return _sorted(ctx, node)


@lowers(aten.argsort.default, aten.argsort.stable)
def _argsort(ctx: LoweringContext, node: fx.Node) -> Value:
    return _sorted(ctx, node)[1]


@lowers(aten.cumsum.default, aten.cumprod.default)
def _cumulative(ctx: LoweringContext, node: fx.Node) -> Value:
    x = ctx.value(node, 0)
    cast = ctx.kwarg(node, 2, "dtype", None)
    if cast is not None:
        x = ctx.astype(x, ir_dtype(cast))
    op = "cumsum" if node.target is aten.cumsum.default else "cumprod"
    if x.type.rank == 0:
        return ctx.reshape(ctx.op(op, ctx.reshape(x, (1,)), attrs={"axis": 0}), ())
    return ctx.op(op, x, attrs={"axis": _rank_dim(int(ctx.arg(node, 1, "dim")), x.type.rank)})


@lowers(aten.roll.default)
def _roll(ctx: LoweringContext, node: fx.Node) -> Value:
    x = ctx.value(node, 0)
    shifts = [int(s) for s in ctx.arg(node, 1, "shifts")]
    dims = [int(d) for d in ctx.kwarg(node, 2, "dims", [])]
    if not dims:  # roll the flattened tensor, then restore its shape
        flat = ctx.reshape(x, (_numel(x),))
        return ctx.reshape(ctx.op("roll", flat, attrs={"shifts": (sum(shifts),), "axes": (0,)}), x.type.shape)
    if len(shifts) != len(dims):
        raise LoweringError(f"{source_of(node)}: roll has {len(shifts)} shifts for {len(dims)} dims")
    axes = tuple(_rank_dim(d, x.type.rank) for d in dims)
    return ctx.op("roll", x, attrs={"shifts": tuple(shifts), "axes": axes})


# -- nn --


def _half_to_f32(ctx: LoweringContext, x: Value) -> Value:
    return ctx.astype(x, DType.float32) if x.type.dtype in (DType.float16, DType.bfloat16) else x


@lowers(aten._softmax.default)
def _softmax(ctx: LoweringContext, node: fx.Node) -> Value:
    x = ctx.value(node, 0)
    if ctx.kwarg(node, 2, "half_to_float", False):
        x = ctx.astype(x, DType.float32)
    return ctx.op("softmax", x, attrs={"axis": _rank_dim(ctx.arg(node, 1, "dim"), x.type.rank)})


@lowers(aten._log_softmax.default)
def _log_softmax(ctx: LoweringContext, node: fx.Node) -> Value:
    x = _half_to_f32(ctx, ctx.value(node, 0))
    axis = _rank_dim(ctx.arg(node, 1, "dim"), x.type.rank)
    shifted = ctx.op("subtract", x, ctx.reduce("max", x, (axis,), True))
    lse = ctx.op("log", ctx.reduce("sum", ctx.op("exp", shifted), (axis,), True))
    return ctx.op("subtract", shifted, lse)


@lowers(aten._softmax_backward_data.default)
def _softmax_backward(ctx: LoweringContext, node: fx.Node) -> Value:
    grad, out = ctx.value(node, 0), ctx.value(node, 1)
    axis = _rank_dim(ctx.arg(node, 2, "dim"), grad.type.rank)
    inner = ctx.reduce("sum", ctx.op("multiply", grad, out), (axis,), True)
    return ctx.op("multiply", out, ctx.op("subtract", grad, inner))


@lowers(aten._log_softmax_backward_data.default)
def _log_softmax_backward(ctx: LoweringContext, node: fx.Node) -> Value:
    grad, out = ctx.value(node, 0), ctx.value(node, 1)
    axis = _rank_dim(ctx.arg(node, 2, "dim"), grad.type.rank)
    total = ctx.reduce("sum", grad, (axis,), True)
    return ctx.op("subtract", grad, ctx.op("multiply", ctx.op("exp", out), total))


def _stat_shape(node: fx.Node, index: int) -> tuple[Dim, ...]:
    return _fake_type(node, node.meta["val"][index]).shape


@lowers(aten.native_layer_norm.default)
def _layer_norm(ctx: LoweringContext, node: fx.Node) -> tuple[Value, Value, Value]:
    x = ctx.value(node, 0)
    n = len(ctx.arg(node, 1, "normalized_shape"))
    weight, bias = ctx.arg(node, 2), ctx.arg(node, 3)
    eps = float(ctx.arg(node, 4, "eps"))
    xf = _half_to_f32(ctx, x)
    axes = tuple(range(x.type.rank - n, x.type.rank))
    mean = ctx.reduce("mean", xf, axes, True)
    var = ctx.reduce("var", xf, axes, True, correction=0.0)
    rstd = ctx.op("rsqrt", ctx.binary("add", var, eps))
    out = ctx.op("multiply", ctx.op("subtract", xf, mean), rstd)
    if weight is not None:
        out = ctx.op("multiply", out, weight)
    if bias is not None:
        out = ctx.op("add", out, bias)
    return (ctx.astype(out, x.type.dtype), ctx.reshape(mean, _stat_shape(node, 1)),
            ctx.reshape(rstd, _stat_shape(node, 2)))


def _channel(ctx: LoweringContext, v: Value, rank: int) -> Value:
    """A per-channel vector (C,) shaped to broadcast against (N, C, ...)."""
    return ctx.reshape(v, (v.type.shape[0],) + (1,) * (rank - 2))


def _affine(ctx: LoweringContext, out: Value, weight: Any, bias: Any, rank: int) -> Value:
    if weight is not None:
        out = ctx.op("multiply", out, _channel(ctx, weight, rank))
    if bias is not None:
        out = ctx.op("add", out, _channel(ctx, bias, rank))
    return out


def _batch_norm_eval_values(ctx: LoweringContext, x: Value, weight: Any, bias: Any, mean: Value, var: Value,
                            eps: float) -> Value:
    rank = x.type.rank
    xf = _half_to_f32(ctx, x)
    scale = ctx.op("rsqrt", ctx.binary("add", _channel(ctx, var, rank), eps))
    out = ctx.op("multiply", ctx.op("subtract", xf, _channel(ctx, mean, rank)), scale)
    return ctx.astype(_affine(ctx, out, weight, bias, rank), x.type.dtype)


def _batch_norm_train_values(ctx: LoweringContext, node: fx.Node, x: Value, weight: Any, bias: Any,
                             eps: float) -> tuple[Value, Value, Value, Value, Value]:
    """Batch statistics over every dim but the channel dim (1): ``(out, mean, rstd, mean, biased var)``,
    the statistics as (C,) vectors in the input's compute type."""
    rank = x.type.rank
    if rank < 2:
        raise LoweringError(f"{source_of(node)}: batch norm needs (N, C, ...) input, got {x.type}")
    xf = _half_to_f32(ctx, x)
    axes = (0, *range(2, rank))
    mean = ctx.reduce("mean", xf, axes, True)
    var = ctx.reduce("var", xf, axes, True, correction=0.0)
    rstd = ctx.op("rsqrt", ctx.binary("add", var, eps))
    out = _affine(ctx, ctx.op("multiply", ctx.op("subtract", xf, mean), rstd), weight, bias, rank)
    channels = (x.type.shape[1],)
    return (ctx.astype(out, x.type.dtype), ctx.reshape(mean, channels), ctx.reshape(rstd, channels),
            ctx.reshape(mean, channels), ctx.reshape(var, channels))


def _running_update(ctx: LoweringContext, running: Value, batch: Value, momentum: float) -> Value:
    """``(1 - momentum) * running + momentum * batch`` in the running buffer's type."""
    batch = ctx.astype(batch, running.type.dtype)
    kept = ctx.binary("multiply", running, 1.0 - momentum)
    return ctx.op("add", kept, ctx.binary("multiply", batch, momentum))


@lowers(aten._native_batch_norm_legit_no_training.default, aten.native_batch_norm.default)
def _batch_norm_eval(ctx: LoweringContext, node: fx.Node) -> tuple[Value, Value, Value]:
    x = ctx.value(node, 0)
    weight, bias = ctx.arg(node, 1), ctx.arg(node, 2)
    mean, var = ctx.value(node, 3), ctx.value(node, 4)
    if node.target is aten.native_batch_norm.default:
        if ctx.arg(node, 5, "training"):
            raise LoweringError(
                f"{source_of(node)}: native_batch_norm in training mode updates its running stats in place; "
                "spiky lowers the functional form aot_autograd emits (_native_batch_norm_legit_functional) "
                "and _native_batch_norm_legit.no_stats"
            )
        eps = float(ctx.arg(node, 7, "eps"))
    else:
        eps = float(ctx.arg(node, 6, "eps"))
    out = _batch_norm_eval_values(ctx, x, weight, bias, mean, var, eps)
    empty = [_fake_type(node, v) for v in node.meta["val"][1:]]
    save_mean, save_rstd = (ctx.op("zeros", attrs={"shape": t.shape, "dtype": t.dtype}) for t in empty)
    return out, save_mean, save_rstd


@lowers(aten._native_batch_norm_legit_functional.default)
def _batch_norm_functional(ctx: LoweringContext, node: fx.Node) -> tuple[Value, ...]:
    """``(out, save_mean, save_rstd, new running_mean, new running_var)``; aot_autograd copies the
    last two back into the module's buffers.

    Training: batch mean and biased variance normalise; the running variance is updated with
    the unbiased one (``var * n / (n - 1)``, n the elements per channel), as torch does, both
    with ``momentum``. Eval: the running stats normalise and come back unchanged.
    """
    x = ctx.value(node, 0)
    weight, bias = ctx.arg(node, 1), ctx.arg(node, 2)
    running_mean, running_var = ctx.value(node, 3), ctx.value(node, 4)
    training, momentum, eps = bool(ctx.arg(node, 5)), float(ctx.arg(node, 6)), float(ctx.arg(node, 7))
    if not training:
        out = _batch_norm_eval_values(ctx, x, weight, bias, running_mean, running_var, eps)
        empty = [_fake_type(node, v) for v in node.meta["val"][1:3]]
        save_mean, save_rstd = (ctx.op("zeros", attrs={"shape": t.shape, "dtype": t.dtype}) for t in empty)
        return out, save_mean, save_rstd, running_mean, running_var
    out, save_mean, save_rstd, mean, var = _batch_norm_train_values(ctx, node, x, weight, bias, eps)
    count = dims_product((x.type.shape[0], *x.type.shape[2:]))
    n = ctx.tensor(count, like=var)  # a dim_value when the batch or spatial sizes are symbolic
    # n / (n - 1): torch divides by n - 1 (a single element per channel gives inf or nan, as in torch)
    unbiased = ctx.op("multiply", var, ctx.op("divide", n, ctx.binary("subtract", n, 1)))
    return (out, save_mean, save_rstd, _running_update(ctx, running_mean, mean, momentum),
            _running_update(ctx, running_var, unbiased, momentum))


@lowers(aten._native_batch_norm_legit.no_stats)
def _batch_norm_no_stats(ctx: LoweringContext, node: fx.Node) -> tuple[Value, Value, Value]:
    """Batch norm without running stats (``track_running_stats=False``): always batch statistics."""
    x = ctx.value(node, 0)
    eps = float(ctx.arg(node, 5, "eps"))
    out, save_mean, save_rstd, _mean, _var = _batch_norm_train_values(ctx, node, x, ctx.arg(node, 1),
                                                                      ctx.arg(node, 2), eps)
    return out, save_mean, save_rstd


@lowers(aten.native_group_norm.default)
def _group_norm(ctx: LoweringContext, node: fx.Node) -> tuple[Value, Value, Value]:
    x = ctx.value(node, 0)
    weight, bias = ctx.arg(node, 1), ctx.arg(node, 2)
    groups, eps = int(ctx.arg(node, 6, "group")), float(ctx.arg(node, 7, "eps"))
    shape = x.type.shape
    n, c = shape[0], _static_int(ctx, shape[1])
    xf = _half_to_f32(ctx, x)
    grouped = ctx.reshape(xf, (n, groups, dims_product((c // groups, *shape[2:]))))
    mean = ctx.reduce("mean", grouped, (2,), True)
    var = ctx.reduce("var", grouped, (2,), True, correction=0.0)
    rstd = ctx.op("rsqrt", ctx.binary("add", var, eps))
    out = ctx.reshape(ctx.op("multiply", ctx.op("subtract", grouped, mean), rstd), shape)
    if weight is not None:
        out = ctx.op("multiply", out, _channel(ctx, weight, len(shape)))
    if bias is not None:
        out = ctx.op("add", out, _channel(ctx, bias, len(shape)))
    return (ctx.astype(out, x.type.dtype), ctx.reshape(mean, _stat_shape(node, 1)),
            ctx.reshape(rstd, _stat_shape(node, 2)))


def _conv_ints(value: Sequence[Any], nd: int) -> tuple[int, ...]:
    """A conv argument given once for every spatial dim, or per dim."""
    return tuple(int(a) for a in (list(value) * nd if len(value) == 1 else value))


def _conv_args(ctx: LoweringContext, node: fx.Node, first: int, nd: int) -> tuple[tuple[int, ...], ...]:
    """(stride, padding, dilation, output_padding) of convolution (first=3) or its backward (first=4)."""
    stride, padding, dilation = (_conv_ints(ctx.arg(node, first + i), nd) for i in range(3))
    return stride, padding, dilation, _conv_ints(ctx.arg(node, first + 4), nd)


def _conv(ctx: LoweringContext, x: Value, w: Value, stride: tuple[int, ...], padding: tuple[int, ...],
          dilation: tuple[int, ...], groups: int, transposed: bool = False,
          output_padding: tuple[int, ...] | None = None) -> Value:
    """torch's convolution (transposed: conv_transpose with ``output_padding`` more at the high end)."""
    nd = w.type.rank - 2
    if transposed:
        extra = output_padding or (0,) * nd
        return ctx.op(f"conv_transpose{nd}d", x, w, attrs={
            "stride": stride, "pad_lo": padding, "pad_hi": tuple(p - e for p, e in zip(padding, extra, strict=True)),
            "dilation": dilation, "groups": groups})
    return ctx.op(f"conv{nd}d", x, w, attrs={
        "stride": stride, "pad_lo": padding, "pad_hi": padding, "dilation": dilation, "groups": groups})


def _conv_rank(ctx: LoweringContext, node: fx.Node, w: Value) -> int:
    nd = w.type.rank - 2
    if nd not in (1, 2, 3):
        raise LoweringError(f"{source_of(node)}: {nd}-d convolution is not lowered (1-, 2- and 3-d are)")
    return nd


@lowers(aten.convolution.default)
def _convolution(ctx: LoweringContext, node: fx.Node) -> Value:
    x, w, bias = ctx.value(node, 0), ctx.value(node, 1), ctx.arg(node, 2)
    nd = _conv_rank(ctx, node, w)
    stride, padding, dilation, output_padding = _conv_args(ctx, node, 3, nd)
    transposed, groups = bool(ctx.arg(node, 6)), int(ctx.arg(node, 8))
    unbatched = x.type.rank == nd + 1
    if unbatched:
        x = ctx.op("expand_dims", x, attrs={"axis": 0})
    out = _conv(ctx, x, w, stride, padding, dilation, groups, transposed, output_padding)
    if bias is not None:
        out = ctx.op("add", out, _channel(ctx, bias, out.type.rank))
    if unbatched:
        out = ctx.op("squeeze", out, attrs={"axes": (0,)})
    return out


def _conv_weight_grad(ctx: LoweringContext, x: Value, gy: Value, kernel: Sequence[int], stride: tuple[int, ...],
                      padding: tuple[int, ...], dilation: tuple[int, ...], groups: int) -> Value:
    """The gradient of conv(x, w) with respect to w, given the output's gradient ``gy``:
    ``gw[o, i, j] = sum over n, t of gy[n, o, t] * x_padded[n, i, j * dilation + t * stride]`` per group,
    shaped (C_out, C_in / groups, *kernel).

    A matmul per kernel tap over (N, spatial): GEMMs every backend runs well, and which padding can
    mask (a symbolic kernel could not be padded). The one convolution with batch and channels swapped
    that static shapes used before has the whole output map as its kernel: XLA:CPU took 400 ms for
    resnet18's backward with it, 104 ms with the taps (docs/PERFORMANCE.md)."""
    n, c_in, c_out = x.type.shape[0], x.type.shape[1], gy.type.shape[1]
    c_in_g, c_out_g = _static_int(ctx, c_in) // groups, _static_int(ctx, c_out) // groups
    xp = x
    if any(padding):
        xp = ctx.op("pad", x, attrs={"lo": (0, 0, *padding), "hi": (0, 0, *padding), "value": 0.0})
    out_sp = gy.type.shape[2:]
    taps_n = dims_product((n, *out_sp))
    g = ctx.reshape(gy, (n, groups, c_out_g, dims_product(out_sp)))
    g = ctx.reshape(ctx.transpose(g, (1, 2, 0, 3)), (groups, c_out_g, taps_n))
    taps: list[Value] = []
    for tap in itertools.product(*(range(k) for k in kernel)):
        start = tuple(j * d for j, d in zip(tap, dilation, strict=True))
        stop = tuple(dim_add(dim_mul(t, s), j + 1 - s) for t, s, j in zip(out_sp, stride, start, strict=True))
        window = ctx.op("slice", xp, attrs={"start": (0, 0, *start), "stop": (n, c_in, *stop),
                                             "step": (1, 1, *stride)})
        w = ctx.reshape(window, (n, groups, c_in_g, dims_product(out_sp)))
        w = ctx.reshape(ctx.transpose(w, (1, 0, 3, 2)), (groups, taps_n, c_in_g))
        taps.append(ctx.op("expand_dims", ctx.op("matmul", g, w), attrs={"axis": 3}))
    stacked = taps[0] if len(taps) == 1 else ctx.op("concatenate", *taps, attrs={"axis": 3})
    return ctx.reshape(stacked, (c_out, c_in_g, *kernel))


@lowers(aten.convolution_backward.default)
def _convolution_backward(ctx: LoweringContext, node: fx.Node) -> tuple[Value | None, Value | None, Value | None]:
    """Gradients of convolution (plain or transposed) with respect to input, weight and bias, those
    ``output_mask`` asks for: a transposed convolution of the output gradient (a plain one, for a
    transposed forward), the weight gradient of :func:`_conv_weight_grad`, a sum."""
    gy, x, w = ctx.value(node, 0), ctx.value(node, 1), ctx.value(node, 2)
    nd = _conv_rank(ctx, node, w)
    stride, padding, dilation = _conv_args(ctx, node, 4, nd)[:3]  # gy's size says the output padding
    transposed, groups = bool(ctx.arg(node, 7)), int(ctx.arg(node, 9))
    want_input, want_weight, want_bias = (bool(m) for m in ctx.arg(node, 10, "output_mask"))
    unbatched = x.type.rank == nd + 1
    if unbatched:
        x, gy = (ctx.op("expand_dims", v, attrs={"axis": 0}) for v in (x, gy))
    kernel = tuple(_static_int(ctx, k) for k in w.type.shape[2:])
    grad_input = grad_weight = grad_bias = None
    if want_input:
        if transposed:
            grad_input = _conv(ctx, gy, w, stride, padding, dilation, groups)
        else:  # the output padding that gives back the input's size
            extra = []
            for i in range(nd):
                full = dim_add(dim_mul(gy.type.shape[2 + i], stride[i]), dilation[i] * (kernel[i] - 1) + 1 - stride[i])
                more = dim_sub(x.type.shape[2 + i], dim_sub(full, 2 * padding[i]))
                if not isinstance(more, int):
                    raise LoweringError(f"{source_of(node)}: the input gradient of a stride-{stride[i]} convolution "
                                        f"over symbolic size {x.type.shape[2 + i]!r} depends on that size modulo the "
                                        "stride; compile with static shapes")
                extra.append(more)
            grad_input = _conv(ctx, gy, w, stride, padding, dilation, groups, True, tuple(extra))
        if unbatched:
            grad_input = ctx.op("squeeze", grad_input, attrs={"axes": (0,)})
    if want_weight:
        if transposed:  # the roles of input and output gradient swap
            grad_weight = _conv_weight_grad(ctx, gy, x, kernel, stride, padding, dilation, groups)
        else:
            grad_weight = _conv_weight_grad(ctx, x, gy, kernel, stride, padding, dilation, groups)
    if want_bias:
        grad_bias = ctx.reduce("sum", gy, (0, *range(2, 2 + nd)), False)
    return grad_input, grad_weight, grad_bias


def _pool_params(ctx: LoweringContext, node: fx.Node) -> tuple[tuple[int, ...], ...]:
    kernel = tuple(int(k) for k in ctx.arg(node, 1, "kernel_size"))
    kernel = kernel * 2 if len(kernel) == 1 else kernel
    stride = tuple(int(s) for s in ctx.kwarg(node, 2, "stride", []) or kernel)
    stride = stride * 2 if len(stride) == 1 else stride
    padding = tuple(int(p) for p in ctx.kwarg(node, 3, "padding", [0]))
    padding = padding * 2 if len(padding) == 1 else padding
    return kernel, stride, padding


def _windows(ctx: LoweringContext, xp: Value, out_hw: Sequence[Dim], kernel: Sequence[int],
             stride: Sequence[int], dilation: Sequence[int]) -> list[tuple[int, int, Value]]:
    """Every kernel tap of a 2-D window over the (padded) last two dims, as strided slices."""
    taps = []
    rank = xp.type.rank
    for kh in range(kernel[0]):
        for kw in range(kernel[1]):
            starts = [0] * rank
            stops = list(xp.type.shape)
            steps = [1] * rank
            for i, k in ((0, kh), (1, kw)):
                axis = rank - 2 + i
                starts[axis] = k * dilation[i]
                stops[axis] = dim_add(dim_mul(dim_sub(out_hw[i], 1), stride[i]), starts[axis] + 1)
                steps[axis] = stride[i]
            tap = ctx.op("slice", xp, attrs={"start": tuple(starts), "stop": tuple(stops), "step": tuple(steps)})
            taps.append((kh, kw, tap))
    return taps


def _pool_padding(x: Value, out_hw: Sequence[Dim], kernel: Sequence[int], stride: Sequence[int],
                  padding: Sequence[int], dilation: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    rank = x.type.rank
    lo, hi = [0] * rank, [0] * rank
    for i in range(2):
        size, out = x.type.shape[rank - 2 + i], out_hw[i]
        if not isinstance(size, int) or not isinstance(out, int):
            # Symbolic size: the windows end at most stride - 1 past the padding (ceil_mode), so pad
            # that much; the taps' strided slices stop at the last window and never read beyond it.
            lo[rank - 2 + i], hi[rank - 2 + i] = padding[i], padding[i] + stride[i] - 1
            continue
        need = (out - 1) * stride[i] + (kernel[i] - 1) * dilation[i] + 1
        lo[rank - 2 + i] = padding[i]
        hi[rank - 2 + i] = max(need - size - padding[i], 0)
    return tuple(lo), tuple(hi)


@lowers(aten.max_pool2d_with_indices.default)
def _max_pool2d(ctx: LoweringContext, node: fx.Node) -> tuple[Value, Value]:
    x = ctx.value(node, 0)
    kernel, stride, padding = _pool_params(ctx, node)
    dilation = tuple(int(d) for d in ctx.kwarg(node, 4, "dilation", [1]))
    dilation = dilation * 2 if len(dilation) == 1 else dilation
    out_t = _fake_type(node, node.meta["val"][0])
    out_hw = list(out_t.shape[-2:])  # symbolic under dynamic image sizes: (s + 2p - span) // stride + 1
    height, width = x.type.shape[-2:]
    lo, hi = _pool_padding(x, out_hw, kernel, stride, padding, dilation)
    lowest = -math.inf if x.type.dtype.is_floating else int(np.iinfo(x.type.dtype.to_numpy()).min)
    xp = ctx.op("pad", x, attrs={"lo": lo, "hi": hi, "value": lowest}) if any(lo + hi) else x
    best: Value | None = None
    best_idx: Value | None = None
    seen_inside: Value | None = None  # per output position: some tap so far was inside the input
    oh = ctx.op("iota", attrs={"shape": tuple(out_hw), "axis": 0, "dtype": DType.int64})
    ow = ctx.op("iota", attrs={"shape": tuple(out_hw), "axis": 1, "dtype": DType.int64})
    for kh, kw, tap in _windows(ctx, xp, out_hw, kernel, stride, dilation):
        # Flat index into the unpadded input of this tap at every output position.
        row = ctx.binary("add", ctx.binary("multiply", oh, stride[0]), kh * dilation[0] - padding[0])
        col = ctx.binary("add", ctx.binary("multiply", ow, stride[1]), kw * dilation[1] - padding[1])
        flat = ctx.op("add", ctx.binary("multiply", row, width), col)
        inside = _inside(ctx, row, height, col, width)
        if best is None or best_idx is None or seen_inside is None:
            best, best_idx, seen_inside = tap, ctx.broadcast(flat, tap.type.shape), inside
            continue
        # torch takes a later tap when it is greater or NaN (first maximum wins ties). Its index
        # starts at the window's first tap inside the input, so a window whose inside values all
        # equal the padding value (-inf, or the integer minimum) points there, never into padding.
        first_inside = ctx.op("logical_and", inside, ctx.op("logical_not", seen_inside))
        take = ctx.op("logical_or", ctx.op("logical_or", ctx.op("greater", tap, best), ctx.op("isnan", tap)),
                      first_inside)
        best = ctx.op("where", take, tap, best)
        best_idx = ctx.op("where", take, flat, best_idx)
        seen_inside = ctx.op("logical_or", seen_inside, inside)
    assert best is not None and best_idx is not None
    return best, best_idx


def _inside(ctx: LoweringContext, row: Value, height: Dim, col: Value, width: Dim) -> Value:
    """Whether (row, col) lies inside a height x width plane (not in a pool's padding)."""
    checks = [ctx.binary("greater_equal", row, 0), ctx.binary("less", row, height),
              ctx.binary("greater_equal", col, 0), ctx.binary("less", col, width)]
    inside = checks[0]
    for check in checks[1:]:
        inside = ctx.op("logical_and", inside, check)
    return inside


@lowers(aten.max_pool2d_with_indices_backward.default)
def _max_pool2d_backward(ctx: LoweringContext, node: fx.Node) -> Value:
    grad, x, indices = ctx.value(node, 0), ctx.value(node, 1), ctx.value(node, 7, "indices")
    lead = x.type.shape[:-2]
    plane = dims_product(x.type.shape[-2:])
    outs = dims_product(grad.type.shape[-2:])
    zeros = ctx.op("zeros", attrs={"shape": (*lead, plane), "dtype": grad.type.dtype})
    out = ctx.op("scatter_add", zeros, ctx.reshape(indices, (*lead, outs)), ctx.reshape(grad, (*lead, outs)),
                 attrs={"axis": len(lead)})
    return ctx.reshape(out, x.type.shape)


@lowers(aten.avg_pool2d.default)
def _avg_pool2d(ctx: LoweringContext, node: fx.Node) -> Value:
    x = ctx.value(node, 0)
    kernel, stride, padding = _pool_params(ctx, node)
    count_include_pad = bool(ctx.kwarg(node, 5, "count_include_pad", True))
    divisor_override = ctx.kwarg(node, 6, "divisor_override", None)
    out_t = _fake_type(node)
    out_hw = [_static_int(ctx, d) for d in out_t.shape[-2:]]
    lo, hi = _pool_padding(x, out_hw, kernel, stride, padding, (1, 1))
    xf = _half_to_f32(ctx, x)
    xp = ctx.op("pad", xf, attrs={"lo": lo, "hi": hi, "value": 0.0}) if any(lo + hi) else xf
    total: Value | None = None
    for _kh, _kw, tap in _windows(ctx, xp, out_hw, kernel, stride, (1, 1)):
        total = tap if total is None else ctx.op("add", total, tap)
    assert total is not None
    if divisor_override:
        return ctx.binary("divide", total, float(divisor_override))
    # The divisor counts window taps inside the input (or inside input + padding).
    hw = tuple(_static_int(ctx, d) for d in x.type.shape[-2:])
    ones = ctx.full(hw, 1.0, xf.type.dtype)
    if count_include_pad:
        ones = ctx.op("pad", ones, attrs={"lo": tuple(padding), "hi": tuple(padding), "value": 1.0})
        # Windows may stop short of the high padding (then hi < padding; the taps never read it).
        extra_hi = tuple(max(h - p, 0) for h, p in zip(hi[-2:], padding, strict=True))
        ones = ctx.op("pad", ones, attrs={"lo": (0, 0), "hi": extra_hi, "value": 0.0})
    else:
        ones = ctx.op("pad", ones, attrs={"lo": lo[-2:], "hi": hi[-2:], "value": 0.0})
    count: Value | None = None
    for _kh, _kw, tap in _windows(ctx, ones, out_hw, kernel, stride, (1, 1)):
        count = tap if count is None else ctx.op("add", count, tap)
    assert count is not None
    return ctx.op("divide", total, count)


@lowers(aten._adaptive_avg_pool2d.default)
def _adaptive_avg_pool2d(ctx: LoweringContext, node: fx.Node) -> Value:
    x = ctx.value(node, 0)
    out_hw = [int(d) for d in ctx.arg(node, 1, "output_size")]
    h, w = (_static_int(ctx, d) for d in x.type.shape[-2:])
    if h % out_hw[0] or w % out_hw[1]:
        raise LoweringError(
            f"{source_of(node)}: adaptive_avg_pool2d from {h}x{w} to {out_hw[0]}x{out_hw[1]} has uneven "
            "windows; only sizes that divide evenly are lowered"
        )
    lead = x.type.shape[:-2]
    blocks = ctx.reshape(x, (*lead, out_hw[0], h // out_hw[0], out_hw[1], w // out_hw[1]))
    rank = blocks.type.rank
    return ctx.reduce("mean", blocks, (rank - 3, rank - 1), False)


# -- attention: torch's fused encoder layer, and the backward of SDPA --


def _linear(ctx: LoweringContext, x: Value, weight: Value, bias: Value | None) -> Value:
    """``x @ weight.T + bias`` (nn.Linear's layout: weight is (out, in))."""
    out = ctx.op("matmul", x, ctx.transpose(weight, (1, 0)))
    return out if bias is None else ctx.op("add", out, bias)


def _last_dim_layer_norm(ctx: LoweringContext, x: Value, weight: Value, bias: Value, eps: float) -> Value:
    xf = _half_to_f32(ctx, x)
    axis = (x.type.rank - 1,)
    mean = ctx.reduce("mean", xf, axis, True)
    rstd = ctx.op("rsqrt", ctx.binary("add", ctx.reduce("var", xf, axis, True, correction=0.0), eps))
    out = ctx.op("add", ctx.op("multiply", ctx.op("multiply", ctx.op("subtract", xf, mean), rstd), weight), bias)
    return ctx.astype(out, x.type.dtype)


def _heads(ctx: LoweringContext, x: Value, heads: int) -> Value:
    """(B, T, D) → (B, heads, T, D / heads)."""
    b, t, d = x.type.shape
    per_head = _static_int(ctx, d) // heads
    return ctx.transpose(ctx.reshape(x, (b, t, heads, per_head)), (0, 2, 1, 3))


@lowers(aten._transformer_encoder_layer_fwd.default)
def _transformer_encoder_layer(ctx: LoweringContext, node: fx.Node) -> Value:
    """torch's fused ``nn.TransformerEncoderLayer`` (its inference fast path, taken under no_grad),
    from its native semantics: self-attention with ``q`` scaled by 1/sqrt(head dim) before
    ``q @ k.T``, a mask made boolean (nonzero masks out; ``mask_type`` 0: (T, T), 1: key padding
    (B, T), 2: (B, H, T, T)), residual adds, layer norms before (``norm_first``) or after each
    block, and a feed-forward of relu or exact gelu. Dropout is absent (the fast path is eval only).
    """
    src = ctx.value(node, 0)
    heads = int(ctx.arg(node, 2, "num_heads"))
    qkv_w, qkv_b, proj_w, proj_b = (ctx.value(node, i) for i in (3, 4, 5, 6))
    use_gelu, norm_first, eps = bool(ctx.arg(node, 7)), bool(ctx.arg(node, 8)), float(ctx.arg(node, 9))
    n1_w, n1_b, n2_w, n2_b, f1_w, f1_b, f2_w, f2_b = (ctx.value(node, i) for i in range(10, 18))
    mask = ctx.kwarg(node, 18, "mask", None)
    mask_type = ctx.kwarg(node, 19, "mask_type", None)
    if src.type.rank != 3:
        raise LoweringError(f"{source_of(node)}: the fused encoder layer takes batched (B, T, D) input, got {src.type}")
    if isinstance(_numel(src), int) and _numel(src) == 0:
        return src
    x = _last_dim_layer_norm(ctx, src, n1_w, n1_b, eps) if norm_first else src
    b, t, d = x.type.shape
    qkv = _linear(ctx, x, qkv_w, qkv_b)
    q, k, v = ctx.ops("split", qkv, attrs={"sizes": (d, d, d), "axis": 2})
    per_head = _static_int(ctx, d) // heads
    q = ctx.binary("multiply", q, 1.0 / math.sqrt(per_head))
    scores = ctx.op("matmul", _heads(ctx, q, heads), ctx.transpose(_heads(ctx, k, heads), (0, 1, 3, 2)))
    if mask is not None:
        if not isinstance(mask, Value) or mask_type not in (0, 1, 2):
            raise LoweringError(f"{source_of(node)}: mask_type {mask_type!r} is not 0, 1 or 2")
        masked = mask if mask.type.dtype is DType.bool else ctx.binary("not_equal", mask, 0)
        if mask_type == 1:  # (B, T) key padding: every head and query position
            masked = ctx.reshape(masked, (masked.type.shape[0], 1, 1, masked.type.shape[1]))
        lowest = ctx.const(-math.inf, scores.type.dtype)
        scores = ctx.op("where", ctx.broadcast(masked, scores.type.shape), lowest, scores)
    probs = ctx.op("softmax", scores, attrs={"axis": 3})
    attn = ctx.op("matmul", probs, _heads(ctx, v, heads))
    attn = ctx.reshape(ctx.transpose(attn, (0, 2, 1, 3)), (b, t, d))
    x = ctx.op("add", _linear(ctx, attn, proj_w, proj_b), src)
    if not norm_first:
        x = _last_dim_layer_norm(ctx, x, n1_w, n1_b, eps)
    residual = x
    if norm_first:
        x = _last_dim_layer_norm(ctx, x, n2_w, n2_b, eps)
    hidden = _linear(ctx, x, f1_w, f1_b)
    if use_gelu:  # exact gelu: 0.5 * h * (1 + erf(h / sqrt(2)))
        erf = ctx.op("erf", ctx.binary("multiply", hidden, 1.0 / math.sqrt(2.0)))
        hidden = ctx.op("multiply", ctx.binary("multiply", hidden, 0.5), ctx.binary("add", erf, 1.0))
    else:
        hidden = ctx.binary("maximum", hidden, 0)
    x = ctx.op("add", _linear(ctx, hidden, f2_w, f2_b), residual)
    if not norm_first:
        x = _last_dim_layer_norm(ctx, x, n2_w, n2_b, eps)
    return x


def _repeat_heads(ctx: LoweringContext, x: Value, heads: Dim) -> Value:
    """(B, Hk, S, E) → (B, heads, S, E), each key/value head serving heads / Hk query heads in a row."""
    b, hk, s_, e = x.type.shape
    if hk == heads:
        return x
    group = _static_int(ctx, heads) // _static_int(ctx, hk)
    spread = ctx.broadcast(ctx.reshape(x, (b, hk, 1, s_, e)), (b, hk, group, s_, e))
    return ctx.reshape(spread, (b, heads, s_, e))


def _sum_heads(ctx: LoweringContext, grad: Value, like: Value) -> Value:
    """The inverse of :func:`_repeat_heads` for gradients: sum each group of query heads."""
    b, h, s_, e = grad.type.shape
    hk = like.type.shape[1]
    if hk == h:
        return grad
    group = _static_int(ctx, h) // _static_int(ctx, hk)
    return ctx.reduce("sum", ctx.reshape(grad, (b, hk, group, s_, e)), (2,), False)


@lowers(aten._scaled_dot_product_flash_attention_for_cpu_backward.default)
def _sdpa_flash_for_cpu_backward(ctx: LoweringContext, node: fx.Node) -> tuple[Value, Value, Value]:
    """Gradients of q, k, v from the saved output and logsumexp (float32), recomputing the
    probabilities ``P = exp(scale * q @ k.T + mask - lse)``:
    ``dV = P.T @ dO``, ``dS = P * (dO @ V.T - rowsum(dO * O))``, ``dQ = scale * dS @ K``,
    ``dK = scale * dS.T @ Q``. Grouped-query attention (fewer key/value heads) sums each group.
    Rows whose every key is masked have no gradient (torch saves lse 0 for them, and any other
    value is read as such a row when it is -inf).
    """
    grad, q, k, v, out, lse = (ctx.value(node, i) for i in range(6))
    dropout = float(ctx.arg(node, 6, "dropout_p"))
    if dropout != 0.0:
        raise LoweringError(f"{source_of(node)}: SDPA backward with dropout_p={dropout} has random masks that "
                            "cannot be replayed; train attention with dropout_p=0.0")
    causal = bool(ctx.arg(node, 7, "is_causal"))
    mask = ctx.kwarg(node, 8, "attn_mask", None)
    scale = ctx.kwarg(node, 9, "scale", None)
    factor = float(scale) if scale is not None else 1.0 / math.sqrt(_static_int(ctx, q.type.shape[-1]))
    compute = DType.float32 if q.type.dtype in (DType.float16, DType.bfloat16) else q.type.dtype
    gf, qf, of = (ctx.astype(t, compute) for t in (grad, q, out))
    heads = q.type.shape[1]
    kf, vf = (_repeat_heads(ctx, ctx.astype(t, compute), heads) for t in (k, v))
    scores = ctx.binary("multiply", ctx.op("matmul", qf, ctx.transpose(kf, (0, 1, 3, 2))), factor)
    length, source = scores.type.shape[-2:]
    if causal:
        keep = ctx.op("tril", ctx.full((length, source), True, DType.bool), attrs={"k": 0})
        scores = ctx.op("where", keep, scores, ctx.const(-math.inf, compute))
    if mask is not None:
        if mask.type.dtype is DType.bool:
            scores = ctx.op("where", mask, scores, ctx.const(-math.inf, compute))
        else:
            scores = ctx.op("add", scores, ctx.astype(mask, compute))
    lse = ctx.astype(lse, compute)
    lse = ctx.op("where", ctx.binary("equal", lse, -math.inf), ctx.const(0.0, compute), lse)
    probs = ctx.op("exp", ctx.op("subtract", scores, ctx.op("expand_dims", lse, attrs={"axis": 3})))
    d_v = ctx.op("matmul", ctx.transpose(probs, (0, 1, 3, 2)), gf)
    d_probs = ctx.op("matmul", gf, ctx.transpose(vf, (0, 1, 3, 2)))
    row = ctx.reduce("sum", ctx.op("multiply", gf, of), (3,), True)
    d_scores = ctx.binary("multiply", ctx.op("multiply", probs, ctx.op("subtract", d_probs, row)), factor)
    d_q = ctx.op("matmul", d_scores, kf)
    d_k = ctx.op("matmul", ctx.transpose(d_scores, (0, 1, 3, 2)), qf)
    return (ctx.astype(d_q, q.type.dtype), ctx.astype(_sum_heads(ctx, d_k, k), k.type.dtype),
            ctx.astype(_sum_heads(ctx, d_v, v), v.type.dtype))


@lowers(aten.threshold_backward.default)
def _threshold_backward(ctx: LoweringContext, node: fx.Node) -> Value:
    grad, x = ctx.value(node, 0), ctx.value(node, 1)
    threshold = ctx.arg(node, 2, "threshold")
    below = ctx.binary("less_equal", x, threshold)
    return ctx.op("where", below, ctx.const(0, grad.type.dtype), grad)


@lowers(aten.sigmoid_backward.default)
def _sigmoid_backward(ctx: LoweringContext, node: fx.Node) -> Value:
    grad, out = ctx.value(node, 0), ctx.value(node, 1)
    return ctx.op("multiply", grad, ctx.op("multiply", out, ctx.binary("subtract", 1, out)))


@lowers(aten.tanh_backward.default)
def _tanh_backward(ctx: LoweringContext, node: fx.Node) -> Value:
    grad, out = ctx.value(node, 0), ctx.value(node, 1)
    return ctx.op("multiply", grad, ctx.binary("subtract", 1, ctx.op("multiply", out, out)))


# -- collectives (executed by spiky-dist) --


@lowers(c10d.all_reduce.default)
def _all_reduce(ctx: LoweringContext, node: fx.Node) -> Value:
    return ctx.op("all_reduce", ctx.value(node, 0),
                  attrs={"reduce_op": str(ctx.arg(node, 1)), "group_name": str(ctx.arg(node, 2))})


@lowers(c10d.all_gather_into_tensor.default)
def _all_gather(ctx: LoweringContext, node: fx.Node) -> Value:
    return ctx.op("all_gather", ctx.value(node, 0),
                  attrs={"group_size": int(ctx.arg(node, 1)), "group_name": str(ctx.arg(node, 2))})


@lowers(c10d.reduce_scatter_tensor.default)
def _reduce_scatter(ctx: LoweringContext, node: fx.Node) -> Value:
    return ctx.op("reduce_scatter", ctx.value(node, 0), attrs={
        "reduce_op": str(ctx.arg(node, 1)), "group_size": int(ctx.arg(node, 2)), "group_name": str(ctx.arg(node, 3))})


@lowers(c10d.broadcast.default)
def _broadcast(ctx: LoweringContext, node: fx.Node) -> Value:
    return ctx.op("broadcast", ctx.value(node, 0),
                  attrs={"src": int(ctx.arg(node, 1)), "group_name": str(ctx.arg(node, 2))})


@lowers(c10d.all_to_all_single.default)
def _all_to_all(ctx: LoweringContext, node: fx.Node) -> Value:
    # Split sizes are dims: funcol's even split under dynamic=True is ``s0//group_size`` per rank.
    out_splits = ctx.arg(node, 1) or []
    in_splits = ctx.arg(node, 2) or []
    return ctx.op("all_to_all", ctx.value(node, 0), attrs={
        "output_split_sizes": tuple(canonical(s) for s in out_splits),
        "input_split_sizes": tuple(canonical(s) for s in in_splits), "group_name": str(ctx.arg(node, 3))})


# Coalesced collectives (funcol.*_coalesced) take a list of tensors and return one result per
# tensor, each waited by its own wait_tensor. They lower to one collective per tensor, in list
# order (every rank issues the same sequence): the results are those of the single-tensor ops.


def _tensor_list(ctx: LoweringContext, node: fx.Node) -> list[Value]:
    values = ctx.arg(node, 0)
    if not isinstance(values, list | tuple) or not all(isinstance(v, Value) for v in values):
        raise LoweringError(f"{source_of(node)}: argument #0 is {values!r}, not a list of tensors")
    return list(values)


@lowers(c10d.all_reduce_coalesced.default)
def _all_reduce_coalesced(ctx: LoweringContext, node: fx.Node) -> tuple[Value, ...]:
    attrs: dict[str, Attr] = {"reduce_op": str(ctx.arg(node, 1)), "group_name": str(ctx.arg(node, 2))}
    return tuple(ctx.op("all_reduce", x, attrs=attrs) for x in _tensor_list(ctx, node))


@lowers(c10d.all_gather_into_tensor_coalesced.default)
def _all_gather_coalesced(ctx: LoweringContext, node: fx.Node) -> tuple[Value, ...]:
    attrs: dict[str, Attr] = {"group_size": int(ctx.arg(node, 1)), "group_name": str(ctx.arg(node, 2))}
    return tuple(ctx.op("all_gather", x, attrs=attrs) for x in _tensor_list(ctx, node))


@lowers(c10d.reduce_scatter_tensor_coalesced.default)
def _reduce_scatter_coalesced(ctx: LoweringContext, node: fx.Node) -> tuple[Value, ...]:
    attrs: dict[str, Attr] = {"reduce_op": str(ctx.arg(node, 1)), "group_size": int(ctx.arg(node, 2)),
                              "group_name": str(ctx.arg(node, 3))}
    return tuple(ctx.op("reduce_scatter", x, attrs=attrs) for x in _tensor_list(ctx, node))


@lowers(operator.getitem)
def _getitem(ctx: LoweringContext, node: fx.Node) -> Any:
    return ctx.arg(node, 0)[ctx.arg(node, 1)]


@lowers(aten._assert_scalar.default, aten.sym_constrain_range_for_size.default,
        aten._assert_tensor_metadata.default)
def _assertion(ctx: LoweringContext, node: fx.Node) -> None:
    # Shape guards were checked by torch at trace time; the IR has no side effects.
    return None


SYMBOLIC_OPS = (aten.sym_size.int, aten.sym_numel.default)
"""SymInt-valued ops: not in the table, their nodes become dims (from torch's symbolic sizes)."""


def lowered_ops() -> Sequence[str]:
    """Names of the ATen overloads with a lowering, sorted."""
    return sorted(str(t) for t in LOWERINGS)
