"""The model zoo: real models from transformers, torchvision and timm through backend="nkipy".

    .venv/bin/python tools/bench/bench_zoo.py [--only a,b] [--no-inductor] [--timeout S] [--write-doc]
                                              [--target host|neuron] [--cpu N] [--calls K] [--warmup W]

Issue 18's measurement: ``--cpu 1 --calls 20`` (each case pinned to one core, median of 20 warm
calls per backend after ``--warmup`` untimed ones (default 10), the backends interleaved five calls
at a time); the summary then gives
nkipy / Inductor per call (geomean, worst, how many above 1.5x) and the cases whose first call
(the compile) is slower than Inductor's.

Each case (tools/zoo/cases.py) runs in its own subprocess with a timeout, so a crash or a hang
stops only that case. A case runs eager, then nkipy (host target) with default options and, if
that raises, with options={"fallback": "eager"}, then Inductor, and times their warm calls in turn
(tools/zoo/runner.py); the row gives the status
(ok / fallback / WRONG / error), the worst relative error against eager, the time per call of
each backend, the first-call (compile) time of Inductor and nkipy, and the first line of the
nkipy error. The summary counts the statuses and compares them with the expected-status table
(tools/zoo/expected.py). --write-doc regenerates the table in docs/MODELS.md.

--target neuron runs nkipy on the neuron target through the fake Neuron stack
(spiky.testing.fake_neuron: fake neuronx-cc and libnrt, executed on XLA:CPU): the interface checks
of a real device without one; its times are not a NeuronCore's. The docs table is host-only.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

from zoo.cases import CASES, TOLERANCE  # noqa: E402
from zoo.expected import EXPECTED  # noqa: E402

DOC = ROOT / "docs" / "MODELS.md"
WARMUP_CALLS = 10
"""Untimed calls per backend before the timed ones (two turns of the five lengths of a dynamic case):
the first calls after a compile run on cold caches and settle nkipy's routes and input staging."""
BEGIN, END = "<!-- zoo-table:begin -->", "<!-- zoo-table:end -->"


def run_child(name: str, out: Path, inductor: bool, target: str = "host", calls: int | None = None,
              warmup: int = 0) -> None:
    """Child mode: run one case in this process and write its Result as JSON."""
    import torch

    # One thread: the zoo runs on shared 2-core machines, where two spinning intra-op threads per
    # process made eager calls of a tiny Llama take ~0.9 s instead of milliseconds.
    torch.set_num_threads(1)
    from zoo.cases import BY_NAME
    from zoo.runner import run_case

    kwargs = {} if calls is None else {"timed_calls": calls}
    result = run_case(BY_NAME[name], inductor=inductor, target=target, warmup_calls=warmup, **kwargs)
    out.write_text(json.dumps(result.to_json()))


def run_isolated(name: str, timeout: float, inductor: bool, target: str = "host", calls: int | None = None,
                 cpu: int | None = None, warmup: int = 0) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, __file__, "--child", name, "--child-out", str(out)]
        if cpu is not None:  # the case's process and everything it starts (Inductor's compile workers) on one core
            cmd = ["taskset", "-c", str(cpu), *cmd]
        if not inductor:
            cmd.append("--no-inductor")
        if calls is not None:
            cmd += ["--calls", str(calls)]
        cmd += ["--warmup", str(warmup)]
        cmd += ["--target", target]
        # Cold compile caches for both compilers, so "first call" is a compile, not a cache hit of an
        # earlier run (Inductor's FX graph cache and spiky's entries both outlive processes).
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(Path(tmp) / "inductor"),
               "SPIKY_CACHE": str(Path(tmp) / "spiky")}
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, env=env)
        except subprocess.TimeoutExpired:
            return {"name": name, "status": "error", "error": f"timed out after {timeout:.0f} s"}
        if out.exists():
            row: dict[str, object] = json.loads(out.read_text())
        else:
            tail = [ln for ln in proc.stderr.splitlines() if ln.strip()][-1:] or [f"exit code {proc.returncode}"]
            row = {"name": name, "status": "error", "error": f"case process died: {tail[0][:300]}"}
        row["wall_s"] = time.perf_counter() - t0
        row["revision"] = _revision()
        return row


def _fmt(value: object, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _err(row: dict[str, object]) -> str:
    value = row.get("max_err")
    if value is None:
        return "—"
    case = next(c for c in CASES if c.name == row["name"])
    return f"{int(value)} tokens" if case.mode == "generate" else f"{value:.1e}"  # type: ignore[arg-type]


def _short(error: str, limit: int = 180) -> str:
    """An error line for the table: library paths relative to their install folder, cut."""
    error = re.sub(r"/\S*/(site-packages|spiky-zoo)/", "", error)
    return error if len(error) <= limit else error[: limit - 1] + "…"


def table(rows: list[dict[str, object]]) -> str:
    head = (
        "| case | library | mode | status | max err | eager ms | Inductor ms | nkipy ms | Inductor 1st s "
        "| nkipy 1st s | note / first error line |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for row in rows:
        case = next(c for c in CASES if c.name == row["name"])
        mode = case.mode + (f" ({case.dynamic})" if case.dynamic else "")
        if case.dtype.is_floating_point and case.dtype.itemsize == 2:
            mode += f" {str(case.dtype).removeprefix('torch.')}"
        note = _short(str(row.get("error") or ""))
        spread, err = row.get("eager_spread"), row.get("max_err")
        if isinstance(spread, float) and isinstance(err, float) and err > TOLERANCE[case.dtype]:
            verdict = "within" if row["status"] in ("ok", "fallback") else "beyond"
            note = f"{verdict} eager's own spread ({spread:.1e}, oneDNN on vs off)" + (f"; {note}" if note else "")
        if row.get("graphs") is not None:
            note = f"{row['graphs']} graphs compiled" + (f"; {note}" if note else "")
        if row.get("inductor_error") and row["inductor_error"] != "RuntimeError: not run":
            note += f" (Inductor: {row['inductor_error']})"
        note = (case.note + ("; " if case.note and note else "") + note).replace("|", "\\|")
        lines.append(
            f"| {case.name} | {case.library} | {mode} | {row['status']} | {_err(row)} "
            f"| {_fmt(row.get('eager_ms'), '.2f')} | {_fmt(row.get('inductor_ms'), '.2f')} "
            f"| {_fmt(row.get('nkipy_ms'), '.2f')} | {_fmt(row.get('inductor_first_s'), '.1f')} "
            f"| {_fmt(row.get('nkipy_first_s'), '.1f')} | {note} |"
        )
    return head + "\n".join(lines) + "\n"


def summary(rows: list[dict[str, object]]) -> str:
    counts = {s: sum(1 for r in rows if r["status"] == s) for s in ("ok", "fallback", "WRONG", "error")}
    total = len(rows)
    ok_pct = 100.0 * counts["ok"] / total if total else 0.0
    changed = [f"{r['name']} ({EXPECTED.get(str(r['name']))} -> {r['status']})" for r in rows
               if EXPECTED.get(str(r["name"])) != r["status"]]
    text = (f"{total} cases: " + ", ".join(f"{n} {s}" for s, n in counts.items())
            + f"; {ok_pct:.0f}% ok with default options")
    ratios = inductor_ratios(rows)
    if ratios:
        per_call = [r for _n, r, _f in ratios]
        worst = max(ratios, key=lambda item: item[1])
        slower_compile = [n for n, _r, first in ratios if first is not None and first > 1.0]
        text += (f"\nnkipy / Inductor per call over the {len(ratios)} ok cases Inductor ran: geomean "
                 f"{math.exp(statistics.fmean(math.log(r) for r in per_call)):.2f}x, worst {worst[1]:.2f}x "
                 f"({worst[0]}), {sum(r > 1.5 for r in per_call)} above 1.5x; first call slower than "
                 f"Inductor's in {len(slower_compile)}" + (f" ({', '.join(slower_compile)})" if slower_compile else ""))
    if changed:
        text += "\nstatus differs from tools/zoo/expected.py: " + ", ".join(changed)
    return text


def inductor_ratios(rows: list[dict[str, object]]) -> list[tuple[str, float, float | None]]:
    """(case, nkipy / Inductor ms per call, nkipy / Inductor first-call s) for the ok rows with both."""
    out = []
    for row in rows:
        mine, theirs = row.get("nkipy_ms"), row.get("inductor_ms")
        if row["status"] != "ok" or not isinstance(mine, float) or not isinstance(theirs, float) or theirs <= 0:
            continue
        first, their_first = row.get("nkipy_first_s"), row.get("inductor_first_s")
        compile_ratio = first / their_first if isinstance(first, float) and isinstance(their_first, float) \
            and their_first > 0 else None
        out.append((str(row["name"]), mine / theirs, compile_ratio))
    return out


def _revision() -> str:
    """The commit measured, and whether the work tree had changes to tracked files."""
    def git(*args: str) -> str:
        proc = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return f"commit {head}" + (" with uncommitted changes" if dirty else "")


def _inductor_note(rows: list[dict[str, object]], inductor: bool) -> str:
    ran = sum(1 for r in rows if r.get("inductor_ms") is not None or r.get("inductor_first_s") is not None)
    if not inductor or ran == 0:
        return " (Inductor not run)"
    if ran == len(rows):
        return ""
    return f"; Inductor run on {ran} of the {len(rows)} cases (— elsewhere: its compiles take minutes per case here)"


def write_doc(rows: list[dict[str, object]], inductor: bool) -> None:
    revisions = sorted({str(r["revision"]) for r in rows if r.get("revision")}) or [_revision()]
    tol = ", ".join(f"{str(d).removeprefix('torch.')} {t:g}" for d, t in TOLERANCE.items())
    block = (
        f"{BEGIN}\nMeasured {date.today().isoformat()} ({'; '.join(revisions)}) on {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, one torch thread per backend, host target{_inductor_note(rows, inductor)}. "
        f"Tolerances (max relative error): {tol}.\n\n{table(rows)}\n**Summary:** {summary(rows)}\n{END}"
    )
    text = DOC.read_text()
    start, end = text.index(BEGIN), text.index(END) + len(END)
    DOC.write_text(text[:start] + block + text[end:])


def print_row(row: dict[str, object]) -> None:
    print(f"{row['name']!s:28s} {row['status']!s:8s} err {_err(row):>10s}  "
          f"eager {_fmt(row.get('eager_ms'), '8.2f')} ms  "
          f"inductor {_fmt(row.get('inductor_ms'), '8.2f')} ms  nkipy {_fmt(row.get('nkipy_ms'), '8.2f')} ms  "
          f"1st {_fmt(row.get('inductor_first_s'), '6.1f')}/{_fmt(row.get('nkipy_first_s'), '6.1f')} s  "
          f"{str(row.get('error') or '')[:120]}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="", help="comma-separated case names")
    ap.add_argument("--no-inductor", action="store_true", help="skip the Inductor columns (faster)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per case (default 600)")
    ap.add_argument("--write-doc", action="store_true", help="regenerate the table in docs/MODELS.md")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON here")
    ap.add_argument("--target", choices=["host", "neuron"], default="host",
                    help="nkipy's target: host (default) or neuron through the fake Neuron stack")
    ap.add_argument("--from-json", type=Path, nargs="+", default=[],
                    help="run nothing: take the rows from these --json files (later files win), print, --write-doc")
    ap.add_argument("--calls", type=int, help="warm calls timed per backend (median; default: the runner's)")
    ap.add_argument("--warmup", type=int, default=WARMUP_CALLS,
                    help=f"untimed calls per backend before the timed ones (default {WARMUP_CALLS})")
    ap.add_argument("--cpu", type=int, help="pin each case's process to this core (taskset), as the issue's goals ask")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    inductor = not args.no_inductor
    if args.child:
        run_child(args.child, args.child_out, inductor, args.target, args.calls, args.warmup)
        return
    if args.write_doc and args.target != "host":
        ap.error("--write-doc records host-target measurements; drop it or use --target host")
    names = [n for n in args.only.split(",") if n] or [c.name for c in CASES]
    unknown = sorted(set(names) - {c.name for c in CASES})
    if unknown:
        ap.error(f"unknown case(s) {unknown}; cases: {', '.join(c.name for c in CASES)}")
    rows: list[dict[str, object]] = []
    merged: dict[str, dict[str, object]] = {}
    if args.from_json:
        for path in args.from_json:
            merged.update({str(r["name"]): r for r in json.loads(path.read_text())})
        inductor = any(r.get("inductor_ms") is not None for r in merged.values())
        names = [n for n in names if n in merged]
    for name in names:
        row = merged[name] if args.from_json else run_isolated(name, args.timeout, inductor, args.target, args.calls,
                                                                args.cpu, args.warmup)
        rows.append(row)
        print_row(row)
    print(summary(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    if args.write_doc:
        write_doc(rows, inductor)
        print(f"wrote {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
