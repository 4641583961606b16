"""Each test starts with the backend uninitialised, Dynamo's caches empty and a private cache dir."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import spiky.torch


@pytest.fixture(autouse=True)
def fresh_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("SPIKY_CACHE", str(tmp_path / "cache"))
    spiky.torch.reset_nkipy_backend()
    torch._dynamo.reset()
    yield
    spiky.torch.reset_nkipy_backend()
    torch._dynamo.reset()
