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

import functools
import hashlib
from pathlib import Path

from spiky_ir.hlo.emit import HloArtifact, emit_hlo
from spiky_ir.hlo.rules import HLO_RULES, RULES, HloContext, HloRule, hlo_rule, missing_rules
from spiky_ir.hlo.schema import HloModule
from spiky_ir.hlo.text import module_text
from spiky_ir.hlo.wire import WireError

__all__ = [
    "HLO_RULES", "RULES", "HloArtifact", "HloContext", "HloModule", "HloRule", "WireError", "emit_hlo",
    "emitter_digest", "hlo_rule", "missing_rules", "module_text",
]


@functools.cache
def emitter_digest() -> str:
    """A digest of the code that turns IR into HLO (this package and every op's rules in
    :mod:`spiky_ir.ops`): part of compile-cache keys, so that an entry built by an older HLO emitter
    (same IR text, other HLO) is not served after the emitter changed."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted([*root.joinpath("hlo").glob("*.py"), *root.joinpath("ops").glob("*.py")]):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]
