"""Profiling: a Chrome/Perfetto trace of the runtime (H2D, execute, D2H per call), summarised.

Open the JSON in https://ui.perfetto.dev or summarise it with `spiky trace view trace.json`.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

import spiky
import spiky.torch
from spiky.trace_summary import summarize_trace


def main() -> None:
    spiky.torch.init_nkipy_backend(target="host")
    compiled = torch.compile(torch.nn.Linear(128, 128), backend="nkipy")
    x = torch.randn(32, 128)
    with torch.no_grad():
        compiled(x)  # compile outside the trace
        path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp()) / "trace.json"
        with spiky.profile(str(path)):
            for _ in range(5):
                compiled(x)
    print(f"trace written to {path}")
    print(summarize_trace(path).format())


if __name__ == "__main__":
    main()
