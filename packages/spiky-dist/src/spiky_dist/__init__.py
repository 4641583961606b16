"""spiky-dist: ranks, process groups and collectives for Spiky."""

from spiky_dist.ranks import DistConfigError, resolve_rank_world

__version__ = "0.1.0"

__all__ = ["DistConfigError", "__version__", "resolve_rank_world"]
