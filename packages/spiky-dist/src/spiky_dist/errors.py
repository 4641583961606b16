"""Errors of spiky-dist, in the hierarchy rooted at :class:`spiky_ir.SpikyError`."""

from __future__ import annotations

from spiky_ir.errors import SpikyError


class DistConfigError(SpikyError, ValueError):
    """An impossible rank, world size, group or environment value; the message names it."""


class CollectiveError(SpikyError, RuntimeError):
    """A collective failed or timed out (often because another rank failed first)."""
