"""The extension is importable and the package version agrees with pyproject.toml."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

import spiky_runtime as rt

PACKAGE_ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.smoke
def test_core_imports() -> None:
    core = importlib.import_module("spiky_runtime._core")
    assert core.__file__ is not None and Path(core.__file__).name.startswith("_core")
    for name in ("Device", "Buffer", "Model", "TensorSpec", "RuntimeStats", "device_count"):
        assert getattr(core, name) is getattr(rt, name)


@pytest.mark.smoke
def test_version_matches_pyproject() -> None:
    text = (PACKAGE_ROOT / "pyproject.toml").read_text()
    project = text.split("[project]", 1)[1].split("\n[", 1)[0]
    match = re.search(r'^version\s*=\s*"([^"]+)"', project, re.MULTILINE)
    assert match is not None
    assert rt.__version__ == match.group(1)


def test_public_api_is_exported() -> None:
    for name in rt.__all__:
        assert hasattr(rt, name), name
    assert issubclass(rt.SpikyRuntimeError, RuntimeError)
    assert issubclass(rt.OutOfMemoryError, rt.SpikyRuntimeError)
    assert issubclass(rt.OutOfMemoryError, MemoryError)
    assert issubclass(rt.InvalidArgumentError, rt.SpikyRuntimeError)
    assert issubclass(rt.InvalidArgumentError, ValueError)
    assert issubclass(rt.NrtError, rt.SpikyRuntimeError)
    assert issubclass(rt.NrtLoadError, rt.SpikyRuntimeError)
    assert rt.driver_names() == ["host", "nrt"]


def test_readme_example_runs() -> None:
    readme = (PACKAGE_ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.DOTALL)
    assert blocks, "README.md has no python example"
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})
