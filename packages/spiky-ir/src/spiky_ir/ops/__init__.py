"""Every NKIPy op, one module per op family; importing this package registers them all.

Each family module holds, op by op and side by side, the op's shape/dtype rule and numpy
reference (in the :class:`~spiky_ir.registry.OpDef`, with the ATen overloads that lower
onto it one to one), its HLO rule, padding rule and kernel-source rule, each registered into
the table its consumer owns (:mod:`spiky_ir.hlo.rules`, :mod:`spiky_ir.padding`,
:mod:`spiky_ir.kernel_source`). Adding an op touches one module: see ``docs/adding-an-op.md``.

================  ===============================================================================
module            ops
================  ===============================================================================
``elementwise``   unary and binary elementwise ops, one line each
``creation``      constant, dim_value, full, zeros, iota, arange, tril, triu
``transform``     astype, transpose, reshape, broadcast_to, expand_dims, squeeze, concatenate,
                  split, slice, pad, flip, roll, repeat, tile
``reduce``        sum, prod, max, min, any, all, mean, var, logsumexp, cumsum, cumprod, argmax,
                  argmin
``linalg``        matmul, dot
``index``         where, take, take_along_axis, scatter, scatter_add, dynamic_slice,
                  dynamic_update_slice
``nn``            softmax, sort, topk
``conv``          conv1d, conv2d, conv3d, conv_transpose1d, conv_transpose2d, conv_transpose3d
``collective``    all_reduce, all_gather, reduce_scatter, broadcast, all_to_all
================  ===============================================================================

The registry itself (:class:`OpDef`, :func:`get_op`, ...) lives in :mod:`spiky_ir.registry`,
outside this package, so that consumers import it without importing every family; the names
are re-exported here for ``from spiky_ir.ops import get_op``.
"""

from spiky_ir.ops import collective, conv, creation, elementwise, index, linalg, nn, reduce, transform
from spiky_ir.registry import OpDef, all_ops, aten_overloads, broadcast_shapes, get_op, register_op

__all__ = [
    "OpDef", "all_ops", "aten_overloads", "broadcast_shapes", "collective", "conv", "creation", "elementwise",
    "get_op", "index", "linalg", "nn", "reduce", "register_op", "transform",
]
