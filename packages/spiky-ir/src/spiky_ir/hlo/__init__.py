"""HLO emission: IR graph → serialized ``xla.HloModuleProto`` (+ text form) for ``neuronx-cc``.

::

    from spiky_ir.hlo import emit_hlo
    art = emit_hlo(graph, name="kernel_ab12")   # static shapes
    art.proto          # bytes: what `neuronx-cc compile --framework XLA` reads
    art.text           # the HLO text form, for dumps
    art.input_names, art.output_names            # NEFF I/O names

Layout: ``wire.py`` (proto3 codec), ``schema.py`` (the HloModuleProto subset), ``builder.py``
(instructions, ids, reducers, collectives), ``rules.py`` (the rule table this package owns, with
:class:`HloContext` and the helpers rules share; each op's rule is written next to the op in
:mod:`spiky_ir.ops` and registered with :func:`hlo_rule`), ``emit.py`` (module conventions),
``text.py`` (text form) and ``xla_cpu.py`` (compiles and runs a module on XLA:CPU via jaxlib: the
host target's ``xla`` executor and the tests' check of emitted HLO).
"""

from spiky_ir.hlo.emit import HloArtifact, emit_hlo
from spiky_ir.hlo.rules import HLO_RULES, RULES, HloContext, HloRule, hlo_rule, missing_rules
from spiky_ir.hlo.schema import HloModule
from spiky_ir.hlo.text import module_text
from spiky_ir.hlo.wire import WireError

__all__ = [
    "HLO_RULES", "RULES", "HloArtifact", "HloContext", "HloModule", "HloRule", "WireError", "emit_hlo", "hlo_rule",
    "missing_rules", "module_text",
]
