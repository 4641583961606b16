"""The module layout of spiky_ir: no import cycles, lazy imports inside functions included.

The checker (:mod:`spiky_ir.import_graph`) is tested on small synthetic packages first, so a
green run on spiky_ir means something.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import spiky_ir
from spiky_ir.import_graph import format_cycle, import_cycle, import_graph

pytestmark = pytest.mark.smoke

SRC = Path(spiky_ir.__file__).parents[1]


def _package(root: Path, files: dict[str, str]) -> Path:
    """Write ``files`` (relative path → source) under ``root``; returns ``root``."""
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_spiky_ir_has_no_import_cycle() -> None:
    graph = import_graph(SRC, "spiky_ir")
    assert {"spiky_ir", "spiky_ir.ir", "spiky_ir.registry", "spiky_ir.ops.nn", "spiky_ir.hlo.rules"} <= set(graph)
    cycle = import_cycle(graph)
    assert cycle is None, f"import cycle: {format_cycle(cycle)}"


def test_ir_registry_and_text_do_not_import_each_other_in_a_circle() -> None:
    graph = import_graph(SRC, "spiky_ir")
    assert graph["spiky_ir.types"] <= {"spiky_ir.dtypes", "spiky_ir.errors", "spiky_ir.symbolic"}
    assert "spiky_ir.ir" not in graph["spiky_ir.registry"] and "spiky_ir.text" not in graph["spiky_ir.ir"]


def test_consumers_import_the_registry_not_the_op_families() -> None:
    graph = import_graph(SRC, "spiky_ir")
    families = {m for m in graph if m.startswith("spiky_ir.ops")}
    for consumer in ("spiky_ir.hlo.rules", "spiky_ir.hlo.emit", "spiky_ir.padding", "spiky_ir.kernel_source",
                     "spiky_ir.plan", "spiky_ir.reference", "spiky_ir.verify", "spiky_ir.fx"):
        assert not graph[consumer] & families, f"{consumer} imports {sorted(graph[consumer] & families)}"
    assert "spiky_ir.ops" in graph["spiky_ir"]  # importing spiky_ir registers every op


def test_a_lazy_import_inside_a_function_is_a_cycle(tmp_path: Path) -> None:
    _package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from pkg.b import g\n\ndef f():\n    return g()\n",
        "pkg/b.py": "def g():\n    from pkg.a import f\n    return f\n",
    })
    cycle = import_cycle(import_graph(tmp_path, "pkg"))
    assert cycle == ["pkg.a", "pkg.b", "pkg.a"]
    assert format_cycle(cycle) == "pkg.a -> pkg.b -> pkg.a"


def test_importing_a_module_runs_the_package_inits_on_its_path(tmp_path: Path) -> None:
    # pkg.hlo.rules imports pkg.ops.x: that runs pkg/ops/__init__, which imports every family,
    # one of which imports pkg.hlo.rules back.
    _package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/ops/__init__.py": "from pkg.ops import fam\n",
        "pkg/ops/fam.py": "from pkg.hlo.rules import register\n",
        "pkg/ops/x.py": "X = 1\n",
        "pkg/hlo/__init__.py": "",
        "pkg/hlo/rules.py": "from pkg.ops.x import X\n\ndef register():\n    pass\n",
    })
    cycle = import_cycle(import_graph(tmp_path, "pkg"))
    assert cycle is not None and "pkg.ops" in cycle and "pkg.hlo.rules" in cycle, cycle


def test_sibling_imports_do_not_go_through_the_parent_init(tmp_path: Path) -> None:
    # The parent package is initialised before its submodules run: no edge back to it ...
    _package(tmp_path, {
        "pkg/__init__.py": "from pkg.a import A\nfrom pkg import b\n",
        "pkg/a.py": "from pkg.b import B\nfrom . import c\nA = B\n",
        "pkg/b.py": "import pkg.c\nB = 1\n",
        "pkg/c.py": "import os\n",
    })
    graph = import_graph(tmp_path, "pkg")
    assert graph == {"pkg": {"pkg.a", "pkg.b"}, "pkg.a": {"pkg.b", "pkg.c"}, "pkg.b": {"pkg.c"}, "pkg.c": set()}
    assert import_cycle(graph) is None
    # ... but taking names from the parent while it initialises is a cycle.
    (tmp_path / "pkg/c.py").write_text("from pkg import A\n")
    assert import_cycle(import_graph(tmp_path, "pkg")) == ["pkg", "pkg.a", "pkg.b", "pkg.c", "pkg"]


def test_not_a_package_says_what_to_pass(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"is not a package \(no __init__.py\); pass the directory"):
        import_graph(tmp_path, "missing")


def test_the_old_layout_had_the_cycle_this_test_guards_against(tmp_path: Path) -> None:
    # ir.Graph.add_node imported get_op from ops inside the function, and ops imported ir at the top.
    _package(tmp_path, {
        "old/__init__.py": "",
        "old/ir.py": "class Graph:\n    def add_node(self):\n        from old.ops import get_op\n"
                     "        return get_op\n",
        "old/ops.py": "from old.ir import Graph\n\ndef get_op():\n    return Graph\n",
    })
    assert import_cycle(import_graph(tmp_path, "old")) == ["old.ir", "old.ops", "old.ir"]
