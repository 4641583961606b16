"""Repository-wide pytest hook: in the project's own test run, a skip is a failure.

Tests skip when their environment lacks something (the nkipy device extension, jax for the
XLA executor, a C++ compiler, valgrind). For a user running one package's tests that is
fair; in `tools/test.sh` (and so CI), which installs all of it, a skip would hide a broken
install as a green run. `SPIKY_STRICT_SKIPS=1` (set by tools/test.sh) turns skips into
failures that say why.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("SPIKY_STRICT_SKIPS") == "1" and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = (
            f"skipped in the project's full test run (SPIKY_STRICT_SKIPS=1): {reason}; "
            "tools/bootstrap.sh installs everything the tests need, so this is a broken environment"
        )
