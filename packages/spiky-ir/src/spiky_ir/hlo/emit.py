"""IR graph → ``xla.HloModuleProto`` following the conventions the Neuron toolchain expects.

The module has reducer computations first and the entry computation ``main`` last; ids
are unique module-wide; layouts are row-major. Every parameter carries the frontend
attribute ``neff_input_names=<input name>`` (``<name>.must_alias_input`` when the input is
updated in place, declared in ``input_output_alias``). The root is a ``copy`` (one result)
or a ``tuple`` (several) with ``neff_output_names=output0,output1,...``; a result that is a
bare parameter, or repeats an earlier result, gets its own ``copy``.

>>> from spiky_ir import DType, Graph, TensorType
>>> g = Graph()
>>> x = g.add_input("x", TensorType((2, 3), DType.float32))
>>> g.set_outputs([g.add_op("exp", [x])])
>>> art = emit_hlo(g)
>>> art.input_names, art.output_names
(('x',), ('output0',))
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

from spiky_ir.dtypes import DType
from spiky_ir.errors import IRError
from spiky_ir.hlo import schema as s
from spiky_ir.hlo.builder import ComputationBuilder, HloValue, ModuleBuilder, array_shape
from spiky_ir.hlo.rules import HLO_RULES, HloContext
from spiky_ir.hlo.text import module_text
from spiky_ir.ir import Graph, Value
from spiky_ir.registry import get_op
from spiky_ir.types import TensorType

ENTRY_NAME = "main"
INPUT_NAMES_ATTR = "neff_input_names"
OUTPUT_NAMES_ATTR = "neff_output_names"
MUST_ALIAS_SUFFIX = ".must_alias_input"


@dataclass(frozen=True)
class HloArtifact:
    """An emitted module: the proto message, its bytes, and the NEFF I/O names."""

    module: s.HloModule
    input_names: tuple[str, ...]
    """``neff_input_names`` of each parameter, in parameter order."""
    output_names: tuple[str, ...]
    aliases: Mapping[int, int] = field(default_factory=dict)
    """Output index → parameter number of each in-place updated input."""

    @cached_property
    def proto(self) -> bytes:
        """The binary serialized ``xla.HloModuleProto`` (what ``neuronx-cc`` reads)."""
        return self.module.encode()

    @cached_property
    def text(self) -> str:
        """The HLO text form (for dumps; XLA's parser reads it back)."""
        return module_text(self.module)


def emit_hlo(
    graph: Graph,
    *,
    name: str | None = None,
    inplace: Mapping[str, int] | None = None,
    replica_groups: Mapping[str, Sequence[Sequence[int]]] | None = None,
    drop_empty_inputs: bool = False,
    packed_outputs: Sequence[int] = (),
) -> HloArtifact:
    """Emit ``graph`` (static shapes) as an HLO module.

    ``replica_groups`` maps each collective's ``group_name`` to its replica groups (lists
    of ranks; spiky-dist derives them from process groups). ``inplace`` maps a graph
    input's name to the index of the output that updates it in place; that input becomes
    ``<name>.must_alias_input`` and a ``MUST_ALIAS`` entry of ``input_output_alias``.
    ``drop_empty_inputs``: an input with zero elements is no parameter but a constant of its
    (empty) shape, which holds the same nothing (a NEFF carries no zero-element tensors); it is
    then absent from ``input_names``.
    ``packed_outputs``: these outputs (indices, see :func:`pack_layout`) leave as bytes of one
    buffer, the last element of the root tuple, after the other outputs in order: of their dtype
    when they share one, else ``u8``. For XLA:CPU on the host, where every output buffer costs
    ~3 µs to hand back; not for a NEFF.
    """
    for value in graph.inputs:
        if not value.type.is_static:
            raise IRError(
                f"graph input %{value.name}: {value.type} is symbolic; specialize the graph before emitting HLO"
            )
    if not graph.outputs:
        raise IRError(f"graph '{graph.name}' has no outputs; nothing to emit")
    aliases = _check_inplace(graph, dict(inplace or {}))
    dropped = {i for i, v in enumerate(graph.inputs) if drop_empty_inputs and 0 in v.type.static_shape()}
    if dropped & set(aliases.values()):
        raise IRError("an input updated in place cannot have zero elements and be dropped")

    module = ModuleBuilder()
    main = ComputationBuilder(module, ENTRY_NAME)
    env: dict[int, HloValue] = {}
    input_names: list[str] = []
    params: list[Value] = []
    for index, value in enumerate(graph.inputs):
        if index in dropped:
            env[id(value)] = main.full(0, value.type.dtype, value.type.static_shape())
            continue
        neff_name = value.name + (MUST_ALIAS_SUFFIX if index in aliases.values() else "")
        input_names.append(neff_name)
        env[id(value)] = main.parameter(len(params), value.type.dtype, value.type.static_shape(), neff_name,
                                        {INPUT_NAMES_ATTR: neff_name})
        params.append(value)
    number_of = {index: n for n, index in enumerate(i for i in range(len(graph.inputs)) if i not in dropped)}
    aliases = {out: number_of[index] for out, index in aliases.items()}
    for node in graph.nodes:
        rule = HLO_RULES.get(node.op)
        if rule is None:
            why = get_op(node.op).no_rule.get("hlo")
            raise IRError(f"op '{node.op}' has no HLO rule (node {node.describe()}): "
                          + (why or "register one next to the op with spiky_ir.hlo.rules.hlo_rule"))
        main.metadata = s.OpMetadata(op_type=node.op, op_name=",".join(v.name for v in node.outputs))
        context = HloContext(main, node, dict(replica_groups or {}))
        results = rule(context, node, [env[id(v)] for v in node.inputs])
        if len(results) != len(node.outputs):
            raise IRError(f"HLO rule of '{node.op}' returned {len(results)} values for {len(node.outputs)} results")
        for value, result in zip(node.outputs, results, strict=True):
            expected = (value.type.dtype, value.type.static_shape())
            if (result.dtype, result.dims) != expected:
                raise IRError(
                    f"HLO rule of '{node.op}' produced {result.dtype.value}{list(result.dims)} for %{value.name}, "
                    f"the IR says {value.type}: this is a spiky-ir bug"
                )
            env[id(value)] = result
    main.metadata = None

    output_names = tuple(f"output{i}" for i in range(len(graph.outputs)))
    attrs = {OUTPUT_NAMES_ATTR: ",".join(output_names)}
    packed = set(packed_outputs)
    if packed:
        pack_layout([v.type for v in graph.outputs], packed)  # checks the indices and types
        # Outputs of one dtype are concatenated as they are (one copy each); mixed dtypes go through
        # their bytes (a bitcast-convert each first). Either way the buffer holds the same bytes.
        dtypes = {graph.outputs[i].type.dtype for i in packed}
        kind = dtypes.pop() if len(dtypes) == 1 else DType.uint8
        parts = [_flat_part(main, env[id(graph.outputs[i])], kind) for i in sorted(packed)]
        elements = _distinct(main, [env[id(v)] for i, v in enumerate(graph.outputs) if i not in packed])
        total = sum(p.dims[0] for p in parts)
        elements.append(main.op("concatenate", parts, kind, (total,), dimensions=[0]))
        root = main.tuple(elements, {OUTPUT_NAMES_ATTR: ",".join(
            [n for i, n in enumerate(output_names) if i not in packed] + ["packed"])})
    elif len(graph.outputs) == 1:
        root = main.copy(env[id(graph.outputs[0])], attrs)
    else:
        root = main.tuple(_distinct(main, [env[id(v)] for v in graph.outputs]), attrs)
    entry = main.finish(root)
    program_shape = s.ProgramShape(
        parameters=[array_shape(v.type.dtype, v.type.static_shape()) for v in params],
        result=root.shape,
        parameter_names=list(input_names),
    )
    entry.program_shape = program_shape
    alias_proto = None
    if aliases:
        alias_proto = s.InputOutputAlias(entries=[
            s.AliasEntry(output_shape_index=[out] if len(graph.outputs) > 1 else [], parameter_number=param,
                         kind=s.MUST_ALIAS)
            for out, param in sorted(aliases.items())
        ])
    proto = s.HloModule(
        name=name or graph.name,
        entry_computation_name=ENTRY_NAME,
        computations=[*module.reducers, entry],
        host_program_shape=program_shape,
        id=1,
        entry_computation_id=entry.id,
        input_output_alias=alias_proto,
    )
    return HloArtifact(proto, tuple(input_names), output_names, aliases)


def _distinct(b: ComputationBuilder, results: Sequence[HloValue]) -> list[HloValue]:
    """Tuple elements: a bare parameter or a repeated result gets its own ``copy``."""
    seen: set[int] = set()
    elements = []
    for result in results:
        hlo = b.copy(result) if result.instruction.opcode == "parameter" or result.id in seen else result
        seen.add(hlo.id)
        elements.append(hlo)
    return elements


PACK_ALIGNMENT = 64
"""Each packed output starts at a multiple of this many bytes of the packed buffer."""
PACKABLE = frozenset(DType) - {DType.bool}
"""Output types a packed buffer carries (as their bytes): those HLO's ``bitcast-convert`` takes."""


def pack_layout(types: Sequence[TensorType], indices: Collection[int]) -> list[tuple[int, int, int]]:
    """``(output index, byte offset, byte count)`` of each packed output, in index order: its bytes,
    row-major, at an offset aligned to :data:`PACK_ALIGNMENT`."""
    layout, offset = [], 0
    for index in sorted(indices):
        if not 0 <= index < len(types):
            raise IRError(f"packed output {index} is not an output (the graph has {len(types)})")
        t = types[index]
        if t.dtype not in PACKABLE or not t.is_static:
            raise IRError(f"output {index} ({t}) cannot be packed: only static outputs of "
                          f"{', '.join(sorted(d.value for d in PACKABLE))}")
        nbytes = math.prod(t.static_shape()) * t.dtype.itemsize
        layout.append((index, offset, nbytes))
        offset += -(-nbytes // PACK_ALIGNMENT) * PACK_ALIGNMENT
    return layout


def _flat_part(b: ComputationBuilder, value: HloValue, kind: DType) -> HloValue:
    """``value``'s row-major elements as ``kind[n]`` (its own dtype, or ``u8`` for its bytes),
    zero-padded to a multiple of :data:`PACK_ALIGNMENT` bytes."""
    flat = b.reshape(value, (math.prod(value.dims),))
    if kind is value.dtype:
        data = flat
    elif value.dtype.itemsize == 1:
        data = b.op("bitcast-convert", [flat], DType.uint8, flat.dims)
    else:
        size = value.dtype.itemsize
        data = b.reshape(b.op("bitcast-convert", [flat], DType.uint8, (*flat.dims, size)), (flat.dims[0] * size,))
    pad = -(data.dims[0] * kind.itemsize) % PACK_ALIGNMENT // kind.itemsize
    if not pad:
        return data
    return b.op("concatenate", [data, b.full(0, kind, (pad,))], kind, (data.dims[0] + pad,), dimensions=[0])


def _check_inplace(graph: Graph, inplace: dict[str, int]) -> dict[int, int]:
    """Output index → parameter number, after checking names, indices and types."""
    by_name = {v.name: i for i, v in enumerate(graph.inputs)}
    aliases: dict[int, int] = {}
    for input_name, out in inplace.items():
        if input_name not in by_name:
            raise IRError(f"inplace input {input_name!r} is not an input of graph '{graph.name}'; "
                          f"inputs: {', '.join(by_name)}")
        if not 0 <= out < len(graph.outputs):
            raise IRError(f"inplace input {input_name!r} names output {out}; graph '{graph.name}' "
                          f"has {len(graph.outputs)} outputs")
        if out in aliases:
            raise IRError(f"output {out} of graph '{graph.name}' is aliased by two inputs")
        param = by_name[input_name]
        if graph.inputs[param].type != graph.outputs[out].type:
            raise IRError(f"inplace input {input_name!r} ({graph.inputs[param].type}) cannot alias output {out} "
                          f"({graph.outputs[out].type}): types differ")
        aliases[out] = param
    return aliases
