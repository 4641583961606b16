"""Per-function options of ``torch.compile(model, backend="nkipy", options={...})``.

The table below is the single source of truth: validation, defaults and the docs come
from it. Unknown keys and bad values raise :class:`spiky.errors.SpikyOptionError`
naming the key and what would be valid.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from spiky.errors import SpikyOptionError


@dataclass(frozen=True)
class OptionSpec:
    name: str
    default: Any
    doc: str
    check: Callable[[Any], str | None]
    """Returns None for a good value, else what a good value looks like."""


def _path_or_none(value: Any) -> str | None:
    if value is None or isinstance(value, str | os.PathLike):
        return None
    return "a directory path (str or os.PathLike) or None"


def _bool(value: Any) -> str | None:
    return None if isinstance(value, bool) else "True or False"


OPTIONS: dict[str, OptionSpec] = {
    spec.name: spec
    for spec in (
        OptionSpec(
            "dump_ir_dir",
            None,
            "directory where each compiled graph's IR text is written as <kernel>.ir.txt",
            _path_or_none,
        ),
        OptionSpec(
            "keep_outputs_on_device",
            False,
            "calls with \"nkipy\" inputs return outputs that own pool memory (no copy through the host)",
            _bool,
        ),
    )
}


@dataclass(frozen=True)
class Options:
    """Validated options of one compiled function (every key present)."""

    values: Mapping[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.values[key]


def validate_options(options: Mapping[str, Any] | None) -> Options:
    """Check ``options`` against :data:`OPTIONS` and fill in defaults."""
    if options is not None and not isinstance(options, Mapping):
        raise SpikyOptionError(f"options must be a dict, got {type(options).__name__}")
    given = dict(options or {})
    for key, value in given.items():
        spec = OPTIONS.get(key)
        if spec is None:
            close = difflib.get_close_matches(str(key), OPTIONS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise SpikyOptionError(
                f"unknown option {key!r} for torch.compile(backend=\"nkipy\"){hint} "
                f"valid options: {', '.join(sorted(OPTIONS))}"
            )
        problem = spec.check(value)
        if problem is not None:
            raise SpikyOptionError(f"option {key!r} got {value!r}; expected {problem}")
    return Options({name: given.get(name, spec.default) for name, spec in OPTIONS.items()})
