"""Targets: which driver executes compiled graphs, and how ``"auto"`` chooses.

``neuron`` needs libnrt (``SPIKY_LIBNRT``, the loader's search path or /opt/aws/neuron/lib)
that loads with every symbol the runtime's ``nrt`` driver uses, and at least one visible
NeuronCore (``NEURON_RT_VISIBLE_CORES``). ``auto`` picks ``neuron`` then, else ``host``, and
says why in one log line. On neuron, graphs run on ``rt.Device("nrt", 0)``: the first core
this process sees (one process per core, each with its own ``NEURON_RT_VISIBLE_CORES``).
"""

from __future__ import annotations

import ctypes.util
import logging
import os
from pathlib import Path

import spiky_runtime as rt
from spiky.errors import SpikyConfigError, SpikyTargetError

log = logging.getLogger("spiky.runtime")

TARGETS = ("auto", "host", "neuron")
_LIBNRT_DIRS = ("/opt/aws/neuron/lib",)


def find_libnrt() -> str | None:
    """Path of ``libnrt.so.1`` (``SPIKY_LIBNRT``, the loader's search path, /opt/aws/neuron/lib)."""
    explicit = os.environ.get("SPIKY_LIBNRT")
    if explicit:
        return explicit if Path(explicit).exists() else None
    for directory in _LIBNRT_DIRS:
        candidate = Path(directory) / "libnrt.so.1"
        if candidate.exists():
            return str(candidate)
    return ctypes.util.find_library("nrt")


def neuron_unavailable() -> str | None:
    """None when the neuron target can run here, else why not (what is missing)."""
    libnrt = find_libnrt()
    if libnrt is None:
        return "no libnrt.so.1 found (install aws-neuronx-runtime-lib for Neuron, or set SPIKY_LIBNRT)"
    try:
        cores = rt.device_count("nrt")
    except rt.SpikyRuntimeError as exc:
        return f"libnrt at {libnrt} is not usable: {exc}"
    if cores < 1:
        visible = os.environ.get("NEURON_RT_VISIBLE_CORES")
        return f"libnrt at {libnrt} sees no NeuronCore (NEURON_RT_VISIBLE_CORES={visible!r})"
    return None


def resolve_target(target: str) -> str:
    """``"host"`` or ``"neuron"`` for a user's ``target`` argument."""
    if target not in TARGETS:
        raise SpikyConfigError(f"unknown target {target!r}; valid targets: {', '.join(TARGETS)}")
    if target == "host":
        return "host"
    reason = neuron_unavailable()
    if target == "neuron":
        if reason is not None:
            raise SpikyTargetError(f"target 'neuron' cannot run here: {reason}; use target='host' or 'auto'")
        return "neuron"
    if reason is None:
        log.info("target 'auto' resolved to 'neuron' (libnrt at %s)", find_libnrt())
        return "neuron"
    log.info("target 'auto' resolved to 'host': %s", reason)
    return "host"


def runtime_device(target: str) -> rt.Device:
    """The runtime device that executes graphs for a resolved target."""
    if target == "host":
        return rt.Device(driver="host", index=0)
    if target == "neuron":
        return rt.Device(driver="nrt", index=0)
    raise SpikyTargetError(f"no runtime device for target {target!r}")
