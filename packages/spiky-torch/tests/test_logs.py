"""SPIKY_LOGS: parsing, levels, one handler, and a bad value at import."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
import torch

import spiky
from spiky.errors import SpikyConfigError
from spiky.logs import AREAS, configure_logs, parse_log_spec


@pytest.mark.smoke
@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("", {}),
        ("compile", {"compile": logging.INFO}),
        ("compile, +cache", {"compile": logging.INFO, "cache": logging.DEBUG}),
        ("+all", dict.fromkeys(AREAS, logging.DEBUG)),
    ],
)
def test_parse(spec: str, expected: dict[str, int]) -> None:
    assert parse_log_spec(spec) == expected


@pytest.mark.smoke
def test_unknown_area_is_named() -> None:
    with pytest.raises(SpikyConfigError, match=r"unknown log area 'compiler'.*valid: compile, buckets"):
        parse_log_spec("compiler")


def test_compile_area_logs_each_compile(caplog: pytest.LogCaptureFixture) -> None:
    configure_logs("compile")
    configure_logs("compile")  # idempotent: still one handler
    handlers = [h for h in logging.getLogger("spiky").handlers if h.get_name() == "spiky-logs"]
    assert len(handlers) == 1
    try:
        with caplog.at_level(logging.INFO, logger="spiky.compile"):
            torch.compile(lambda a: a * 3, backend="nkipy")(torch.ones(2))
        assert any(r.name == "spiky.compile" and "compiled kernel_" in r.getMessage() for r in caplog.records)
    finally:
        logging.getLogger("spiky").removeHandler(handlers[0])
        logging.getLogger("spiky.compile").setLevel(logging.NOTSET)


def test_bad_env_value_warns_at_import_instead_of_failing() -> None:
    env = {**os.environ, "SPIKY_LOGS": "compile,bogus"}
    result = subprocess.run(
        [sys.executable, "-W", "always", "-c", "import spiky; print('imported')"],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )
    assert result.returncode == 0 and "imported" in result.stdout
    assert "unknown log area 'bogus'" in result.stderr


@pytest.mark.smoke
def test_spiky_compile_validates_options_up_front() -> None:
    model = torch.nn.Linear(4, 2)
    with pytest.raises(spiky.SpikyOptionError, match=r"unknown option 'bukets'"):
        spiky.compile(model, options={"bukets": [4]})
    compiled = spiky.compile(model)
    x = torch.randn(3, 4)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)
