"""The fake ``neuronx-cc`` of :func:`spiky.testing.fake_neuron`: an HLO module proto in, a fake NEFF out.

It takes the real compiler's command line (docs/neuron-interfaces.md)::

    neuronx-cc compile --framework XLA <dir>/model.hlo.pb --pipeline compile SaveTemps
        --target <trn1|trn2|inf2> --output <dir>/model.neff [extra args]

and writes a NEFF in the fake libnrt's format (:mod:`spiky.testing.fake_nrt.neff`) whose inputs
and outputs are what the real compiler would declare for the module:

- named by the parameters' ``neff_input_names`` and the root's ``neff_output_names`` attributes;
- typed with NRT dtype codes: ``bool`` travels as ``uint8``, ``bfloat16`` is 0x6, ``float16`` 0x7;
- 64-bit types narrowed as the real compiler does by default: ``float64`` to ``float32``, and
  ``int64`` to ``int32`` unless ``--native-int64=enabled`` (or ``--native-int64 enabled``) is given;
- zero-element outputs dropped.

The HLO module is embedded in the NEFF (member ``model.hlo.pb``), so the execute rule
(:class:`spiky.testing.XlaExecuteRule`) runs it on XLA:CPU. Each compile appends one JSON line
to the record file the generated script names (what :attr:`spiky.testing.FakeNeuron.neffs` reads).

The script :func:`spiky.testing.write_fake_neuronx_cc` writes imports this module without
running ``spiky/__init__.py`` (which imports torch), so a compile costs the start of a Python
process that imports numpy and spiky_ir only.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from spiky.testing.fake_nrt.neff import write_fake_neff
from spiky_ir.hlo import HloModule
from spiky_ir.hlo.schema import Shape

VERSION_TEXT = "NeuronX Compiler version 2.99.2.0+fake"
TARGETS = ("trn1", "trn2", "inf2")
COLLECTIVE_OPCODES = frozenset({"all-reduce", "all-gather", "reduce-scatter", "all-to-all"})

# xla.PrimitiveType -> dtype name (docs/neuron-interfaces.md); 13 (TUPLE) is not a tensor type.
PRIMITIVE_DTYPES: dict[int, str] = {
    1: "bool", 2: "int8", 3: "int16", 4: "int32", 5: "int64", 6: "uint8", 7: "uint16", 8: "uint32",
    9: "uint64", 10: "float16", 11: "float32", 12: "float64", 16: "bfloat16",
}  # fmt: skip
INT64_NARROWING = {"int64": "int32"}
"""What the compiler narrows unless ``--native-int64=enabled``."""
ALWAYS_NARROWED = {"float64": "float32"}
"""What it narrows always: NRT has no float64 dtype code."""

TensorIO = tuple[str, str, list[int]]
"""(NEFF name, dtype name, shape)."""


class CompileError(Exception):
    """A module or command line the fake compiler refuses (exit code 1, message on stderr)."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="neuronx-cc compile", add_help=False, allow_abbrev=False)
    parser.add_argument("model", help="the HLO module proto")
    parser.add_argument("--framework", required=True, choices=["XLA"])
    parser.add_argument("--pipeline", nargs="+", default=["compile"])
    parser.add_argument("--target", required=True, choices=TARGETS)
    parser.add_argument("--output", required=True)
    parser.add_argument("--native-int64", dest="native_int64", choices=["enabled", "disabled"], default="disabled")
    return parser


def _dtype(shape: Shape, what: str) -> str:
    try:
        return PRIMITIVE_DTYPES[shape.element_type]
    except KeyError:
        raise CompileError(f"{what} has element type {shape.element_type}, which no NEFF tensor can hold") from None


def _declared(dtype: str, native_int64: bool) -> str:
    if dtype == "bool":
        return "uint8"  # NRT has no boolean type
    if dtype in ALWAYS_NARROWED:
        return ALWAYS_NARROWED[dtype]
    if dtype in INT64_NARROWING and not native_int64:
        return INT64_NARROWING[dtype]
    return dtype


def module_io(module: HloModule, native_int64: bool) -> tuple[list[TensorIO], list[TensorIO], bool]:
    """The NEFF inputs and outputs the real compiler would declare, and whether it has collectives."""
    if not module.computations:
        raise CompileError(f"HLO module {module.name!r} has no computations")
    entry = module.computations[-1]
    if entry.name != "main" or module.entry_computation_name != "main":
        raise CompileError(f"HLO module {module.name!r}: the entry computation must be 'main' and come last, "
                           f"got {entry.name!r} (entry_computation_name {module.entry_computation_name!r})")
    shape = module.host_program_shape
    if shape is None or shape.result is None:
        raise CompileError(f"HLO module {module.name!r} has no host_program_shape")
    params = sorted((i for i in entry.instructions if i.opcode == "parameter"), key=lambda i: i.parameter_number)
    if len(params) != len(shape.parameters):
        raise CompileError(f"HLO module {module.name!r}: {len(params)} parameters, "
                           f"{len(shape.parameters)} in host_program_shape")
    inputs: list[TensorIO] = []
    for param, param_shape in zip(params, shape.parameters, strict=True):
        attrs = param.frontend_attributes.map if param.frontend_attributes is not None else {}
        name = attrs.get("neff_input_names")
        if not name:
            raise CompileError(f"parameter {param.parameter_number} ({param.name!r}) has no neff_input_names")
        dtype = _declared(_dtype(param_shape, f"input {name!r}"), native_int64)
        inputs.append((name, dtype, list(param_shape.dimensions)))
    root = next((i for i in entry.instructions if i.id == entry.root_id), None)
    if root is None:
        raise CompileError(f"HLO module {module.name!r}: no instruction with the root id {entry.root_id}")
    root_attrs = root.frontend_attributes.map if root.frontend_attributes is not None else {}
    if "neff_output_names" not in root_attrs:
        raise CompileError(f"the root {root.name!r} of {module.name!r} has no neff_output_names")
    out_names = root_attrs["neff_output_names"].split(",")
    results = shape.result.tuple_shapes if shape.result.element_type == 13 else [shape.result]
    if len(out_names) != len(results):
        raise CompileError(f"{len(out_names)} neff_output_names for {len(results)} results")
    outputs: list[TensorIO] = []
    for name, result in zip(out_names, results, strict=True):
        dtype = _declared(_dtype(result, f"output {name!r}"), native_int64)
        if all(d > 0 for d in result.dimensions):  # zero-element outputs are dropped
            outputs.append((name, dtype, list(result.dimensions)))
    collectives = any(i.opcode in COLLECTIVE_OPCODES for c in module.computations for i in c.instructions)
    return inputs, outputs, collectives


def compile_module(argv: Sequence[str], record: Path | None, out: TextIO) -> int:
    """``neuronx-cc compile ...``: returns the exit code."""
    args, extra = _parser().parse_known_args(list(argv))
    native = args.native_int64 == "enabled"
    proto = Path(args.model).read_bytes()
    module = HloModule.decode(proto)
    inputs, outputs, collectives = module_io(module, native)
    print(f"Parsed HLO module {module.name}: {len(inputs)} inputs, {len(outputs)} outputs", file=out, flush=True)
    neff = Path(args.output)
    write_fake_neff(neff, inputs, outputs, module.name, collectives=collectives,
                    extra_members={"model.hlo.pb": proto})
    if record is not None:
        line = json.dumps({"neff": str(neff.resolve()), "neff_id": module.name, "target": args.target,
                           "args": list(argv), "extra_args": extra, "native_int64": native,
                           "inputs": inputs, "outputs": outputs, "collectives": collectives})
        with record.open("a") as f:
            f.write(line + "\n")
    print("Compiler status PASS", file=out, flush=True)
    return 0


def main(argv: Sequence[str], record: str | None = None) -> int:
    """The fake compiler's entry point: ``--version`` or ``compile ...``."""
    if list(argv) == ["--version"]:
        print(VERSION_TEXT)
        return 0
    if not argv or argv[0] != "compile":
        print(f"ERROR: unknown command {' '.join(argv)!r}; the fake neuronx-cc knows 'compile' and '--version'",
              file=sys.stderr)
        return 2
    try:
        return compile_module(argv[1:], Path(record) if record else None, sys.stdout)
    except CompileError as exc:
        print(f"ERROR: {exc}", file=sys.stderr, flush=True)
        return 1
