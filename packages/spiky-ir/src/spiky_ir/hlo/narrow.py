"""Narrowing 64-bit integers in an emitted HLO module to 32 bits, as ``neuronx-cc`` does by default.

Without ``--native-int64=enabled`` the Neuron compiler computes every ``s64`` of a module in
``s32`` and declares ``s64`` inputs and outputs of the NEFF as ``int32``. The neuron target
hands it a module that says so itself: :func:`narrow_int64` retypes every ``s64`` in the module
(instruction shapes, tuple elements, literals, sub-computations such as reducers and sort
comparators, program shapes) to ``s32``. Working on the emitted module rather than the IR reaches
the ``s64`` values that HLO rules create on their own (index normalisation, the iotas of
``argmax`` and ``sort``, dynamic-slice starts), so the module holds no ``s64`` at all and runs the
same way on XLA:CPU (the fake Neuron stack) as on a NeuronCore.

>>> from spiky_ir import DType, Graph, TensorType
>>> from spiky_ir.hlo import emit_hlo
>>> g = Graph()
>>> x = g.add_input("x", TensorType((4, 8), DType.float32))
>>> g.set_outputs([g.add_op("argmax", [x], {"axis": 1, "keepdims": False})])
>>> narrowed = narrow_int64(emit_hlo(g))
>>> "s64" in narrowed.text, narrowed.module.host_program_shape.result.element_type == s.S32
(False, True)

Literals keep their values where int32 holds them and saturate otherwise (a ``-2**63`` initial
value of a ``max`` reduction becomes ``-2**31``, which plays the same part). Arithmetic whose
results leave the int32 range wraps, as on the hardware; nothing here can check it.
"""

from __future__ import annotations

import copy

from spiky_ir.hlo import schema as s
from spiky_ir.hlo.emit import HloArtifact

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def _shape(shape: s.Shape | None) -> None:
    if shape is None:
        return
    if shape.element_type == s.S64:
        shape.element_type = s.S32
    for element in shape.tuple_shapes:
        _shape(element)


def _literal(lit: s.Literal | None) -> None:
    if lit is None or lit.shape is None:
        return
    if lit.shape.element_type == s.S64:
        lit.s32s = [min(max(int(v), INT32_MIN), INT32_MAX) for v in lit.s64s]
        lit.s64s = []
    _shape(lit.shape)


def _program_shape(program: s.ProgramShape | None) -> None:
    if program is None:
        return
    for param in program.parameters:
        _shape(param)
    _shape(program.result)


def narrow_int64(artifact: HloArtifact) -> HloArtifact:
    """A copy of ``artifact`` with every ``s64`` of its module as ``s32`` (see the module doc)."""
    module = copy.deepcopy(artifact.module)
    for computation in module.computations:
        _program_shape(computation.program_shape)
        for instruction in computation.instructions:
            _shape(instruction.shape)
            _literal(instruction.literal)
    _program_shape(module.host_program_shape)
    return HloArtifact(module, artifact.input_names, artifact.output_names, dict(artifact.aliases))


def has_int64(artifact: HloArtifact) -> bool:
    """Whether any instruction or program shape of the module is (or holds) an ``s64``."""

    def any_s64(shape: s.Shape | None) -> bool:
        return shape is not None and (shape.element_type == s.S64 or any(any_s64(t) for t in shape.tuple_shapes))

    module = artifact.module
    programs = [module.host_program_shape, *(c.program_shape for c in module.computations)]
    if any(p is not None and (any(any_s64(q) for q in p.parameters) or any_s64(p.result)) for p in programs):
        return True
    return any(any_s64(i.shape) or (i.literal is not None and any_s64(i.literal.shape))
               for c in module.computations for i in c.instructions)
