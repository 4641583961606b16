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

FX lowering lives in :mod:`spiky_ir.fx` and needs torch.
"""

from spiky_ir.dtypes import DType, promote
from spiky_ir.errors import IRError, LoweringError, ShapeError, SpikyError
from spiky_ir.ir import Attr, Dim, Graph, Node, TensorType, Value
from spiky_ir.ops import OpDef, all_ops, broadcast_shapes, get_op, register_op
from spiky_ir.reference import execute
from spiky_ir.text import TEXT_VERSION, print_graph
from spiky_ir.verify import verify

__version__ = "0.1.0"

__all__ = [
    "Attr", "DType", "Dim", "Graph", "IRError", "LoweringError", "Node", "OpDef",
    "ShapeError", "SpikyError", "TEXT_VERSION", "TensorType", "Value", "__version__",
    "all_ops", "broadcast_shapes", "execute", "get_op", "print_graph", "promote",
    "register_op", "verify",
]
