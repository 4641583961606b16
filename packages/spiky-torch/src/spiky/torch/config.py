"""Process-wide backend configuration: :func:`init_nkipy_backend` and friends."""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from spiky.cache import default_cache_dir, set_cache_dir
from spiky.errors import SpikyConfigError
from spiky.torch.host_executors import resolve_host_executor
from spiky.torch.targets import find_libnrt, resolve_target
from spiky_dist import apply_neuron_runtime_env, resolve_rank_world

log = logging.getLogger("spiky.config")

_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
__all__ = ["BackendConfig", "current_config", "default_cache_dir", "init_nkipy_backend",
           "is_nkipy_backend_initialized", "reset_nkipy_backend"]


@dataclass(frozen=True)
class BackendConfig:
    """What :func:`init_nkipy_backend` set for this process."""

    nkipy_cache: Path
    log_level: int
    rank: int
    world_size: int
    additional_compiler_args: str
    target: str
    """The resolved target: ``"host"`` or ``"neuron"``."""
    core_offset: int = 0
    """Added to the rank to pick this process's NeuronCore (``NEURON_RT_VISIBLE_CORES``)."""
    host_executor: str = "auto"
    """Default executor of host-target graphs: ``"auto"``, ``"numpy"`` or ``"xla"`` (see
    :mod:`spiky.torch.host_executors`)."""

    @property
    def rank_dir(self) -> Path:
        """This rank's own directory (``<nkipy_cache>/rank_<r>``) for traces, profiles and dumps.

        Compiled entries are shared across ranks in ``nkipy_cache`` itself: identical graphs
        compile once (the first rank to take the entry's lock) and the others reuse them.
        """
        return self.nkipy_cache / f"rank_{self.rank}"


_lock = threading.Lock()
_config: BackendConfig | None = None


def _log_level(level: int | str) -> int:
    if isinstance(level, bool) or not isinstance(level, int | str):
        raise SpikyConfigError(f"log_level must be an int or one of {_LOG_LEVELS}, got {level!r}")
    if isinstance(level, str):
        if level.upper() not in _LOG_LEVELS:
            raise SpikyConfigError(f"unknown log_level {level!r}; valid: {', '.join(_LOG_LEVELS)}")
        return int(getattr(logging, level.upper()))
    return level


def _check_device_cores(core_offset: int) -> None:
    """Refuse a ``core_offset`` the Neuron runtime can no longer honour: when the ``"nkipy"`` device
    is NeuronCore memory, the runtime started at import on ``LOCAL_RANK``'s core (offset 0)."""
    from spiky.torch import device as nkipy_device

    started = nkipy_device.STARTED_ENV.get("NEURON_RT_VISIBLE_CORES")
    if core_offset and nkipy_device.DRIVER == "nrt" and started is not None:
        raise SpikyConfigError(
            f"core_offset={core_offset}: the Neuron runtime already started on NeuronCore {started} when "
            "spiky.torch was imported (the \"nkipy\" device is NeuronCore memory); set "
            "NEURON_RT_VISIBLE_CORES before importing spiky.torch instead, or "
            "SPIKY_NKIPY_DEVICE_DRIVER=host to back the device with host memory")


def init_nkipy_backend(
    nkipy_cache: str | os.PathLike[str] | None = None,
    log_level: int | str = logging.WARNING,
    rank: int | None = None,
    world_size: int | None = None,
    additional_compiler_args: str = "",
    target: str = "auto",
    core_offset: int = 0,
    host_executor: str = "auto",
) -> BackendConfig:
    """Configure the nkipy backend for this process (once; see :func:`reset_nkipy_backend`).

    >>> import spiky.torch
    >>> spiky.torch.init_nkipy_backend(target="host")  # doctest: +SKIP

    ``rank``/``world_size`` default to what spiky-dist finds (torch.distributed, then
    ``RANK``/``WORLD_SIZE``, then 0/1). For a Neuron run, ``NEURON_RT_VISIBLE_CORES``
    (``LOCAL_RANK + core_offset``: the core on this machine) and ``NEURON_RT_ROOT_COMM_ID`` (``$MASTER_ADDR``) are set
    before the runtime starts, unless already set. ``host_executor`` runs host-target graphs
    on ``"numpy"`` (the reference), ``"xla"`` (XLA:CPU, needs ``spiky-torch[xla]``) or
    ``"auto"`` (XLA when installed); per function: ``options={"host_executor": ...}``.
    Raises ``RuntimeError`` if already initialised.
    """
    global _config
    if not isinstance(additional_compiler_args, str):
        raise SpikyConfigError(
            f"additional_compiler_args must be a str, got {type(additional_compiler_args).__name__}"
        )
    if isinstance(core_offset, bool) or not isinstance(core_offset, int) or core_offset < 0:
        raise SpikyConfigError(f"core_offset must be an int >= 0, got {core_offset!r}")
    if host_executor != "auto":  # "xla" without jax raises here, not at the first compile
        resolve_host_executor(host_executor)
    level = _log_level(log_level)
    cache = Path(nkipy_cache) if nkipy_cache is not None else default_cache_dir()
    with _lock:
        if _config is not None:
            raise RuntimeError(
                "the nkipy backend is already initialised; call "
                "spiky.torch.reset_nkipy_backend() first to initialise it again"
            )
        resolved_rank, resolved_world = resolve_rank_world(rank, world_size)
        if target != "host" and find_libnrt() is not None:
            # The Neuron runtime reads these once, when it starts: set them first.
            _check_device_cores(core_offset)
            apply_neuron_runtime_env(resolved_rank, resolved_world, core_offset)
        resolved_target = resolve_target(target)
        try:
            cache.mkdir(parents=True, exist_ok=True)
            (cache / f"rank_{resolved_rank}").mkdir(exist_ok=True)
        except OSError as exc:
            raise SpikyConfigError(
                f"cannot create nkipy_cache directory {str(cache)!r}: {exc.strerror}; "
                "pass a writable nkipy_cache= or set SPIKY_CACHE"
            ) from exc
        logging.getLogger("spiky").setLevel(level)
        _config = BackendConfig(
            nkipy_cache=cache,
            log_level=level,
            rank=resolved_rank,
            world_size=resolved_world,
            additional_compiler_args=additional_compiler_args,
            target=resolved_target,
            core_offset=core_offset,
            host_executor=host_executor,
        )
        set_cache_dir(cache)
        log.info("nkipy backend initialised: %s", _config)
        return _config


def is_nkipy_backend_initialized() -> bool:
    return _config is not None


def reset_nkipy_backend() -> None:
    """Forget the configuration so :func:`init_nkipy_backend` may run again.

    Compiled functions keep the configuration they were compiled with; call
    ``torch._dynamo.reset()`` to recompile them under a new one.
    """
    global _config
    with _lock:
        _config = None
        set_cache_dir(None)


def current_config() -> BackendConfig:
    """The active configuration; initialises with defaults (and logs it) when needed."""
    config = _config
    if config is not None:
        return config
    log.info("nkipy backend used before init_nkipy_backend(); initialising with defaults")
    try:
        return init_nkipy_backend()
    except RuntimeError:
        # Another thread initialised it between our check and our call.
        if _config is None:
            raise
        return _config
