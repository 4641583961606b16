"""Builds the fake ``libnrt.so.1`` from fake_nrt.c with the system C compiler.

Example::

    lib = build_fake_libnrt(tmp_path)  # the full library
    lib = build_fake_libnrt(tmp_path, omit_symbols=["nrt_execute"])  # one symbol left out
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

SOURCE = Path(__file__).resolve().with_name("fake_nrt.c")

# The libnrt symbols the fake exports: exactly the list of docs/neuron-interfaces.md.
NRT_SYMBOLS: tuple[str, ...] = (
    "nrt_init",
    "nrt_close",
    "nrt_get_total_nc_count",
    "nrt_get_visible_nc_count",
    "nrt_load",
    "nrt_load_collectives",
    "nrt_unload",
    "nrt_get_model_tensor_info",
    "nrt_free_model_tensor_info",
    "nrt_tensor_allocate",
    "nrt_tensor_free",
    "nrt_tensor_write",
    "nrt_tensor_read",
    "nrt_tensor_copy",
    "nrt_tensor_memset",
    "nrt_tensor_get_size",
    "nrt_tensor_get_va",
    "nrt_tensor_allocate_slice",
    "nrt_allocate_tensor_set",
    "nrt_destroy_tensor_set",
    "nrt_add_tensor_to_tensor_set",
    "nrt_execute",
    "nrt_profile_start",
    "nrt_profile_stop",
)

CFLAGS = ["-std=c11", "-O1", "-g", "-fPIC", "-shared", "-Wall", "-Wextra", "-Werror"]


def _compiler() -> str:
    env = os.environ.get("CC")
    if env:
        return env
    for name in ("cc", "gcc", "clang"):
        if shutil.which(name):
            return name
    raise RuntimeError("fake libnrt: no C compiler found; install gcc or set CC")


def build_fake_libnrt(out_dir: Path, omit_symbols: Sequence[str] = ()) -> Path:
    """Compiles the fake into ``out_dir/libnrt.so.1`` (soname libnrt.so.1) and returns its path.

    ``omit_symbols`` names libnrt functions to leave out (``-DFAKE_NRT_OMIT_<symbol>``).
    """
    unknown = sorted(set(omit_symbols) - set(NRT_SYMBOLS))
    if unknown:
        raise ValueError(f"cannot omit {unknown}: not libnrt symbols of the fake; known: {list(NRT_SYMBOLS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / "libnrt.so.1"
    cmd = [
        _compiler(),
        *CFLAGS,
        *(["-DFAKE_NRT_OMITTING"] if omit_symbols else []),
        *[f"-DFAKE_NRT_OMIT_{name}" for name in omit_symbols],
        "-Wl,-soname,libnrt.so.1",
        "-o",
        str(target),
        str(SOURCE),
        "-lpthread",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"fake libnrt: build failed ({proc.returncode}):\n  {' '.join(cmd)}\n{proc.stderr}")
    return target


def shared_fake_libnrt() -> Path:
    """The fake built once per process, for tests that load it into this process's runtime.

    A process has one Neuron runtime and dlopens one libnrt, so every in-process user (the
    runtime's driver tests, spiky-torch's neuron-target tests) must point at the same file:
    a second copy would be a second library whose controls drive nothing. The path is kept
    in the environment because this module may be loaded under several names.
    """
    key = "SPIKY_TEST_SHARED_FAKE_LIBNRT"
    known = os.environ.get(key)
    if known and Path(known).exists():
        return Path(known)
    lib = build_fake_libnrt(Path(tempfile.mkdtemp(prefix="spiky-fake-libnrt-")))
    os.environ[key] = str(lib)
    return lib
