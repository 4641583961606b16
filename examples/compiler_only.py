"""spiky-ir on its own (no torch, no runtime): build, print, specialize, execute, emit HLO."""

from __future__ import annotations

import numpy as np

from spiky_ir import DType, Graph, TensorType, execute, specialize, verify
from spiky_ir.hlo import emit_hlo


def main() -> None:
    g = Graph(name="scaled_softmax")
    x = g.add_input("x", TensorType(("s0", 8), DType.float32))  # s0: a symbolic batch
    two = g.add_op("constant", [], {"value": 2.0, "dtype": DType.float32})
    g.set_outputs([g.add_op("softmax", [g.add_op("multiply", [x, two])], {"axis": 1})])
    verify(g)
    print(g)
    static = specialize(g, {"s0": 4})
    print(f"specialized input: {static.inputs[0].type}")
    (out,) = execute(static, [np.ones((4, 8), np.float32)])
    print(f"row sums: {out.sum(axis=1).round(6).tolist()}")
    artifact = emit_hlo(static, name="scaled_softmax")
    print(f"HLO module: {len(artifact.proto)} bytes, inputs {list(artifact.input_names)}, "
          f"outputs {list(artifact.output_names)}")


if __name__ == "__main__":
    main()
