"""Targets: which driver executes compiled graphs, and how ``"auto"`` chooses.

``neuron`` needs libnrt and a NeuronCore; this version of spiky-runtime ships only the
``host`` driver, so ``auto`` resolves to ``host`` and says why in one log line.
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


def resolve_target(target: str) -> str:
    """``"host"`` or ``"neuron"`` for a user's ``target`` argument."""
    if target not in TARGETS:
        raise SpikyConfigError(f"unknown target {target!r}; valid targets: {', '.join(TARGETS)}")
    if target == "host":
        return "host"
    libnrt = find_libnrt()
    if target == "neuron":
        raise SpikyTargetError(
            "target 'neuron' needs the nrt driver, which this version of spiky-runtime does not "
            f"include yet (libnrt: {libnrt or 'not found'}); use target='host' or 'auto'"
        )
    reason = (
        "no libnrt.so.1 found (install aws-neuronx-runtime-lib for Neuron)"
        if libnrt is None
        else f"libnrt at {libnrt}, but this spiky-runtime has no nrt driver yet"
    )
    log.info("target 'auto' resolved to 'host': %s", reason)
    return "host"


def runtime_device(target: str) -> rt.Device:
    """The runtime device that executes graphs for a resolved target."""
    if target != "host":
        raise SpikyTargetError(f"no runtime device for target {target!r}")
    return rt.Device(driver="host", index=0)
