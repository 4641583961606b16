"""Build and load the C++ extension behind the ``"nkipy"`` device (``csrc/nkipy_device.cpp``).

The extension is compiled at first use with :func:`torch.utils.cpp_extension.load` against
the torch that is running, so installing spiky-torch never needs torch in a build
environment (and never pulls a second torch). It includes the runtime's C allocator ABI
from the installed spiky-runtime (``<spiky_runtime/c_abi.h>`` under
:func:`spiky_runtime.get_include`; there is no copy here). Builds are cached in
``$SPIKY_TORCH_EXT_DIR`` (default ``$XDG_CACHE_HOME/spiky/torch_ext``, else
``~/.cache/spiky/torch_ext``), one directory per torch version + Python + hash of the
sources and the runtime's headers; a file lock makes parallel processes build once. A
cached build imports in milliseconds; a fresh one takes ~30 s on two cores
(``python -c "import spiky.torch"`` warms it up).
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import logging
import os
import sys
import sysconfig
import time
from pathlib import Path
from types import ModuleType

import torch

import spiky_runtime

log = logging.getLogger("spiky.device")

SOURCES = ("nkipy_device.cpp",)
_loaded: ModuleType | None = None


def source_dir() -> Path:
    """Where the C++ sources are: shipped in the wheel (``spiky/_csrc``) or the repo's ``csrc/``."""
    shipped = Path(__file__).resolve().parent.parent / "_csrc"
    if (shipped / SOURCES[0]).exists():
        return shipped
    repo = Path(__file__).resolve().parents[3] / "csrc"
    if (repo / SOURCES[0]).exists():
        return repo
    raise FileNotFoundError(f"nkipy device sources not found in {shipped} or {repo}; reinstall spiky-torch")


def runtime_headers() -> list[Path]:
    """The headers of the installed spiky-runtime the extension includes (``spiky_runtime/c_abi.h``)."""
    include = Path(spiky_runtime.get_include())
    headers = sorted(include.rglob("*.h"))
    if include / "spiky_runtime" / "c_abi.h" not in headers:
        raise FileNotFoundError(
            f"spiky_runtime/c_abi.h not found under spiky_runtime.get_include() = {include}; "
            "reinstall spiky-runtime (pip install packages/spiky-runtime)"
        )
    return headers


def cache_root() -> Path:
    explicit = os.environ.get("SPIKY_TORCH_EXT_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "spiky" / "torch_ext"


def build_key() -> str:
    """torch version, Python ABI, the sources' and the runtime headers' hash: what makes a build reusable."""
    digest = hashlib.sha256()
    directory = source_dir()
    for name in SOURCES:
        digest.update(name.encode())
        digest.update((directory / name).read_bytes())
    include = Path(spiky_runtime.get_include())
    for header in runtime_headers():
        digest.update(header.relative_to(include).as_posix().encode())
        digest.update(header.read_bytes())
    abi = sysconfig.get_config_var("EXT_SUFFIX") or sys.version
    digest.update(f"{torch.__version__}|{abi}".encode())
    return digest.hexdigest()[:16]


def load_extension() -> ModuleType:
    """The extension module, built on first use and cached on disk (and in the process)."""
    global _loaded
    if _loaded is not None:
        return _loaded
    key = build_key()
    name = f"spiky_nkipy_{key}"
    build_dir = cache_root() / f"torch-{torch.__version__}-{key}"
    build_dir.mkdir(parents=True, exist_ok=True)
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    with open(build_dir / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a parallel process builds; we wait and reuse
        built = [p for p in (build_dir / f"{name}.so", build_dir / f"{name}{suffix}") if p.exists()]
        _loaded = _import(name, built[0]) if built else _build(name, build_dir)
    return _loaded


def _import(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import the nkipy device extension from {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _build(name: str, build_dir: Path) -> ModuleType:
    from torch.utils import cpp_extension

    directory = source_dir()
    log.warning("building the nkipy device extension for torch %s in %s (first use, ~30 s)",
                torch.__version__, build_dir)
    start = time.perf_counter()
    module: ModuleType = cpp_extension.load(
        name=name,
        sources=[str(directory / SOURCES[0])],
        extra_include_paths=[str(directory), spiky_runtime.get_include()],
        extra_cflags=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
        build_directory=str(build_dir),
        verbose=False,
    )
    log.warning("built the nkipy device extension in %.1f s", time.perf_counter() - start)
    return module
