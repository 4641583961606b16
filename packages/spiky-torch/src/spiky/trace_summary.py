"""Summaries of runtime traces (Chrome/Perfetto JSON written by ``spiky.profile``)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spiky.errors import SpikyConfigError


@dataclass(frozen=True)
class PhaseTotal:
    name: str
    count: int
    total_ms: float
    total_bytes: int = 0
    """Bytes the phase's events moved (their ``bytes`` arg: H2D and D2H); 0 for other phases."""


@dataclass(frozen=True)
class TraceSummary:
    """Time per phase, per thread, and how much the threads' work overlapped."""

    phases: Sequence[PhaseTotal]
    threads: Mapping[str, float]
    """Thread name → busy milliseconds."""
    span_ms: float
    """First event start to last event end."""
    busy_ms: float
    """Time during which at least one thread was busy."""
    overlap_ms: float
    """Time during which two or more threads were busy at once."""

    @property
    def overlap_ratio(self) -> float:
        """Share of busy time spent with two or more threads busy (0 for a serial run)."""
        return self.overlap_ms / self.busy_ms if self.busy_ms else 0.0

    def format(self) -> str:
        lines = [f"{'phase':<12} {'count':>7} {'total ms':>10} {'mean us':>9} {'bytes':>12} {'GB/s':>7}"]
        for p in self.phases:
            rate = p.total_bytes / p.total_ms / 1e6 if p.total_ms else 0.0  # bytes/ms / 1e6 = GB/s
            moved = f" {p.total_bytes:>12} {rate:>7.2f}" if p.total_bytes else ""
            lines.append(f"{p.name:<12} {p.count:>7} {p.total_ms:>10.3f} {1e3 * p.total_ms / p.count:>9.1f}{moved}")
        lines.append("")
        for thread, ms in self.threads.items():
            lines.append(f"thread {thread:<20} busy {ms:.3f} ms")
        lines.append(
            f"span {self.span_ms:.3f} ms, busy {self.busy_ms:.3f} ms, overlapped {self.overlap_ms:.3f} ms "
            f"(overlap ratio {self.overlap_ratio:.2f})"
        )
        return "\n".join(lines)


def summarize_trace(path: str | Path) -> TraceSummary:
    """Read a trace JSON and summarise its complete (``"ph": "X"``) events."""
    try:
        data: Any = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SpikyConfigError(f"cannot read trace {str(path)!r}: {exc}; pass a file written by spiky.profile") from exc
    events = data.get("traceEvents", []) if isinstance(data, dict) else data
    if not isinstance(events, list):
        raise SpikyConfigError(f"trace {str(path)!r} has no traceEvents list")
    names = {e["tid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "thread_name"}
    spans = [e for e in events if e.get("ph") == "X"]
    if not spans:
        raise SpikyConfigError(f"trace {str(path)!r} has no events; was anything run inside spiky.profile(...)?")
    phases: dict[str, list[float]] = {}
    moved: dict[str, int] = {}
    per_thread_edges: dict[Any, list[tuple[float, int]]] = {}
    for e in spans:
        start, dur = float(e["ts"]), float(e["dur"])
        phases.setdefault(str(e["name"]), []).append(dur)
        args = e.get("args")
        if isinstance(args, dict) and isinstance(args.get("bytes"), int):
            moved[str(e["name"])] = moved.get(str(e["name"]), 0) + int(args["bytes"])
        per_thread_edges.setdefault(e["tid"], []).extend([(start, 1), (start + dur, -1)])
    # Nested events of one thread count once: merge each thread's events into busy
    # intervals, then sweep all threads' intervals to find when two or more were busy.
    thread_edges: list[tuple[float, int]] = []
    threads: dict[str, float] = {}
    for tid, tedges in per_thread_edges.items():
        depth, opened, thread_busy = 0, 0.0, 0.0
        for t, step in sorted(tedges, key=lambda x: (x[0], -x[1])):
            if depth == 0 and step > 0:
                opened = t
            depth += step
            if depth == 0:
                thread_edges += [(opened, 1), (t, -1)]
                thread_busy += t - opened
        threads[str(names.get(tid, f"tid {tid}"))] = thread_busy / 1e3
    busy = overlap = 0.0
    active, last = 0, 0.0
    for t, step in sorted(thread_edges, key=lambda x: (x[0], x[1])):
        if active >= 1:
            busy += t - last
        if active >= 2:
            overlap += t - last
        active += step
        last = t
    first = min(float(e["ts"]) for e in spans)
    end = max(float(e["ts"]) + float(e["dur"]) for e in spans)
    totals = [PhaseTotal(n, len(d), sum(d) / 1e3, moved.get(n, 0)) for n, d in sorted(phases.items())]
    return TraceSummary(totals, threads, (end - first) / 1e3, busy / 1e3, overlap / 1e3)
