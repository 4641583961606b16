"""csrc/nrt_api.{h,cc} (dlopen'ed libnrt, symbol resolution, status names, NrtError text).

The C++ check program tests/cpp/nrt_api_check.cc is compiled with nrt_api.cc into a tmp dir and
run against the fake libnrt (spiky-torch's spiky/testing/fake_nrt), so this needs a C++ compiler but not the
extension.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
CSRC = PACKAGE_ROOT / "csrc"
CHECK_SOURCE = Path(__file__).resolve().parent / "cpp" / "nrt_api_check.cc"
# The fake libnrt ships with spiky-torch (spiky.testing.fake_nrt); its build, control and NEFF modules
# use only the standard library, so they load by path here without installing spiky-torch.
FAKE_DIR = Path(__file__).resolve().parents[2] / "spiky-torch" / "src" / "spiky" / "testing" / "fake_nrt"


def _load(name: str) -> ModuleType:
    # tests/ is not a package (pytest runs with --import-mode=importlib): load by path.
    spec = importlib.util.spec_from_file_location(f"_fake_nrt_{name}", FAKE_DIR / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


build = _load("build")
neff = _load("neff")


def _cxx() -> str:
    for name in (os.environ.get("CXX", ""), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return name
    pytest.skip("no C++ compiler")


class Env:
    """The fake library, an add NEFF and the compiled check program."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.lib: Path = build.build_fake_libnrt(root / "lib")
        self.neff: Path = neff.write_fake_neff(
            root / "add.neff",
            inputs=[("a", "float32", (4,)), ("b", "float32", (4,))],
            outputs=[("output0", "float32", (4,))],
            neff_id="kernel_add",
        )
        self.program = root / "nrt_api_check"
        cmd = [
            _cxx(),
            "-std=c++17",
            "-O1",
            "-g",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pthread",
            f"-I{CSRC}",
            str(CHECK_SOURCE),
            str(CSRC / "nrt_api.cc"),
            "-ldl",
            "-o",
            str(self.program),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr}"

    def run(
        self,
        *args: str,
        libnrt: Path | str | None = None,
        extra_env: dict[str, str] | None = None,
        prefix: tuple[str, ...] = (),
    ) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SPIKY_", "NEURON_", "FAKE_NRT_", "LD_"))}
        if libnrt is not None:
            env["SPIKY_LIBNRT"] = str(libnrt)
        env.update(extra_env or {})
        return subprocess.run(
            [*prefix, str(self.program), *args], capture_output=True, text=True, env=env, check=False, timeout=120
        )


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    return Env(tmp_path_factory.mktemp("nrt_api"))


@pytest.mark.smoke
def test_drives_the_fake_end_to_end(env: Env) -> None:
    proc = env.run("roundtrip", str(env.neff), "1000", libnrt=env.lib)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert "before init: nrt_tensor_allocate returned UNINITIALIZED (13) for tensor 'x'" in lines
    assert "execute: 11 22 33 44" in lines
    assert "past the end: nrt_tensor_write returned INVALID (2) for tensor 'a'" in lines
    assert (
        "bad input: nrt_execute returned EXEC_BAD_INPUT (1002) for model 'kernel_add' input 'b': 12 bytes, expected 16"
        in lines
    )
    assert "injected: nrt_execute returned TIMEOUT (5)" in lines
    assert "cycles: 1000, executions: 1002" in lines
    assert lines[-1] == "PASS"


@pytest.mark.smoke
@pytest.mark.parametrize(
    ("omit", "expected"),
    [
        (["nrt_execute"], "lacks symbol nrt_execute that Spiky needs"),
        (["nrt_tensor_memset", "nrt_profile_stop"], "lacks symbols nrt_tensor_memset, nrt_profile_stop that"),
    ],
)
def test_missing_symbols_are_named(env: Env, tmp_path: Path, omit: list[str], expected: str) -> None:
    lib = build.build_fake_libnrt(tmp_path, omit_symbols=omit)
    proc = env.run("load", libnrt=lib)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"NrtLoadError: {lib} {expected}")
    assert "aws-neuronx-runtime-lib" in proc.stdout


@pytest.mark.smoke
def test_absent_library_says_what_to_install(env: Env) -> None:
    proc = env.run("load", libnrt="/nonexistent/libnrt.so.1")
    assert proc.stdout.startswith("NrtLoadError: cannot load libnrt.so.1 (from SPIKY_LIBNRT); tried:\n")
    assert "/nonexistent/libnrt.so.1: cannot open shared object file" in proc.stdout
    assert "install aws-neuronx-runtime-lib" in proc.stdout
    if not Path("/opt/aws/neuron/lib/libnrt.so.1").exists():
        proc = env.run("load")
        assert proc.stdout.startswith("NrtLoadError: cannot load libnrt.so.1; tried:\n  libnrt.so.1: ")
        assert "\n  /opt/aws/neuron/lib/libnrt.so.1: " in proc.stdout


@pytest.mark.smoke
def test_default_search_finds_the_library(env: Env) -> None:
    proc = env.run("load", extra_env={"LD_LIBRARY_PATH": str(env.lib.parent)})
    assert proc.stdout.strip() == f"loaded {env.lib}"


@pytest.mark.smoke
def test_resolves_exactly_the_documented_symbols(env: Env) -> None:
    proc = env.run("symbols")
    assert proc.stdout.split() == list(build.NRT_SYMBOLS)


@pytest.mark.smoke
def test_status_names(env: Env) -> None:
    table = {
        0: "SUCCESS", 1: "FAILURE", 2: "INVALID", 3: "INVALID_HANDLE", 4: "RESOURCE", 5: "TIMEOUT",
        6: "HW_ERROR", 7: "QUEUE_FULL", 9: "LOAD_NOT_ENOUGH_NC", 10: "UNSUPPORTED_NEFF_VERSION",
        13: "UNINITIALIZED", 14: "CLOSED", 15: "QUEUE_EMPTY", 101: "EXEC_UNIT_UNRECOVERABLE",
        1002: "EXEC_BAD_INPUT", 1003: "EXEC_COMPLETED_WITH_NUM_ERR", 1004: "EXEC_COMPLETED_WITH_ERR",
        1005: "EXEC_NC_BUSY", 1006: "EXEC_OOB", 1100: "COLL_PENDING", 1200: "EXEC_HW_ERR",
        1206: "EXEC_HW_ERR", 8: "UNKNOWN", 1207: "UNKNOWN", 4242: "UNKNOWN", -1: "UNKNOWN",
    }  # fmt: skip
    proc = env.run("status", *map(str, table))
    assert proc.stdout.splitlines() == [f"nrt_call returned {name} ({code})" for code, name in table.items()]


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind not installed")
def test_no_leaks_over_1000_cycles_under_valgrind(env: Env) -> None:
    proc = env.run(
        "roundtrip",
        str(env.neff),
        "1000",
        libnrt=env.lib,
        prefix=(
            "valgrind",
            "-q",
            "--leak-check=full",
            "--errors-for-leak-kinds=definite,indirect",
            "--error-exitcode=99",
        ),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[-1] == "PASS"
