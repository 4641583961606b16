"""NEURON_RT_* variables a rank sets before the Neuron runtime starts."""

from __future__ import annotations

import pytest

from spiky_dist import DistConfigError, apply_neuron_runtime_env, neuron_runtime_env

pytestmark = pytest.mark.smoke


@pytest.mark.parametrize(
    ("rank", "world", "offset", "env", "expected"),
    [
        (0, 1, 0, {}, {"NEURON_RT_VISIBLE_CORES": "0"}),
        (3, 4, 0, {"MASTER_ADDR": "10.0.0.5"},
         {"NEURON_RT_VISIBLE_CORES": "3", "NEURON_RT_ROOT_COMM_ID": "10.0.0.5:62182"}),
        (1, 2, 4, {"MASTER_ADDR": "host"},
         {"NEURON_RT_VISIBLE_CORES": "5", "NEURON_RT_ROOT_COMM_ID": "host:62182"}),
        (1, 2, 0, {"NEURON_RT_VISIBLE_CORES": "7", "NEURON_RT_ROOT_COMM_ID": "x:1"}, {}),
        # two machines (torchrun --nnodes 2 --nproc-per-node 2): the core is the local rank's
        (3, 4, 0, {"MASTER_ADDR": "n0", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"},
         {"NEURON_RT_VISIBLE_CORES": "1", "NEURON_RT_ROOT_COMM_ID": "n0:62182"}),
        (2, 4, 8, {"MASTER_ADDR": "n0", "LOCAL_RANK": "0"},
         {"NEURON_RT_VISIBLE_CORES": "8", "NEURON_RT_ROOT_COMM_ID": "n0:62182"}),
        (5, 8, 0, {"MASTER_ADDR": "n0", "LOCAL_WORLD_SIZE": "4"},  # no LOCAL_RANK: rank % local world
         {"NEURON_RT_VISIBLE_CORES": "1", "NEURON_RT_ROOT_COMM_ID": "n0:62182"}),
    ],
)
def test_env(rank: int, world: int, offset: int, env: dict[str, str], expected: dict[str, str]) -> None:
    assert neuron_runtime_env(rank, world, offset, env=env) == expected


def test_apply_sets_and_keeps_user_values() -> None:
    env = {"MASTER_ADDR": "m", "NEURON_RT_VISIBLE_CORES": "2"}
    assert apply_neuron_runtime_env(1, 2, comm_port=7000, env=env) == {"NEURON_RT_ROOT_COMM_ID": "m:7000"}
    assert env == {"MASTER_ADDR": "m", "NEURON_RT_VISIBLE_CORES": "2", "NEURON_RT_ROOT_COMM_ID": "m:7000"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rank": 0, "world_size": 2, "env": {}}, r"needs MASTER_ADDR"),
        ({"rank": 0, "world_size": 1, "core_offset": -1, "env": {}}, r"core_offset must be >= 0, got -1"),
        ({"rank": 0, "world_size": 1, "comm_port": 70000, "env": {}}, r"comm port 70000 is not a TCP port"),
        ({"rank": 0, "world_size": 1, "env": {"LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "2"}},
         r"LOCAL_RANK=2 is outside \[0, LOCAL_WORLD_SIZE=2\)"),
        ({"rank": 0, "world_size": 1, "env": {"LOCAL_RANK": "one"}}, r"LOCAL_RANK='one' is not an integer"),
        ({"rank": 0, "world_size": 1, "env": {"LOCAL_WORLD_SIZE": "0"}}, r"LOCAL_WORLD_SIZE=0 must be >= 1"),
    ],
)
def test_bad_values(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(DistConfigError, match=message):
        neuron_runtime_env(**kwargs)  # type: ignore[arg-type]
