"""``spiky.profile(path)``: trace the runtime of the active target into a Chrome/Perfetto file.

>>> import spiky
>>> with spiky.profile("trace.json"):  # doctest: +SKIP
...     fast(x)

One track per runtime thread (copy, execute, and each caller), with H2D, pad, execute,
unpad and D2H events; each H2D and D2H event carries the bytes it moved (``args.bytes``; an
input the host driver borrows is not copied and has no H2D event). Open the file in
https://ui.perfetto.dev or chrome://tracing; ``spiky trace view`` sums time and bytes per phase.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import spiky_runtime as rt
from spiky.torch.config import current_config
from spiky.torch.targets import runtime_device

__all__ = ["profile"]


@contextlib.contextmanager
def profile(path: str | os.PathLike[str]) -> Iterator[rt.Device]:
    """Records every runtime call on the active target's device and writes ``path`` on exit."""
    with rt.profile(path, runtime_device(current_config().target)) as device:
        yield device
