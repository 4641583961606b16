"""Builds the runtime's C++ test binary from ``csrc/*.cc`` (minus the Python bindings) and
``tests/cpp/*.cc``, then optionally runs it.

    python tests/cpp/build_tests.py [--sanitize] [--run] [filter]

Objects are cached under ``build/cpp-tests/<variant>/`` and rebuilt when their source, any
header or the flags change. ``--sanitize`` builds with AddressSanitizer and UBSan
(``tools/asan.sh``). Used by ``tests/test_cpp.py`` so the README test command runs the C++
tests too.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # packages/spiky-runtime
BASE_FLAGS = ["-std=c++17", "-g", "-Wall", "-Wextra", "-Werror", "-pthread"]
SANITIZE_FLAGS = ["-O1", "-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=all"]


def _compiler() -> str:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return name
    raise RuntimeError("no C++ compiler found; install g++ or set CXX")


def build(sanitize: bool = False, jobs: int = 2) -> Path:
    """Compiles (incrementally) and links the test binary; returns its path."""
    cxx = _compiler()
    flags = [*BASE_FLAGS, *(SANITIZE_FLAGS if sanitize else ["-O1"])]
    public = ROOT / "src" / "spiky_runtime" / "include"  # <spiky_runtime/c_abi.h>
    includes = [f"-I{ROOT / 'csrc'}", f"-I{public}", f"-I{ROOT / 'tests' / 'cpp'}"]
    out = ROOT / "build" / "cpp-tests" / ("sanitize" if sanitize else "plain")
    out.mkdir(parents=True, exist_ok=True)
    stamp = out / "flags.txt"
    signature = "\n".join([cxx, *flags, *includes])
    if not stamp.exists() or stamp.read_text() != signature:
        for old in out.glob("*.o"):
            old.unlink()
        stamp.write_text(signature)
    # Every engine source except the Python glue (the files that include pybind11).
    sources = [s for s in sorted((ROOT / "csrc").glob("*.cc")) if "<pybind11/" not in s.read_text()]
    # The harness binary: main.cc + test_*.cc (other programs may live in tests/cpp too).
    sources += [ROOT / "tests" / "cpp" / "main.cc", *sorted((ROOT / "tests" / "cpp").glob("test_*.cc"))]
    headers = [*(ROOT / "csrc").glob("*.h"), *public.rglob("*.h"), *(ROOT / "tests" / "cpp").glob("*.h")]
    newest_header = max((h.stat().st_mtime for h in headers), default=0.0)

    def compile_one(src: Path) -> Path:
        obj = out / f"{src.parent.name}_{src.stem}.o"
        if obj.exists() and obj.stat().st_mtime >= max(src.stat().st_mtime, newest_header):
            return obj
        _run([cxx, *flags, *includes, "-c", str(src), "-o", str(obj)])
        return obj

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        objects = list(pool.map(compile_one, sources))
    binary = out / "runtime_tests"
    _run([cxx, *flags, *[str(o) for o in objects], "-o", str(binary)])
    return binary


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"command failed ({proc.returncode}):\n  {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sanitize", action="store_true", help="AddressSanitizer + UBSan build")
    parser.add_argument("--run", action="store_true", help="run the binary after building")
    parser.add_argument("filter", nargs="?", help="run only tests whose name contains this")
    args = parser.parse_args()
    binary = build(sanitize=args.sanitize)
    print(binary)
    if not args.run:
        return 0
    return subprocess.run([str(binary), *([args.filter] if args.filter else [])], check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
