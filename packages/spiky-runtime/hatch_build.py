"""Hatch build hook: compiles csrc/*.cc into the extension ``spiky_runtime._core``.

The compiler is invoked directly (``$CXX``, else ``c++``/``g++``): no CMake, no setuptools.
Each translation unit compiles to an object in parallel (two workers), then one link.
The public C ABI header lives in the package (``src/spiky_runtime/include/spiky_runtime/
c_abi.h``, package data that ``spiky_runtime.get_include()`` points at) and is on the include
path; the other headers are private, in ``csrc/``.
Objects in ``build/obj`` are reused while newer than their source, every header and the
flags (pip runs the hook twice for an editable install: metadata, then the wheel).
``SPIKY_WERROR=1`` turns warnings into errors. Regular wheels get the extension through
``force_include``; editable installs get it written into ``src/spiky_runtime/`` so the
editable path finds it next to the Python sources.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pybind11
from hatchling.builders.hooks.plugin.interface import BuildHookInterface

# -DNDEBUG as in every release extension build: pybind11 then skips its debug-only GIL
# assertion on reference counts (see bindings.cc on threads ended by interpreter exit).
CXXFLAGS = ["-std=c++17", "-O2", "-DNDEBUG", "-fPIC", "-fvisibility=hidden", "-Wall", "-Wextra", "-pthread"]
JOBS = 2


def _compiler() -> str:
    env = os.environ.get("CXX")
    if env:
        return env
    for name in ("c++", "g++", "clang++"):
        if shutil.which(name):
            return name
    raise RuntimeError("spiky-runtime: no C++ compiler found; install g++ or set CXX")


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(
            f"spiky-runtime: command failed ({proc.returncode}):\n  {' '.join(cmd)}\n{proc.stdout}{proc.stderr}"
        )
    if proc.stderr.strip():
        # Warnings: show them in the build log rather than swallowing them.
        sys.stderr.write(proc.stderr)


def build_extension(root: Path, out_dir: Path) -> Path:
    """Compiles csrc/*.cc under ``root`` into ``out_dir/_core<EXT_SUFFIX>``; returns its path."""
    cxx = _compiler()
    flags = list(CXXFLAGS)
    if os.environ.get("SPIKY_WERROR") == "1":
        flags.append("-Werror")
    public = root / "src" / "spiky_runtime" / "include"
    includes = [f"-I{public}", f"-I{pybind11.get_include()}", f"-I{sysconfig.get_paths()['include']}"]
    sources = sorted((root / "csrc").glob("*.cc"))
    if not sources:
        raise RuntimeError(f"spiky-runtime: no sources in {root / 'csrc'}")
    obj_dir = root / "build" / "obj"
    obj_dir.mkdir(parents=True, exist_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)

    # Any change of compiler, flags or include dirs (another Python) invalidates all objects.
    stamp = obj_dir / "flags.txt"
    signature = "\n".join([cxx, *flags, *includes])
    if not stamp.exists() or stamp.read_text() != signature:
        for old in obj_dir.glob("*.o"):
            old.unlink()
        stamp.write_text(signature)
    headers = [*(root / "csrc").glob("*.h"), *public.rglob("*.h")]
    newest_header = max((h.stat().st_mtime for h in headers), default=0.0)

    def compile_one(src: Path) -> Path:
        obj = obj_dir / (src.stem + ".o")
        if obj.exists() and obj.stat().st_mtime >= max(src.stat().st_mtime, newest_header):
            return obj
        _run([cxx, *flags, *includes, "-c", str(src), "-o", str(obj)])
        return obj

    with ThreadPoolExecutor(max_workers=JOBS) as pool:
        objects = list(pool.map(compile_one, sources))

    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    target = out_dir / f"_core{suffix}"
    link = [cxx, "-shared", "-fPIC", "-pthread", *[str(o) for o in objects], "-o", str(target)]
    if sys.platform == "darwin":
        link[1:1] = ["-undefined", "dynamic_lookup"]
    _run(link)
    return target


class CustomBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel":
            return
        root = Path(self.root)
        start = time.perf_counter()
        if version == "editable":
            built = build_extension(root, root / "src" / "spiky_runtime")
        else:
            built = build_extension(root, root / "build" / "lib")
            build_data["force_include"][str(built)] = f"spiky_runtime/{built.name}"
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
        self.app.display_info(f"spiky-runtime: built {built.name} in {time.perf_counter() - start:.1f}s")
