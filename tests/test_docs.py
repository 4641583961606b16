"""docs/ agrees with the code, and the repository stands on its own.

Every option and every error class is documented, no more and no less; the facts of
docs/neuron-interfaces.md that live on this side of the packages (the neuronx-cc command line,
HLO conventions, the Neuron rank environment) are the code's; nothing tracked in the repository
points outside it, and every relative link in its Markdown resolves inside it.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

import spiky.errors
import spiky.torch
import spiky_dist
import spiky_runtime

DOCS = Path(__file__).resolve().parents[1] / "docs"
pytestmark = pytest.mark.smoke


def test_options_reference_matches_the_option_table() -> None:
    text = (DOCS / "options.md").read_text()
    documented = dict(re.findall(r"^### `(\w+)`\n- type: .*\n- default: `(.*)`$", text, flags=re.M))
    assert set(documented) == set(spiky.torch.OPTIONS), (
        f"undocumented: {sorted(set(spiky.torch.OPTIONS) - set(documented))}, "
        f"not options: {sorted(set(documented) - set(spiky.torch.OPTIONS))}")
    for name, default in documented.items():
        assert default == repr(spiky.torch.OPTIONS[name].default), name
    assert len(re.findall(r"^### `", text, flags=re.M)) == len(documented)  # every heading parsed


def _exported_errors() -> set[str]:
    names: set[str] = set()
    for module in (spiky.errors, spiky_runtime, spiky_dist):
        for name in dir(module):
            value = getattr(module, name)
            if isinstance(value, type) and issubclass(value, Exception) and value.__module__.startswith(
                    ("spiky", "spiky_ir", "spiky_runtime", "spiky_dist")):
                names.add(name)
    return names


def test_troubleshooting_covers_every_error_class() -> None:
    text = (DOCS / "troubleshooting.md").read_text()
    documented = set(re.findall(r"^### `(\w+)`$", text, flags=re.M))
    exported = _exported_errors()
    assert documented == exported, (
        f"undocumented: {sorted(exported - documented)}, not exported: {sorted(documented - exported)}")
    for name in documented:
        section = text.split(f"### `{name}`", 1)[1].split("###", 1)[0]
        assert "- cause:" in section and "- fix:" in section, name


# ---- the repository stands on its own --------------------------------------------------------

ROOT = DOCS.parent
# Built from pieces so that this file does not match its own patterns.
_OUTSIDE = [
    re.escape("/" + "work" + "/"),  # absolute paths of a development machine
    # Names of pages that live outside the repository (ours are docs/architecture.md and
    # docs/neuron-interfaces.md).
    r"\b" + re.escape("NEURON_" + "INTERFACES") + r"\b",
    r"\b" + re.escape("HLO_SCHEMA_" + "FACTS") + r"\b",
    r"\b" + re.escape("ARCHITECTURE" + ".md"),
]
_UP = re.compile(r"(?:\.\./)+[\w.-]+")
"""A relative path climbing out of its file's folder: it must still land inside the repository."""
_PARENTS = re.compile(r"Path\(__file__\)(?:\.resolve\(\))?\.parents\[(\d+)\]((?:\s*/\s*\"\.\.\")*)")
_MD_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _tracked_files() -> list[Path]:
    """Every file git tracks (a checkout without .git: every file but build products and venvs)."""
    done = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=False)
    if done.returncode == 0 and done.stdout:
        return [ROOT / name for name in done.stdout.decode().split("\0") if name]
    skip = {".git", ".venv", "build", "dist", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"}
    return [p for p in ROOT.rglob("*") if p.is_file() and not skip & set(p.relative_to(ROOT).parts)]


def _texts() -> list[tuple[Path, str]]:
    out = []
    for path in _tracked_files():
        if not path.is_file():  # deleted in the working tree, not yet committed
            continue
        try:
            out.append((path, path.read_text(encoding="utf-8")))
        except UnicodeDecodeError:
            continue  # binary
    assert len(out) > 100, "the repository's files were not found"
    return out


def _leaves(path: Path, relative: str) -> bool:
    """Whether ``relative``, read from ``path``'s folder, ends outside the repository."""
    return not (path.parent / relative).resolve().is_relative_to(ROOT.resolve())


def test_nothing_in_the_repository_points_outside_it() -> None:
    problems = []
    for path, text in _texts():
        rel = path.relative_to(ROOT)
        for pattern in _OUTSIDE:
            for match in re.finditer(pattern, text):
                line = text.count("\n", 0, match.start()) + 1
                problems.append(f"{rel}:{line}: {match.group(0)!r}")
        for match in _UP.finditer(text):
            if _leaves(path, match.group(0)):
                line = text.count("\n", 0, match.start()) + 1
                problems.append(f"{rel}:{line}: {match.group(0)!r} leaves the repository")
        if path.suffix == ".py":
            # Path(__file__).parents[n] (/ "..")*: parents[n] is n levels above the file's folder, each
            # ".." one more; the file's folder is len(rel.parts) - 1 levels below the root.
            for match in _PARENTS.finditer(text):
                up = int(match.group(1)) + match.group(2).count('".."')
                if up > len(rel.parts) - 1:
                    line = text.count("\n", 0, match.start()) + 1
                    problems.append(f"{rel}:{line}: {match.group(0)!r} leaves the repository")
    assert not problems, "references outside the repository:\n" + "\n".join(problems)


def test_relative_links_in_markdown_resolve_inside_the_repository() -> None:
    problems = []
    for path, text in _texts():
        if path.suffix != ".md":
            continue
        for target in _MD_LINK.findall(text):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue  # URLs and anchors
            resolved = (path.parent / target.split("#", 1)[0]).resolve()
            if not resolved.is_relative_to(ROOT) or not resolved.exists():
                problems.append(f"{path.relative_to(ROOT)}: ({target})")
    assert not problems, "broken or outside links:\n" + "\n".join(problems)


def test_the_outside_patterns_catch_what_they_should() -> None:
    samples = {
        "see " + "/" + "work/notes/FINDINGS.md": True,
        "declared from " + "NEURON_" + "INTERFACES.md": True,
        "our docs/neuron-interfaces.md and the common nkipy_cache": False,
    }
    for text, caught in samples.items():
        assert any(re.search(p, text) for p in _OUTSIDE) == caught, text
    readme = ROOT / "README.md"  # at the root: one level up is outside; a package's README reaches docs/
    assert [_leaves(readme, m.group(0)) for m in _UP.finditer("see " + "../" + "notes/FINDINGS.md")] == [True]
    package_readme = ROOT / "packages" / "spiky-ir" / "README.md"
    assert [_leaves(package_readme, m.group(0)) for m in _UP.finditer("(" + "../" + "../docs/options.md)")] == [False]
    line = "X = Path(__file__)" + '.resolve().parents[3] / ".." / "y"'  # 4 levels up: outside from depth 3
    match = _PARENTS.search(line)
    assert match is not None and (match.group(1), match.group(2).count('".."')) == ("3", 1)


# ---- docs/neuron-interfaces.md agrees with the code that follows it ----------------------------

INTERFACES = DOCS / "neuron-interfaces.md"


def _interfaces_section(title: str) -> str:
    text = INTERFACES.read_text()
    assert f"\n## {title}\n" in text, f"neuron-interfaces.md has no '## {title}' section"
    return text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_neuronx_cc_command_line_is_the_one_we_run() -> None:
    from spiky.torch.neuronx_cc import NEURON_TARGETS, NeuronCompiler, compile_command

    section = _interfaces_section("neuronx-cc: the compiler")
    (documented,) = [line.strip() for line in section.splitlines() if line.strip().startswith("neuronx-cc compile ")]
    argv = compile_command(NeuronCompiler("neuronx-cc", "0"), Path("<dir>"), "<" + "|".join(NEURON_TARGETS) + ">",
                           ["[extra args]"])
    assert " ".join(argv) == documented
    assert "run with `<dir>` as the working directory" in section


def test_hlo_conventions_are_the_emitters() -> None:
    from spiky_ir import DType, Graph, TensorType
    from spiky_ir.hlo import emit, schema
    from spiky_ir.hlo.builder import PRIMITIVE_TYPE

    section = _interfaces_section("The HLO module Spiky hands to neuronx-cc")
    assert f"the entry computation is named `{emit.ENTRY_NAME}`" in section
    assert f"`{emit.INPUT_NAMES_ATTR}=<input name>`" in section
    assert f"`<name>{emit.MUST_ALIAS_SUFFIX}`" in section
    assert f"`{emit.OUTPUT_NAMES_ATTR}=output0,output1,...`" in section
    g = Graph()
    x = g.add_input("x", TensorType((2, 3), DType.float32))
    g.set_outputs([g.add_op("exp", [x]), g.add_op("negative", [x])])
    art = emit.emit_hlo(g, inplace={"x": 1})
    assert (art.input_names, art.output_names) == (("x" + emit.MUST_ALIAS_SUFFIX,), ("output0", "output1"))
    assert art.module.entry_computation_name == emit.ENTRY_NAME
    # The element type table: every IR dtype the emitter maps, with XLA's enum value.
    rows = re.findall(r"^\| `(\w+)` \| (\d+) \| `(\w+)` \|$", section, flags=re.M)
    documented = {name: (int(value), dtype) for name, value, dtype in rows}
    assert {name: value for name, (value, _) in documented.items()} == {
        name: getattr(schema, name) for name in documented}
    assert {getattr(DType, dtype): value for value, dtype in documented.values()} == PRIMITIVE_TYPE


def test_multi_process_environment_is_spiky_dists() -> None:
    from spiky_dist.neuron_env import DEFAULT_COMM_PORT, neuron_runtime_env

    section = _interfaces_section("Several processes on Neuron")
    assert "`NEURON_RT_VISIBLE_CORES=<local rank + core_offset>`" in section
    assert "`NEURON_RT_ROOT_COMM_ID=<MASTER_ADDR>:<port>`" in section
    assert f"the port defaults to {DEFAULT_COMM_PORT}" in section
    env = neuron_runtime_env(rank=1, world_size=2, core_offset=2, env={"MASTER_ADDR": "10.0.0.7"})
    assert env == {"NEURON_RT_VISIBLE_CORES": "3", "NEURON_RT_ROOT_COMM_ID": f"10.0.0.7:{DEFAULT_COMM_PORT}"}
    assert neuron_runtime_env(rank=0, world_size=1, env={}) == {"NEURON_RT_VISIBLE_CORES": "0"}
    # the second machine of `torchrun --nnodes 2 --nproc-per-node 2`: global rank 3 is local rank 1
    second = {"MASTER_ADDR": "10.0.0.7", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    assert neuron_runtime_env(rank=3, world_size=4, env=second)["NEURON_RT_VISIBLE_CORES"] == "1"


def test_distributed_page_shows_the_examples_as_they_are() -> None:
    """Each ``<!-- example: path -->`` block of docs/distributed.md is that file, whole (the
    examples run under torchrun in tests/test_dist_training.py)."""
    page = (ROOT / "docs" / "distributed.md").read_text()
    blocks = re.findall(r"<!-- example: (\S+) -->\n```python\n(.*?)```\n", page, flags=re.S)
    assert [path for path, _ in blocks] == ["examples/fsdp2.py", "examples/tensor_parallel.py", "examples/ddp.py"]
    for path, code in blocks:
        assert code == (ROOT / path).read_text(), f"docs/distributed.md's copy of {path} is out of date"
