"""spiky-dist: ranks, process groups and collectives for Spiky."""

from spiky_dist.errors import CollectiveError, DistConfigError
from spiky_dist.groups import group_ranks, replica_groups, resolve_group
from spiky_dist.host import REDUCE_OPS, HostCollectives
from spiky_dist.neuron_env import apply_neuron_runtime_env, neuron_runtime_env, resolve_local_rank
from spiky_dist.ranks import resolve_rank_world
from spiky_dist.staging import stage_eager_collectives

__version__ = "0.1.0"

__all__ = [
    "REDUCE_OPS", "CollectiveError", "DistConfigError", "HostCollectives", "__version__",
    "apply_neuron_runtime_env", "group_ranks", "neuron_runtime_env", "replica_groups",
    "resolve_group", "resolve_local_rank", "resolve_rank_world", "stage_eager_collectives",
]
