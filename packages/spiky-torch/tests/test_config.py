"""init_nkipy_backend / reset / options validation."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

import spiky
import spiky.torch
from spiky.errors import SpikyConfigError, SpikyOptionError, SpikyTargetError

pytestmark = pytest.mark.smoke


def test_init_sets_config(tmp_path: Path) -> None:
    config = spiky.torch.init_nkipy_backend(
        nkipy_cache=tmp_path / "c", log_level="INFO", rank=1, world_size=2, target="host"
    )
    assert spiky.torch.is_nkipy_backend_initialized()
    assert config.nkipy_cache == tmp_path / "c" and config.nkipy_cache.is_dir()
    assert (config.rank, config.world_size, config.target) == (1, 2, "host")
    assert config.log_level == logging.INFO
    assert spiky.torch.current_config() is config
    assert config.rank_dir == tmp_path / "c" / "rank_1" and config.rank_dir.is_dir()


def test_init_twice_raises_until_reset() -> None:
    spiky.torch.init_nkipy_backend(target="host")
    with pytest.raises(RuntimeError, match=r"already initialised.*reset_nkipy_backend"):
        spiky.torch.init_nkipy_backend(target="host")
    spiky.torch.reset_nkipy_backend()
    assert not spiky.torch.is_nkipy_backend_initialized()
    spiky.torch.init_nkipy_backend(target="host")
    assert spiky.torch.is_nkipy_backend_initialized()


def test_compile_before_init_uses_defaults(tmp_path: Path) -> None:
    assert not spiky.torch.is_nkipy_backend_initialized()
    out = torch.compile(lambda a: a + 1, backend="nkipy")(torch.zeros(2))
    assert out.tolist() == [1.0, 1.0]
    config = spiky.torch.current_config()
    assert config.target == "host"
    assert config.nkipy_cache == tmp_path / "cache"  # SPIKY_CACHE, set by conftest


def test_auto_resolves_to_host_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="spiky"):
        config = spiky.torch.init_nkipy_backend(target="auto", log_level="INFO")
    assert config.target == "host"
    assert any("resolved to 'host'" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"target": "gpu"}, SpikyConfigError, r"unknown target 'gpu'; valid targets: auto, host, neuron"),
        ({"target": "neuron"}, SpikyTargetError, r"target 'neuron' cannot run here: no libnrt.so.1 found"),
        ({"log_level": "LOUD"}, SpikyConfigError, r"unknown log_level 'LOUD'"),
        ({"rank": 2, "world_size": 2}, ValueError, r"rank 2 is outside \[0, 2\)"),
        ({"additional_compiler_args": ["-O2"]}, SpikyConfigError, r"must be a str, got list"),
        ({"core_offset": -1}, SpikyConfigError, r"core_offset must be an int >= 0, got -1"),
    ],
)
def test_bad_init_arguments(kwargs: dict[str, object], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        spiky.torch.init_nkipy_backend(**kwargs)  # type: ignore[arg-type]
    assert not spiky.torch.is_nkipy_backend_initialized()


def test_unwritable_cache_dir_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SpikyConfigError, match=r"cannot create nkipy_cache directory .*file/sub"):
        spiky.torch.init_nkipy_backend(nkipy_cache=blocker / "sub")


def test_unknown_option_names_key_and_valid_keys() -> None:
    message = r"unknown option 'dump_ir' .*did you mean 'dump_ir_dir'\?.*valid options: .*dump_ir_dir"
    with pytest.raises(SpikyOptionError, match=message):
        spiky.torch.validate_options({"dump_ir": "/tmp"})
    compiled = torch.compile(lambda a: a * 2, backend="nkipy", options={"pipline": True})
    with pytest.raises(Exception, match=r"unknown option 'pipline'.*valid options"):
        compiled(torch.ones(2))


def test_bad_option_value() -> None:
    with pytest.raises(SpikyOptionError, match=r"option 'dump_ir_dir' got 5; expected a directory path"):
        spiky.torch.validate_options({"dump_ir_dir": 5})


def test_dump_ir_dir_writes_the_graph(tmp_path: Path) -> None:
    compiled = torch.compile(lambda a: torch.exp(a), backend="nkipy", options={"dump_ir_dir": str(tmp_path)})
    compiled(torch.ones(3))
    (dump,) = tmp_path.glob("kernel_*.ir.txt")
    text = dump.read_text()
    assert text.startswith("spiky-ir v1\n") and "exp(" in text


def test_device_count() -> None:
    assert spiky.device_count() == 1
