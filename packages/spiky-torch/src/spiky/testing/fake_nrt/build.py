"""Builds the fake ``libnrt.so.1`` from fake_nrt.c with the system C compiler.

Example::

    lib = build_fake_libnrt(tmp_path)  # the full library
    lib = build_fake_libnrt(tmp_path, omit_symbols=["nrt_execute"])  # one symbol left out
    lib = shared_fake_libnrt()  # the one this process loads (built once per source hash)

Standard library only: spiky-runtime's tests load this file by path.
"""

from __future__ import annotations

import hashlib
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


CACHE_ENV = "SPIKY_FAKE_LIBNRT_CACHE"
"""Directory under which :func:`cached_fake_libnrt` keeps one build per source hash."""
SHARED_ENV = "SPIKY_TEST_SHARED_FAKE_LIBNRT"
"""The path of the fake this process uses (set by :func:`shared_fake_libnrt`)."""


def _compiler() -> str:
    env = os.environ.get("CC")
    if env:
        return env
    for name in ("cc", "gcc", "clang"):
        if shutil.which(name):
            return name
    raise RuntimeError(
        "fake libnrt: no C compiler found (tried $CC, cc, gcc, clang); install one "
        "(e.g. apt-get install gcc) or point CC at it"
    )


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
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise RuntimeError(f"fake libnrt: cannot run the C compiler {cmd[0]!r}: {exc}; install gcc or point CC "
                           "at a C compiler") from exc
    if proc.returncode != 0:
        raise RuntimeError(f"fake libnrt: build failed ({proc.returncode}):\n  {' '.join(cmd)}\n{proc.stderr}")
    return target


def source_hash() -> str:
    """Hash of what a build depends on: fake_nrt.c, the flags and the compiler's name."""
    digest = hashlib.sha256(SOURCE.read_bytes())
    digest.update("\0".join([*CFLAGS, _compiler()]).encode())
    return digest.hexdigest()[:16]


def default_cache_root() -> Path:
    """``$SPIKY_FAKE_LIBNRT_CACHE``, else ``$XDG_CACHE_HOME/spiky/fake-libnrt`` (~/.cache by default)."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "spiky" / "fake-libnrt"


def cached_fake_libnrt(cache_root: Path | None = None) -> Path:
    """``<cache_root>/<source hash>/libnrt.so.1``, built when missing.

    Concurrent builders (ranks, test workers) each build in a private directory and rename
    the result into place, so a reader never sees a partial file. An unwritable cache root
    falls back to a fresh temporary directory.
    """
    root = Path(cache_root) if cache_root is not None else default_cache_root()
    directory = root / source_hash()
    target = directory / "libnrt.so.1"
    if target.is_file():
        return target
    try:
        directory.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".build-", dir=directory))
    except OSError:
        return build_fake_libnrt(Path(tempfile.mkdtemp(prefix="spiky-fake-libnrt-")))
    try:
        os.replace(build_fake_libnrt(scratch), target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def shared_fake_libnrt() -> Path:
    """The fake this process uses, for everything that loads it into this process's runtime.

    A process has one Neuron runtime and dlopens one libnrt, so every in-process user (the
    runtime's driver tests, spiky-torch's neuron-target tests, ``spiky.testing.fake_neuron``)
    must point at the same file: a second copy would be a second library whose controls drive
    nothing. The path is kept in the environment (``SPIKY_TEST_SHARED_FAKE_LIBNRT``) because
    this module may be loaded under several names; the first call builds it (or finds it in the
    cache, :func:`cached_fake_libnrt`).
    """
    known = os.environ.get(SHARED_ENV)
    if known and Path(known).exists():
        return Path(known)
    lib = cached_fake_libnrt()
    os.environ[SHARED_ENV] = str(lib)
    return lib
