"""Each package installs and imports on its own, in a fresh venv, with only what it declares."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run(*cmd: str | Path, cwd: Path | None = None) -> str:
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600, cwd=cwd, check=False)
    assert result.returncode == 0, f"{cmd}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _wheel(package: str, out: Path) -> Path:
    # Build with the dev venv's pinned hatchling/pybind11 (no isolation: no network needed).
    _run(sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q",
         "-w", out, ROOT / "packages" / package)
    (wheel,) = out.glob(package.replace("-", "_") + "-*.whl")
    return wheel


@pytest.fixture(scope="module")
def fresh_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    env_dir = tmp_path_factory.mktemp("venv")
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    _run(python, "-m", "pip", "install", "-q", "numpy")
    return python


def test_spiky_ir_needs_only_numpy(fresh_python: Path, tmp_path: Path) -> None:
    _run(fresh_python, "-m", "pip", "install", "-q", _wheel("spiky-ir", tmp_path))
    code = (
        "import importlib.util, numpy as np, spiky_ir as ir\n"
        "assert importlib.util.find_spec('torch') is None\n"
        "g = ir.Graph(); x = g.add_input('x', ir.TensorType((2,), ir.DType.float32))\n"
        "g.set_outputs([g.add_op('exp', [x])]); ir.verify(g)\n"
        "print(ir.execute(g, [np.zeros(2, np.float32)])[0].tolist())\n"
    )
    assert _run(fresh_python, "-c", code).strip() == "[1.0, 1.0]"


def test_spiky_runtime_wheel_builds_and_runs(fresh_python: Path, tmp_path: Path) -> None:
    wheel = _wheel("spiky-runtime", tmp_path)
    assert "cp3" in wheel.name and "linux" in wheel.name  # a platform wheel with the extension
    _run(fresh_python, "-m", "pip", "install", "-q", wheel)
    code = (
        "import numpy as np, spiky_runtime as rt\n"
        "dev = rt.Device('host')\n"
        "spec = rt.TensorSpec((3,), 'float32')\n"
        "m = dev.load_host_model(lambda xs: [xs[0] * 2], [spec], [spec], 'double')\n"
        "print(m.run([np.arange(3, dtype=np.float32)])[0].tolist(), dev.stats().total_executions)\n"
        "import os; h = os.path.join(rt.get_include(), 'spiky_runtime', 'c_abi.h')\n"
        "print(os.path.isfile(h), os.path.dirname(rt.__file__) in h)\n"  # the C ABI header ships in the wheel
    )
    assert _run(fresh_python, "-c", code, cwd=tmp_path).splitlines() == ["[0.0, 2.0, 4.0] 1", "True True"]
