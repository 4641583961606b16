"""NKIPy kernel source: a graph as a readable ``def kernel(...)`` NumPy program.

NKIPy kernels are NumPy programs, so the emitted source runs as it is under NumPy and
gives the same results as :func:`spiky_ir.execute` (the same numpy calls in the same
types; tested bit for bit). Ops that are more than one numpy call use small helpers
written at the top of the file.

This module owns the kernel-source rule table (:data:`RULES`) and the helper table: each
op's rule is written next to the op in :mod:`spiky_ir.ops` and registered with
:func:`kernel_rule`; helpers are registered with :func:`kernel_helper`, either as source
text or as a Python function (the reference's own, whose source is copied into the kernel).
An op without a rule records why (``OpDef.no_rule["kernel_source"]``).

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
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from spiky_ir.dtypes import DType
from spiky_ir.errors import IRError
from spiky_ir.ir import Graph, Node, Value
from spiky_ir.registry import RuleTable, get_op
from spiky_ir.types import Attr


@dataclass(frozen=True)
class _Helper:
    source: str | Callable[..., Any]
    """The helper's source text, or the function whose source is copied."""
    deps: tuple[str, ...] = ()

    def text(self) -> str:
        if isinstance(self.source, str):
            return self.source
        return "\n" + _strip_docstring(inspect.getsource(self.source))


_HELPERS: dict[str, _Helper] = {}


def kernel_helper(source: str | Callable[..., Any], *, name: str | None = None, deps: Sequence[str] = ()) -> str:
    """Register a helper the kernel defines before ``kernel`` when a rule asks for it
    (:meth:`KernelEmitter.helper`); returns the name kernels call it by.

    ``source`` is the helper's source text (then ``name`` is required) or a function whose
    source is copied (docstring and annotations dropped). ``deps`` are helpers it calls.
    Registering the same function twice is a no-op; numpy's own functions need no helper
    (``kernel_helper(np.exp)`` returns ``"np.exp"``).
    """
    if not isinstance(source, str) and (np_name := numpy_name(source)) is not None:
        return np_name
    key = name if name is not None else None if isinstance(source, str) else source.__name__
    if key is None:
        raise IRError("kernel_helper needs a name for a helper given as source text")
    helper = _Helper(source, tuple(deps))
    known = _HELPERS.get(key)
    if known is not None and known != helper:
        raise IRError(f"kernel helper '{key}' is already registered with other source")
    _HELPERS[key] = helper
    return key


def numpy_name(fn: Callable[..., Any]) -> str | None:
    """``np.<name>`` when ``fn`` is numpy's own function of that name, else None."""
    name = getattr(fn, "__name__", "")
    return f"np.{name}" if getattr(np, name, None) is fn else None


def dtype_source(dtype: DType) -> str:
    if dtype is DType.bfloat16:
        return "ml_dtypes.bfloat16"
    return "np.bool_" if dtype is DType.bool else f"np.{dtype.name}"


def lit(value: Attr) -> str:
    """A Python literal for an attribute value."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"float({str(value)!r})"
    if isinstance(value, tuple):
        return "(" + ", ".join(str(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return repr(value)


def input_types(node: Node) -> list[DType]:
    return [v.type.dtype for v in node.inputs]


class KernelEmitter:
    """State of one kernel being written: value names, helpers used, imports needed."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.names: dict[int, str] = {}
        self.used: set[str] = set()
        self.helpers: list[str] = []
        self.uses_bf16 = False

    def name(self, value: Value) -> str:
        if id(value) not in self.names:
            base = value.name if value.name.isidentifier() else f"v_{value.name}"
            reserved = ("np", "ml_dtypes", "math", "kernel", *_HELPERS)
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
        return dtype_source(dtype)

    def helper(self, name: str) -> str:
        """Define helper ``name`` (and the helpers it calls) in this kernel; returns its name."""
        if name not in _HELPERS:
            raise IRError(f"kernel helper '{name}' is not registered; register it with kernel_helper")
        for dep in _HELPERS[name].deps:
            self.helper(dep)
        if name not in self.helpers:
            self.helpers.append(name)
        return name

    def function(self, fn: Callable[..., Any]) -> str:
        """How the kernel calls ``fn``: ``np.<name>`` for numpy's functions, else as the helper of that
        name, which must be registered up front (:func:`kernel_helper`) so that no value takes its name."""
        name = numpy_name(fn)
        if name is not None:
            return name
        if _HELPERS.get(fn.__name__, _Helper("")).source is not fn:
            raise IRError(f"function {fn.__name__!r} is not a registered kernel helper; call "
                          f"kernel_helper({fn.__name__}) next to the op that uses it")
        return self.helper(fn.__name__)

    def cast(self, expr: str, have: DType, want: DType) -> str:
        return expr if have is want else f"{expr}.astype({self.dt(want)})"


KernelRule = Callable[[KernelEmitter, Node, list[str], Mapping[str, Attr]], str]
"""Emits the Python expression computing a node's results from its operands' names."""

RULES: RuleTable[KernelRule] = RuleTable("kernel-source")
"""Op name → kernel-source rule, filled by the op families (:mod:`spiky_ir.ops`) as they are imported."""
kernel_rule = RULES.register
"""``@kernel_rule("op", ...)`` registers the decorated function as the kernel-source rule of each op."""


def kernel_source(graph: Graph, name: str = "kernel") -> str:
    """Python source defining ``def kernel(<inputs>)`` that returns the graph's outputs as a list.

    The graph must be static (``specialize`` it first) and free of collectives, which need
    a process group rather than NumPy.
    """
    e = KernelEmitter(graph)
    for value in graph.inputs:
        if not value.type.is_static:
            raise IRError(f"input %{value.name} has type {value.type}; specialize the graph before emitting a kernel")
    params = [e.name(v) for v in graph.inputs]
    body: list[str] = []
    for node in graph.nodes:
        rule = RULES.get(node.op)
        if rule is None:
            why = get_op(node.op).no_rule.get("kernel_source")
            raise IRError(f"node {node.describe()}: op '{node.op}' has no NumPy kernel form"
                          + (f" ({why})" if why else ""))
        expr = rule(e, node, [e.name(v) for v in node.inputs], node.attrs)
        targets = ", ".join(e.name(v) for v in node.outputs)
        if len(node.outputs) > 1:
            targets += ","
        body.append(f"        {targets} = {expr}")
    helpers = [_HELPERS[h].text() for h in e.helpers]
    header = ["import numpy as np"]
    if e.uses_bf16:
        header.append("import ml_dtypes")
    if any(re.search(r"\bmath\.", text) for text in helpers):
        header.insert(0, "import math")
    outs = ", ".join(e.name(v) for v in graph.outputs)
    lines = [*header, *helpers, "", f"def {name}({', '.join(params)}):",
             "    with np.errstate(all=\"ignore\"):", *(body or ["        pass"]), f"    return [{outs}]", ""]
    return "\n".join(lines)


def _strip_docstring(source: str) -> str:
    lines = source.splitlines()
    out = [ln.split("  # type:")[0] for ln in lines if not ln.strip().startswith('"""')]
    # Annotations name module-level aliases; the kernel file keeps only the code.
    text = "\n".join(out) + "\n"
    for alias in ("Array", "Sequence[int]", "tuple[int, ...]", "tuple[Array, Array]", "int", "bool"):
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


__all__ = [
    "RULES", "KernelEmitter", "KernelRule", "dtype_source", "input_types", "kernel_helper", "kernel_rule",
    "kernel_source", "lit", "load_kernel", "numpy_name", "run_kernel",
]
