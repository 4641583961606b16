"""The import graph of a Python package, read from its source with :mod:`ast`, and its cycles.

Every import statement counts, those inside functions too (a lazy import hides a cycle
from Python, not from a reader). An import of ``a.b.c`` is an edge to ``a.b.c`` and to the
package ``__init__`` modules importing it runs (``a``, ``a.b``), except the packages that
contain the importing module: Python has initialised those before it runs the module.
Taking names from a package (``from a import f``) is an edge to that package's
``__init__`` even when it contains the importer, since that is exactly the import that fails
while the package is still initialising. Imports of modules outside the package are ignored.

>>> from pathlib import Path
>>> import spiky_ir
>>> src = Path(spiky_ir.__file__).parents[1]
>>> import_cycle(import_graph(src, "spiky_ir")) is None
True

Usable on any package: ``import_cycle(import_graph(Path("packages/spiky-torch/src"), "spiky"))``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

__all__ = ["format_cycle", "import_cycle", "import_graph"]


def _modules(src: Path, package: str) -> dict[str, Path]:
    """Dotted module name → file, for every ``.py`` file of ``package`` under ``src``."""
    root = src / package.replace(".", "/")
    if not (root / "__init__.py").is_file():
        raise FileNotFoundError(f"{root} is not a package (no __init__.py); pass the directory that holds it")
    modules: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _prefixes(name: str) -> list[str]:
    """``a.b.c`` → ``[a, a.b]``: the packages importing ``a.b.c`` runs first."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _targets(module: str, is_package: bool, node: ast.Import | ast.ImportFrom,
             known: Mapping[str, Path]) -> set[str]:
    """The modules of the package that one import statement in ``module`` runs or reads."""
    explicit: set[str] = set()
    run: set[str] = set()
    if isinstance(node, ast.Import):
        for alias in node.names:
            explicit.add(alias.name)
            run.update(_prefixes(alias.name))
    else:
        if node.level:
            here = module.split(".") if is_package else module.split(".")[:-1]
            here = here[: len(here) - (node.level - 1)]
            base = ".".join([*here, node.module] if node.module else here)
        else:
            base = node.module or ""
        run.update(_prefixes(base))
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            if submodule in known:
                explicit.add(submodule)
                run.add(base)
            else:
                explicit.add(base)
    containing = {*_prefixes(module), module}
    return {t for t in explicit | (run - containing) if t in known and t != module}


def import_graph(src: Path, package: str) -> dict[str, set[str]]:
    """Module → the modules of ``package`` it imports (see the module doc for what counts).

    ``src`` is the directory holding the package (``packages/spiky-ir/src`` for ``spiky_ir``).
    """
    modules = _modules(src, package)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        edges: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                edges |= _targets(name, path.name == "__init__.py", node, modules)
        graph[name] = edges
    return graph


def import_cycle(graph: Mapping[str, Iterable[str]]) -> list[str] | None:
    """One import cycle ``[a, b, ..., a]`` of ``graph``, or None when it has none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        path.append(name)
        for target in sorted(graph.get(name, ())):
            if state.get(target) == 1:
                return [*path[path.index(target):], target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        path.pop()
        state[name] = 2
        return None

    for name in sorted(graph):
        if name not in state:
            found = visit(name)
            if found:
                return found
    return None


def format_cycle(cycle: list[str]) -> str:
    return " -> ".join(cycle)
