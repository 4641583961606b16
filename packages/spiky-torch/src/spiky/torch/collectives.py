"""Collectives inside compiled graphs: which process groups a graph uses, and who runs them.

On the host target the numpy executor runs collective ops through spiky-dist's
``HostCollectives`` (torch.distributed, gloo); on Neuron they compile into the NEFF with
HLO replica groups derived from the same process groups.
"""

from __future__ import annotations

import logging

from spiky_dist import DistConfigError, HostCollectives, replica_groups
from spiky_ir import Graph
from spiky_ir.collectives import set_collective_backend

log = logging.getLogger("spiky.dist")

_host_backend: HostCollectives | None = None


def collective_groups(graph: Graph) -> list[str]:
    """Names of the process groups the graph's collectives use, in first-use order."""
    names: list[str] = []
    for node in graph.nodes:
        name = node.attrs.get("group_name")
        if name is not None and str(name) not in names:
            names.append(str(name))
    return names


def bind_host_collectives(graph: Graph) -> None:
    """Make spiky-dist execute the graph's collectives on the host (once per process)."""
    global _host_backend
    groups = collective_groups(graph)
    if not groups or _host_backend is not None:
        return
    _host_backend = HostCollectives()
    set_collective_backend(_host_backend)
    log.info("host collectives run through torch.distributed (groups %s)", ", ".join(groups))


def graph_replica_groups(graph: Graph, world_size: int) -> dict[str, tuple[tuple[int, ...], ...]]:
    """HLO replica groups for every process group the graph names (empty without collectives)."""
    return {name: replica_groups(name, world_size) for name in collective_groups(graph)}


def host_replica_groups(graph: Graph, world_size: int) -> dict[str, tuple[tuple[int, ...], ...]] | None:
    """Replica groups for the host target's HLO artefact, or None when they cannot be derived.

    The host target executes the IR itself, so a group layout the Neuron target could not
    express (non-contiguous subgroups) only costs the cached HLO, not the run.
    """
    try:
        return graph_replica_groups(graph, world_size)
    except DistConfigError as exc:
        log.info("no HLO replica groups for this graph (%s); the host target runs it without HLO", exc)
        return None
