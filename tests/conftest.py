"""Every valid graph built by a spiky-ir test must round-trip through the text form."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from spiky_ir.testing import check_recorded, record_graphs


@pytest.fixture(autouse=True)
def _text_round_trip() -> Iterator[None]:
    with record_graphs() as graphs:
        yield
    check_recorded(graphs)
