"""The root conftest.py's SPIKY_STRICT_SKIPS=1: every kind of skip fails the run, with the reason.

Each case is a small test module run by a pytest subprocess in a temporary project whose
conftest.py is a copy of the repository's (so the real hooks run, and nothing of this
repository's configuration leaks in), once without and once with SPIKY_STRICT_SKIPS=1.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

MISSING = "spiky_no_such_module_for_strict_skips"


@dataclass(frozen=True)
class Case:
    name: str
    source: str
    lenient: str  # pytest's summary without SPIKY_STRICT_SKIPS
    lenient_rc: int  # its exit code (5: no test ran, all were skipped at collection)
    strict: str  # the summary with SPIKY_STRICT_SKIPS=1 (a skip during setup is an error of the setup)
    reason: str  # must appear in the strict run's output


CASES = [
    Case("module_importorskip",
         f"import pytest\n{MISSING} = pytest.importorskip({MISSING!r})\n\ndef test_a():\n    assert True\n",
         "1 skipped", 5, "1 error", f"could not import '{MISSING}'"),
    Case("module_skip",
         "import pytest\npytest.skip('no widget here', allow_module_level=True)\n\ndef test_a():\n    assert True\n",
         "1 skipped", 5, "1 error", "no widget here"),
    Case("module_skip_mark",
         "import pytest\npytestmark = pytest.mark.skip(reason='marked away')\n\ndef test_a():\n    assert True\n",
         "1 skipped", 0, "1 error", "marked away"),
    Case("test_skip",
         "import pytest\n\ndef test_a():\n    pytest.skip('not today')\n\ndef test_b():\n    assert True\n",
         "1 passed, 1 skipped", 0, "1 failed, 1 passed", "not today"),
    Case("fixture_importorskip",
         f"import pytest\n\n@pytest.fixture\ndef dep():\n    return pytest.importorskip({MISSING!r})\n\n"
         "def test_a(dep):\n    assert dep\n",
         "1 skipped", 0, "1 error", f"could not import '{MISSING}'"),
    Case("skipif_mark",
         "import pytest\n\n@pytest.mark.skipif(True, reason='condition held')\ndef test_a():\n    assert True\n",
         "1 skipped", 0, "1 error", "condition held"),
]

# Not skips: they keep their outcome in the strict run too.
XFAIL = (
    "import pytest\n\n@pytest.mark.xfail(reason='known')\ndef test_a():\n    assert False\n\n"
    "def test_b():\n    pytest.xfail('known too')\n\ndef test_c():\n    assert True\n"
)


def _run(project: Path, module: str, source: str, strict: bool) -> subprocess.CompletedProcess[str]:
    (project / "conftest.py").write_text((ROOT / "conftest.py").read_text())
    (project / "pytest.ini").write_text("[pytest]\n")  # the rootdir: no repository configuration
    (project / f"test_{module}.py").write_text(textwrap.dedent(source))
    env = {k: v for k, v in os.environ.items() if k not in ("SPIKY_STRICT_SKIPS", "PYTEST_ADDOPTS")}
    if strict:
        env["SPIKY_STRICT_SKIPS"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", f"test_{module}.py"],
        cwd=project, env=env, capture_output=True, text=True, timeout=120, check=False,
    )


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_skip_passes_without_strict_mode(case: Case, tmp_path: Path) -> None:
    done = _run(tmp_path, case.name, case.source, strict=False)
    assert done.returncode == case.lenient_rc, done.stdout + done.stderr
    assert f"= {case.lenient} in " in done.stdout, done.stdout


# smoke: one representative case (each runs two pytest subprocesses)
STRICT_PARAMS = [pytest.param(c, marks=pytest.mark.smoke) if c.name == "test_skip" else c for c in CASES]


@pytest.mark.parametrize("case", STRICT_PARAMS, ids=[c.name for c in CASES])
def test_skip_fails_the_run_in_strict_mode(case: Case, tmp_path: Path) -> None:
    done = _run(tmp_path, case.name, case.source, strict=True)
    assert done.returncode in (1, 2), done.stdout + done.stderr  # tests failed / collection interrupted
    assert f"= {case.strict} in " in done.stdout, done.stdout
    assert "skipped" not in done.stdout.strip().splitlines()[-1], done.stdout  # no skip left in the final line
    # The message names the module (or test) and the reason, and says why it is a failure.
    assert f"test_{case.name}.py" in done.stdout, done.stdout
    assert case.reason in done.stdout, done.stdout
    assert "SPIKY_STRICT_SKIPS=1" in done.stdout, done.stdout


def test_collection_skip_message_names_the_module(tmp_path: Path) -> None:
    done = _run(tmp_path, "module_importorskip", CASES[0].source, strict=True)
    assert (
        f"test_module_importorskip.py skipped at collection in the project's full test run (SPIKY_STRICT_SKIPS=1): "
        f"could not import '{MISSING}'" in done.stdout
    ), done.stdout
    assert "Interrupted: 1 error during collection" in done.stdout, done.stdout


def test_xfail_is_not_a_skip(tmp_path: Path) -> None:
    for strict in (False, True):
        done = _run(tmp_path, "xfail", XFAIL, strict=strict)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "= 1 passed, 2 xfailed in " in done.stdout, done.stdout
