"""The README's quickstart runs on the host target and prints what it promises."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_prints_shape_difference_and_stats(tmp_path: Path) -> None:
    env = {**os.environ, "SPIKY_CACHE": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "target: host" in out
    assert "output shape: (8, 64)" in out
    diff = re.search(r"max \|compiled - eager\|: (\S+)", out)
    assert diff is not None and float(diff.group(1)) < 1e-5
    assert "total_executions=2" in out.replace(" ", "").replace(":", "=")
    memory = re.search(r"memory: (\{.*\})", out)
    assert memory is not None
    assert "'allocation_count'" in memory.group(1)
