"""Per-function options: validated up front, part of the compile cache key.

`spiky.compile` is `torch.compile(backend="nkipy")` with the options checked immediately; an
unknown key names itself and the valid ones.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

import spiky
import spiky.torch


def main() -> None:
    spiky.torch.init_nkipy_backend(target="host")
    try:
        spiky.compile(torch.nn.Linear(4, 4), options={"bukets": [8]})
    except spiky.SpikyOptionError as exc:
        print(f"rejected: {exc}")
    with tempfile.TemporaryDirectory() as dump:
        fn = spiky.compile(lambda x: torch.softmax(x, dim=-1) * 2, options={"dump_ir_dir": dump,
                                                                         "host_executor": "numpy"})
        fn(torch.randn(2, 5))
        for path in sorted(Path(dump).iterdir()):
            print(f"wrote {path.name} ({path.stat().st_size} bytes)")
    print("valid options:", ", ".join(sorted(spiky.torch.OPTIONS)))


if __name__ == "__main__":
    main()
