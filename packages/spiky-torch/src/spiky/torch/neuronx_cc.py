"""The ``neuronx-cc`` driver: HLO module proto → NEFF, with progress, a log and clear failures.

::

    compiler = find_neuronx_cc()                 # PATH, or $SPIKY_NEURONX_CC / an explicit path
    result = compile_neff(compiler, workdir, hlo_proto, target=detect_target(),
                          extra_args="--lnc 1 -O2")
    result.neff_path, result.log_path, result.seconds

The command is the one NKIPy uses (docs/neuron-interfaces.md)::

    neuronx-cc compile --framework XLA <dir>/model.hlo.pb --pipeline compile SaveTemps
        --target <trn1|trn2|inf2> --output <dir>/model.neff <extra args>

run with the working directory ``<dir>``. Success is exit code 0 *and* a NEFF on disk.
The compiler's output goes to ``<dir>/compile.log`` (which the compile cache keeps); a
long compile shows elapsed time and the current phase on a terminal and in the log
(``spiky.neuronx_cc``). Failures raise :class:`spiky.errors.SpikyCompileError` ending
with the log's tail.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from spiky.errors import SpikyCompileError, SpikyConfigError, SpikyTargetError

log = logging.getLogger("spiky.neuronx_cc")

NEURON_TARGETS = ("trn1", "trn2", "inf2")
PRODUCT_NAME_FILE = Path("/sys/devices/virtual/dmi/id/product_name")
HLO_FILE, NEFF_FILE, LOG_FILE = "model.hlo.pb", "model.neff", "compile.log"
LOG_TAIL_LINES = 30
PROGRESS_EVERY_S = 1.0
"""How often the terminal progress line is refreshed."""
LOG_PROGRESS_EVERY_S = 30.0
"""How often a still-running compile is reported in the log."""


@dataclass(frozen=True)
class NeuronCompiler:
    """A located ``neuronx-cc`` and the version it reports (part of cache keys)."""

    path: str
    version: str


@dataclass(frozen=True)
class CompileResult:
    neff_path: Path
    log_path: Path
    seconds: float
    argv: tuple[str, ...]


def find_neuronx_cc(path: str | os.PathLike[str] | None = None) -> NeuronCompiler:
    """Locate ``neuronx-cc``: ``path``, else ``$SPIKY_NEURONX_CC``, else ``PATH``; read its version."""
    explicit = str(path) if path is not None else os.environ.get("SPIKY_NEURONX_CC")
    if explicit:
        if not (os.path.isfile(explicit) and os.access(explicit, os.X_OK)):
            raise SpikyTargetError(
                f"neuronx-cc at {explicit!r} (from {'the path argument' if path is not None else 'SPIKY_NEURONX_CC'}) "
                "is not an executable file; fix the path or unset it to search PATH"
            )
        found = explicit
    else:
        located = shutil.which("neuronx-cc")
        if located is None:
            raise SpikyTargetError(
                "neuronx-cc was not found on PATH; install the Neuron compiler from the Neuron package "
                "repository (pip install neuronx-cc --extra-index-url=https://pip.repos.neuron.amazonaws.com; "
                "the PyPI name alone is a placeholder) or set SPIKY_NEURONX_CC to its path"
            )
        found = located
    return NeuronCompiler(found, _version(found, os.stat(found).st_mtime))


@functools.lru_cache(maxsize=8)
def _version(path: str, _mtime: float) -> str:
    try:
        done = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SpikyTargetError(f"cannot run {path!r} --version: {exc}") from exc
    text = (done.stdout + done.stderr).strip()
    if done.returncode != 0 or not text:
        raise SpikyTargetError(f"{path} --version failed (exit {done.returncode}): {text[-500:] or 'no output'}")
    match = re.search(r"\d+\.\d+[\w.+-]*", text)
    return match.group(0) if match else text.splitlines()[-1]


def detect_target(override: str | None = None, product_name_file: Path = PRODUCT_NAME_FILE) -> str:
    """``trn1``/``trn2``/``inf2``: ``override``, else ``$SPIKY_NEURON_TARGET``, else the instance's product name."""
    chosen = override or os.environ.get("SPIKY_NEURON_TARGET")
    if chosen:
        if chosen not in NEURON_TARGETS:
            raise SpikyConfigError(f"unknown Neuron target {chosen!r}; valid: {', '.join(NEURON_TARGETS)}")
        return chosen
    try:
        product = product_name_file.read_text().strip().lower()
    except OSError:
        product = ""
    for target in NEURON_TARGETS:
        if product.startswith(target):
            return target
    raise SpikyTargetError(
        f"cannot tell the Neuron target from {str(product_name_file)!r} (product name {product or 'unreadable'!r}); "
        f"set SPIKY_NEURON_TARGET to one of {', '.join(NEURON_TARGETS)}"
    )


def native_int64(extra_args: str | Sequence[str]) -> bool:
    """Whether the compiler arguments keep int64 native (``--native-int64=enabled`` or
    ``--native-int64 enabled``; the last occurrence wins, as on a command line). Without it
    ``neuronx-cc`` narrows int64 to int32."""
    args = shlex.split(extra_args) if isinstance(extra_args, str) else list(extra_args)
    mode = "disabled"
    for i, arg in enumerate(args):
        if arg.startswith("--native-int64="):
            mode = arg.split("=", 1)[1]
        elif arg == "--native-int64" and i + 1 < len(args):
            mode = args[i + 1]
    return mode == "enabled"


def compile_command(compiler: NeuronCompiler, workdir: Path, target: str, extra_args: str | Sequence[str]) -> list[str]:
    """The argv that compiles ``<workdir>/model.hlo.pb`` into ``<workdir>/model.neff``."""
    extra = shlex.split(extra_args) if isinstance(extra_args, str) else list(extra_args)
    return [
        compiler.path, "compile", "--framework", "XLA", str(workdir / HLO_FILE),
        "--pipeline", "compile", "SaveTemps", "--target", target, "--output", str(workdir / NEFF_FILE), *extra,
    ]


def compile_neff(
    compiler: NeuronCompiler,
    workdir: Path,
    hlo_proto: bytes,
    *,
    target: str,
    extra_args: str | Sequence[str] = "",
    timeout: float | None = None,
    progress: bool | None = None,
) -> CompileResult:
    """Write the HLO proto into ``workdir``, run ``neuronx-cc`` there and return the NEFF path.

    ``progress`` shows a live line on stderr (default: when stderr is a terminal).
    Raises :class:`SpikyCompileError` on a non-zero exit, a missing NEFF or a timeout.
    """
    if target not in NEURON_TARGETS:
        raise SpikyConfigError(f"unknown Neuron target {target!r}; valid: {', '.join(NEURON_TARGETS)}")
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / HLO_FILE).write_bytes(hlo_proto)
    argv = compile_command(compiler, workdir, target, extra_args)
    log_path = workdir / LOG_FILE
    show = sys.stderr.isatty() if progress is None else progress
    start = time.monotonic()
    tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
    phase = ["starting"]
    with open(log_path, "w") as log_file:
        log_file.write(f"# {shlex.join(argv)}\n# cwd: {workdir}\n# neuronx-cc {compiler.version}\n")
        log_file.flush()
        try:
            proc = subprocess.Popen(
                argv, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                text=True, errors="replace", start_new_session=True,
            )
        except OSError as exc:
            raise SpikyCompileError(f"cannot start {argv[0]!r}: {exc}", str(log_path)) from exc
        reader = threading.Thread(target=_pump, args=(proc, log_file, tail, phase), daemon=True)
        reader.start()
        timed_out = _wait(proc, start, timeout, phase, show)
        reader.join()
    seconds = time.monotonic() - start
    if show:
        sys.stderr.write("\r\x1b[K")
        sys.stderr.flush()
    where = f"(target {target}, {seconds:.1f} s, log {log_path})"
    if timed_out:
        raise SpikyCompileError(
            f"neuronx-cc timed out after {timeout:.0f} s {where} and was killed; raise the timeout or "
            f"simplify the graph\n{_tail(tail)}", str(log_path))
    if proc.returncode != 0:
        raise SpikyCompileError(f"neuronx-cc failed with exit code {proc.returncode} {where}\n{_tail(tail)}",
                                str(log_path))
    neff = workdir / NEFF_FILE
    if not neff.is_file() or neff.stat().st_size == 0:
        raise SpikyCompileError(f"neuronx-cc exited 0 but wrote no NEFF at {neff} {where}\n{_tail(tail)}",
                                str(log_path))
    log.info("neuronx-cc compiled %s for %s in %.1f s", workdir.name, target, seconds)
    return CompileResult(neff, log_path, seconds, tuple(argv))


def _pump(proc: subprocess.Popen[str], log_file: TextIO, tail: deque[str], phase: list[str]) -> None:
    """Copy the compiler's output into the log, keeping the tail and the latest phase."""
    assert proc.stdout is not None
    write = log_file.write
    for line in proc.stdout:
        write(line)
        stripped = line.strip()
        if stripped:
            tail.append(stripped)
            phase[0] = stripped[:80]
    log_file.flush()


def _wait(proc: subprocess.Popen[str], start: float, timeout: float | None, phase: list[str], show: bool) -> bool:
    """Wait for the compiler, drawing progress; kill its process group on timeout. Returns timed-out."""
    last_log = start
    while True:
        try:
            proc.wait(timeout=PROGRESS_EVERY_S)
            return False
        except subprocess.TimeoutExpired:
            pass
        now = time.monotonic()
        elapsed = now - start
        if show:
            sys.stderr.write(f"\r\x1b[Kneuronx-cc: {elapsed:6.1f} s  {phase[0]}")
            sys.stderr.flush()
        if now - last_log >= LOG_PROGRESS_EVERY_S:
            log.info("neuronx-cc still compiling after %.0f s: %s", elapsed, phase[0])
            last_log = now
        if timeout is not None and elapsed > timeout:
            with_group = getattr(os, "killpg", None)
            try:
                if with_group is not None:
                    with_group(proc.pid, signal.SIGKILL)  # the compiler forks workers: end them all
                else:
                    proc.kill()
            except ProcessLookupError:
                pass
            proc.wait()
            return True


def _tail(lines: deque[str]) -> str:
    if not lines:
        return "(the compiler printed nothing)"
    return "--- last lines of the compiler log ---\n" + "\n".join(lines)
