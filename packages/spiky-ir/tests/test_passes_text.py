"""Text parser errors, symbolic dims + specialize, the passes and the pass manager's dumps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from spiky_ir import (
    DType,
    Graph,
    IRError,
    PassManager,
    ShapeError,
    TensorType,
    cse,
    dce,
    execute,
    fold_constants,
    parse_graph,
    print_graph,
    specialize,
)
from spiky_ir.kernel_source import kernel_source, run_kernel
from spiky_ir.symbolic import canonical, dim_eval, dim_floordiv, dim_mul, dim_sub

pytestmark = pytest.mark.smoke
F32 = DType.float32


def _symbolic_graph() -> Graph:
    g = Graph(name="family")
    x = g.add_input("x", TensorType(("s0", 4), F32))
    flat = g.add_op("reshape", [x], {"shape": ("4*s0",)})
    both = g.add_op("concatenate", [flat, flat], {"axis": 0})
    half = g.add_op("slice", [both], {"start": (1,), "stop": ("8*s0",), "step": (1,)})
    g.set_outputs([g.add_op("multiply", [half, g.add_op("constant", [], {"value": 0.5, "dtype": F32})])])
    return g


@pytest.mark.parametrize(
    ("expr", "expected"),
    [("s0*2", "2*s0"), ("s1+s0", "s0+s1"), ("3", 3), ("s0-s0", 0), ("(s0+1)*(s0-1)", "s0*s0-1"),
     ("2*s0*s1", "2*s0*s1")],
)
def test_dims_are_canonical(expr: str, expected: object) -> None:
    assert canonical(expr) == expected


def test_dim_arithmetic() -> None:
    assert dim_mul("s0", 4) == "4*s0" and dim_sub("8*s0", 1) == "8*s0-1"
    assert dim_eval("8*s0-1", {"s0": 3}) == 23 and dim_floordiv("4*s0", 2) == "2*s0"
    with pytest.raises(ShapeError, match=r"cannot divide symbolic dim '3\*s0' by 2 exactly"):
        dim_floordiv("3*s0", 2)
    with pytest.raises(ShapeError, match=r"unexpected '/2'; dims are integer polynomials"):
        canonical("s0/2")


def test_symbolic_graph_types_and_specialize() -> None:
    g = _symbolic_graph()
    assert [str(v.type) for v in g.outputs] == ["f32[8*s0-1]"]
    static = specialize(g, {"s0": 64})
    assert [str(v.type) for v in static.outputs] == ["f32[511]"] and all(v.type.is_static for v in static.inputs)
    assert [v.name for v in static.inputs] == ["x"] and [n.op for n in static.nodes] == [n.op for n in g.nodes]
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    (out,) = execute(g, [a])  # binds s0=3 from the input shape
    np.testing.assert_array_equal(out, np.concatenate([a.ravel(), a.ravel()])[1:] * 0.5)
    with pytest.raises(IRError, match=r"symbol 's0' must be bound to a non-negative int"):
        specialize(g, {"s0": -1})


def test_parse_round_trips_symbolic_and_attrs() -> None:
    g = _symbolic_graph()
    extra = g.add_op("pad", [g.outputs[0]], {"lo": (2,), "hi": (0,), "value": float("-inf")})
    g.set_outputs([extra, g.add_op("argmax", [extra], {"axis": 0, "keepdims": True})])
    text = print_graph(g)
    assert "value=-inf" in text and "f32[8*s0+1]" in text
    assert print_graph(parse_graph(text)) == text


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace("spiky-ir v1", "spiky-ir v0"), r"expected 'spiky-ir v1'.*re-dump"),
        (lambda t: t.replace("multiply(%slice, %constant)", "multiply(%slice, %nowhere)"),
         r"line 7: operand %nowhere of multiply is not defined above"),
        (lambda t: t.replace(": f32[8*s0-1]\n  return", ": f32[9]\n  return"),
         r"line 7: multiply is printed with types \['f32\[9\]'\], but infers \['f32\[8\*s0-1\]'\]"),
        (lambda t: t.replace("{axis=0}", "{axis=0, bogus=1}"), r"line 4: .*has no attribute\(s\) \['bogus'\]"),
        (lambda t: t.replace("reshape(", "reshap("), r"line 3: unknown op 'reshap'"),
    ],
)
def test_parse_errors_name_the_line(edit: object, message: str) -> None:
    text = print_graph(_symbolic_graph())
    with pytest.raises(IRError, match=message):
        parse_graph(edit(text))  # type: ignore[operator]


def _redundant_graph() -> Graph:
    g = Graph()
    x = g.add_input("x", TensorType((2, 3), F32))
    two = g.add_op("constant", [], {"value": 2.0, "dtype": F32})
    three = g.add_op("full", [], {"shape": (2, 3), "value": 3.0, "dtype": F32})
    six = g.add_op("multiply", [two, three])  # folds to full(6.0)
    a = g.add_op("exp", [x])
    b = g.add_op("exp", [x])  # CSE: same as a
    g.add_op("tanh", [x])  # dead
    iota = g.add_op("iota", [], {"shape": (2, 3), "axis": 1, "dtype": F32})
    g.set_outputs([g.add_op("add", [g.add_op("multiply", [a, six]), g.add_op("add", [b, iota])])])
    return g


def test_passes_keep_results_and_shrink_the_graph(tmp_path: Path) -> None:
    g = _redundant_graph()
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    (before,) = execute(g, [x])
    folded = fold_constants(_redundant_graph())
    assert [n.attrs["value"] for n in folded.nodes if n.op == "full"] == [3.0, 6.0]
    assert [n.op for n in cse(_redundant_graph()).nodes].count("exp") == 1
    assert "tanh" not in [n.op for n in dce(_redundant_graph()).nodes]
    optimized = PassManager(dump_dir=tmp_path).run(g)
    assert [n.op for n in optimized.nodes] == ["full", "exp", "iota", "multiply", "add", "add"]
    np.testing.assert_array_equal(execute(optimized, [x])[0], before)
    dumps = sorted(p.name for p in tmp_path.iterdir())
    assert dumps == ["main.00-input.ir.txt", "main.01-fold_constants.ir.txt", "main.02-cse.ir.txt",
                     "main.03-dce.ir.txt"]
    assert parse_graph((tmp_path / dumps[-1]).read_text()) is not None


def test_dump_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPIKY_DUMP_PASSES", str(tmp_path / "dumps"))
    PassManager().run(_redundant_graph())
    assert len(list((tmp_path / "dumps").iterdir())) == 4


def test_kernel_source_is_readable_and_exact() -> None:
    g = specialize(_symbolic_graph(), {"s0": 3})
    src = kernel_source(g)
    assert "def kernel(x):" in src and "np.reshape(x, (12,))" in src and "np.concatenate([reshape, reshape]" in src
    a = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_array_equal(run_kernel(g, [a])[0], execute(g, [a])[0])
    with pytest.raises(IRError, match=r"specialize the graph before emitting"):
        kernel_source(_symbolic_graph())


def test_every_op_has_a_kernel_rule_or_is_a_collective() -> None:
    from spiky_ir import all_ops
    from spiky_ir.kernel_source import RULES

    missing = {name for name, op in all_ops().items() if name not in RULES and op.category != "collective"}
    assert missing == set()


def test_readme_example_runs_and_prints_what_it_shows(capsys: pytest.CaptureFixture[str]) -> None:
    import re

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    code = re.findall(r"```python\n(.*?)```", readme, re.S)[0]
    shown = re.findall(r"prints\n\n```\n(.*?)```", readme, re.S)[0]
    exec(code, {})
    assert capsys.readouterr().out.rstrip("\n") == shown.rstrip("\n")
