"""NKIPy kernel source: a graph as a readable ``def kernel(...)`` NumPy program.

NKIPy kernels are NumPy programs, so the emitted source runs as it is under NumPy and
gives the same results as :func:`spiky_ir.execute` (the same numpy calls in the same
types; tested bit for bit). Ops that are more than one numpy call use small helpers
written at the top of the file.

>>> from spiky_ir import DType, Graph, TensorType, kernel_source
>>> g = Graph()
>>> x = g.add_input("x", TensorType((2, 3), DType.float32))
>>> g.set_outputs([g.add_op("exp", [x])])
>>> print(kernel_source(g))  # doctest: +ELLIPSIS
import numpy as np
...
def kernel(x):
    with np.errstate(all="ignore"):
        exp = np.exp(x)
    return [exp]
<BLANKLINE>
"""

from __future__ import annotations

import builtins
import inspect
import keyword
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from spiky_ir import ops
from spiky_ir.dtypes import DType, promote
from spiky_ir.errors import IRError
from spiky_ir.ir import Attr, Graph, Node, Value

_HELPER_FUNCS: dict[str, Callable[..., Any]] = {
    "erf": ops.erf, "sigmoid": ops.sigmoid, "rsqrt": ops.rsqrt, "softmax": ops.softmax,
    "topk": ops.topk, "conv": ops.conv,
}

_HELPER_SOURCE: dict[str, str] = {
    "_crop": '''
def _crop(x, shape, skip=None):
    return x[tuple(slice(None) if i == skip else slice(0, s) for i, s in enumerate(shape))]
''',
    "_scatter_index": '''
def _scatter_index(idx, axis):
    grid = list(np.indices(idx.shape, sparse=True))
    grid[axis] = idx
    return tuple(np.broadcast_arrays(*grid))
''',
    "iota": '''
def iota(shape, axis, dtype):
    line = np.arange(shape[axis]).reshape([-1 if i == axis else 1 for i in range(len(shape))])
    return np.broadcast_to(line, shape).astype(dtype)
''',
    "take_along_axis": '''
def take_along_axis(x, idx, axis):
    return np.take_along_axis(_crop(x, idx.shape, axis), idx, axis=axis)
''',
    "scatter": '''
def scatter(x, idx, upd, axis):
    out = x.copy()
    out[_scatter_index(idx, axis)] = _crop(upd, idx.shape).astype(x.dtype)
    return out
''',
    "scatter_add": '''
def scatter_add(x, idx, upd, axis, compute):
    out = x.astype(compute).copy()
    np.add.at(out, _scatter_index(idx, axis), _crop(upd, idx.shape).astype(compute))
    return out.astype(x.dtype)
''',
    "dynamic_slice": '''
def dynamic_slice(x, starts, sizes):
    starts = [min(max(int(s), 0), d - n) for s, d, n in zip(starts, x.shape, sizes)]
    return x[tuple(slice(s, s + n) for s, n in zip(starts, sizes))]
''',
    "dynamic_update_slice": '''
def dynamic_update_slice(x, update, starts):
    starts = [min(max(int(s), 0), d - n) for s, d, n in zip(starts, x.shape, update.shape)]
    out = x.copy()
    out[tuple(slice(s, s + n) for s, n in zip(starts, update.shape))] = update.astype(x.dtype)
    return out
''',
}
_HELPER_DEPS = {"take_along_axis": ["_crop"], "scatter": ["_crop", "_scatter_index"],
                "scatter_add": ["_crop", "_scatter_index"]}


def _dt(dtype: DType) -> str:
    if dtype is DType.bfloat16:
        return "ml_dtypes.bfloat16"
    return "np.bool_" if dtype is DType.bool else f"np.{dtype.name}"


def _lit(value: Attr) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return f"float({str(value)!r})"
    if isinstance(value, tuple):
        return "(" + ", ".join(str(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return repr(value)


class _Emitter:
    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.names: dict[int, str] = {}
        self.used: set[str] = set()
        self.helpers: list[str] = []
        self.uses_bf16 = False
        self.uses_math = False

    def name(self, value: Value) -> str:
        if id(value) not in self.names:
            base = value.name if value.name.isidentifier() else f"v_{value.name}"
            reserved = ("np", "ml_dtypes", "math", "kernel", *_HELPER_FUNCS, *_HELPER_SOURCE)
            if keyword.iskeyword(base) or hasattr(builtins, base) or base in reserved:
                base += "_"
            name, n = base, 0
            while name in self.used:
                n += 1
                name = f"{base}_{n}"
            self.used.add(name)
            self.names[id(value)] = name
        return self.names[id(value)]

    def dt(self, dtype: DType) -> str:
        if dtype is DType.bfloat16:
            self.uses_bf16 = True
        return _dt(dtype)

    def helper(self, name: str) -> str:
        for dep in _HELPER_DEPS.get(name, []):
            self.helper(dep)
        if name not in self.helpers:
            self.helpers.append(name)
            if name == "erf":
                self.uses_math = True
        return name

    def cast(self, expr: str, have: DType, want: DType) -> str:
        return expr if have is want else f"{expr}.astype({self.dt(want)})"


Rule = Callable[[_Emitter, Node, list[str], Mapping[str, Attr]], str]
RULES: dict[str, Rule] = {}
"""Op name → emission rule returning the Python expression computing the node's results."""


def _rule(*names: str) -> Callable[[Rule], Rule]:
    def register(fn: Rule) -> Rule:
        for n in names:
            RULES[n] = fn
        return fn

    return register


def _types(node: Node) -> list[DType]:
    return [v.type.dtype for v in node.inputs]


def _elementwise(e: _Emitter, node: Node, args: list[str], _attrs: Mapping[str, Attr]) -> str:
    compute, out = ops.elementwise_compute_type(node.op, _types(node))
    fn = ops.ELEMENTWISE_FN[node.op]
    fname = e.helper(node.op) if node.op in _HELPER_FUNCS else f"np.{fn.__name__}"
    cast_args = [e.cast(a, t, compute) for a, t in zip(args, _types(node), strict=True)]
    expr = f"{fname}({', '.join(cast_args)})"
    if out is not compute or node.op == "erf":
        expr = f"np.asarray({expr}).astype({e.dt(out)})"
    return expr


for _name in ops.ELEMENTWISE_FN:
    RULES[_name] = _elementwise


def _attr_ints(attrs: Mapping[str, Attr], key: str) -> tuple[Any, ...]:
    value = attrs[key]
    assert isinstance(value, tuple)
    return value


@_rule("constant")
def _constant(e: _Emitter, node: Node, _args: list[str], attrs: Mapping[str, Attr]) -> str:
    return f"np.asarray({_lit(attrs['value'])}).astype({e.dt(node.output.type.dtype)})"


@_rule("dim_value")
def _dim_value(e: _Emitter, node: Node, _args: list[str], attrs: Mapping[str, Attr]) -> str:
    return f"np.asarray({_lit(attrs['value'])}).astype({e.dt(node.output.type.dtype)})"


@_rule("full")
def _full(e: _Emitter, node: Node, _args: list[str], attrs: Mapping[str, Attr]) -> str:
    dt = e.dt(node.output.type.dtype)
    return f"np.full({_lit(attrs['shape'])}, np.asarray({_lit(attrs['value'])}).astype({dt}))"


@_rule("zeros")
def _zeros(e: _Emitter, node: Node, _args: list[str], attrs: Mapping[str, Attr]) -> str:
    return f"np.zeros({_lit(attrs['shape'])}, {e.dt(node.output.type.dtype)})"


@_rule("iota")
def _iota(e: _Emitter, node: Node, _args: list[str], attrs: Mapping[str, Attr]) -> str:
    return f"{e.helper('iota')}({_lit(attrs['shape'])}, {attrs['axis']}, {e.dt(node.output.type.dtype)})"


@_rule("arange")
def _arange(e: _Emitter, node: Node, _args: list[str], attrs: Mapping[str, Attr]) -> str:
    start, step = float(attrs["start"]), float(attrs["step"])  # type: ignore[arg-type]
    return (f"({start!r} + np.arange({attrs['size']}, dtype=np.float64) * {step!r})"
            f".astype({e.dt(node.output.type.dtype)})")


@_rule("tril", "triu")
def _tri(_e: _Emitter, node: Node, args: list[str], attrs: Mapping[str, Attr]) -> str:
    return f"np.{node.op}({args[0]}, {attrs['k']})"


@_rule("astype")
def _astype(e: _Emitter, node: Node, args: list[str], _attrs: Mapping[str, Attr]) -> str:
    return f"{args[0]}.astype({e.dt(node.output.type.dtype)})"


@_rule("transpose", "reshape", "broadcast_to", "expand_dims", "squeeze", "flip", "tile")
def _layout(_e: _Emitter, node: Node, args: list[str], attrs: Mapping[str, Attr]) -> str:
    (value,) = attrs.values()
    return f"np.{node.op}({args[0]}, {_lit(value)})"


@_rule("repeat")
def _repeat(_e: _Emitter, _node: Node, args: list[str], attrs: Mapping[str, Attr]) -> str:
    return f"np.repeat({args[0]}, {attrs['repeats']}, axis={attrs['axis']})"


@_rule("concatenate")
def _concatenate(e: _Emitter, node: Node, args: list[str], attrs: Mapping[str, Attr]) -> str:
    out = node.output.type.dtype
    parts = [e.cast(a, t, out) for a, t in zip(args, _types(node), strict=True)]
    return f"np.concatenate([{', '.join(parts)}], axis={attrs['axis']})"


@_rule("split")
def _split(_e: _Emitter, _node: Node, args: list[str], attrs: Mapping[str, Attr]) -> str:
    cuts = np.cumsum(_attr_ints(attrs, "sizes"))[:-1].tolist()
    return f"np.split({args[0]}, {cuts}, axis={attrs['axis']})"


@_rule("slice")
def _slice(_e: _Emitter, node: Node, args: list[str], attrs: Mapping[str, Attr]) -> str:
    parts = []
    shape = node.inputs[0].type.shape
    for lo, hi, st, dim in zip(_attr_ints(attrs, "start"), _attr_ints(attrs, "stop"),
                               _attr_ints(attrs, "step"), shape, strict=True):
        text = f"{lo or ''}:{'' if hi == dim else hi}" + (f":{st}" if st != 1 else "")
        parts.append(text)
    return f"{args[0]}[{', '.join(parts)}]"


@_rule("pad")
def _pad(e: _Emitter, node: Node, args: list[str], attrs: Mapping[str, Attr]) -> str:
    widths = list(zip(_attr_ints(attrs, "lo"), _attr_ints(attrs, "hi"), strict=True))
    fill = f"np.asarray({_lit(attrs['value'])}).astype({e.dt(node.output.type.dtype)})"
    return f"np.pad({args[0]}, {widths}, constant_values={fill})"


_REDUCE_FN = {"sum": "np.sum", "prod": "np.prod", "max": "np.max", "min": "np.min", "mean": "np.mean",
              "var": "np.var", "any": "np.any", "all": "np.all"}


@_rule(*_REDUCE_FN)
def _reduce(e: _Emitter, node: Node, args: list[str], attrs: Mapping[str, Attr]) -> str:
    out = node.output.type.dtype
    compute = ops._widen(out) if out.is_floating else out
    x = args[0] if compute is DType.bool else e.cast(args[0], node.inputs[0].type.dtype, compute)
    extra = f", ddof={attrs['correction']!r}" if node.op == "var" else ""
    expr = f"{_REDUCE_FN[node.op]}({x}, axis={_lit(attrs['axes'])}, keepdims={attrs['keepdims']}{extra})"
    return f"np.asarray({expr}).astype({e.dt(out)})"


@_rule("argmax", "argmin")
def _argreduce(e: _Emitter, node: Node, args: list[str], attrs: Mapping[str, Attr]) -> str:
    x = e.cast(args[0], DType.bfloat16, DType.float32) if node.inputs[0].type.dtype is DType.bfloat16 else args[0]
    return f"np.asarray(np.{node.op}({x}, axis={attrs['axis']}, keepdims={attrs['keepdims']})).astype(np.int64)"


@_rule("matmul", "dot")
def _matmul(e: _Emitter, node: Node, args: list[str], _attrs: Mapping[str, Attr]) -> str:
    out = node.output.type.dtype
    compute = ops._widen(out)
    a, b = (e.cast(x, t, compute) for x, t in zip(args, _types(node), strict=True))
    return e.cast(f"np.matmul({a}, {b})", compute, out)


@_rule("where")
def _where(e: _Emitter, node: Node, args: list[str], _attrs: Mapping[str, Attr]) -> str:
    out = node.output.type.dtype
    a, b = (e.cast(x, t, out) for x, t in zip(args[1:], _types(node)[1:], strict=True))
    return f"np.where({args[0]}, {a}, {b})"


@_rule("take")
def _take(_e: _Emitter, _node: Node, args: list[str], attrs: Mapping[str, Attr]) -> str:
    return f"np.take({args[0]}, {args[1]}, axis={attrs['axis']})"


@_rule("take_along_axis", "scatter")
def _along(e: _Emitter, node: Node, args: list[str], attrs: Mapping[str, Attr]) -> str:
    return f"{e.helper(node.op)}({', '.join(args)}, {attrs['axis']})"


@_rule("scatter_add")
def _scatter_add(e: _Emitter, node: Node, args: list[str], attrs: Mapping[str, Attr]) -> str:
    compute = e.dt(ops._widen(node.output.type.dtype))
    return f"{e.helper('scatter_add')}({', '.join(args)}, {attrs['axis']}, {compute})"


@_rule("dynamic_slice")
def _dynamic_slice(e: _Emitter, _node: Node, args: list[str], attrs: Mapping[str, Attr]) -> str:
    return f"{e.helper('dynamic_slice')}({args[0]}, [{', '.join(args[1:])}], {_lit(attrs['sizes'])})"


@_rule("dynamic_update_slice")
def _dynamic_update(e: _Emitter, _node: Node, args: list[str], _attrs: Mapping[str, Attr]) -> str:
    return f"{e.helper('dynamic_update_slice')}({args[0]}, {args[1]}, [{', '.join(args[2:])}])"


@_rule("softmax")
def _softmax(e: _Emitter, node: Node, args: list[str], attrs: Mapping[str, Attr]) -> str:
    out = node.output.type.dtype
    x = e.cast(args[0], node.inputs[0].type.dtype, ops._widen(out))
    return e.cast(f"{e.helper('softmax')}({x}, {attrs['axis']})", ops._widen(out), out)


@_rule("topk")
def _topk(e: _Emitter, _node: Node, args: list[str], attrs: Mapping[str, Attr]) -> str:
    return f"{e.helper('topk')}({args[0]}, {attrs['k']}, {attrs['axis']}, {attrs['largest']})"


@_rule("conv1d", "conv2d")
def _conv(e: _Emitter, node: Node, args: list[str], attrs: Mapping[str, Attr]) -> str:
    out = node.output.type.dtype
    compute = ops._widen(out)
    x, w = (e.cast(a, t, compute) for a, t in zip(args, _types(node), strict=True))
    params = ", ".join(_lit(attrs[k]) for k in ("stride", "pad_lo", "pad_hi", "dilation"))
    return e.cast(f"{e.helper('conv')}({x}, {w}, {params}, {attrs['groups']})", compute, out)


def kernel_source(graph: Graph, name: str = "kernel") -> str:
    """Python source defining ``def kernel(<inputs>)`` that returns the graph's outputs as a list.

    The graph must be static (``specialize`` it first) and free of collectives, which need
    a process group rather than NumPy.
    """
    e = _Emitter(graph)
    for value in graph.inputs:
        if not value.type.is_static:
            raise IRError(f"input %{value.name} has type {value.type}; specialize the graph before emitting a kernel")
    params = [e.name(v) for v in graph.inputs]
    body: list[str] = []
    for node in graph.nodes:
        rule = RULES.get(node.op)
        if rule is None:
            raise IRError(
                f"node {node.describe()}: op '{node.op}' has no NumPy kernel form"
                + (" (collectives run through spiky-dist)" if ops.get_op(node.op).category == "collective" else "")
            )
        expr = rule(e, node, [e.name(v) for v in node.inputs], node.attrs)
        targets = ", ".join(e.name(v) for v in node.outputs)
        if len(node.outputs) > 1:
            targets += ","
        body.append(f"        {targets} = {expr}")
    header = ["import numpy as np"]
    if e.uses_bf16:
        header.append("import ml_dtypes")
    if e.uses_math:
        header.insert(0, "import math")
    helpers = []
    for h in e.helpers:
        if h in _HELPER_FUNCS:
            helpers.append("\n" + _strip_docstring(inspect.getsource(_HELPER_FUNCS[h])))
        else:
            helpers.append(_HELPER_SOURCE[h])
    outs = ", ".join(e.name(v) for v in graph.outputs)
    lines = [*header, *helpers, "", f"def {name}({', '.join(params)}):",
             "    with np.errstate(all=\"ignore\"):", *(body or ["        pass"]), f"    return [{outs}]", ""]
    return "\n".join(lines)


def _strip_docstring(source: str) -> str:
    lines = source.splitlines()
    out = [ln.split("  # type:")[0] for ln in lines if not ln.strip().startswith('"""')]
    # Annotations name module-level aliases; the kernel file keeps only the code.
    text = "\n".join(out) + "\n"
    for alias in ("Array", "Sequence[int]", "tuple[Array, Array]", "int", "bool"):
        text = text.replace(f": {alias}", "").replace(f"-> {alias}", "")
    return text.replace(" :", ":").replace(")  :", "):").replace(") :", "):")


def load_kernel(source: str, name: str = "kernel") -> Callable[..., list[Any]]:
    """Execute emitted ``source`` and return its kernel function."""
    namespace: dict[str, Any] = {}
    exec(compile(source, "<spiky-ir kernel>", "exec"), namespace)
    fn: Callable[..., list[Any]] = namespace[name]
    return fn


def run_kernel(graph: Graph, inputs: Sequence[Any]) -> list[Any]:
    """Emit ``graph`` as a kernel and run it on ``inputs`` (tests compare it with ``execute``)."""
    return [np.asarray(r) for r in load_kernel(kernel_source(graph))(*inputs)]


__all__ = ["RULES", "kernel_source", "load_kernel", "promote", "run_kernel"]
