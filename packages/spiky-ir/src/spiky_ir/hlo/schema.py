"""The ``xla.HloModuleProto`` subset we write, as :class:`~spiky_ir.hlo.wire.Message` dataclasses.

Field numbers and types follow OpenXLA's ``xla/service/hlo.proto`` and ``xla/xla_data.proto``
(the repository's ``docs/neuron-interfaces.md`` lists the conventions): they are the wire
format and must match exactly. Class names drop the ``Proto`` suffix. Fields we never write
are left out; readers skip them.
"""

# pb() returns a dataclasses.field (with the proto field number in its metadata), which
# RUF009 cannot see.
# ruff: noqa: RUF009
from __future__ import annotations

from dataclasses import dataclass

from spiky_ir.hlo.wire import Message, pb

# xla.PrimitiveType
PRED, S8, S16, S32, S64, U8, U16, U32, U64, F16, F32, F64, TUPLE, BF16 = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 16
)
# xla.Kind (input/output aliasing)
MAY_ALIAS, MUST_ALIAS = 1, 2


@dataclass
class Layout(Message):
    minor_to_major: list[int] = pb(1, "int64", repeated=True)


@dataclass
class Shape(Message):
    element_type: int = pb(2, "enum", 0)
    dimensions: list[int] = pb(3, "int64", repeated=True)
    tuple_shapes: list[Shape] = pb(4, "message", repeated=True, message="Shape")
    layout: Layout | None = pb(5, "message", message="Layout")
    is_dynamic_dimension: list[bool] = pb(6, "bool", repeated=True)


@dataclass
class ProgramShape(Message):
    parameters: list[Shape] = pb(1, "message", repeated=True, message="Shape")
    result: Shape | None = pb(2, "message", message="Shape")
    parameter_names: list[str] = pb(3, "string", repeated=True)


@dataclass
class OpMetadata(Message):
    op_type: str = pb(1, "string", "")
    op_name: str = pb(2, "string", "")
    source_file: str = pb(3, "string", "")
    source_line: int = pb(4, "int32", 0)


@dataclass
class FrontendAttributes(Message):
    map: dict[str, str] = pb(1, "map")


@dataclass
class ReplicaGroup(Message):
    replica_ids: list[int] = pb(1, "int64", repeated=True)


@dataclass
class DotDimensionNumbers(Message):
    lhs_contracting_dimensions: list[int] = pb(1, "int64", repeated=True)
    rhs_contracting_dimensions: list[int] = pb(2, "int64", repeated=True)
    lhs_batch_dimensions: list[int] = pb(3, "int64", repeated=True)
    rhs_batch_dimensions: list[int] = pb(4, "int64", repeated=True)


@dataclass
class ConvolutionDimensionNumbers(Message):
    kernel_input_feature_dimension: int = pb(3, "int64", 0)
    kernel_output_feature_dimension: int = pb(4, "int64", 0)
    kernel_spatial_dimensions: list[int] = pb(6, "int64", repeated=True)
    input_batch_dimension: int = pb(7, "int64", 0)
    input_feature_dimension: int = pb(8, "int64", 0)
    output_batch_dimension: int = pb(9, "int64", 0)
    output_feature_dimension: int = pb(10, "int64", 0)
    input_spatial_dimensions: list[int] = pb(11, "int64", repeated=True)
    output_spatial_dimensions: list[int] = pb(12, "int64", repeated=True)


@dataclass
class GatherDimensionNumbers(Message):
    offset_dims: list[int] = pb(1, "int64", repeated=True)
    collapsed_slice_dims: list[int] = pb(2, "int64", repeated=True)
    start_index_map: list[int] = pb(3, "int64", repeated=True)
    index_vector_dim: int = pb(4, "int64", 0)


@dataclass
class ScatterDimensionNumbers(Message):
    update_window_dims: list[int] = pb(1, "int64", repeated=True)
    inserted_window_dims: list[int] = pb(2, "int64", repeated=True)
    scatter_dims_to_operand_dims: list[int] = pb(3, "int64", repeated=True)
    index_vector_dim: int = pb(4, "int64", 0)


@dataclass
class WindowDimension(Message):
    size: int = pb(1, "int64", 0)
    stride: int = pb(2, "int64", 0)
    padding_low: int = pb(3, "int64", 0)
    padding_high: int = pb(4, "int64", 0)
    window_dilation: int = pb(5, "int64", 0)
    base_dilation: int = pb(6, "int64", 0)
    window_reversal: bool = pb(7, "bool", False)


@dataclass
class Window(Message):
    dimensions: list[WindowDimension] = pb(1, "message", repeated=True, message="WindowDimension")


@dataclass
class PaddingConfigDimension(Message):
    edge_padding_low: int = pb(1, "int64", 0)
    edge_padding_high: int = pb(2, "int64", 0)
    interior_padding: int = pb(3, "int64", 0)


@dataclass
class PaddingConfig(Message):
    dimensions: list[PaddingConfigDimension] = pb(1, "message", repeated=True, message="PaddingConfigDimension")


@dataclass
class SliceDimensions(Message):
    start: int = pb(1, "int64", 0)
    limit: int = pb(2, "int64", 0)
    stride: int = pb(3, "int64", 0)


@dataclass
class Literal(Message):
    shape: Shape | None = pb(1, "message", message="Shape")
    preds: list[bool] = pb(2, "bool", repeated=True)
    u8s: bytes = pb(3, "bytes", b"")
    s32s: list[int] = pb(4, "int32", repeated=True)
    s64s: list[int] = pb(5, "int64", repeated=True)
    u32s: list[int] = pb(6, "uint64", repeated=True)
    u64s: list[int] = pb(7, "uint64", repeated=True)
    f32s: list[float] = pb(8, "float", repeated=True)
    f64s: list[float] = pb(9, "double", repeated=True)
    f16s: bytes = pb(11, "bytes", b"")
    bf16s: bytes = pb(13, "bytes", b"")
    s8s: bytes = pb(15, "bytes", b"")
    u16s: bytes = pb(16, "bytes", b"")
    s16s: bytes = pb(17, "bytes", b"")


@dataclass
class OutputOperandAliasing(Message):
    output_shape_index: list[int] = pb(1, "int64", repeated=True)
    operand_index: int = pb(2, "int64", 0)
    operand_shape_index: list[int] = pb(3, "int64", repeated=True)


@dataclass
class Instruction(Message):
    """``xla.HloInstructionProto``."""

    name: str = pb(1, "string", "")
    opcode: str = pb(2, "string", "")
    shape: Shape | None = pb(3, "message", message="Shape")
    metadata: OpMetadata | None = pb(7, "message", message="OpMetadata")
    literal: Literal | None = pb(8, "message", message="Literal")
    parameter_number: int = pb(9, "int64", 0)
    tuple_index: int = pb(13, "int64", 0)
    dimensions: list[int] = pb(14, "int64", repeated=True)
    window: Window | None = pb(15, "message", message="Window")
    convolution_dimension_numbers: ConvolutionDimensionNumbers | None = pb(
        16, "message", message="ConvolutionDimensionNumbers"
    )
    slice_dimensions: list[SliceDimensions] = pb(17, "message", repeated=True, message="SliceDimensions")
    dynamic_slice_sizes: list[int] = pb(20, "int64", repeated=True)
    padding_config: PaddingConfig | None = pb(21, "message", message="PaddingConfig")
    epsilon: float = pb(24, "float", 0.0)
    feature_index: int = pb(25, "int64", 0)
    channel_id: int = pb(26, "int64", 0)
    custom_call_target: str = pb(28, "string", "")
    dot_dimension_numbers: DotDimensionNumbers | None = pb(30, "message", message="DotDimensionNumbers")
    gather_dimension_numbers: GatherDimensionNumbers | None = pb(33, "message", message="GatherDimensionNumbers")
    gather_slice_sizes: list[int] = pb(34, "int64", repeated=True)
    id: int = pb(35, "int64", 0)
    operand_ids: list[int] = pb(36, "int64", repeated=True)
    called_computation_ids: list[int] = pb(38, "int64", repeated=True)
    backend_config: bytes = pb(43, "bytes", b"")
    scatter_dimension_numbers: ScatterDimensionNumbers | None = pb(
        48, "message", message="ScatterDimensionNumbers"
    )
    replica_groups: list[ReplicaGroup] = pb(49, "message", repeated=True, message="ReplicaGroup")
    feature_group_count: int = pb(50, "int64", 0)
    batch_group_count: int = pb(58, "int64", 0)
    is_stable: bool = pb(60, "bool", False)
    comparison_direction: str = pb(63, "string", "")
    indices_are_sorted: bool = pb(67, "bool", False)
    frontend_attributes: FrontendAttributes | None = pb(68, "message", message="FrontendAttributes")
    unique_indices: bool = pb(69, "bool", False)
    use_global_device_ids: bool = pb(71, "bool", False)
    comparison_type: str = pb(72, "string", "")
    output_operand_aliasing: list[OutputOperandAliasing] = pb(
        74, "message", repeated=True, message="OutputOperandAliasing"
    )
    k: int = pb(81, "int64", 0)
    largest: bool = pb(85, "bool", False)


@dataclass
class Computation(Message):
    """``xla.HloComputationProto``."""

    name: str = pb(1, "string", "")
    instructions: list[Instruction] = pb(2, "message", repeated=True, message="Instruction")
    program_shape: ProgramShape | None = pb(4, "message", message="ProgramShape")
    id: int = pb(5, "int64", 0)
    root_id: int = pb(6, "int64", 0)


@dataclass
class AliasEntry(Message):
    """``xla.HloInputOutputAliasProto.AliasEntryProto``."""

    output_shape_index: list[int] = pb(1, "int64", repeated=True)
    parameter_number: int = pb(2, "int64", 0)
    parameter_shape_index: list[int] = pb(3, "int64", repeated=True)
    kind: int = pb(4, "enum", 0)


@dataclass
class InputOutputAlias(Message):
    entries: list[AliasEntry] = pb(1, "message", repeated=True, message="AliasEntry")


@dataclass
class HloModule(Message):
    """``xla.HloModuleProto``: what ``neuronx-cc compile --framework XLA`` reads."""

    name: str = pb(1, "string", "")
    entry_computation_name: str = pb(2, "string", "")
    computations: list[Computation] = pb(3, "message", repeated=True, message="Computation")
    host_program_shape: ProgramShape | None = pb(4, "message", message="ProgramShape")
    id: int = pb(5, "int64", 0)
    entry_computation_id: int = pb(6, "int64", 0)
    input_output_alias: InputOutputAlias | None = pb(8, "message", message="InputOutputAlias")
    frontend_attributes: FrontendAttributes | None = pb(19, "message", message="FrontendAttributes")
