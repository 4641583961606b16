"""Convolution: conv1d/2d/3d (grouped cross-correlation, NC(D)(H)W input, OI(D)(H)W weight) and the
transposed convolutions conv_transpose1d/2d/3d (IO(D)(H)W weight, as torch's).

Every op with all of its rules side by side: shape/dtype rule and numpy reference
(:func:`define_op`), HLO rule, padding rule, kernel-source rule. The numpy functions
:func:`conv` and :func:`conv_transpose` serve the references and are copied into kernel source.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import numpy as np

from spiky_ir.dtypes import promote
from spiky_ir.errors import ShapeError
from spiky_ir.hlo import schema as s
from spiky_ir.hlo.builder import ComputationBuilder as HloBuilder
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
from spiky_ir.plan import Kernel, as_type, plan_rule
from spiky_ir.registry import Array, attr_int, attr_ints, cast, define_op, dtype_of, static_dim
from spiky_ir.symbolic import Dim, dim_add, dim_floor, dim_mul
from spiky_ir.types import Attr, TensorType


def conv(x: Array, w: Array, stride: Sequence[int], pad_lo: Sequence[int], pad_hi: Sequence[int],
         dilation: Sequence[int], groups: int) -> Array:
    """N-d grouped cross-correlation (torch's convolution): im2col patches and one matmul per group."""
    x = np.pad(x, [(0, 0), (0, 0), *((max(lo, 0), max(hi, 0)) for lo, hi in zip(pad_lo, pad_hi, strict=True))])
    crop = (slice(None), slice(None), *(slice(max(-lo, 0), n - max(-hi, 0))  # negative padding crops
                                        for lo, hi, n in zip(pad_lo, pad_hi, x.shape[2:], strict=True)))
    x = np.ascontiguousarray(x[crop])
    n, c = x.shape[:2]
    c_g, kernel = c // groups, w.shape[2:]
    out_sp = tuple((size - d * (k - 1) - 1) // st + 1
                   for size, k, st, d in zip(x.shape[2:], kernel, stride, dilation, strict=True))
    # the windows as a view (n, group, channel in group, *kernel position, *output position), then
    # copied out as the patch matrix (n, group, channels x kernel positions, output positions)
    at = x.strides
    win = np.lib.stride_tricks.as_strided(
        x, (n, groups, c_g, *kernel, *out_sp),
        (at[0], at[1] * c_g, at[1], *(a * d for a, d in zip(at[2:], dilation, strict=True)),
         *(a * st for a, st in zip(at[2:], stride, strict=True))), writeable=False)
    patches = win.reshape(n, groups, c_g * int(np.prod(kernel)), int(np.prod(out_sp)))
    out = np.matmul(w.reshape(groups, w.shape[0] // groups, -1), patches)
    return out.reshape(n, w.shape[0], *out_sp)  # type: ignore[no-any-return]


def conv_transpose(x: Array, w: Array, stride: Sequence[int], pad_lo: Sequence[int], pad_hi: Sequence[int],
                   dilation: Sequence[int], groups: int) -> Array:
    """torch's conv_transpose; ``pad_lo``/``pad_hi`` crop the full result (negative: extend it)."""
    # The convolution it is the adjoint of: the input spread out by ``stride`` (zeros between
    # elements), the kernel flipped and its channels swapped within each group.
    nd = x.ndim - 2
    n, c_in = x.shape[:2]
    kernel = w.shape[2:]
    spread = np.zeros((n, c_in, *(max((d - 1) * st + 1, 0) for d, st in zip(x.shape[2:], stride, strict=True))),
                      x.dtype)
    every = (slice(None), slice(None), *(slice(None, None, st) for st in stride))
    spread[every] = x
    wg = np.swapaxes(w.reshape(groups, c_in // groups, w.shape[1], *kernel), 1, 2)
    flipped = np.flip(wg, axis=tuple(range(3, 3 + nd))).reshape(groups * w.shape[1], c_in // groups, *kernel)
    reach = [d * (k - 1) for d, k in zip(dilation, kernel, strict=True)]
    return conv(spread, flipped, (1,) * nd, [r - p for r, p in zip(reach, pad_lo, strict=True)],
                [r - p for r, p in zip(reach, pad_hi, strict=True)], dilation, groups)


_CONV_ATTRS = {"stride": "ints", "pad_lo": "ints", "pad_hi": "ints", "dilation": "ints", "groups": "int"}


def _spatial_letters(nd: int) -> str:
    return "DHW"[3 - nd:]


def _check_conv_attrs(name: str, nd: int, x: TensorType, w: TensorType, attrs: Mapping[str, Attr]) -> None:
    stride, dil = attr_ints(attrs, "stride"), attr_ints(attrs, "dilation")
    lo, hi = attr_ints(attrs, "pad_lo"), attr_ints(attrs, "pad_hi")
    if x.rank != nd + 2 or w.rank != nd + 2:
        raise ShapeError(f"{name} needs rank-{nd + 2} input and weight, got {x} and {w}")
    if not len(stride) == len(dil) == len(lo) == len(hi) == nd:
        raise ShapeError(f"{name} needs {nd} entries in stride/dilation/pad_lo/pad_hi")
    if min(stride + dil, default=1) < 1:
        raise ShapeError(f"{name} stride {stride} and dilation {dil} must be >= 1")


def _define(nd: int) -> None:
    name = f"conv{nd}d"

    def shape_rule(types: Sequence[TensorType], attrs: Mapping[str, Attr]) -> list[TensorType]:
        x, w = types
        _check_conv_attrs(name, nd, x, w, attrs)
        stride, dil = attr_ints(attrs, "stride"), attr_ints(attrs, "dilation")
        lo, hi, groups = attr_ints(attrs, "pad_lo"), attr_ints(attrs, "pad_hi"), attr_int(attrs, "groups")
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
                spatial.append(dim_floor(dim_add(padded, stride[i] - span), stride[i]))
        return [TensorType((x.shape[0], w.shape[0], *spatial), promote(x.dtype, w.dtype))]

    def reference(xs: Sequence[Array], attrs: Mapping[str, Attr]) -> list[Array]:
        out = promote(dtype_of(xs[0]), dtype_of(xs[1]))
        return [cast(conv(cast(xs[0], widen(out)), cast(xs[1], widen(out)), attr_ints(attrs, "stride"),
                          attr_ints(attrs, "pad_lo"), attr_ints(attrs, "pad_hi"), attr_ints(attrs, "dilation"),
                          attr_int(attrs, "groups")), out)]

    define_op(name, "conv", 2, _CONV_ATTRS, shape_rule, reference,
              f"grouped {nd}-d cross-correlation, NC{_spatial_letters(nd)} input, OI{_spatial_letters(nd)} weight")


def _define_transpose(nd: int) -> None:
    name = f"conv_transpose{nd}d"

    def shape_rule(types: Sequence[TensorType], attrs: Mapping[str, Attr]) -> list[TensorType]:
        x, w = types
        _check_conv_attrs(name, nd, x, w, attrs)
        stride, dil = attr_ints(attrs, "stride"), attr_ints(attrs, "dilation")
        lo, hi, groups = attr_ints(attrs, "pad_lo"), attr_ints(attrs, "pad_hi"), attr_int(attrs, "groups")
        c_in = static_dim(x.shape[1], f"{name} channels")
        if groups < 1 or c_in % groups or w.shape[0] != c_in:
            raise ShapeError(f"{name}: input {x} with groups={groups} does not fit weight {w} "
                             "(weight is (in channels, out channels / groups, *kernel))")
        spatial: list[Dim] = []
        for i in range(nd):
            k = static_dim(w.shape[2 + i], f"{name} kernel")
            # (in - 1) * stride + dilation * (k - 1) + 1, cropped by pad_lo + pad_hi
            size = dim_add(dim_mul(x.shape[2 + i], stride[i]), dil[i] * (k - 1) + 1 - stride[i] - lo[i] - hi[i])
            if isinstance(size, int) and size < 0:
                raise ShapeError(f"{name}: crops {lo[i]} + {hi[i]} exceed the output of {x} along spatial dim {i}")
            spatial.append(size)
        return [TensorType((x.shape[0], dim_mul(w.shape[1], groups), *spatial), promote(x.dtype, w.dtype))]

    def reference(xs: Sequence[Array], attrs: Mapping[str, Attr]) -> list[Array]:
        out = promote(dtype_of(xs[0]), dtype_of(xs[1]))
        return [cast(conv_transpose(cast(xs[0], widen(out)), cast(xs[1], widen(out)), attr_ints(attrs, "stride"),
                                    attr_ints(attrs, "pad_lo"), attr_ints(attrs, "pad_hi"),
                                    attr_ints(attrs, "dilation"), attr_int(attrs, "groups")), out)]

    define_op(name, "conv", 2, _CONV_ATTRS, shape_rule, reference,
              f"grouped {nd}-d transposed convolution (the adjoint of conv{nd}d), NC{_spatial_letters(nd)} "
              f"input, IO{_spatial_letters(nd)} weight; pad_lo/pad_hi crop the full result (negative: extend)")


def _conv_plan(node: Node) -> Kernel:
    """The reference with its casts, attributes and shapes decided from the node; a plain convolution
    makes the same numpy calls as :func:`conv` (same bits), with the padding written into a zeroed
    buffer and the window view built directly instead of through ``np.pad`` and ``as_strided``
    (~25 µs of Python a call, the whole cost of a small convolution)."""
    out = node.output.type.dtype
    compute, result = widen(out).to_numpy(), as_type(out.to_numpy())
    stride, dilation = attr_ints(node.attrs, "stride"), attr_ints(node.attrs, "dilation")
    lo, hi, groups = attr_ints(node.attrs, "pad_lo"), attr_ints(node.attrs, "pad_hi"), attr_int(node.attrs, "groups")
    if node.op.startswith("conv_transpose") or min(lo + hi, default=0) < 0:
        fn = conv_transpose if node.op.startswith("conv_transpose") else conv

        def general(xs: Sequence[Array], _attrs: Mapping[str, Attr]) -> list[Array]:
            x, w = (a.astype(compute, copy=False) for a in xs)
            return [result(fn(x, w, stride, lo, hi, dilation, groups))]

        return general
    x_shape, w_shape = node.inputs[0].type.static_shape(), node.inputs[1].type.static_shape()
    out_shape = node.output.type.static_shape()
    n, c = x_shape[:2]
    c_g, kernel, out_sp = c // groups, w_shape[2:], out_shape[2:]
    padded = (n, c, *(size + a + b for size, a, b in zip(x_shape[2:], lo, hi, strict=True)))
    interior = (slice(None), slice(None), *(slice(a, a + size) for a, size in zip(lo, x_shape[2:], strict=True)))
    item = np.dtype(compute).itemsize
    at = [item * math.prod(padded[i + 1:]) for i in range(len(padded))]  # C-contiguous strides
    window = ((n, groups, c_g, *kernel, *out_sp),
              (at[0], at[1] * c_g, at[1], *(a * d for a, d in zip(at[2:], dilation, strict=True)),
               *(a * st for a, st in zip(at[2:], stride, strict=True))))
    patches = (n, groups, c_g * math.prod(kernel), math.prod(out_sp))
    grouped = (groups, w_shape[0] // groups, c_g * math.prod(kernel))
    pads = any(lo) or any(hi)

    def kernel_fn(xs: Sequence[Array], _attrs: Mapping[str, Attr]) -> list[Array]:
        x, w = (a.astype(compute, copy=False) for a in xs)
        if pads:
            buffer = np.zeros(padded, compute)
            buffer[interior] = x
        else:
            buffer = np.ascontiguousarray(x)
        win = np.ndarray(window[0], compute, buffer=buffer, strides=window[1])
        return [result(np.matmul(w.reshape(grouped), win.reshape(patches)).reshape(out_shape))]

    return kernel_fn


for _nd in (1, 2, 3):
    plan_rule(f"conv{_nd}d", f"conv_transpose{_nd}d")(_conv_plan)
    _define(_nd)
    _define_transpose(_nd)
CONVS = tuple(f"conv{nd}d" for nd in (1, 2, 3))
CONV_AS_DOT_POSITIONS = 256
"""Plain convolutions with at most this many output positions (batch x spatial) are emitted as a ``dot``."""


def conv_as_dot(x: Sequence[int], w: Sequence[int], out: Sequence[int], groups: int) -> bool:
    """Whether the HLO rule emits a plain convolution as window slices and a ``dot`` (or, depthwise, a fused
    multiply-add) rather than one ``convolution``: where XLA:CPU's convolution is slow (measured per shape by
    tools/bench/bench_conv.py, docs/PERFORMANCE.md): grouped and depthwise convolutions, 1x1 kernels, and small
    maps (at most :data:`CONV_AS_DOT_POSITIONS` output positions). On large maps its convolution is faster than
    im2col, whose patch matrix is the kernel size times the input."""
    return groups > 1 or math.prod(w[2:]) == 1 or out[0] * math.prod(out[2:]) <= CONV_AS_DOT_POSITIONS
TRANSPOSED = tuple(f"conv_transpose{nd}d" for nd in (1, 2, 3))


def _window_slices(b: HloBuilder, x: HloValue, out_sp: Sequence[int], kernel: Sequence[int], stride: Sequence[int],
                   lo: Sequence[int], hi: Sequence[int], dilation: Sequence[int]) -> list[HloValue]:
    """The strided views of the zero-padded ``x`` (two leading non-spatial dims) that each kernel position reads:
    one ``(x0, x1, *out_sp)`` slice per position, in the weight's row-major kernel order."""
    nd = len(kernel)
    if any(lo) or any(hi):
        zero = b.constant(0, x.dtype)
        config = s.PaddingConfig(dimensions=[s.PaddingConfigDimension(edge_padding_low=0, edge_padding_high=0)] * 2 + [
            s.PaddingConfigDimension(edge_padding_low=lo[i], edge_padding_high=hi[i]) for i in range(nd)])
        padded = tuple(x.dims[2 + i] + lo[i] + hi[i] for i in range(nd))
        x = b.op("pad", [x, zero], x.dtype, (*x.dims[:2], *padded), padding_config=config)
    slices = []
    for position in itertools.product(*(range(k) for k in kernel)):
        start = [0, 0, *(p * d for p, d in zip(position, dilation, strict=True))]
        limit = [x.dims[0], x.dims[1], *(st + (o - 1) * sd + 1 for st, o, sd in zip(start[2:], out_sp, stride,
                                                                                      strict=True))]
        slices.append(b.slice(x, start, limit, [1, 1, *stride]))
    return slices


def _conv_as_dot(b: HloBuilder, x: HloValue, w: HloValue, dims: Sequence[int], stride: Sequence[int],
                 lo: Sequence[int], hi: Sequence[int], dilation: Sequence[int], groups: int) -> HloValue:
    """A plain grouped convolution as XLA:CPU runs fast: window slices and a ``dot`` (im2col), or a fused
    multiply-add over kernel positions when each group has one input channel (depthwise).

    XLA:CPU's own ``convolution`` is 2-30x slower than torch on small CNN shapes (a 3x3 conv
    over a 2x2 map with 512 channels took 140 ms instead of 5); its matrix multiply is not.
    """
    n, c = x.dims[:2]
    o, c_g = w.dims[:2]
    kernel, out_sp = w.dims[2:], tuple(dims[2:])
    kk, p = math.prod(kernel), math.prod(out_sp)
    o_g = o // groups
    if c_g == 1:  # depthwise: out[n, c, m] = sum over positions of x-window[n, c] * w[c, m, position]
        w3 = b.reshape(w, (c, o_g, kk))
        shape = (n, c, o_g, *out_sp)
        acc: HloValue | None = None
        for k, window in enumerate(_window_slices(b, x, out_sp, kernel, stride, lo, hi, dilation)):
            wk = b.reshape(b.slice(w3, [0, 0, k], [c, o_g, k + 1], [1, 1, 1]), (c, o_g))
            term = b.elementwise("multiply", [
                b.broadcast_in_dim(window, shape, [0, 1, *range(3, 3 + len(out_sp))]),
                b.broadcast_in_dim(wk, shape, [1, 2])])
            acc = term if acc is None else b.elementwise("add", [acc, term])
        assert acc is not None
        return b.reshape(acc, dims)
    # im2col with channels leading: [C, N, *sp] windows -> [G, Cg * KK, N * P] patches, one (batched) dot
    xt = b.transpose(x, [1, 0, *range(2, x.rank)])
    windows = [b.reshape(v, (groups, c_g, 1, n * p))
               for v in _window_slices(b, xt, out_sp, kernel, stride, lo, hi, dilation)]
    patches = windows[0] if kk == 1 else b.op("concatenate", windows, x.dtype, (groups, c_g, kk, n * p),
                                               dimensions=[2])
    patches = b.reshape(patches, (groups, c_g * kk, n * p))
    w3 = b.reshape(w, (groups, o_g, c_g * kk))
    if groups == 1:
        y = b.dot(b.reshape(w3, (o_g, c_g * kk)), b.reshape(patches, (c_g * kk, n * p)),
                  lhs_contracting=[1], rhs_contracting=[0])
    else:
        y = b.dot(w3, patches, lhs_contracting=[2], rhs_contracting=[1], lhs_batch=[0], rhs_batch=[0])
    y = b.transpose(b.reshape(y, (o, n, p)), [1, 0, 2])
    return b.reshape(y, dims)


@hlo_rule(*CONVS, *TRANSPOSED)
def _conv_hlo(ctx: HloContext, node: Node, xs: Sequence[HloValue]) -> list[HloValue]:
    """NC(D)(H)W input, OI(D)(H)W weight: one ``convolution`` with explicit window and dim numbers.

    A transposed convolution is the convolution of the input dilated by ``stride`` (the window's
    base dilation) with the kernel reversed and its channels swapped within each group, padded by
    ``dilation * (k - 1)`` less the crops (negative padding crops)."""
    out, dims = ctx.result_type()
    b = ctx.b
    x, w = (b.convert(v, widen(out)) for v in xs)
    nd = x.rank - 2
    stride, dilation = ctx.ints("stride"), ctx.ints("dilation")
    lo, hi = ctx.ints("pad_lo"), ctx.ints("pad_hi")
    window_stride, base = stride, (1,) * nd
    groups = ctx.int_attr("groups")
    if node.op in CONVS and conv_as_dot(x.dims, w.dims, dims, groups):
        return [b.convert(_conv_as_dot(b, x, w, dims, stride, lo, hi, dilation, groups), out)]
    if node.op in TRANSPOSED:
        kernel = w.dims[2:]
        c_in, c_out_g = w.dims[0], w.dims[1]
        grouped = b.reshape(w, (groups, c_in // groups, c_out_g, *kernel))
        swapped = b.transpose(grouped, [0, 2, 1, *range(3, 3 + nd)])
        w = b.reshape(swapped, (groups * c_out_g, c_in // groups, *kernel))
        w = b.op("reverse", [w], w.dtype, w.dims, dimensions=list(range(2, 2 + nd)))
        reach = [dilation[i] * (kernel[i] - 1) for i in range(nd)]
        lo = tuple(r - p for r, p in zip(reach, lo, strict=True))
        hi = tuple(r - p for r, p in zip(reach, hi, strict=True))
        # The input spread by the stride (zeros between elements) and padded (negative: cropped) in
        # one ``pad``: then a plain stride-1 convolution, which takes the fast form where that is
        # faster (the input gradient of every strided convolution in a training step lands here).
        spread = (*x.dims[:2], *(max((x.dims[2 + i] - 1) * stride[i] + 1, 0) + lo[i] + hi[i] for i in range(nd)))
        if min(spread[2:], default=1) > 0 and conv_as_dot(spread, w.dims, dims, groups):
            zero = b.constant(0, x.dtype)
            keep = [s.PaddingConfigDimension(edge_padding_low=0, edge_padding_high=0)] * 2
            config = s.PaddingConfig(dimensions=keep + [
                s.PaddingConfigDimension(edge_padding_low=lo[i], edge_padding_high=hi[i],
                                         interior_padding=stride[i] - 1) for i in range(nd)])
            spread_x = b.op("pad", [x, zero], x.dtype, spread, padding_config=config)
            ones, zeros = (1,) * nd, (0,) * nd
            return [b.convert(_conv_as_dot(b, spread_x, w, dims, ones, zeros, zeros, dilation, groups), out)]
        window_stride, base = (1,) * nd, stride
    window = s.Window(dimensions=[
        s.WindowDimension(size=w.dims[2 + i], stride=window_stride[i], padding_low=lo[i], padding_high=hi[i],
                          window_dilation=dilation[i], base_dilation=base[i])
        for i in range(nd)
    ])
    spatial = list(range(2, 2 + nd))
    numbers = s.ConvolutionDimensionNumbers(
        input_batch_dimension=0, input_feature_dimension=1, input_spatial_dimensions=spatial,
        kernel_output_feature_dimension=0, kernel_input_feature_dimension=1, kernel_spatial_dimensions=spatial,
        output_batch_dimension=0, output_feature_dimension=1, output_spatial_dimensions=spatial,
    )
    y = b.op("convolution", [x, w], x.dtype, dims, window=window, convolution_dimension_numbers=numbers,
             feature_group_count=groups, batch_group_count=1)
    return [b.convert(y, out)]


@pad_rule(*CONVS, *TRANSPOSED)
def _conv_pad(ctx: PadContext, node: Node, inputs: list[Value]) -> tuple[Sequence[Value], Sequence[Layout]]:
    """Convolution, plain or transposed: padded batch passes through; a padded spatial axis (stride
    1) is zeroed, as the real computation's own zero padding beyond the end: a real output reads
    real inputs and zeros only (the crops of a transposed convolution keep its real outputs a
    prefix of length real + constant)."""
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
kernel_helper(conv_transpose, deps=["conv"])


@kernel_rule(*CONVS, *TRANSPOSED)
def _conv_kernel(e: KernelEmitter, node: Node, args: list[str], attrs: Mapping[str, Attr]) -> str:
    out = node.output.type.dtype
    compute = widen(out)
    x, w = (e.cast(a, t, compute) for a, t in zip(args, input_types(node), strict=True))
    params = ", ".join(lit(attrs[k]) for k in ("stride", "pad_lo", "pad_hi", "dilation"))
    fn = e.helper("conv_transpose") if node.op in TRANSPOSED else e.function(conv)
    return e.cast(f"{fn}({x}, {w}, {params}, {attrs['groups']})", compute, out)
