"""Importing the model libraries the zoo uses, the way this machine needs it.

transformers is installed in the venv (tools/requirements-dev.txt). torchvision, timm and
pillow live in ``<venv>/spiky-zoo`` (tools/requirements-zoo.txt, installed by
tools/bootstrap.sh with ``--no-deps``), which only the zoo puts on ``sys.path``: the torchvision
wheels the index serves are CUDA builds whose compiled extension does not load next to our CPU
torch, and importing such a torchvision fails in ``torchvision/_meta_registrations.py`` on
``register_fake("torchvision::nms")``. Defining the two schemas it registers fake kernels for
(``nms``, ``qnms``) before the import makes the pure-Python models work.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from pathlib import Path
from types import ModuleType

import torch

log = logging.getLogger("spiky.zoo")

ZOO_LIBS_ENV = "SPIKY_ZOO_LIBS"
_schemas: torch.library.Library | None = None


def zoo_libs_dir() -> Path:
    """``$SPIKY_ZOO_LIBS``, else ``<venv>/spiky-zoo``."""
    return Path(os.environ.get(ZOO_LIBS_ENV) or Path(sys.prefix) / "spiky-zoo")


def setup() -> None:
    """Offline hub, the vision libraries on sys.path, torchvision's op schemas (idempotent)."""
    os.environ["HF_HUB_OFFLINE"] = "1"  # random weights from configs built in code: never download
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    libs = zoo_libs_dir()
    if not (libs / "torchvision").is_dir():
        raise RuntimeError(
            f"the model zoo's vision libraries are not installed at {libs} (no torchvision there); "
            f"run tools/bootstrap.sh, or point {ZOO_LIBS_ENV} at a folder that has them"
        )
    if str(libs) not in sys.path:
        sys.path.insert(0, str(libs))
    _define_torchvision_schemas()


def _define_torchvision_schemas() -> None:
    global _schemas
    if _schemas is not None or "torchvision" in sys.modules:
        return
    spec = importlib.util.find_spec("torchvision")
    assert spec is not None and spec.origin is not None
    for lib in Path(spec.origin).parent.glob("_C*.so"):
        try:  # a torchvision built for this torch: its own schemas and kernels
            torch.ops.load_library(str(lib))
            return
        except OSError as exc:
            log.info("torchvision's extension does not load (%s); defining its nms schemas", exc)
    _schemas = torch.library.Library("torchvision", "DEF")
    _schemas.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _schemas.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")


def torchvision() -> ModuleType:
    setup()
    import torchvision as tv

    return tv


def timm() -> ModuleType:
    setup()
    import timm as tm

    return tm


def transformers() -> ModuleType:
    setup()  # transformers imports torchvision when it can find it
    import transformers as tf

    tf.logging.set_verbosity_error()
    return tf
