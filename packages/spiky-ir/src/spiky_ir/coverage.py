"""Which core ATen ops lower to spiky-ir: ``python -m spiky_ir.coverage [--missing-only]``.

Core ATen is the op set torch tags ``core`` (what ``core_aten_decompositions()`` decomposes
to); an op counts as lowered when :data:`spiky_ir.fx.LOWERINGS` has its overload.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Coverage:
    lowered: list[str]
    missing: list[str]
    extra: list[str]
    """Lowered overloads outside core ATen (non-core ops that appear in graphs, collectives)."""


def core_aten_overloads() -> list[str]:
    """Every ATen overload tagged ``core`` in the installed torch, by name."""
    import torch

    names: set[str] = set()
    for schema in torch._C._jit_get_all_schemas():
        if not schema.name.startswith("aten::"):
            continue
        packet = getattr(torch.ops.aten, schema.name.removeprefix("aten::"), None)
        if packet is None:
            continue
        overload = getattr(packet, schema.overload_name or "default", None)
        if overload is not None and torch.Tag.core in overload.tags:
            names.add(str(overload))
    return sorted(names)


def coverage() -> Coverage:
    from spiky_ir.fx import LOWERINGS, SYMBOLIC_OPS

    lowered_names = {str(t) for t in [*LOWERINGS, *SYMBOLIC_OPS] if hasattr(t, "tags")}
    core = core_aten_overloads()
    return Coverage(
        lowered=[n for n in core if n in lowered_names],
        missing=[n for n in core if n not in lowered_names],
        extra=sorted(lowered_names - set(core)),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spiky_ir.coverage", description=__doc__)
    parser.add_argument("--missing-only", action="store_true", help="list only the core ops that do not lower")
    args = parser.parse_args(argv)
    cov = coverage()
    out = sys.stdout
    if not args.missing_only:
        out.write(f"lowered core ATen ops ({len(cov.lowered)}):\n")
        out.writelines(f"  + {n}\n" for n in cov.lowered)
        out.write(f"lowered non-core ops ({len(cov.extra)}):\n")
        out.writelines(f"  + {n}\n" for n in cov.extra)
    out.write(f"core ATen ops without a lowering ({len(cov.missing)}):\n")
    out.writelines(f"  - {n}\n" for n in cov.missing)
    total = len(cov.lowered) + len(cov.missing)
    out.write(f"summary: {len(cov.lowered)}/{total} core ATen overloads lower "
              f"({100 * len(cov.lowered) / max(total, 1):.0f}%), plus {len(cov.extra)} non-core overloads\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
