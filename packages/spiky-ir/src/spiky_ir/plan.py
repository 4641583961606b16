"""A static graph prepared once for fast repeated numpy execution: the reference semantics, without the interpreter.

:func:`spiky_ir.execute` re-derives everything on every call (binds symbols, checks each
input, looks each op up, promotes each elementwise op's operand types, opens an
``errstate`` per op). That is right for a reference and slow for a tiny graph called a
million times: ~50 µs for one ``exp``. :func:`compile_plan` does that work once:

- every node becomes a step ``(kernel, attrs, operand slots, result slots)``, with the
  op's own reference implementation as the kernel, so results are those of ``execute``;
- elementwise ops get a kernel specialised to their static operand types (the casts to
  the compute type and back are decided once, not per call);
- other ops with a plan rule (:func:`plan_rule`, next to the op's reference: matmul,
  reductions, softmax, convolutions) get a kernel prepared from the node's static types and
  attributes; the rest run their reference as it is;
- nodes without operands (constants, iota, full, dim_value) are computed once;
- one ``np.errstate``-equivalent covers the whole call;
- the steps become one generated Python function (straight-line code, a local variable per
  value): no per-call environment list, step tuples or operand index lists to walk;
- with ``native`` kernels (:mod:`spiky_ir.fusion`; spiky-runtime's ``host_kernels``), float32 and
  float64 layer norms, eval batch norms, softmax and erf run as one native call each.

Outputs keep ``execute``'s contract: fresh C-contiguous arrays the caller owns. An output
that is a graph input, a precomputed constant or repeated is copied; any other output is
copied only if it is a view, not contiguous, or a numpy scalar.

>>> import numpy as np
>>> from spiky_ir import DType, Graph, TensorType
>>> g = Graph()
>>> x = g.add_input("x", TensorType((2,), DType.float32))
>>> g.set_outputs([g.add_op("exp", [x])])
>>> plan = compile_plan(g)
>>> plan([np.zeros(2, np.float32)])[0].tolist()
[1.0, 1.0]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from spiky_ir.dtypes import DType
from spiky_ir.errors import IRError
from spiky_ir.fusion import Fused, NativeKernels, find_fusions
from spiky_ir.ir import Graph, Node, Value
from spiky_ir.registry import elementwise_compute_type, get_op
from spiky_ir.types import Attr

Array = np.ndarray[Any, np.dtype[Any]]
Kernel = Callable[[Sequence[Array], Mapping[str, Attr]], Sequence[Array]]
Step = tuple[Kernel, Mapping[str, Attr], tuple[int, ...], tuple[int, ...]]
PlanRule = Callable[[Node], "Kernel | None"]
"""A node (static types, attributes) -> its kernel with the type promotion, casts and attribute
parsing of the reference done once; None to use the reference for this node."""

PLAN_RULES: dict[str, PlanRule] = {}


def plan_rule(*ops: str) -> Callable[[PlanRule], PlanRule]:
    """Register the plan's prepared kernel for ``ops`` (next to the op's reference, in its module).

    The kernel must compute what the reference computes (the op's tests run both); the plan runs
    every kernel inside one ``np.errstate(all="ignore")``, so kernels open none of their own.
    """

    def register(rule: PlanRule) -> PlanRule:
        for op in ops:
            PLAN_RULES[op] = rule
        return rule

    return register


def as_type(np_dtype: np.dtype[Any]) -> Callable[[Any], Array]:
    """A result converter to ``np_dtype``: numpy scalars (0-d results) become arrays; arrays of
    the right type pass through untouched."""

    def convert(r: Any) -> Array:
        if type(r) is not np.ndarray or r.dtype != np_dtype:
            return np.asarray(r).astype(np_dtype, copy=False)
        return r

    return convert


def _elementwise_kernel(node: Node) -> Kernel:
    """The elementwise reference with its casts decided from the node's static types."""
    ew = get_op(node.op).elementwise
    assert ew is not None
    fn = ew.fn
    compute, out = elementwise_compute_type(node.op, [v.type.dtype for v in node.inputs])
    compute_np, out_np = compute.to_numpy(), out.to_numpy()
    cast_in = tuple(v.type.dtype != compute for v in node.inputs)

    def as_result(r: Any) -> Array:
        # numpy returns scalars for 0-d operands; the IR's values are always arrays
        if type(r) is not np.ndarray or r.dtype != out_np:
            return np.asarray(r).astype(out_np, copy=False)
        return r

    if not any(cast_in):
        if len(cast_in) in (1, 2) and _gives(fn, compute_np, len(cast_in), out_np, node):
            # a rank >= 1 result of the right type: nothing to convert, the call is the step
            if len(cast_in) == 1:
                return lambda xs, _attrs: [fn(xs[0])]
            return lambda xs, _attrs: [fn(xs[0], xs[1])]
        if len(cast_in) == 1:
            return lambda xs, _attrs: [as_result(fn(xs[0]))]
        if len(cast_in) == 2:
            return lambda xs, _attrs: [as_result(fn(xs[0], xs[1]))]
        return lambda xs, _attrs: [as_result(fn(*xs))]

    def kernel(xs: Sequence[Array], _attrs: Mapping[str, Attr]) -> list[Array]:
        args = [x.astype(compute_np, copy=False) if cast else x for x, cast in zip(xs, cast_in, strict=True)]
        return [as_result(fn(*args))]

    return kernel


def _gives(fn: Callable[..., Any], compute: np.dtype[Any], arity: int, out: np.dtype[Any], node: Node) -> bool:
    """Whether ``fn`` on ``arity`` arrays of ``compute`` returns an array of ``out`` for this node's
    operands: its result has rank >= 1 (numpy returns scalars only for 0-d results; a 0-d operand
    next to others promotes as an array does) and a probe on
    one-element arrays of those types returns ``out`` (ufunc result types depend on types, not values)."""
    if node.output.type.rank < 1:
        return False
    with np.errstate(all="ignore"):
        probe = fn(*(np.ones(1, compute) for _ in range(arity)))
    return type(probe) is np.ndarray and probe.dtype == out


def _fp_error_switch() -> tuple[Callable[[], Any], Callable[[Any], None]]:
    """``(ignore, restore)``: numpy's floating-point error state set to ignore everything for a call.

    ``np.errstate(all="ignore")`` costs ~0.75 µs per call (it builds its state each time). NumPy 2
    keeps that state in a context variable; setting it to a state built once costs ~0.1 µs and is
    exactly what ``errstate`` does inside. Older numpy: ``errstate`` itself.
    """
    umath = getattr(getattr(np, "_core", None), "umath", None)
    var, make = getattr(umath, "_extobj_contextvar", None), getattr(umath, "_make_extobj", None)
    if var is not None and make is not None:
        try:
            ignore = make(all="ignore")
        except TypeError:
            ignore = None
        if ignore is not None:
            return (lambda: var.set(ignore)), var.reset

    def enter() -> Any:
        state = np.errstate(all="ignore")
        state.__enter__()
        return state
    return enter, lambda state: state.__exit__(None, None, None)


_ignore_fp_errors, _restore_fp_errors = _fp_error_switch()


class Plan:
    """A static-shape graph prepared for repeated execution; call it with a list of numpy arrays.

    Build with :func:`compile_plan`. Inputs must match the graph's input types exactly
    (shape and dtype); a mismatch raises :class:`IRError` naming the input.
    """

    def __init__(self, graph: Graph, native: NativeKernels | None = None) -> None:
        for value in graph.inputs:
            if not value.type.is_static:
                raise IRError(f"compile_plan needs static shapes; input %{value.name} is {value.type} "
                              "(specialize the graph first, or use spiky_ir.execute)")
        self.graph = graph
        slots: dict[int, int] = {}

        def slot(value: Value) -> int:
            return slots.setdefault(id(value), len(slots))

        self._inputs = [(v.name, v.type.static_shape(), v.type.dtype.to_numpy()) for v in graph.inputs]
        for value in graph.inputs:
            slot(value)
        self._env: list[Any] = [None] * len(graph.inputs)
        self._steps: list[Step] = []
        fixed: set[int] = set(range(len(graph.inputs)))  # inputs and precomputed values: outputs copy them
        fused: dict[int, Fused | None] = {}  # node -> the fused step it is part of (run at its last node)
        position = {id(node): index for index, node in enumerate(graph.nodes)}
        groups = find_fusions(graph, native) if native is not None else []
        for group in groups:
            fused.update((id(n), None) for n in group.nodes)
            fused[id(max(group.nodes, key=lambda n: position[id(n)]))] = group
        self.fused = len(groups)
        """How many native fused steps the plan runs."""
        for node in graph.nodes:
            if id(node) in fused:
                step = fused[id(node)]
                if step is not None:
                    outs = tuple(slot(v) for v in step.outputs)
                    self._env.extend([None] * len(outs))
                    self._steps.append((step.kernel, {}, tuple(slot(v) for v in step.inputs), outs))
                continue
            opdef = get_op(node.op)
            prepared = PLAN_RULES[node.op](node) if node.op in PLAN_RULES else None
            kernel: Kernel = (_elementwise_kernel(node) if opdef.elementwise
                              else prepared if prepared is not None else opdef.reference)
            ins = tuple(slot(v) for v in node.inputs)
            outs = tuple(slot(v) for v in node.outputs)
            self._env.extend([None] * len(outs))
            if not ins and opdef.category != "collective":  # no operands: the same every call
                with np.errstate(all="ignore"):
                    for index, result in zip(outs, kernel([], node.attrs), strict=True):
                        self._env[index] = result
                fixed.update(outs)
            else:
                self._steps.append((kernel, node.attrs, ins, outs))
        seen: set[int] = set()
        self._outputs: list[tuple[int, bool]] = []  # (slot, always copy)
        for value in graph.outputs:
            index = slot(value)
            self._outputs.append((index, index in fixed or index in seen))
            seen.add(index)
        self._run = _straight_line(len(graph.inputs), self._env, self._steps, [i for i, _ in self._outputs])

    def __call__(self, inputs: Sequence[Array]) -> list[Array]:
        if len(inputs) != len(self._inputs):
            raise IRError(f"graph '{self.graph.name}' takes {len(self._inputs)} inputs, got {len(inputs)}")
        for array, (name, shape, dtype) in zip(inputs, self._inputs, strict=True):
            if array.shape != shape or array.dtype != dtype:
                raise IRError(f"input %{name} of graph '{self.graph.name}' expects "
                              f"{DType.from_numpy(dtype).value}{list(shape)}, got {array.dtype}{list(array.shape)}")
        return [np.array(r, copy=True, order="C") if always_copy or r.base is not None or not r.flags.c_contiguous
                else r for r, (_index, always_copy) in zip(self._run(inputs), self._outputs, strict=True)]

    def run_unchecked(self, inputs: Sequence[Array]) -> list[Array]:
        """Run without checking the inputs, returning outputs that may be views of inputs or constants.

        For callers that guarantee the input types and copy the outputs away before anything
        else runs: the runtime's host models (it checks every input against the model's specs
        and copies results into output buffers).
        """
        return self._run(inputs)


def _straight_line(n_inputs: int, env: list[Any], steps: list[Step],
                   outputs: list[int]) -> Callable[[Sequence[Array]], list[Array]]:
    """The steps as one Python function: ``v<slot>`` locals, one line per step.

    The same work as walking the steps with an environment list, without the walking: ~0.5 µs a
    step and ~1 µs a call less, which is most of what a tiny graph costs. Every name in the source
    is generated here (slot and step numbers), nothing comes from the graph.
    """
    names: dict[str, Any] = {"_ignore": _ignore_fp_errors, "_restore": _restore_fp_errors,
                             "_ndarray": np.ndarray, "_asarray": np.asarray}
    for index in range(n_inputs, len(env)):
        if env[index] is not None:  # computed at build time
            names[f"v{index}"] = env[index]
    lines = ["def run(inputs):"]
    if n_inputs:
        lines.append(f"    {''.join(f'v{i}, ' for i in range(n_inputs))}= inputs")
    lines += ["    token = _ignore()", "    try:"]
    for number, (kernel, attrs, ins, outs) in enumerate(steps):
        names[f"k{number}"], names[f"a{number}"] = kernel, attrs
        call = f"k{number}([{', '.join(f'v{i}' for i in ins)}], a{number})"
        if len(outs) == 1:
            lines.append(f"        v{outs[0]} = {call}[0]")
        else:  # unpacking checks the count, as zip(strict=True) did
            lines.append(f"        {''.join(f'v{i}, ' for i in outs)}= {call}")
    if not steps:
        lines.append("        pass")
    lines += ["    finally:", "        _restore(token)"]
    # numpy gives scalars for some 0-d results; the IR's values are arrays
    lines.append(f"    return [{', '.join(f'v{i} if type(v{i}) is _ndarray else _asarray(v{i})' for i in outputs)}]")
    exec(compile("\n".join(lines), "<spiky_ir plan>", "exec"), names)  # the names are all generated above
    run: Callable[[Sequence[Array]], list[Array]] = names["run"]
    return run


def compile_plan(graph: Graph, native: NativeKernels | None = None) -> Plan:
    """Prepare ``graph`` (static shapes) for fast repeated numpy execution; same results as
    :func:`spiky_ir.execute` (with ``native`` kernels: to float rounding, see :mod:`spiky_ir.fusion`)."""
    return Plan(graph, native)
