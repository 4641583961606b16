"""Convolution: conv1d and conv2d (grouped cross-correlation, NC(H)(W) input, OI(H)(W) weight).

Both ops with all of their rules side by side: shape/dtype rule and numpy reference
(:func:`define_op`), HLO rule, padding rule, kernel-source rule. The numpy function
:func:`conv` serves the reference and is copied into kernel source.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from spiky_ir.dtypes import promote
from spiky_ir.errors import ShapeError
from spiky_ir.hlo import schema as s
from spiky_ir.hlo.builder import HloValue
from spiky_ir.hlo.rules import HloContext, hlo_rule, widen
from spiky_ir.ir import Node, Value
from spiky_ir.kernel_source import KernelEmitter, input_types, kernel_helper, kernel_rule, lit
from spiky_ir.padding import (
    Layout,
    PadContext,
    UnpaddableError,
    axis_factors,
    has_padded,
    pad_rule,
    padded_syms,
    single_padded,
)
from spiky_ir.registry import Array, attr_int, attr_ints, cast, define_op, dtype_of, static_dim
from spiky_ir.symbolic import Dim, dim_add, dim_floordiv
from spiky_ir.types import Attr, TensorType


def conv(x: Array, w: Array, stride: Sequence[int], pad_lo: Sequence[int], pad_hi: Sequence[int],
         dilation: Sequence[int], groups: int) -> Array:
    """N-d grouped cross-correlation (torch's convolution) by windowed tensor contraction."""
    nd = x.ndim - 2
    x = np.pad(x, [(0, 0), (0, 0), *zip(pad_lo, pad_hi, strict=True)])
    kernel = w.shape[2:]
    spans = [d * (k - 1) + 1 for d, k in zip(dilation, kernel, strict=True)]
    win = np.lib.stride_tricks.sliding_window_view(x, spans, axis=tuple(range(2, 2 + nd)))
    # win: N, C, *out_full, *spans → subsample outputs by stride and windows by dilation
    index = (slice(None), slice(None), *(slice(None, None, s) for s in stride),
             *(slice(None, None, d) for d in dilation))
    win = win[index]
    n, c = x.shape[:2]
    out_sp = win.shape[2:2 + nd]
    win = win.reshape(n, groups, c // groups, *out_sp, *kernel)
    wg = w.reshape(groups, w.shape[0] // groups, c // groups, *kernel)
    sp = "".join("hwd"[i] for i in range(nd))
    ks = "".join("klm"[i] for i in range(nd))
    out = np.einsum(f"ngc{sp}{ks},goc{ks}->ngo{sp}", win, wg, optimize=True)
    return out.reshape(n, w.shape[0], *out_sp)  # type: ignore[no-any-return]


def _define(nd: int) -> None:
    name = f"conv{nd}d"

    def shape_rule(types: Sequence[TensorType], attrs: Mapping[str, Attr]) -> list[TensorType]:
        x, w = types
        stride, dil = attr_ints(attrs, "stride"), attr_ints(attrs, "dilation")
        lo, hi, groups = attr_ints(attrs, "pad_lo"), attr_ints(attrs, "pad_hi"), attr_int(attrs, "groups")
        if x.rank != nd + 2 or w.rank != nd + 2:
            raise ShapeError(f"{name} needs rank-{nd + 2} input and weight, got {x} and {w}")
        if not len(stride) == len(dil) == len(lo) == len(hi) == nd:
            raise ShapeError(f"{name} needs {nd} entries in stride/dilation/pad_lo/pad_hi")
        c_in = static_dim(x.shape[1], f"{name} channels")
        if groups < 1 or c_in % groups or w.shape[1] != c_in // groups:
            raise ShapeError(f"{name}: input {x} with groups={groups} does not fit weight {w}")
        if isinstance(w.shape[0], int) and w.shape[0] % groups:
            raise ShapeError(f"{name}: {w.shape[0]} output channels not divisible by groups={groups}")
        spatial: list[Dim] = []
        for i in range(nd):
            k = static_dim(w.shape[2 + i], f"{name} kernel")
            span = dil[i] * (k - 1) + 1
            padded = dim_add(x.shape[2 + i], lo[i] + hi[i])
            if isinstance(padded, int):
                if padded < span:
                    raise ShapeError(f"{name}: kernel span {span} exceeds padded input {padded} in {x}")
                spatial.append((padded - span) // stride[i] + 1)
            else:
                spatial.append(dim_floordiv(dim_add(padded, stride[i] - span), stride[i]))
        return [TensorType((x.shape[0], w.shape[0], *spatial), promote(x.dtype, w.dtype))]

    def reference(xs: Sequence[Array], attrs: Mapping[str, Attr]) -> list[Array]:
        out = promote(dtype_of(xs[0]), dtype_of(xs[1]))
        return [cast(conv(cast(xs[0], widen(out)), cast(xs[1], widen(out)), attr_ints(attrs, "stride"),
                          attr_ints(attrs, "pad_lo"), attr_ints(attrs, "pad_hi"), attr_ints(attrs, "dilation"),
                          attr_int(attrs, "groups")), out)]

    define_op(name, "conv", 2,
              {"stride": "ints", "pad_lo": "ints", "pad_hi": "ints", "dilation": "ints", "groups": "int"},
              shape_rule, reference, f"grouped {nd}-d cross-correlation, NC{'HW'[:nd]} layout, weight OI{'HW'[:nd]}")


_define(1)
_define(2)


@hlo_rule("conv1d", "conv2d")
def _conv_hlo(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    """NC(H)(W) input, OI(H)(W) weight: one ``convolution`` with explicit window and dim numbers."""
    out, dims = ctx.result_type()
    b = ctx.b
    x, w = (b.convert(v, widen(out)) for v in xs)
    nd = x.rank - 2
    stride, dilation = ctx.ints("stride"), ctx.ints("dilation")
    lo, hi = ctx.ints("pad_lo"), ctx.ints("pad_hi")
    window = s.Window(dimensions=[
        s.WindowDimension(size=w.dims[2 + i], stride=stride[i], padding_low=lo[i], padding_high=hi[i],
                          window_dilation=dilation[i], base_dilation=1)
        for i in range(nd)
    ])
    spatial = list(range(2, 2 + nd))
    numbers = s.ConvolutionDimensionNumbers(
        input_batch_dimension=0, input_feature_dimension=1, input_spatial_dimensions=spatial,
        kernel_output_feature_dimension=0, kernel_input_feature_dimension=1, kernel_spatial_dimensions=spatial,
        output_batch_dimension=0, output_feature_dimension=1, output_spatial_dimensions=spatial,
    )
    y = b.op("convolution", [x, w], x.dtype, dims, window=window, convolution_dimension_numbers=numbers,
             feature_group_count=ctx.int_attr("groups"), batch_group_count=1)
    return [b.convert(y, out)]


@pad_rule("conv1d", "conv2d")
def _conv_pad(ctx: PadContext, node: Node, inputs: list[Value]) -> tuple[Sequence[Value], Sequence[Layout]]:
    """Convolution: padded batch passes through; a padded spatial axis (stride 1) is zeroed, as the
    real computation's own zero padding beyond the end."""
    x, w = inputs
    lx, lw = ctx.layout(x), ctx.layout(w)
    stride = attr_ints(node.attrs, "stride")
    bad = padded_syms(lx, ctx.padded, [1]) | padded_syms(lw, ctx.padded)
    spatial = [i for i in range(2, x.type.rank) if has_padded(lx[i], ctx.padded)]
    for i in spatial:
        if stride[i - 2] != 1 or not single_padded(lx[i], ctx.padded):
            bad |= padded_syms(lx, ctx.padded, [i])
    if bad:
        raise UnpaddableError(bad, f"{node.op} mixes a padded channel, weight, or strided spatial axis")
    outs = ctx.copy(node, [ctx.masked(x, spatial, 0), w])
    out = outs[0].type
    layout = (lx[0], (out.shape[1],), *(axis_factors(d, ctx.padded) for d in out.shape[2:]))
    return outs, [layout]


kernel_helper(conv)


@kernel_rule("conv1d", "conv2d")
def _conv_kernel(e: KernelEmitter, node: Node, args: list[str], attrs: Mapping[str, Attr]) -> str:
    out = node.output.type.dtype
    compute = widen(out)
    x, w = (e.cast(a, t, compute) for a, t in zip(args, input_types(node), strict=True))
    params = ", ".join(lit(attrs[k]) for k in ("stride", "pad_lo", "pad_hi", "dilation"))
    return e.cast(f"{e.function(conv)}({x}, {w}, {params}, {attrs['groups']})", compute, out)
