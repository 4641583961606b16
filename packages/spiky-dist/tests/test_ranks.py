"""resolve_rank_world: each source in order, and the errors for impossible values."""

from __future__ import annotations

import pytest

from spiky_dist import DistConfigError, resolve_rank_world

pytestmark = pytest.mark.smoke


@pytest.mark.parametrize(
    ("rank", "world", "env", "expected"),
    [
        (None, None, {}, (0, 1)),
        (2, 4, {"RANK": "0", "WORLD_SIZE": "8"}, (2, 4)),
        (None, None, {"RANK": "3", "WORLD_SIZE": "4"}, (3, 4)),
        (None, 8, {"RANK": "5"}, (5, 8)),
        (1, None, {"WORLD_SIZE": "2"}, (1, 2)),
        (None, None, {"LOCAL_RANK": "1"}, (0, 1)),
    ],
)
def test_sources_in_order(
    rank: int | None, world: int | None, env: dict[str, str], expected: tuple[int, int]
) -> None:
    assert resolve_rank_world(rank, world, env=env) == expected


@pytest.mark.parametrize(
    ("rank", "world", "env", "message"),
    [
        (4, 4, {}, r"rank 4 is outside \[0, 4\) \(from explicit arguments\)"),
        (None, None, {"RANK": "x"}, r"RANK='x' is not an integer"),
        (0, 0, {}, r"world_size must be >= 1, got 0"),
        (None, None, {"RANK": "2", "WORLD_SIZE": "2"}, r"from RANK/WORLD_SIZE environment"),
        ("1", 2, {}, r"rank must be an int, got '1'"),
    ],
)
def test_bad_values_are_named(
    rank: object, world: int | None, env: dict[str, str], message: str
) -> None:
    with pytest.raises(DistConfigError, match=message):
        resolve_rank_world(rank, world, env=env)  # type: ignore[arg-type]


def test_torch_distributed_wins_over_env(tmp_path: object) -> None:
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1
    )
    try:
        assert resolve_rank_world(env={"RANK": "3", "WORLD_SIZE": "4"}) == (0, 1)
    finally:
        dist.destroy_process_group()
