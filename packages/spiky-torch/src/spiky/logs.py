"""One switch for Spiky's logs, in the spirit of ``TORCH_LOGS``.

``SPIKY_LOGS=compile,cache`` shows INFO records of those areas on stderr;
``+compile`` shows DEBUG too; ``all`` (or ``+all``) every area. Library code logs to
``logging.getLogger("spiky.<area>")`` and never prints.

>>> from spiky.logs import configure_logs
>>> configure_logs("compile,+runtime")  # doctest: +SKIP
{'compile': 20, 'runtime': 10}
"""

from __future__ import annotations

import logging
import os
import warnings

from spiky.errors import SpikyConfigError

AREAS = ("compile", "buckets", "cache", "runtime", "config", "dist")
"""The log areas; each is the logger ``spiky.<area>``."""

_HANDLER_NAME = "spiky-logs"


def parse_log_spec(spec: str) -> dict[str, int]:
    """``"compile,+cache"`` → ``{"compile": INFO, "cache": DEBUG}``; unknown areas raise."""
    levels: dict[str, int] = {}
    for raw in spec.split(","):
        token = raw.strip()
        if not token:
            continue
        level = logging.DEBUG if token.startswith("+") else logging.INFO
        area = token.lstrip("+")
        if area == "all":
            levels.update(dict.fromkeys(AREAS, level))
        elif area in AREAS:
            levels[area] = level
        else:
            raise SpikyConfigError(
                f"unknown log area {area!r} in SPIKY_LOGS={spec!r}; valid: {', '.join(AREAS)}, all "
                "(prefix + for DEBUG)"
            )
    return levels


def configure_logs(spec: str | None = None) -> dict[str, int]:
    """Enable the areas of ``spec`` (default: ``$SPIKY_LOGS``) with one stderr handler."""
    spec = os.environ.get("SPIKY_LOGS", "") if spec is None else spec
    levels = parse_log_spec(spec)
    if not levels:
        return levels
    root = logging.getLogger("spiky")
    if not any(h.get_name() == _HANDLER_NAME for h in root.handlers):
        handler = logging.StreamHandler()
        handler.set_name(_HANDLER_NAME)
        handler.setFormatter(logging.Formatter("[%(name)s] %(message)s"))
        root.addHandler(handler)
    for area, level in levels.items():
        logging.getLogger(f"spiky.{area}").setLevel(level)
    return levels


def configure_logs_from_env() -> None:
    """At import: apply ``$SPIKY_LOGS``, warning (not failing the import) on a bad value."""
    try:
        configure_logs()
    except SpikyConfigError as exc:
        warnings.warn(str(exc), stacklevel=2)
