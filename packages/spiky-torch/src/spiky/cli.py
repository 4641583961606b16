"""The ``spiky`` command: environment info, the compile cache, IR of a function, trace summaries.

::

    spiky info
    spiky cache ls | show KEY | clear [--older-than DAYS]
    spiky ir model.py:fn --input 4,16 --input 16:float16 [--show ir|hlo|kernel|all]
    spiky ir --from-cache KEY [--show ...]
    spiky trace view trace.json
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from spiky.errors import SpikyError

_PACKAGES = ("spiky-torch", "spiky-ir", "spiky-runtime", "spiky-dist", "torch", "numpy", "jax", "jaxlib")
_SHOW = {"ir": "ir.txt", "hlo": "model.hlo.txt", "kernel": "kernel.py"}


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def info(out: TextIO) -> None:
    """Versions, targets (and why one is unavailable), cache location and size."""
    from spiky.cache import list_entries
    from spiky.errors import SpikyTargetError
    from spiky.torch.config import default_cache_dir
    from spiky.torch.host_executors import host_executor_info
    from spiky.torch.neuronx_cc import find_neuronx_cc
    from spiky.torch.targets import find_libnrt

    out.write("packages:\n")
    for dist in _PACKAGES:
        out.write(f"  {dist:<14} {_version(dist)}\n")
    out.write("targets:\n  host           available\n")
    executor = host_executor_info()
    out.write(f"  host executor  'auto' uses {executor.reason}\n")
    libnrt = find_libnrt()
    try:
        compiler: str = f"{find_neuronx_cc().version}"
    except SpikyTargetError as exc:
        compiler = f"not found ({exc})"
    out.write(f"  neuron         libnrt: {libnrt or 'not found (install aws-neuronx-runtime-lib)'}\n")
    out.write(f"                 neuronx-cc: {compiler}\n")
    if libnrt is not None:
        import spiky_runtime as rt

        try:
            out.write(f"                 NeuronCores visible: {rt.device_count('nrt')}\n")
        except Exception as exc:  # any driver failure is the reason to report
            out.write(f"                 NeuronCores: unavailable ({exc})\n")
    cache = default_cache_dir()
    entries = list_entries(cache) if cache.exists() else []
    size = sum(e.size_bytes for e in entries)
    out.write(f"cache:\n  {cache}  ({len(entries)} entries, {size / 1e6:.1f} MB)\n")


def _parse_input(spec: str) -> Any:
    import torch

    shape_text, _, dtype_text = spec.partition(":")
    try:
        shape = [int(d) for d in shape_text.split(",") if d.strip()]
    except ValueError:
        raise SpikyError(f"--input {spec!r}: shape must be comma-separated ints, e.g. 4,16 or 4,16:float16") from None
    dtype = getattr(torch, dtype_text or "float32", None)
    if not isinstance(dtype, torch.dtype):
        raise SpikyError(f"--input {spec!r}: unknown dtype {dtype_text!r} (e.g. float32, float16, int64)")
    if dtype.is_floating_point:
        return torch.randn(shape, dtype=dtype)
    return torch.zeros(shape, dtype=dtype)


def _load_function(target: str) -> Any:
    path_text, sep, name = target.rpartition(":")
    if not sep or not path_text.endswith(".py"):
        raise SpikyError(f"{target!r} is not FILE.py:function")
    path = Path(path_text)
    if not path.is_file():
        raise SpikyError(f"no such file: {path_text}")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fn = getattr(module, name, None)
    if not callable(fn):
        raise SpikyError(f"{path_text} has no callable {name!r}")
    return fn


def ir(args: argparse.Namespace, out: TextIO) -> None:
    """Print the IR / HLO text / NKIPy source of a function's graphs or of one cache entry."""
    from spiky.cache import CompileCache

    shows = list(_SHOW) if args.show == "all" else [args.show]
    if args.from_cache:
        from spiky.torch.config import default_cache_dir

        entries = [CompileCache(args.dir or default_cache_dir()).find(args.from_cache)]
        _print_entries(entries, shows, out)
        return
    if not args.function:
        raise SpikyError("spiky ir needs FILE.py:function or --from-cache KEY")
    import torch

    import spiky.torch

    fn = _load_function(args.function)
    inputs = [_parse_input(s) for s in args.input]
    with tempfile.TemporaryDirectory(prefix="spiky-ir-") as tmp:
        spiky.torch.reset_nkipy_backend()
        spiky.torch.init_nkipy_backend(nkipy_cache=tmp, target="host")
        torch._dynamo.reset()
        with torch.no_grad():
            compiled: Any = torch.compile(fn, backend="nkipy")
            compiled(*inputs)
        _print_entries(CompileCache(tmp).entries(), shows, out)


def _print_entries(entries: Sequence[Any], shows: Sequence[str], out: TextIO) -> None:
    for entry in entries:
        for show in shows:
            path = entry.path / _SHOW[show]
            out.write(f"# {entry.kernel_name} ({show}, cache key {entry.key[:12]})\n")
            out.write(path.read_text() if path.exists() else f"(no {show} for this graph)\n")
            out.write("\n")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["cache"]:  # its own parser (also `python -m spiky.cache`)
        from spiky.cache import main as cache_main

        return cache_main(argv[1:])
    parser = argparse.ArgumentParser(prog="spiky", description="Spiky: PyTorch on AWS Neuron (and the host target).")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, available targets, cache")
    sub.add_parser("cache", help="ls | show KEY | clear [--older-than DAYS] [--dir DIR]")
    ir_p = sub.add_parser("ir", help="print the IR, HLO or NKIPy source of compiled graphs")
    ir_p.add_argument("function", nargs="?", help="FILE.py:function to compile")
    ir_p.add_argument("--input", action="append", default=[], metavar="SHAPE[:DTYPE]",
                      help="one per argument, e.g. 4,16 or 8:int64 (random/zero data)")
    ir_p.add_argument("--from-cache", metavar="KEY", help="a cache entry (key prefix or kernel name)")
    ir_p.add_argument("--dir", help="cache directory for --from-cache")
    ir_p.add_argument("--show", choices=[*_SHOW, "all"], default="ir")
    trace_p = sub.add_parser("trace", help="runtime traces")
    trace_sub = trace_p.add_subparsers(dest="trace_command", required=True)
    view_p = trace_sub.add_parser("view", help="time per phase and overlap of a trace JSON")
    view_p.add_argument("file")
    args = parser.parse_args(argv)
    try:
        if args.command == "info":
            info(sys.stdout)
        elif args.command == "ir":
            ir(args, sys.stdout)
        else:
            from spiky.trace_summary import summarize_trace

            sys.stdout.write(summarize_trace(args.file).format() + "\n")
    except (SpikyError, KeyError) as exc:
        sys.stderr.write(f"spiky {args.command}: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
