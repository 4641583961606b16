"""Building HLO computations: typed instruction handles, module-wide ids, reducers, collectives.

:class:`ModuleBuilder` owns the id counter (one counter for instructions and computations,
so every id is unique module-wide) and the reducer computations, which it places before the
entry computation. :class:`ComputationBuilder` appends instructions; each method takes and
returns :class:`HloValue` handles carrying the IR dtype and static dims, and checks what
XLA's verifier would check (operand counts, shapes) so mistakes fail here, by name.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from spiky_ir.dtypes import DType
from spiky_ir.errors import IRError
from spiky_ir.hlo import schema as s

PRIMITIVE_TYPE: dict[DType, int] = {
    DType.bool: s.PRED, DType.int8: s.S8, DType.int16: s.S16, DType.int32: s.S32,
    DType.int64: s.S64, DType.uint8: s.U8, DType.float16: s.F16, DType.bfloat16: s.BF16,
    DType.float32: s.F32, DType.float64: s.F64,
}
DTYPE_OF: dict[int, DType] = {v: k for k, v in PRIMITIVE_TYPE.items()}

REDUCER_OPCODES = {
    "add": "add", "mul": "multiply", "max": "maximum", "min": "minimum", "and": "and", "or": "or",
    "replace": "",
}
"""Reducer kinds (as in ``all_reduce(kind=...)``) → the binary opcode of their computation."""


def array_shape(dtype: DType, dims: Sequence[int]) -> s.Shape:
    """A row-major array shape (``minor_to_major = [rank-1, ..., 0]``)."""
    return s.Shape(
        element_type=PRIMITIVE_TYPE[dtype],
        dimensions=list(dims),
        layout=s.Layout(minor_to_major=list(reversed(range(len(dims))))),
    )


def tuple_shape(shapes: Sequence[s.Shape]) -> s.Shape:
    return s.Shape(element_type=s.TUPLE, tuple_shapes=list(shapes))


@dataclass(frozen=True)
class HloValue:
    """A handle on an instruction's result (an array; tuples only as the root)."""

    instruction: s.Instruction

    @property
    def id(self) -> int:
        return self.instruction.id

    @property
    def shape(self) -> s.Shape:
        assert self.instruction.shape is not None
        return self.instruction.shape

    @property
    def dtype(self) -> DType:
        element_type = self.shape.element_type
        if element_type not in DTYPE_OF:
            raise IRError(f"HLO value {self.instruction.name} is a tuple, not an array")
        return DTYPE_OF[element_type]

    @property
    def dims(self) -> tuple[int, ...]:
        return tuple(self.shape.dimensions)

    @property
    def rank(self) -> int:
        return len(self.shape.dimensions)


def literal(values: Any, dtype: DType, dims: Sequence[int] = ()) -> s.Literal:
    """A literal holding ``values`` (a scalar or array-like) converted to ``dtype``, row-major."""
    array = np.asarray(values).astype(dtype.to_numpy()).reshape(tuple(dims))
    flat = array.reshape(-1)
    lit = s.Literal(shape=array_shape(dtype, dims))
    if dtype is DType.bool:
        lit.preds = [bool(v) for v in flat]
    elif dtype is DType.int32:
        lit.s32s = [int(v) for v in flat]
    elif dtype is DType.int64:
        lit.s64s = [int(v) for v in flat]
    elif dtype is DType.float32:
        lit.f32s = [float(v) for v in flat]
    elif dtype is DType.float64:
        lit.f64s = [float(v) for v in flat]
    else:
        # Narrow types travel as little-endian bytes.
        raw = flat.astype(flat.dtype.newbyteorder("<"), copy=False).tobytes()
        field = {DType.int8: "s8s", DType.uint8: "u8s", DType.int16: "s16s",
                 DType.float16: "f16s", DType.bfloat16: "bf16s"}[dtype]
        setattr(lit, field, raw)
    return lit


def literal_values(lit: s.Literal) -> np.ndarray[Any, Any]:
    """The literal's contents as a numpy array (for the text form and for tests)."""
    assert lit.shape is not None
    dtype = DTYPE_OF[lit.shape.element_type]
    dims = tuple(lit.shape.dimensions)
    np_dtype = dtype.to_numpy()
    if dtype is DType.bool:
        flat: Any = lit.preds
    elif dtype is DType.int32:
        flat = lit.s32s
    elif dtype is DType.int64:
        flat = lit.s64s
    elif dtype is DType.float32:
        flat = [struct.unpack("<f", struct.pack("<f", v))[0] for v in lit.f32s]
    elif dtype is DType.float64:
        flat = lit.f64s
    else:
        field = {DType.int8: "s8s", DType.uint8: "u8s", DType.int16: "s16s",
                 DType.float16: "f16s", DType.bfloat16: "bf16s"}[dtype]
        return np.frombuffer(getattr(lit, field), dtype=np_dtype.newbyteorder("<")).astype(np_dtype).reshape(dims)
    return np.asarray(flat, dtype=np_dtype).reshape(dims)


class ModuleBuilder:
    """Ids, reducer computations and the finished computations of one module."""

    def __init__(self) -> None:
        self._next_id = 1
        self.reducers: list[s.Computation] = []
        """Sub-computations (reducers, comparators), placed before the entry computation."""
        self._reducer_by_key: dict[tuple[str, DType], s.Computation] = {}
        self.extra_computations: dict[tuple[str, DType], s.Computation] = {}
        """Other memoised sub-computations (arg-reducers), by the rule that built them."""

    def new_id(self) -> int:
        value = self._next_id
        self._next_id += 1
        return value

    def reducer(self, kind: str, dtype: DType) -> s.Computation:
        """The scalar reducer computation ``(a, b) -> a <kind> b`` for ``dtype`` (built once)."""
        if kind not in REDUCER_OPCODES:
            raise IRError(f"unknown reducer kind {kind!r}; valid: {', '.join(REDUCER_OPCODES)}")
        key = (kind, dtype)
        if key not in self._reducer_by_key:
            comp = ComputationBuilder(self, f"{kind}_{dtype.value}")
            a = comp.parameter(0, dtype, (), "lhs")
            b = comp.parameter(1, dtype, (), "rhs")
            opcode = REDUCER_OPCODES[kind]
            if dtype is DType.bool and opcode in ("add", "maximum"):
                opcode = "or"
            elif dtype is DType.bool and opcode in ("multiply", "minimum"):
                opcode = "and"
            # "replace" (scatter's overwrite) keeps the update: the root is the second parameter.
            built = comp.finish(comp.op(opcode, [a, b], dtype, ()) if opcode else b)
            self.reducers.append(built)
            self._reducer_by_key[key] = built
        return self._reducer_by_key[key]


class ComputationBuilder:
    """Appends instructions to one computation."""

    def __init__(self, module: ModuleBuilder, name: str) -> None:
        self.module = module
        self.name = name
        self.id = module.new_id()
        self.instructions: list[s.Instruction] = []
        self.parameters: list[HloValue] = []
        self.parameter_names: list[str] = []
        self.metadata: s.OpMetadata | None = None
        """Attached to every instruction added while set (the IR node being emitted)."""

    # -- generic ---------------------------------------------------------------------------

    def add(
        self, opcode: str, operands: Sequence[HloValue], shape: s.Shape, hint: str = "", **fields: Any,
    ) -> HloValue:
        """Append an instruction; ``fields`` are :class:`~spiky_ir.hlo.schema.Instruction` fields."""
        ident = self.module.new_id()
        base = "".join(c if c.isalnum() or c in "_-" else "_" for c in (hint or opcode))
        instruction = s.Instruction(
            name=f"{base}.{ident}",
            opcode=opcode,
            shape=shape,
            id=ident,
            operand_ids=[v.id for v in operands],
            metadata=self.metadata,
            **fields,
        )
        self.instructions.append(instruction)
        return HloValue(instruction)

    def op(
        self, opcode: str, operands: Sequence[HloValue], dtype: DType, dims: Sequence[int], **fields: Any,
    ) -> HloValue:
        """An instruction with an array result of ``dtype[dims]``."""
        return self.add(opcode, operands, array_shape(dtype, dims), **fields)

    def finish(self, root: HloValue) -> s.Computation:
        result = root.shape
        return s.Computation(
            name=self.name,
            instructions=list(self.instructions),
            program_shape=s.ProgramShape(
                parameters=[p.shape for p in self.parameters],
                result=result,
                parameter_names=list(self.parameter_names),
            ),
            id=self.id,
            root_id=root.id,
        )

    # -- leaves ----------------------------------------------------------------------------

    def parameter(
        self, number: int, dtype: DType, dims: Sequence[int], name: str,
        frontend_attributes: Mapping[str, str] | None = None,
    ) -> HloValue:
        if number != len(self.parameters):
            raise IRError(
                f"parameters of {self.name} must be added in order: got #{number}, expected #{len(self.parameters)}"
            )
        attrs = s.FrontendAttributes(map=dict(frontend_attributes)) if frontend_attributes else None
        value = self.add("parameter", [], array_shape(dtype, dims), name, parameter_number=number,
                         frontend_attributes=attrs)
        self.parameters.append(value)
        self.parameter_names.append(name)
        return value

    def constant(self, values: Any, dtype: DType, dims: Sequence[int] = ()) -> HloValue:
        return self.add("constant", [], array_shape(dtype, dims), literal=literal(values, dtype, dims))

    def full(self, value: Any, dtype: DType, dims: Sequence[int]) -> HloValue:
        """A scalar constant broadcast to ``dims``."""
        return self.broadcast_to(self.constant(value, dtype), dims)

    def iota(self, dtype: DType, dims: Sequence[int], dimension: int) -> HloValue:
        return self.op("iota", [], dtype, dims, dimensions=[dimension])

    # -- element type and shape ------------------------------------------------------------

    def convert(self, value: HloValue, dtype: DType) -> HloValue:
        if value.dtype is dtype:
            return value
        return self.op("convert", [value], dtype, value.dims)

    def reshape(self, value: HloValue, dims: Sequence[int]) -> HloValue:
        if tuple(dims) == value.dims:
            return value
        if math.prod(dims) != math.prod(value.dims):
            raise IRError(f"HLO reshape of {value.dims} to {tuple(dims)} changes the element count")
        return self.op("reshape", [value], value.dtype, dims)

    def transpose(self, value: HloValue, permutation: Sequence[int]) -> HloValue:
        if list(permutation) == list(range(value.rank)):
            return value
        dims = [value.dims[p] for p in permutation]
        return self.op("transpose", [value], value.dtype, dims, dimensions=list(permutation))

    def broadcast_in_dim(self, value: HloValue, dims: Sequence[int], mapping: Sequence[int]) -> HloValue:
        """HLO ``broadcast``: operand dim i becomes result dim ``mapping[i]`` (sizes must be equal)."""
        for i, target in enumerate(mapping):
            if value.dims[i] != dims[target]:
                raise IRError(f"HLO broadcast of {value.dims} to {tuple(dims)}: dim {i} maps to a dim of another size")
        if tuple(dims) == value.dims:
            return value
        return self.op("broadcast", [value], value.dtype, dims, dimensions=list(mapping))

    def broadcast_to(self, value: HloValue, dims: Sequence[int]) -> HloValue:
        """NumPy broadcasting of ``value`` to ``dims``: size-1 dims are reshaped away, then broadcast."""
        dims = tuple(dims)
        if value.dims == dims:
            return value
        offset = len(dims) - value.rank
        if offset < 0:
            raise IRError(f"cannot broadcast HLO value of shape {value.dims} to lower rank {dims}")
        kept = [i for i, d in enumerate(value.dims) if d == dims[offset + i]]
        for i, d in enumerate(value.dims):
            if d != dims[offset + i] and d != 1:
                raise IRError(f"cannot broadcast HLO value of shape {value.dims} to {dims}")
        squeezed = self.reshape(value, [value.dims[i] for i in kept])
        return self.broadcast_in_dim(squeezed, dims, [offset + i for i in kept])

    def coerce(self, value: HloValue, dtype: DType, dims: Sequence[int]) -> HloValue:
        """Explicit promotion then broadcasting: what IR ops do implicitly."""
        return self.broadcast_to(self.convert(value, dtype), dims)

    # -- compute ---------------------------------------------------------------------------

    def elementwise(self, opcode: str, operands: Sequence[HloValue]) -> HloValue:
        first = operands[0]
        for other in operands[1:]:
            if other.dims != first.dims or other.dtype is not first.dtype:
                raise IRError(f"HLO {opcode} operands differ: {first.dtype.value}{list(first.dims)} vs "
                              f"{other.dtype.value}{list(other.dims)}; coerce them first")
        return self.op(opcode, operands, first.dtype, first.dims)

    def compare(self, direction: str, a: HloValue, b: HloValue) -> HloValue:
        if direction not in ("EQ", "NE", "LT", "LE", "GT", "GE"):
            raise IRError(f"unknown comparison direction {direction!r}")
        if a.dims != b.dims or a.dtype is not b.dtype:
            raise IRError(f"HLO compare operands differ: {a.dims} {a.dtype} vs {b.dims} {b.dtype}")
        return self.op("compare", [a, b], DType.bool, a.dims, comparison_direction=direction)

    def select(self, pred: HloValue, on_true: HloValue, on_false: HloValue) -> HloValue:
        return self.op("select", [pred, on_true, on_false], on_true.dtype, on_true.dims)

    def dot(
        self, a: HloValue, b: HloValue, *, lhs_contracting: Sequence[int], rhs_contracting: Sequence[int],
        lhs_batch: Sequence[int] = (), rhs_batch: Sequence[int] = (),
    ) -> HloValue:
        """HLO ``dot``; the result dims are batch, lhs free, rhs free (XLA's order)."""
        batch = [a.dims[d] for d in lhs_batch]
        lhs_free = [a.dims[d] for d in range(a.rank) if d not in lhs_batch and d not in lhs_contracting]
        rhs_free = [b.dims[d] for d in range(b.rank) if d not in rhs_batch and d not in rhs_contracting]
        numbers = s.DotDimensionNumbers(
            lhs_contracting_dimensions=list(lhs_contracting), rhs_contracting_dimensions=list(rhs_contracting),
            lhs_batch_dimensions=list(lhs_batch), rhs_batch_dimensions=list(rhs_batch),
        )
        return self.op("dot", [a, b], a.dtype, batch + lhs_free + rhs_free, dot_dimension_numbers=numbers)

    def reduce(self, value: HloValue, init: HloValue, axes: Sequence[int], kind: str) -> HloValue:
        """HLO ``reduce`` over ``axes`` with a scalar reducer computation."""
        reducer = self.module.reducer(kind, value.dtype)
        dims = [d for i, d in enumerate(value.dims) if i not in axes]
        return self.op("reduce", [value, init], value.dtype, dims, dimensions=sorted(axes),
                       called_computation_ids=[reducer.id])

    def slice(self, value: HloValue, start: Sequence[int], limit: Sequence[int], stride: Sequence[int]) -> HloValue:
        dims = [-(-(hi - lo) // st) for lo, hi, st in zip(start, limit, stride, strict=True)]
        if list(start) == [0] * value.rank and list(limit) == list(value.dims) and set(stride) <= {1}:
            return value
        slices = [s.SliceDimensions(start=lo, limit=hi, stride=st)
                  for lo, hi, st in zip(start, limit, stride, strict=True)]
        return self.op("slice", [value], value.dtype, dims, slice_dimensions=slices)

    def get_tuple_element(self, value: HloValue, index: int) -> HloValue:
        return self.add("get-tuple-element", [value], value.shape.tuple_shapes[index], tuple_index=index)

    def copy(self, value: HloValue, frontend_attributes: Mapping[str, str] | None = None) -> HloValue:
        attrs = s.FrontendAttributes(map=dict(frontend_attributes)) if frontend_attributes else None
        return self.add("copy", [value], value.shape, frontend_attributes=attrs)

    def tuple(self, values: Sequence[HloValue], frontend_attributes: Mapping[str, str] | None = None) -> HloValue:
        attrs = s.FrontendAttributes(map=dict(frontend_attributes)) if frontend_attributes else None
        return self.add("tuple", values, tuple_shape([v.shape for v in values]), frontend_attributes=attrs)

    # -- collectives -----------------------------------------------------------------------

    def all_reduce(self, value: HloValue, kind: str, replica_groups: Sequence[Sequence[int]]) -> HloValue:
        reducer = self.module.reducer(kind, value.dtype)
        return self.op("all-reduce", [value], value.dtype, value.dims, called_computation_ids=[reducer.id],
                       replica_groups=_groups(replica_groups))

    def all_gather(self, value: HloValue, dimension: int, replica_groups: Sequence[Sequence[int]]) -> HloValue:
        size = _group_size(replica_groups)
        dims = list(value.dims)
        dims[dimension] *= size
        return self.op("all-gather", [value], value.dtype, dims, dimensions=[dimension],
                       replica_groups=_groups(replica_groups))

    def reduce_scatter(
        self, value: HloValue, kind: str, dimension: int, replica_groups: Sequence[Sequence[int]],
    ) -> HloValue:
        size = _group_size(replica_groups)
        if value.dims[dimension] % size:
            raise IRError(f"reduce-scatter of dim {dimension} (size {value.dims[dimension]}) over groups of {size}")
        dims = list(value.dims)
        dims[dimension] //= size
        reducer = self.module.reducer(kind, value.dtype)
        return self.op("reduce-scatter", [value], value.dtype, dims, dimensions=[dimension],
                       called_computation_ids=[reducer.id], replica_groups=_groups(replica_groups))

    def all_to_all(self, value: HloValue, dimension: int, replica_groups: Sequence[Sequence[int]]) -> HloValue:
        """Array all-to-all: ``dimension`` is split across the group and concatenated back in rank order."""
        size = _group_size(replica_groups)
        if value.dims[dimension] % size:
            raise IRError(f"all-to-all of dim {dimension} (size {value.dims[dimension]}) over groups of {size}")
        return self.op("all-to-all", [value], value.dtype, value.dims, dimensions=[dimension],
                       replica_groups=_groups(replica_groups))


def _groups(replica_groups: Sequence[Sequence[int]]) -> list[s.ReplicaGroup]:
    return [s.ReplicaGroup(replica_ids=list(group)) for group in replica_groups]


def _group_size(replica_groups: Sequence[Sequence[int]]) -> int:
    sizes = {len(group) for group in replica_groups}
    if len(sizes) != 1 or 0 in sizes:
        raise IRError(f"replica groups {list(map(list, replica_groups))} must be non-empty and of equal size")
    return sizes.pop()
