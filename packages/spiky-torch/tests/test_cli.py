"""The spiky command: info, cache, ir and trace view (in-process and as the console script)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import spiky
from spiky.cli import main
from spiky.trace_summary import summarize_trace

MODEL = '''
import torch

def fn(a, b):
    return torch.relu(a @ b) * 2
'''


def test_info(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for name in ("spiky-torch", "spiky-ir", "spiky-runtime", "spiky-dist", "torch", "numpy"):
        assert f"  {name}" in out
    assert "host           available" in out
    assert "host executor  'auto' uses " in out
    assert "libnrt:" in out and "neuronx-cc:" in out
    assert "cache:" in out and "entries" in out


@pytest.mark.smoke
def test_ir_of_a_function_and_from_cache(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "model.py"
    source.write_text(MODEL)
    assert main(["ir", f"{source}:fn", "--input", "4,8", "--input", "8,3", "--show", "all"]) == 0
    out = capsys.readouterr().out
    assert "spiky-ir v1" in out and "matmul(" in out and "maximum(" in out
    assert "HloModule" in out
    assert "def kernel" in out


def test_cache_ls_show_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spiky.torch.init_nkipy_backend(nkipy_cache=tmp_path, target="host")
    torch.compile(lambda a: a.exp() + 1, backend="nkipy")(torch.ones(3))
    assert main(["cache", "--dir", str(tmp_path), "ls"]) == 0
    listing = capsys.readouterr().out
    assert "1 entries" in listing
    kernel = next(line.split()[1] for line in listing.splitlines() if "kernel_" in line)
    assert main(["cache", "--dir", str(tmp_path), "show", kernel]) == 0
    assert kernel in capsys.readouterr().out
    assert main(["ir", "--from-cache", kernel, "--dir", str(tmp_path)]) == 0
    assert "exp(" in capsys.readouterr().out
    assert main(["cache", "--dir", str(tmp_path), "clear"]) == 0
    assert "removed 1 entries" in capsys.readouterr().out


@pytest.mark.smoke
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["ir", "model.txt:fn"], "is not FILE.py:function"),
        (["ir", "/nonexistent/m.py:fn"], "no such file"),
        (["ir"], "needs FILE.py:function or --from-cache KEY"),
        (["trace", "view", "/nonexistent.json"], "cannot read trace"),
    ],
)
def test_errors_are_one_clear_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 1
    assert message in capsys.readouterr().err


def _trace(path: Path, events: list[tuple[str, int, float, float]]) -> Path:
    meta = [{"name": "thread_name", "ph": "M", "pid": 1, "tid": t, "args": {"name": n}}
            for t, n in ((1, "copy"), (2, "execute"))]
    spans = [{"name": n, "ph": "X", "pid": 1, "tid": t, "ts": ts, "dur": d} for n, t, ts, d in events]
    path.write_text(json.dumps({"traceEvents": meta + spans}))
    return path


@pytest.mark.smoke
def test_trace_summary_counts_overlap(tmp_path: Path) -> None:
    # copy: h2d 0-100, d2h 300-400; execute: 50-250 with a nested pad 60-80.
    trace = _trace(tmp_path / "t.json", [
        ("h2d", 1, 0, 100), ("d2h", 1, 300, 100), ("execute", 2, 50, 200), ("pad", 2, 60, 20)])
    summary = summarize_trace(trace)
    assert {p.name: (p.count, p.total_ms) for p in summary.phases} == {
        "h2d": (1, 0.1), "d2h": (1, 0.1), "execute": (1, 0.2), "pad": (1, 0.02)}
    assert summary.threads == {"copy": pytest.approx(0.2), "execute": pytest.approx(0.2)}
    assert summary.span_ms == pytest.approx(0.4)
    assert summary.busy_ms == pytest.approx(0.35)  # idle 250-300
    assert summary.overlap_ms == pytest.approx(0.05)  # 50-100
    assert summary.overlap_ratio == pytest.approx(0.05 / 0.35)


def test_trace_summary_sums_transfer_bytes(tmp_path: Path) -> None:
    # H2D/D2H events carry args.bytes (what the transfer moved); other phases have none.
    path = tmp_path / "bytes.json"
    events = [{"name": "H2D", "ph": "X", "pid": 1, "tid": 1, "ts": 0, "dur": 500, "args": {"bytes": 1_000_000}},
              {"name": "H2D", "ph": "X", "pid": 1, "tid": 1, "ts": 600, "dur": 500, "args": {"bytes": 3_000_000}},
              {"name": "execute", "ph": "X", "pid": 1, "tid": 2, "ts": 0, "dur": 900, "args": {"call": 1}}]
    path.write_text(json.dumps({"traceEvents": events}))
    summary = summarize_trace(path)
    assert {p.name: p.total_bytes for p in summary.phases} == {"H2D": 4_000_000, "execute": 0}
    lines = summary.format().splitlines()
    h2d = next(line for line in lines if line.startswith("H2D"))
    assert h2d.split()[-2:] == ["4000000", "4.00"]  # 4 MB in 1 ms: 4 GB/s
    execute = next(line for line in lines if line.startswith("execute"))
    assert len(execute.split()) == 4  # no bytes column for a phase that moved none


def test_trace_view_of_a_real_profile(tmp_path: Path) -> None:
    compiled = torch.compile(lambda a: a * 2 + 1, backend="nkipy")
    compiled(torch.ones(8))
    path = tmp_path / "trace.json"
    with spiky.profile(str(path)):
        for _ in range(3):
            compiled(torch.ones(8))
    summary = summarize_trace(path)
    assert any(p.name == "execute" and p.count == 3 for p in summary.phases), summary.phases
    assert summary.busy_ms > 0


def test_console_script_is_installed() -> None:
    exe = shutil.which("spiky") or str(Path(torch.__file__).parents[4] / "bin" / "spiky")
    result = subprocess.run([exe, "trace", "--help"], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0 and "view" in result.stdout
