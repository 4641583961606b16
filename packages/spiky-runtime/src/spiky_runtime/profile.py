"""``profile(path)``: record the runtime's timeline into a Chrome/Perfetto trace file.

Open the file in https://ui.perfetto.dev or chrome://tracing: one track per thread (the
pipeline's ``copy``, ``execute`` and ``download`` workers, and each thread that ran synchronous
calls) with H2D, pad, execute, unpad and D2H events; H2D and D2H carry the bytes they moved.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

from spiky_runtime._core import Device

__all__ = ["profile"]

log = logging.getLogger("spiky.runtime")


@contextlib.contextmanager
def profile(path: str | os.PathLike[str], device: Device | None = None) -> Iterator[Device]:
    """Records every call on ``device`` (default: host:0) and writes the trace to ``path``.

    Work still in flight on the device's stream is waited for before the trace is written.

    >>> import spiky_runtime as rt
    >>> with rt.profile("/tmp/trace.json"):  # doctest: +SKIP
    ...     model.run([x])
    """
    dev = device if device is not None else Device("host", 0)
    if dev.tracing:
        raise RuntimeError(f"profile: {dev!r} is already being traced; nest no profile() on one device")
    dev.start_trace()
    try:
        yield dev
    finally:
        dev.synchronize()
        trace = dev.stop_trace()
        with open(path, "w", encoding="utf-8") as f:
            f.write(trace)
        log.info("wrote runtime trace %s", os.fspath(path))
