"""Runtime statistics and memory pool control for the active target's device."""

from __future__ import annotations

import spiky_runtime as rt
from spiky.torch.config import current_config
from spiky.torch.targets import runtime_device


def _device() -> rt.Device:
    return runtime_device(current_config().target)


def get_stats() -> rt.RuntimeStats:
    """A snapshot of execution statistics (executions, compiles, bucket hits, timings, transfers).

    ``total_h2d_bytes`` / ``total_d2h_bytes`` (and ``total_*_transfers``) count every byte the device's
    driver moved between host and device since the last reset: call inputs and outputs, uploads of
    device tensors, reads of them, padding rows written from the host. ``call_h2d_bytes`` /
    ``call_d2h_bytes`` are the part moved by calls, and ``mean_h2d_bytes_per_call`` /
    ``mean_d2h_bytes_per_call`` divide them by ``total_executions``. On the host target an input used
    as it is and an unpadded output are borrowed, not copied: they move 0 bytes."""
    return _device().stats()


def reset_stats() -> None:
    _device().reset_stats()


def get_memory_stats() -> dict[str, int]:
    """Memory pool counters: used/cached/total bytes, driver allocations, reuse, cache hits/misses."""
    return _device().memory_stats()


def clear_memory_pool() -> int:
    """Return every cached block to the driver; returns the bytes freed."""
    return _device().clear_cache()


def trim_memory_pool(target_bytes: int) -> int:
    """Free cached blocks, largest first, until at most ``target_bytes`` stay cached."""
    return _device().trim(target_bytes)


def device_count() -> int:
    """Number of devices of the active target."""
    config = current_config()
    return rt.device_count("host" if config.target == "host" else "nrt")
