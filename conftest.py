"""Repository-wide pytest hooks: in the project's own test run, a skip is a failure.

Tests skip when their environment lacks something (the nkipy device extension, jax for the
XLA executor, a C++ compiler, valgrind). For a user running one package's tests that is
fair; in `tools/test.sh` (and so CI), which installs all of it, a skip would hide a broken
install as a green run. `SPIKY_STRICT_SKIPS=1` (set by tools/test.sh) turns skips into
failures that say why, at both places pytest can skip:

- while running a test (`pytest.skip()` in a test or fixture, `skip`/`skipif` marks): the
  test fails;
- while collecting a module (a module-level `pytest.importorskip(...)` or
  `pytest.skip(..., allow_module_level=True)`): the module becomes a collection error naming
  the module and the reason, which fails the run.

Expected failures (`xfail`) are not skips and keep their outcome.
"""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest

STRICT_ENV = "SPIKY_STRICT_SKIPS"
_BROKEN = "tools/bootstrap.sh installs everything the tests need, so this is a broken environment"


def _strict() -> bool:
    return os.environ.get(STRICT_ENV) == "1"


def _reason(longrepr: object) -> str:
    # A skip's longrepr is (path, lineno, "Skipped: <reason>").
    text = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return str(text).removeprefix("Skipped: ")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport,
                                                                                           pytest.TestReport]:
    report = yield
    if _strict() and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = (
            f"{item.nodeid} skipped in the project's full test run ({STRICT_ENV}=1): "
            f"{_reason(report.longrepr)}; {_BROKEN}"
        )
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, pytest.CollectReport,
                                                                          pytest.CollectReport]:
    report = yield
    if _strict() and report.skipped:
        where = collector.nodeid or str(collector.path)
        report.outcome = "failed"
        report.longrepr = (
            f"{where} skipped at collection in the project's full test run ({STRICT_ENV}=1): "
            f"{_reason(report.longrepr)}; {_BROKEN}"
        )
    return report
