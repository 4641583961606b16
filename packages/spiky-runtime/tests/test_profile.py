"""Timeline traces: valid Chrome trace JSON, events nest per track, pipelined overlap visible."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import spiky_runtime as rt

EPS_US = 0.01  # timestamps are printed with 3 decimals (ns)


def slow_bundle(dev: rt.Device, pipelined: bool, dim: int = 0) -> rt.Bundle:
    """x + 1 over (s0, 256) -- or (256, s0) with dim=1, padded along the inner dim."""

    def body(xs: list[np.ndarray[Any, Any]]) -> list[np.ndarray[Any, Any]]:
        time.sleep(0.003)  # releases the GIL: the copy thread can upload meanwhile
        return [xs[0] + 1]

    def spec(b: int) -> rt.TensorSpec:
        return rt.TensorSpec((b, 256) if dim == 0 else (256, b), "float32")

    models = {b: dev.load_host_model(body, [spec(b)], [spec(b)], f"s{b}") for b in (512, 1024)}
    return rt.Bundle(models, [{dim: "s0"}], [{dim: "s0"}], name="slow", pipelined=pipelined)


def load(path: Path) -> dict[str, Any]:
    trace = json.loads(path.read_text())
    assert isinstance(trace["traceEvents"], list)
    return trace


def spans(trace: dict[str, Any]) -> list[dict[str, Any]]:
    events = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    for e in events:
        assert {"name", "ts", "dur", "pid", "tid", "args"} <= set(e)
        assert e["dur"] >= 0 and e["ts"] >= 0
    return events


def track_names(trace: dict[str, Any]) -> dict[int, str]:
    return {e["tid"]: e["args"]["name"] for e in trace["traceEvents"] if e["ph"] == "M" and e["name"] == "thread_name"}


def assert_nested(events: list[dict[str, Any]]) -> None:
    """On each track, any two events are disjoint or one contains the other."""
    by_tid: dict[int, list[dict[str, Any]]] = {}
    for e in events:
        by_tid.setdefault(e["tid"], []).append(e)
    for track in by_tid.values():
        track.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack: list[float] = []  # end times of open events
        for e in track:
            while stack and e["ts"] >= stack[-1] - EPS_US:
                stack.pop()
            end = e["ts"] + e["dur"]
            if stack:
                assert end <= stack[-1] + EPS_US, f"{e} overlaps its parent without nesting"
            stack.append(end)


@pytest.mark.smoke
def test_sync_trace_nests_in_call_spans(dev: rt.Device, tmp_path: Path) -> None:
    outer = slow_bundle(dev, pipelined=False)
    inner = slow_bundle(dev, pipelined=False, dim=1)
    path = tmp_path / "sync.json"
    with rt.profile(path, dev):
        for n in (300, 512, 700):
            outer.run([np.ones((n, 256), np.float32)])
        inner.run([np.ones((256, 300), np.float32)])  # inner dim: strided pad and unpad
    trace = load(path)
    events = spans(trace)
    assert_nested(events)
    names = [e["name"] for e in events]
    assert names.count("call") == 4
    assert set(names) == {"call", "H2D", "pad", "execute", "unpad", "D2H"}
    names_by_tid = track_names(trace)
    assert all(names_by_tid[e["tid"]].startswith("caller") for e in events)
    calls = [e for e in events if e["name"] == "call"]
    for e in events:
        if e["name"] != "call":  # every phase lies inside the call it belongs to
            parent = next(c for c in calls if c["args"]["call"] == e["args"]["call"])
            assert parent["ts"] - EPS_US <= e["ts"] and e["ts"] + e["dur"] <= parent["ts"] + parent["dur"] + EPS_US
    assert not dev.tracing


def test_pipelined_trace_shows_overlap(dev: rt.Device, tmp_path: Path) -> None:
    bundle = slow_bundle(dev, pipelined=True)
    path = tmp_path / "pipe.json"
    inputs = [np.full((600, 256), i, np.float32) for i in range(8)]
    with rt.profile(path, dev):
        futures = [bundle.submit([x], to_host=False) for x in inputs]
    for i, f in enumerate(futures):
        np.testing.assert_array_equal(f.result()[0].numpy(), inputs[i] + 1)
    trace = load(path)
    events = spans(trace)
    assert_nested(events)
    names = track_names(trace)
    tid = {v: k for k, v in names.items()}
    assert {"copy", "execute"} <= set(tid)
    uploads = [e for e in events if e["tid"] == tid["copy"] and e["name"] in ("H2D", "pad")]
    runs = [e for e in events if e["tid"] == tid["execute"] and e["name"] == "execute"]
    assert len(runs) == 8 and {e["name"] for e in uploads} == {"H2D", "pad"}
    # The upload of a later call happens while an earlier call executes.
    overlaps = [
        (u, r) for u in uploads for r in runs
        if u["args"]["call"] > r["args"]["call"] and u["ts"] < r["ts"] + r["dur"] and r["ts"] < u["ts"] + u["dur"]
    ]
    assert overlaps, "no H2D/pad overlapped an execute: the pipeline did not pipeline"


def test_tracing_off_by_default_and_restartable(dev: rt.Device, tmp_path: Path) -> None:
    assert not dev.tracing
    bundle = slow_bundle(dev, pipelined=False)
    bundle.run([np.ones((10, 256), np.float32)])  # not recorded
    with rt.profile(tmp_path / "a.json", dev):
        pass
    assert spans(load(tmp_path / "a.json")) == []
    with (
        rt.profile(tmp_path / "b.json", dev),
        pytest.raises(RuntimeError, match="already being traced"),
        rt.profile(tmp_path / "c.json", dev),
    ):
        pass
