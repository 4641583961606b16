"""The HLO text form of a module proto, in XLA's syntax (XLA's parser reads it back).

::

    HloModule kernel_ab12, entry_computation_layout={(f32[2,3]{1,0})->f32[2,3]{1,0}}

    ENTRY main {
      x.2 = f32[2,3]{1,0} parameter(0), frontend_attributes={neff_input_names="x"}
      exp.3 = f32[2,3]{1,0} exponential(x.2), metadata={op_type="exp" op_name="exp"}
      ROOT copy.4 = f32[2,3]{1,0} copy(exp.3), frontend_attributes={neff_output_names="output0"}
    }
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from spiky_ir.hlo import schema as s
from spiky_ir.hlo.builder import literal_values

_TYPE_NAMES = {
    s.PRED: "pred", s.S8: "s8", s.S16: "s16", s.S32: "s32", s.S64: "s64", s.U8: "u8", s.U16: "u16",
    s.U32: "u32", s.U64: "u64", s.F16: "f16", s.F32: "f32", s.F64: "f64", s.BF16: "bf16",
}


def shape_text(shape: s.Shape) -> str:
    if shape.element_type == s.TUPLE:
        return "(" + ", ".join(shape_text(t) for t in shape.tuple_shapes) + ")"
    text = f"{_TYPE_NAMES[shape.element_type]}[{','.join(map(str, shape.dimensions))}]"
    if shape.layout is not None and shape.dimensions:
        text += "{" + ",".join(map(str, shape.layout.minor_to_major)) + "}"
    return text


def _ints(values: list[int]) -> str:
    return "{" + ",".join(map(str, values)) + "}"


def _scalar(value: Any) -> str:
    if isinstance(value, np.bool_ | bool):
        return "true" if value else "false"
    if isinstance(value, np.integer):
        return str(int(value))
    f = float(value)
    if math.isnan(f):
        return "nan"
    if math.isinf(f):
        return "inf" if f > 0 else "-inf"
    return repr(f) if f != int(f) or abs(f) >= 1e16 else str(int(f))


def _literal_text(lit: s.Literal) -> str:
    values = literal_values(lit)
    if values.ndim == 0:
        return _scalar(values[()])

    def nest(a: np.ndarray[Any, Any]) -> str:
        if a.ndim == 1:
            return "{" + ", ".join(_scalar(v) for v in a) + "}"
        return "{" + ", ".join(nest(sub) for sub in a) + "}"

    return nest(values)


def _attrs_text(attrs: s.FrontendAttributes) -> str:
    return "{" + ",".join(f"{k}={json.dumps(v)}" for k, v in sorted(attrs.map.items())) + "}"


def _window_text(window: s.Window) -> str:
    dims = window.dimensions
    parts = [f"size={'x'.join(str(d.size) for d in dims)}"]
    if any(d.stride != 1 for d in dims):
        parts.append(f"stride={'x'.join(str(d.stride) for d in dims)}")
    if any(d.padding_low or d.padding_high for d in dims):
        parts.append("pad=" + "x".join(f"{d.padding_low}_{d.padding_high}" for d in dims))
    if any(d.base_dilation not in (0, 1) for d in dims):
        parts.append(f"lhs_dilate={'x'.join(str(d.base_dilation) for d in dims)}")
    if any(d.window_dilation not in (0, 1) for d in dims):
        parts.append(f"rhs_dilate={'x'.join(str(d.window_dilation) for d in dims)}")
    if any(d.window_reversal for d in dims):
        parts.append("rhs_reversal=" + "x".join("1" if d.window_reversal else "0" for d in dims))
    return "{" + " ".join(parts) + "}"


def _conv_labels(n: s.ConvolutionDimensionNumbers) -> str:
    def labels(rank: int, fixed: dict[int, str], spatial: list[int]) -> str:
        out = ["?"] * rank
        for dim, label in fixed.items():
            out[dim] = label
        for i, dim in enumerate(spatial):
            out[dim] = str(i)
        return "".join(out)

    rank = 2 + len(n.input_spatial_dimensions)
    lhs = labels(rank, {n.input_batch_dimension: "b", n.input_feature_dimension: "f"}, n.input_spatial_dimensions)
    rhs = labels(rank, {n.kernel_input_feature_dimension: "i", n.kernel_output_feature_dimension: "o"},
                 n.kernel_spatial_dimensions)
    out = labels(rank, {n.output_batch_dimension: "b", n.output_feature_dimension: "f"}, n.output_spatial_dimensions)
    return f"{lhs}_{rhs}->{out}"


def instruction_text(ins: s.Instruction, names: dict[int, str], computations: dict[int, str], root: bool) -> str:
    assert ins.shape is not None
    operands = ", ".join(names[i] for i in ins.operand_ids)
    if ins.opcode == "parameter":
        operands = str(ins.parameter_number)
    elif ins.opcode == "constant":
        assert ins.literal is not None
        operands = _literal_text(ins.literal)
    attrs: list[str] = []
    op = ins.opcode
    if op == "iota":
        attrs.append(f"iota_dimension={ins.dimensions[0]}")
    elif op == "get-tuple-element":
        attrs.append(f"index={ins.tuple_index}")
    elif ins.dimensions or op in ("broadcast", "transpose", "reduce"):
        attrs.append(f"dimensions={_ints(ins.dimensions)}")
    if ins.slice_dimensions:
        ranges = ", ".join(f"[{d.start}:{d.limit}:{d.stride or 1}]" for d in ins.slice_dimensions)
        attrs.append("slice={" + ranges + "}")
    if ins.dynamic_slice_sizes:
        attrs.append(f"dynamic_slice_sizes={_ints(ins.dynamic_slice_sizes)}")
    if ins.padding_config is not None:
        attrs.append("padding=" + "x".join(
            f"{d.edge_padding_low}_{d.edge_padding_high}" + (f"_{d.interior_padding}" if d.interior_padding else "")
            for d in ins.padding_config.dimensions))
    if ins.window is not None:
        attrs.append(f"window={_window_text(ins.window)}")
    if ins.convolution_dimension_numbers is not None:
        attrs.append(f"dim_labels={_conv_labels(ins.convolution_dimension_numbers)}")
    if ins.feature_group_count > 1:
        attrs.append(f"feature_group_count={ins.feature_group_count}")
    if ins.batch_group_count > 1:
        attrs.append(f"batch_group_count={ins.batch_group_count}")
    if ins.dot_dimension_numbers is not None:
        d = ins.dot_dimension_numbers
        for label, values in (("lhs_batch_dims", d.lhs_batch_dimensions),
                              ("lhs_contracting_dims", d.lhs_contracting_dimensions),
                              ("rhs_batch_dims", d.rhs_batch_dimensions),
                              ("rhs_contracting_dims", d.rhs_contracting_dimensions)):
            if values:
                attrs.append(f"{label}={_ints(values)}")
    if ins.gather_dimension_numbers is not None:
        g = ins.gather_dimension_numbers
        attrs += [f"offset_dims={_ints(g.offset_dims)}", f"collapsed_slice_dims={_ints(g.collapsed_slice_dims)}",
                  f"start_index_map={_ints(g.start_index_map)}", f"index_vector_dim={g.index_vector_dim}",
                  f"slice_sizes={_ints(ins.gather_slice_sizes)}"]
    if ins.scatter_dimension_numbers is not None:
        c = ins.scatter_dimension_numbers
        attrs += [f"update_window_dims={_ints(c.update_window_dims)}",
                  f"inserted_window_dims={_ints(c.inserted_window_dims)}",
                  f"scatter_dims_to_operand_dims={_ints(c.scatter_dims_to_operand_dims)}",
                  f"index_vector_dim={c.index_vector_dim}"]
    if ins.indices_are_sorted:
        attrs.append("indices_are_sorted=true")
    if ins.unique_indices:
        attrs.append("unique_indices=true")
    if ins.comparison_direction:
        attrs.append(f"direction={ins.comparison_direction}")
    if ins.comparison_type:
        attrs.append(f"type={ins.comparison_type}")
    if ins.is_stable:
        attrs.append("is_stable=true")
    if ins.channel_id:
        attrs.append(f"channel_id={ins.channel_id}")
    if ins.replica_groups:
        attrs.append("replica_groups={" + ",".join(_ints(g.replica_ids) for g in ins.replica_groups) + "}")
    if ins.use_global_device_ids:
        attrs.append("use_global_device_ids=true")
    if ins.called_computation_ids:
        label = "calls" if op == "call" else "to_apply"
        attrs.append(f"{label}=" + ", ".join(computations[c] for c in ins.called_computation_ids))
    if ins.custom_call_target:
        attrs.append(f"custom_call_target={json.dumps(ins.custom_call_target)}")
    if ins.frontend_attributes is not None and ins.frontend_attributes.map:
        attrs.append(f"frontend_attributes={_attrs_text(ins.frontend_attributes)}")
    if ins.metadata is not None:
        meta = [f"{k}={json.dumps(v)}" for k, v in (("op_type", ins.metadata.op_type),
                                                     ("op_name", ins.metadata.op_name)) if v]
        if meta:
            attrs.append("metadata={" + " ".join(meta) + "}")
    head = f"{'ROOT ' if root else ''}{ins.name} = {shape_text(ins.shape)} {op}({operands})"
    return ", ".join([head, *attrs])


def module_text(module: s.HloModule) -> str:
    """The text form of ``module`` (ends with a newline)."""
    names = {ins.id: ins.name for comp in module.computations for ins in comp.instructions}
    computations = {comp.id: comp.name for comp in module.computations}
    header = f"HloModule {module.name}"
    if module.input_output_alias is not None and module.input_output_alias.entries:
        entries = ", ".join(
            f"{_ints(e.output_shape_index)}: ({e.parameter_number}, {_ints(e.parameter_shape_index)}, "
            f"{'must-alias' if e.kind == s.MUST_ALIAS else 'may-alias'})"
            for e in module.input_output_alias.entries
        )
        header += ", input_output_alias={ " + entries + " }"
    ps = module.host_program_shape
    if ps is not None and ps.result is not None:
        params = ", ".join(shape_text(p) for p in ps.parameters)
        header += f", entry_computation_layout={{({params})->{shape_text(ps.result)}}}"
    lines = [header, ""]
    for comp in module.computations:
        entry = comp.id == module.entry_computation_id
        lines.append(f"{'ENTRY ' if entry else ''}{comp.name} {{")
        for ins in comp.instructions:
            lines.append("  " + instruction_text(ins, names, computations, ins.id == comp.root_id))
        lines += ["}", ""]
    return "\n".join(lines)
