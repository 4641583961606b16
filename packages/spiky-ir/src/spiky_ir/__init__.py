"""spiky-ir: the NKIPy IR, its passes, emitters and numpy reference executor.

Usable on its own, without torch or the runtime::

    import numpy as np
    from spiky_ir import DType, Graph, TensorType, execute, verify

    g = Graph()
    x = g.add_input("x", TensorType((2, 3), DType.float32))
    g.set_outputs([g.add_op("tanh", [x])])
    verify(g)
    print(g)                                    # the text form
    execute(g, [np.ones((2, 3), np.float32)])   # numpy reference semantics

Symbolic dims (``TensorType(("s0", 4), ...)``) make one graph describe a family of
sizes; ``specialize(g, {"s0": 64})`` binds them. ``parse_graph(print_graph(g))``
round-trips; ``optimize`` runs the passes; ``kernel_source`` emits NKIPy/numpy source.

FX lowering lives in :mod:`spiky_ir.fx` and needs torch.
"""

from spiky_ir import ops  # registers every op (and its HLO, padding and kernel-source rules)
from spiky_ir.dtypes import DType, promote
from spiky_ir.errors import IRError, LoweringError, ShapeError, SpikyError
from spiky_ir.ir import Graph, Node, Value
from spiky_ir.kernel_source import kernel_source
from spiky_ir.passes import PassManager, cse, dce, fold_constants, optimize
from spiky_ir.plan import Plan, compile_plan
from spiky_ir.reference import execute
from spiky_ir.registry import OpDef, all_ops, aten_overloads, broadcast_shapes, get_op, register_op
from spiky_ir.specialize import bindings_for, graph_symbols, specialize
from spiky_ir.symbolic import Dim, dim_add, dim_eval, dim_mul
from spiky_ir.text import TEXT_VERSION, parse_graph, print_graph
from spiky_ir.types import Attr, TensorType
from spiky_ir.verify import verify

__version__ = "0.1.0"

__all__ = [
    "Attr", "DType", "Dim", "Graph", "IRError", "LoweringError", "Node", "OpDef", "PassManager", "Plan",
    "ShapeError", "SpikyError", "TEXT_VERSION", "TensorType", "Value", "__version__",
    "all_ops", "aten_overloads", "bindings_for", "broadcast_shapes", "compile_plan", "cse", "dce", "dim_add",
    "dim_eval", "dim_mul",
    "execute", "fold_constants", "get_op", "graph_symbols", "kernel_source", "ops", "optimize",
    "parse_graph", "print_graph", "promote", "register_op", "specialize", "verify",
]
