"""Every example in examples/ runs on the host target and prints what it promises.

(examples/quickstart.py and the torchrun examples have their own tests: test_quickstart.py,
test_distributed.py and test_dist_training.py.)
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

# example → regexes its output must match
EXPECTED: dict[str, list[str]] = {
    "dynamic_shapes": [r"max \|compiled - eager\| = (\d\.\d+e-(0[6-9]|[1-9]\d))", r"jit_compiles=3"],
    "options": [r"rejected: unknown option 'bukets'.*did you mean 'buckets'", r"wrote kernel_\w+\.ir\.txt",
                r"wrote kernel_\w+\.kernel\.py"],
    "memory_and_stats": [r"executions 10, compiles 1", r"'allocation_count': [1-9]", r"cached now 0"],
    "training": [r"step 2: loss", r"max weight difference from eager after 3 steps: \d\.\d+e-(0[5-9]|[1-9]\d)"],
    "profiling": [r"trace written to", r"execute\s+5\s", r"overlap ratio"],
    "compiler_only": [r"spiky-ir v1", r"specialized input: f32\[4,8\]", r"row sums: \[1\.0, 1\.0, 1\.0, 1\.0\]",
                      r"HLO module: \d+ bytes"],
    "runtime_only": [r"buffer round trip: \[4\.0, 5\.0, 6\.0, 7\.0\]", r"shape \(5, 1\), values \[3\.0(, 3\.0){4}\]",
                     r"bucket hits \{8: 1\}"],
}


def test_every_example_is_covered() -> None:
    own_tests = {"quickstart", "distributed", "fsdp2", "tensor_parallel", "ddp"}  # under torchrun elsewhere
    assert {p.stem for p in EXAMPLES.glob("*.py")} == set(EXPECTED) | own_tests


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs(name: str, tmp_path: Path) -> None:
    env = {**os.environ, "SPIKY_CACHE": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, str(EXAMPLES / f"{name}.py")], capture_output=True, text=True,
                            timeout=180, env=env, cwd=tmp_path, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    for pattern in EXPECTED[name]:
        assert re.search(pattern, result.stdout), f"{pattern!r} not in:\n{result.stdout}"
