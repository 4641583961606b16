"""Host executors: choice (config, option, auto), the XLA:CPU executable cache, fallbacks, runtime features.

The model tables of test_backend.py and tests/test_models.py run with both executors
(the ``host_executor`` fixture); this file tests what is specific to the choice.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import spiky
import spiky.torch
import spiky_ir
import spiky_runtime as rt
from spiky.torch import host_executors as he
from spiky_ir import DType, Graph, TensorType, execute

xla = pytest.mark.skipif(he.host_executor_info().xla_available is False, reason="jax/jaxlib not installed")


def _mlp_graph(batch: int = 4) -> Graph:
    g = Graph()
    x = g.add_input("x", TensorType((batch, 16), DType.float32))
    w = g.add_input("w", TensorType((16, 8), DType.float32))
    g.set_outputs([g.add_op("tanh", [g.add_op("matmul", [x, w])])])
    return g


def _inputs(batch: int = 4) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.standard_normal((batch, 16)).astype(np.float32), rng.standard_normal((16, 8)).astype(np.float32)]


@pytest.mark.smoke
def test_bad_values_are_rejected() -> None:
    with pytest.raises(spiky.SpikyOptionError, match=r"host_executor.*'numpy', 'xla'"):
        spiky.torch.validate_options({"host_executor": "jax"})
    with pytest.raises(spiky.SpikyConfigError, match="host_executor got 'cpu'"):
        spiky.torch.init_nkipy_backend(host_executor="cpu")
    assert spiky.torch.validate_options({"host_executor": "xla"})["host_executor"] == "xla"
    assert spiky.torch.validate_options(None)["host_executor"] is None  # None: the config default


@pytest.mark.smoke
def test_auto_without_jax_is_numpy_and_xla_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(he.xla_cpu, "unavailable_reason", lambda: "jax is not installed (pip install ...)")
    info = spiky.torch.host_executor_info()
    assert (info.resolved, info.xla_available) == ("numpy", False)
    assert "jax is not installed" in info.describe()
    assert he.resolve_host_executor("auto") == "numpy"
    with pytest.raises(spiky.SpikyConfigError, match=r"spiky-torch\[xla\]"):
        spiky.torch.init_nkipy_backend(host_executor="xla")


@xla
@pytest.mark.smoke
def test_option_overrides_config_and_the_log_says_which(caplog: pytest.LogCaptureFixture) -> None:
    spiky.torch.init_nkipy_backend(host_executor="numpy")
    model = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 8))
    x = torch.randn(4, 16)
    with torch.no_grad(), caplog.at_level(logging.INFO, logger="spiky.compile"):
        expected = model(x)
        by_config = torch.compile(model, backend="nkipy", dynamic=False)(x)
        torch._dynamo.reset()
        by_option = torch.compile(model, backend="nkipy", dynamic=False, options={"host_executor": "xla"})(x)
    used = [r.getMessage().split("host executor ")[1] for r in caplog.records if "host executor " in r.getMessage()]
    assert used == ["numpy", "xla"]
    torch.testing.assert_close(by_config, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(by_option, expected, rtol=1e-5, atol=1e-5)


@xla
def test_executable_is_compiled_once_then_loaded_from_the_cache_entry(caplog: pytest.LogCaptureFixture) -> None:
    spiky.torch.init_nkipy_backend(host_executor="xla")
    model = nn.Linear(16, 8)
    x = torch.randn(4, 16)
    with torch.no_grad(), caplog.at_level(logging.INFO, logger="spiky.compile"):
        torch.compile(model, backend="nkipy", dynamic=False)(x)
        torch._dynamo.reset()
        torch.compile(model, backend="nkipy", dynamic=False)(x)  # same graph: the in-memory executable
        he.clear_xla_executables()
        torch._dynamo.reset()
        out = torch.compile(model, backend="nkipy", dynamic=False)(x)  # a new process would do this
    how = [r.getMessage() for r in caplog.records if "XLA:CPU executable" in r.getMessage()]
    assert len(how) == 2, how
    assert "compiled and stored in the cache entry" in how[0] and "loaded from the cache entry" in how[1]
    entry = spiky.cache.list_entries(spiky.torch.current_config().nkipy_cache)[0]
    stored = list(entry.path.glob(he.XLA_EXECUTABLE_PREFIX + "*.bin"))
    assert len(stored) == 1 and stored[0].stat().st_size > 1000
    torch.testing.assert_close(out, model(x).detach(), rtol=1e-5, atol=1e-5)


@xla
def test_damaged_stored_executable_is_compiled_again(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cache = spiky.cache.CompileCache(tmp_path / "c")
    key = spiky.cache.CacheKey(ir_text="x", target="host", compiler="t", compiler_version="0", compiler_args="",
                               options=(), buckets=(), spiky_version="0")
    entry, _ = cache.get_or_build(key, lambda d: {}, kernel_name="k")
    g = _mlp_graph()
    he.xla_executable(g, "k", entry)
    (stored,) = entry.path.glob(he.XLA_EXECUTABLE_PREFIX + "*.bin")
    stored.write_bytes(stored.read_bytes()[:-7] + b"garbage")
    he.clear_xla_executables()
    with caplog.at_level(logging.WARNING, logger="spiky.compile"):
        exe = he.xla_executable(g, "k", entry)
    assert any("is damaged" in r.getMessage() for r in caplog.records)
    np.testing.assert_allclose(exe(_inputs())[0], execute(g, _inputs())[0], rtol=1e-5, atol=1e-6)
    he.clear_xla_executables()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="spiky.compile"):
        he.xla_executable(g, "k", entry)  # rewritten intact
    assert any("loaded from the cache entry" in r.getMessage() for r in caplog.records)


@xla
@pytest.mark.smoke
def test_collective_graphs_fall_back_to_numpy_with_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    g = Graph()
    x = g.add_input("x", TensorType((4,), DType.float32))
    g.set_outputs([g.add_op("all_reduce", [x], {"reduce_op": "sum", "group_name": "world"})])
    with caplog.at_level(logging.WARNING, logger="spiky.compile"):
        _fn, used = he.host_function(g, "k_coll", "xla")
    assert used == "numpy"
    assert any("collectives" in r.getMessage() and "world" in r.getMessage() for r in caplog.records)


@xla
def test_bundles_padding_pipelining_and_stats_with_the_xla_executor() -> None:
    """Row-wise graph (padding-safe along dim 0) in a two-bucket bundle, plain and pipelined."""
    dev = rt.Device("host", 0)
    models = {}
    for bucket in (4, 8):
        g = _mlp_graph(bucket)
        fn, used = he.host_function(g, f"mlp_{bucket}", "xla")
        assert used == "xla"
        specs = [rt.TensorSpec(v.type.static_shape(), v.type.dtype.to_numpy()) for v in g.inputs]
        out = [rt.TensorSpec(v.type.static_shape(), v.type.dtype.to_numpy()) for v in g.outputs]
        models[bucket] = dev.load_host_model(fn, specs, out, f"mlp_{bucket}")
    dims = ([{0: "s0"}, {}], [{0: "s0"}])
    plain = rt.Bundle(models, *dims, name="plain")
    piped = rt.Bundle(models, *dims, name="piped", pipelined=True)
    dev.reset_stats()
    for rows in (3, 4, 6):
        x, w = _inputs(rows)
        expected = execute(_mlp_graph(rows), [x, w])[0]
        for bundle in (plain, piped):
            (got,) = bundle.run([x, w])
            assert got.shape == (rows, 8)
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    futures = [piped.submit(list(_inputs(5))) for _ in range(4)]
    for f in futures:
        np.testing.assert_allclose(f.result()[0], execute(_mlp_graph(5), _inputs(5))[0], rtol=1e-5, atol=1e-6)
    stats = dev.stats()
    assert stats.total_executions == 10 and stats.pad_ratio > 1  # padded rows were executed


def _executors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage().split("host executor ")[1] for r in caplog.records if ": host executor " in r.getMessage()]


@xla
@pytest.mark.smoke
def test_auto_runs_tiny_graphs_on_the_numpy_plan_and_others_on_xla(caplog: pytest.LogCaptureFixture) -> None:
    spiky.torch.init_nkipy_backend(host_executor="auto")
    tiny, x_tiny = (lambda a: torch.exp(a) + 1), torch.randn(1, 8)
    mlp, x_mlp = nn.Sequential(nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 256)), torch.randn(8, 256)
    with torch.no_grad(), caplog.at_level(logging.INFO, logger="spiky.compile"):
        got_tiny = torch.compile(tiny, backend="nkipy", dynamic=False)(x_tiny)
        got_mlp = torch.compile(mlp, backend="nkipy", dynamic=False)(x_mlp)
        torch.testing.assert_close(got_tiny, tiny(x_tiny), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(got_mlp, mlp(x_mlp), rtol=1e-4, atol=1e-5)
    used = _executors_logged(caplog)
    assert len(used) == 2
    assert used[0].startswith("numpy (auto: tiny graph, 3 node(s) and 25 elements")  # x, exp, the constant 1, add
    # 1 MB of weights, well past the tiny limit: both executors were timed and the log says which won.
    match = re.fullmatch(r"(numpy|xla) \(auto: measured numpy plan ([\d,]+) µs, XLA ([\d,]+) µs per call\)", used[1])
    assert match is not None, used[1]
    plan_us, xla_us = (float(match.group(i).replace(",", "")) for i in (2, 3))
    assert match.group(1) == ("numpy" if plan_us * he.AUTO_MARGIN <= xla_us else "xla")


@xla
@pytest.mark.smoke
@pytest.mark.parametrize(("plan_s", "xla_s", "chosen"),
                         [(1e-3, 2e-3, "numpy"), (1e-3, 1.1e-3, "xla"), (None, 1e-3, "xla"), (1e-3, 0.5, "xla")])
def test_auto_keeps_xla_unless_the_plan_is_clearly_faster(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, plan_s: float | None, xla_s: float, chosen: str,
) -> None:
    def fake_best_of(fn: Any, arrays: Any, runs: int, give_up_s: float) -> float:
        fn(arrays)  # really runs: the synthetic inputs must suit both executors
        if isinstance(getattr(fn, "__self__", None), spiky_ir.Plan):
            if plan_s is None:
                raise FloatingPointError("boom")
            return plan_s
        return xla_s

    monkeypatch.setattr(he, "_best_of", fake_best_of)
    he.clear_xla_executables()
    spiky.torch.init_nkipy_backend(host_executor="auto")
    model, x = nn.Sequential(nn.Linear(64, 512), nn.GELU(), nn.Linear(512, 64)), torch.randn(16, 64)
    with torch.no_grad(), caplog.at_level(logging.INFO, logger="spiky.compile"):
        got = torch.compile(model, backend="nkipy", dynamic=False)(x)
        torch.testing.assert_close(got, model(x), rtol=1e-4, atol=1e-5)
    (used,) = _executors_logged(caplog)
    assert used.startswith(f"{chosen} (auto: ")
    if plan_s is None:
        assert "the timing run failed (FloatingPointError: boom)" in used
    if xla_s > he.AUTO_TIMING_LIMIT_S:
        assert used == "xla (auto: XLA takes 500 ms per call; the numpy plan is not timed for calls over 10 ms)"
    he.clear_xla_executables()


@pytest.mark.smoke
@pytest.mark.parametrize(
    "nodes, elements, tiny",
    [(1, 16, True), (he.TINY_GRAPH_NODES, 64, True), (he.TINY_GRAPH_NODES + 1, 64, False),
     (2, he.TINY_GRAPH_ELEMENTS // 3, True), (2, he.TINY_GRAPH_ELEMENTS // 3 + 1, False)],
)
def test_tiny_graph_limits(nodes: int, elements: int, tiny: bool) -> None:
    g = Graph()
    v = g.add_input("x", TensorType((elements,), DType.float32))
    for _ in range(nodes):
        v = g.add_op("negative", [v])
    g.set_outputs([v])  # elements * (nodes + 1) elements in all: the input and each node's result
    assert (he.tiny_graph(g) is not None) is tiny


@pytest.mark.smoke
@pytest.mark.parametrize("executor", ["numpy", "auto"])
@pytest.mark.parametrize(
    "make", [
        pytest.param(lambda: torch.randn(6, 4).t(), id="non-contiguous"),
        pytest.param(lambda: torch.randn(6, 4)[1:5:2], id="strided-slice"),
        pytest.param(lambda: torch.randn(4, 6, requires_grad=True), id="requires-grad"),
        pytest.param(lambda: torch.randn(4, 6).expand(2, 4, 6)[1], id="expanded"),
    ],
)
def test_the_fast_call_path_takes_every_kind_of_cpu_tensor(executor: str, make: Any) -> None:
    spiky.torch.init_nkipy_backend(host_executor=executor)
    x = make()

    def fn(a: torch.Tensor) -> torch.Tensor:
        return torch.tanh(a) * 2 + a.sum()

    compiled = torch.compile(fn, backend="nkipy", dynamic=False)
    for _ in range(2):
        torch.testing.assert_close(compiled(x), fn(x), rtol=1e-5, atol=1e-5)


def _many_output_graph() -> Graph:
    g = Graph()
    x = g.add_input("x", TensorType((4, 16), DType.float32))
    big = g.add_input("big", TensorType((160, 128), DType.float32))  # 80 KiB: above PACK_OUTPUT_BYTES
    small = [g.add_op(op, [x]) for op in ("tanh", "exp", "sin", "cos", "negative", "abs", "sqrt", "sigmoid")]
    g.set_outputs([*small, g.add_op("negative", [big])])
    return g


@xla
def test_small_outputs_leave_xla_packed_and_the_layout_names_the_stored_executable(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    g = _many_output_graph()
    packed, layout = he.output_layout(g)
    assert packed == list(range(8)) and [p[0] for p in layout.packed] == packed  # the 80 KiB one stays on its own
    assert he.output_layout(_mlp_graph())[0] == []  # one output: nothing to pack
    cache = spiky.cache.CompileCache(tmp_path / "c")
    key = spiky.cache.CacheKey(ir_text="x2", target="host", compiler="t", compiler_version="0", compiler_args="",
                               options=(), buckets=(), spiky_version="0")
    entry, _ = cache.get_or_build(key, lambda d: {}, kernel_name="k")
    rng = np.random.default_rng(1)
    inputs = [rng.standard_normal((4, 16)).astype(np.float32), rng.standard_normal((160, 128)).astype(np.float32)]
    for got, want in zip(he.xla_executable(g, "k", entry)(inputs), execute(g, inputs), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    (stored,) = entry.path.glob(he.XLA_EXECUTABLE_PREFIX + "*.bin")
    # Another layout (nothing packed) is another program: it never loads this file.
    monkeypatch.setattr(he, "PACK_OUTPUT_BYTES", 0)
    he.clear_xla_executables()
    with caplog.at_level(logging.INFO, logger="spiky.compile"):
        exe = he.xla_executable(g, "k", entry)
    assert any("compiled and stored" in r.getMessage() for r in caplog.records)
    assert len(list(entry.path.glob(he.XLA_EXECUTABLE_PREFIX + "*.bin"))) == 2 and stored.exists()
    for got, want in zip(exe(inputs), execute(g, inputs), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
