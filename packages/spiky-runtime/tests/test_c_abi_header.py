"""The C ABI header ships in the package and agrees with the extension that was built from it.

``spiky_runtime.get_include()`` is what C/C++ consumers (spiky-torch's "nkipy" device) put on
their include path. A C program built against it alone reports the header's ABI version,
capsule name and struct layout; the capsule of a live device must say the same.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest

import spiky_runtime as rt
from spiky_runtime import _core

PACKAGE_ROOT = Path(__file__).resolve().parents[1]

PROBE = r"""
#include <spiky_runtime/c_abi.h>
#include <stdio.h>

int main(void) {
  printf("%s %u %zu %zu %zu\n", SPIKY_ALLOCATOR_CAPSULE_NAME, SPIKY_ALLOCATOR_ABI_VERSION,
         sizeof(SpikyAllocatorV1), offsetof(SpikyAllocatorV1, allocate),
         offsetof(SpikyAllocatorV1, synchronize));
  return 0;
}
"""


def test_get_include_points_at_the_only_header() -> None:
    include = Path(rt.get_include())
    assert include.is_absolute() and include.is_dir()
    assert (include / "spiky_runtime" / "c_abi.h").is_file()
    assert include == Path(rt.__file__).resolve().parent / "include"
    # One copy in the source tree: the runtime's own C++ includes it from there too.
    assert not list((PACKAGE_ROOT / "csrc").glob("c_abi.h"))
    assert '#include "spiky_runtime/c_abi.h"' in (PACKAGE_ROOT / "csrc" / "c_abi.cc").read_text()


def _capsule_struct(device: rt.Device) -> tuple[str, int, int]:
    """(capsule name, abi_version, struct_size) read from a live capsule through the CPython API."""
    capsule = _core.allocator_capsule(device)
    api = ctypes.pythonapi
    api.PyCapsule_GetName.restype = ctypes.c_char_p
    api.PyCapsule_GetName.argtypes = [ctypes.py_object]
    api.PyCapsule_GetPointer.restype = ctypes.c_void_p
    api.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
    name = api.PyCapsule_GetName(capsule)
    pointer = api.PyCapsule_GetPointer(capsule, name)
    head = (ctypes.c_uint32 * 2).from_address(pointer)  # abi_version, struct_size
    return name.decode(), int(head[0]), int(head[1])


def test_header_builds_alone_and_matches_the_runtime(tmp_path: Path) -> None:
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.skip("no C compiler (cc, gcc or clang) to build the probe")
    source = tmp_path / "probe.c"
    source.write_text(PROBE)
    binary = tmp_path / "probe"
    # Plain C, strict: the header must not need the runtime's C++ or any other include dir.
    build = subprocess.run(
        [cc, "-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic", f"-I{rt.get_include()}", str(source),
         "-o", str(binary)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(binary)], capture_output=True, text=True, timeout=60, check=True)
    name, version, size, allocate_at, synchronize_at = run.stdout.split()
    assert (int(allocate_at), int(synchronize_at)) == (32, 72)  # LP64; fields are only ever appended
    assert _capsule_struct(rt.Device("host")) == (name, int(version), int(size))
