"""Dynamic shapes end to end: buckets, JIT compiles, padding that never changes results, layouts.

On the host target; the ``*_on_neuron`` tests run a subset on the neuron target (fake Neuron stack).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

import spiky
import spiky.torch
from spiky.testing import FakeNeuron
from spiky.torch.dynamic import BucketStats, DynamicGraph, bucket_stats, real_shape, reset_bucket_stats

RTOL, ATOL = 1e-5, 1e-5  # fp32, bucket-padded vs eager
BLOCK_RTOL, BLOCK_ATOL = 1e-4, 1e-5  # attention + two layer norms accumulate more rounding


class Block(nn.Module):
    """A pre-norm transformer block: SDPA with a key-padding mask, layer norms, softmax over the sequence."""

    def __init__(self, d: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.heads = heads

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, s, self.heads, d // self.heads).transpose(1, 2)

        a = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), attn_mask=mask[:, None, None, :])
        x = x + self.proj(a.transpose(1, 2).reshape(b, s, d))
        x = x + self.mlp(self.ln2(x))
        return x.softmax(dim=1)


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))


def _stats() -> BucketStats:
    (stats,) = bucket_stats()
    return stats


@pytest.fixture(autouse=True)
def _fresh_stats() -> None:
    reset_bucket_stats()


MODELS: dict[str, Callable[[], nn.Module]] = {"linear": lambda: nn.Linear(16, 8), "mlp": _mlp}


@pytest.mark.smoke
@pytest.mark.parametrize("name", sorted(MODELS))
def test_batch_sizes_1_to_33_match_eager(name: str) -> None:
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    compiled = torch.compile(model, backend="nkipy", dynamic=True)
    with torch.no_grad():
        for batch in range(1, 34):
            x = torch.randn(batch, 16)
            out = compiled(x)
            assert out.shape == (batch, 8)
            torch.testing.assert_close(out, model(x), rtol=RTOL, atol=ATOL)
    stats = _stats()  # batch 1 is Dynamo's static specialisation; 2..33 run in pow2 buckets
    assert set(stats.bucket_hits) == {(2,), (4,), (8,), (16,), (32,), (64,)}
    assert stats.compiles == stats.jit_compiles == 6 and stats.calls == 32
    assert 1.0 < stats.pad_ratio < 2.0


BLOCK_SIZES = [(2, 2), (2, 7), (3, 5), (5, 16), (7, 9), (9, 3), (16, 17), (33, 4), (4, 33)]


@pytest.mark.slow
def test_transformer_block_dynamic_batch_and_sequence_matches_eager() -> None:
    torch.manual_seed(0)
    model = Block().eval()
    compiled = torch.compile(model, backend="nkipy", dynamic=True)
    with torch.no_grad():
        for batch, seq in BLOCK_SIZES:
            x = torch.randn(batch, seq, 32)
            mask = torch.rand(batch, seq) > 0.3
            mask[:, 0] = True
            out = compiled(x, mask)
            assert out.shape == (batch, seq, 32)
            torch.testing.assert_close(out, model(x, mask), rtol=BLOCK_RTOL, atol=BLOCK_ATOL)
    # (2, 2) first: Dynamo gives equal sizes one symbol, then recompiles with two on (2, 7)
    stats = next(s for s in bucket_stats() if s.symbols == ("s0", "s1"))
    assert set(stats.padded) == {"s0", "s1"} and not stats.exact
    assert (4, 64) in stats.bucket_hits and (64, 4) in stats.bucket_hits  # independent per-symbol buckets


@pytest.mark.smoke
def test_transformer_block_one_padded_size() -> None:
    _transformer_block_one_padded_size()


def test_transformer_block_one_padded_size_on_neuron(neuron_target: FakeNeuron) -> None:
    """On the neuron target (fake stack): attention with a key-padding mask, both dims padded, one NEFF."""
    _transformer_block_one_padded_size()
    (neff,) = neuron_target.neffs
    shapes = [shape for _, _, shape in neff.inputs]
    assert (4, 8, 32) in shapes and (4, 8) in shapes and () in shapes  # x and mask bucket-sized; a real length


def _transformer_block_one_padded_size() -> None:
    torch.manual_seed(1)
    model = Block().eval()
    compiled = torch.compile(model, backend="nkipy", dynamic=True, options={"buckets": {"s0": [4], "s1": [8]}})
    with torch.no_grad():
        for batch, seq in [(3, 5), (2, 7)]:
            x, mask = torch.randn(batch, seq, 32), torch.rand(batch, seq) > 0.5
            mask[:, -1] = True
            torch.testing.assert_close(compiled(x, mask), model(x, mask), rtol=BLOCK_RTOL, atol=BLOCK_ATOL)
    assert dict(_stats().bucket_hits) == {(4, 8): 2} and _stats().compiles == 1


@pytest.mark.smoke
def test_explicit_buckets_then_jit_beyond_the_largest() -> None:
    model = nn.Linear(16, 8).eval()
    compiled = torch.compile(model, backend="nkipy", dynamic=True, options={"buckets": [4, 16]})
    with torch.no_grad():
        for batch in (3, 2, 10, 16, 20, 30):
            x = torch.randn(batch, 16)
            torch.testing.assert_close(compiled(x), model(x), rtol=RTOL, atol=ATOL)
    stats = _stats()
    assert dict(stats.bucket_hits) == {(4,): 2, (16,): 2, (32,): 2}
    assert stats.compiles == 3 and "s0=20 fits no compiled bucket" in stats.recompile_reasons[-1]


@pytest.mark.smoke
def test_jit_off_beyond_the_largest_bucket_raises() -> None:
    model = nn.Linear(16, 8).eval()
    compiled = torch.compile(model, backend="nkipy", dynamic=True, options={"buckets": [4, 16], "jit": False})
    with torch.no_grad():
        compiled(torch.randn(3, 16))
        with pytest.raises(spiky.SpikyShapeError, match="size 17 of dynamic dim s0 is larger than the largest "
                                                        "bucket 16 and jit=False"):
            compiled(torch.randn(17, 16))


def test_first_call_compiles_one_bucket_precompile_compiles_the_ladder(caplog: pytest.LogCaptureFixture) -> None:
    model = nn.Linear(16, 8).eval()
    lazy = torch.compile(model, backend="nkipy", dynamic=True)
    with torch.no_grad():
        lazy(torch.randn(5, 16))
    assert _stats().compiles == 1
    reset_bucket_stats()
    torch._dynamo.reset()
    eager = torch.compile(model, backend="nkipy", dynamic=True,
                          options={"precompile": True, "max_bucket_size": 16, "min_bucket": 2})
    with caplog.at_level(logging.INFO, logger="spiky.buckets"), torch.no_grad():
        eager(torch.randn(5, 16))
        eager(torch.randn(13, 16))
    stats = _stats()
    assert stats.compiles == 4 and stats.jit_compiles == 0  # 2, 4, 8, 16: nothing compiled on demand
    assert "precompiling bucket 4/4: s0=16" in caplog.text


def test_jit_buckets_are_cached_on_disk() -> None:
    model = nn.Linear(16, 8).eval()
    with torch.no_grad():
        torch.compile(model, backend="nkipy", dynamic=True)(torch.randn(5, 16))
        assert _stats().cache_hits == 0
        reset_bucket_stats()
        torch._dynamo.reset()  # a fresh compile of the same graph finds the bucket on disk
        torch.compile(model, backend="nkipy", dynamic=True)(torch.randn(6, 16))
    assert _stats().compiles == 1 and _stats().cache_hits == 1


@pytest.mark.smoke
def test_bucket_dict_names_unknown_symbol() -> None:
    compiled = torch.compile(nn.Linear(4, 4), backend="nkipy", dynamic=True, options={"buckets": {"s7": [8]}})
    with torch.no_grad(), pytest.raises(Exception, match=r"names symbol\(s\) \['s7'\].*\['s0'\]"):
        compiled(torch.randn(3, 4))


@pytest.mark.smoke
def test_layouts_round_trip_pads_once() -> None:
    torch.manual_seed(0)
    first, second = nn.Linear(16, 16).eval(), nn.Sequential(nn.Linear(16, 8), nn.Softmax(dim=0)).eval()
    produce = torch.compile(first, backend="nkipy", dynamic=True,
                            options={"output_layout": "padded", "buckets": [8, 32]})
    consume = torch.compile(second, backend="nkipy", dynamic=True,
                            options={"input_layout": "padded", "buckets": [8, 32]})
    with torch.no_grad():
        for batch in (5, 3, 20):
            x = torch.randn(batch, 16)
            hidden = produce(x)
            bucket = 8 if batch <= 8 else 32
            assert hidden.shape == (bucket, 16) and real_shape(hidden) == (batch, 16)
            torch.testing.assert_close(hidden[:batch], first(x), rtol=RTOL, atol=ATOL)
            out = consume(hidden)  # softmax over the padded batch dim: masked, real rows only
            assert out.shape == (batch, 8)
            torch.testing.assert_close(out, second(first(x)), rtol=RTOL, atol=ATOL)
    for stats in bucket_stats():  # producer and consumer ran in the same buckets
        assert dict(stats.bucket_hits) == {(8,): 2, (32,): 1}


@pytest.mark.smoke
def test_padded_input_layout_takes_plain_tensors_at_their_size_and_rejects_non_buckets() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(16, 8).eval()
    consume = torch.compile(linear, backend="nkipy", dynamic=True,
                            options={"input_layout": "padded", "buckets": [8, 32]})
    produce = torch.compile(nn.Linear(16, 16).eval(), backend="nkipy", dynamic=True,
                            options={"output_layout": "padded", "buckets": [8, 12, 32]})
    with torch.no_grad():
        for batch in (5, 8):  # no real-shape metadata: an ordinary input, padded like any other
            plain = torch.randn(batch, 16)
            torch.testing.assert_close(consume(plain), linear(plain), rtol=RTOL, atol=ATOL)
        padded_to_12 = produce(torch.randn(10, 16))
        assert padded_to_12.shape == (12, 16)
        with pytest.raises(spiky.SpikyShapeError, match=r"is 12, which is not a bucket of s0"):
            consume(padded_to_12)


@pytest.mark.smoke
def test_options_change_compiles_again() -> None:
    model = nn.Linear(16, 8).eval()
    x = torch.randn(5, 16)
    with torch.no_grad():
        torch.compile(model, backend="nkipy", dynamic=True, options={"buckets": [8]})(x)
        torch.compile(model, backend="nkipy", dynamic=True, options={"buckets": [16]})(x)
        torch.compile(model, backend="nkipy", dynamic=True, options={"buckets": [8]})(x)
    # buckets [16] did not reuse the [8] code; the same options again reuse it (Dynamo compares them)
    assert sorted((dict(s.bucket_hits) for s in bucket_stats()), key=str) == [{(16,): 1}, {(8,): 2}]


def _decode_step(past_k: torch.Tensor, past_v: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                 v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One decode step with a growing KV cache, as transformers' DynamicCache does it: the new key
    and value are concatenated after the past ones (padded: the past's padding sits in the middle)."""
    keys, values = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)
    return F.scaled_dot_product_attention(q, keys, values), keys, values


def _decode_steps_share_a_bucket(monkeypatch: pytest.MonkeyPatch, routes: bool) -> None:
    general = []
    original = DynamicGraph._call_general

    def counted(self: DynamicGraph, args: list[object]) -> list[object]:
        general.append(1)
        return original(self, args)

    monkeypatch.setattr(DynamicGraph, "_call_general", counted)
    compiled = torch.compile(_decode_step, backend="nkipy", options={"buckets": {"s0": [16]}})
    torch.manual_seed(0)
    new = [torch.randn(2, 4, 1, 8) for _ in range(3)]
    with torch.no_grad():
        for rounds in range(2):
            for past in range(3, 10):  # every cache length of 8 decode steps: one padded graph
                cache = torch.randn(2, 4, past, 8), torch.randn(2, 4, past, 8)
                for tensor in cache:
                    torch._dynamo.mark_dynamic(tensor, 2)  # the cache length only, as generate() leads Dynamo to
                got, want = compiled(*cache, *new), _decode_step(*cache, *new)
                for g, w in zip(got, want, strict=True):
                    assert g.shape == w.shape
                    torch.testing.assert_close(g, w, rtol=RTOL, atol=ATOL)
            if rounds == 0:
                general.clear()
    stats = _stats()
    assert stats.padded == ("s0",) and not stats.exact, stats.exact
    assert stats.compiles == 1 and dict(stats.bucket_hits) == {(16,): 14}
    if routes:  # the second round of lengths took the remembered routes (outputs cropped there)
        assert not general
    else:  # neuron: resident weights go the general way
        assert len(general) == 7


@pytest.mark.smoke
def test_decode_steps_with_a_growing_kv_cache_share_one_padded_graph(monkeypatch: pytest.MonkeyPatch) -> None:
    _decode_steps_share_a_bucket(monkeypatch, routes=True)


def test_decode_steps_with_a_growing_kv_cache_share_one_neff(monkeypatch: pytest.MonkeyPatch,
                                                             neuron_target: FakeNeuron) -> None:
    _decode_steps_share_a_bucket(monkeypatch, routes=False)
    assert len(neuron_target.neffs) == 1


def _keep_last(hidden: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    # transformers' slice_logits_to_keep: keep=0 keeps every position; then a softmax along them
    kept = hidden[:, slice(-keep, None), :]
    return kept * 2, torch.softmax(kept, dim=1)


def _slice_from_an_int_argument_offset() -> None:
    compiled = torch.compile(_keep_last, backend="nkipy", dynamic=True)
    torch.manual_seed(0)
    for length in (5, 9, 16, 23, 9):
        hidden = torch.randn(2, length, 4)
        for got, want in zip(compiled(hidden, 0), _keep_last(hidden, 0), strict=True):
            assert got.shape == want.shape
            torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL)
    stats = _stats()
    assert "s1" in stats.padded and "s1" not in stats.exact, stats.exact
    assert len(stats.bucket_hits) < 4  # lengths 5..23 share buckets instead of compiling each


@pytest.mark.smoke
def test_slice_from_an_int_argument_offset_keeps_the_sequence_padded() -> None:
    """``hidden[:, -keep:]`` with ``keep`` an int argument (a SymInt under dynamic=True) starts at an
    offset that is fixed per bucket: the sequence still pads (its axis becomes ``s1+s2``), and the
    softmax along it masks by the real length plus that offset."""
    _slice_from_an_int_argument_offset()


def test_slice_from_an_int_argument_offset_pads_on_neuron(neuron_target: FakeNeuron) -> None:
    _slice_from_an_int_argument_offset()
    assert len(neuron_target.neffs) < 4


@pytest.mark.smoke
def test_unpaddable_dim_compiles_exact_sizes_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    def fn(x: torch.Tensor) -> torch.Tensor:
        return torch.flip(x, dims=[0]) * 2  # flip along a padded dim would move the padding first

    compiled = torch.compile(fn, backend="nkipy", dynamic=True)
    with caplog.at_level(logging.WARNING, logger="spiky.buckets"):
        for batch in (3, 5, 6):
            x = torch.randn(batch, 4)
            torch.testing.assert_close(compiled(x), fn(x))
    stats = _stats()
    assert "flip" in stats.exact["s0"] and stats.padded == ("s1",)  # s1 (the 4 columns) still pads
    assert set(stats.bucket_hits) == {(3, 4), (5, 4), (6, 4)}
    assert caplog.text.count("compiled at exact sizes") == 1


@pytest.mark.smoke
def test_reduction_output_of_bucket_size_is_not_truncated() -> None:
    def fn(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.sum(0), x.mean(0) - x  # (8,): equals bucket 8 by coincidence; (s0, 8): unpadded

    compiled = torch.compile(fn, backend="nkipy", dynamic=True, options={"buckets": [8]})
    x = torch.randn(3, 8)
    total, centred = compiled(x)
    assert total.shape == (8,) and centred.shape == (3, 8)
    torch.testing.assert_close(total, x.sum(0), rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(centred, x.mean(0) - x, rtol=RTOL, atol=ATOL)


def test_training_with_dynamic_batch_matches_eager_gradients() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.LayerNorm(32), nn.Linear(32, 8))
    compiled = torch.compile(model, backend="nkipy", dynamic=True)
    for batch in (3, 5, 6):
        x = torch.randn(batch, 16)
        compiled(x).square().mean().backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        model.zero_grad()
        model(x).square().mean().backward()
        for got, expected in zip(grads, [p.grad for p in model.parameters()], strict=True):
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
        model.zero_grad()


@pytest.mark.smoke
def test_repeated_shapes_take_the_remembered_route_with_the_same_results_and_stats() -> None:
    """Calls whose input shapes were seen before skip the symbol/bucket work; nothing observable changes."""
    torch.manual_seed(0)
    model = _mlp().eval()

    def fn(x: torch.Tensor) -> tuple[torch.Tensor, int]:
        return model(x), x.shape[0] * 2  # a SymInt output: its value comes from the route too

    compiled = torch.compile(fn, backend="nkipy", dynamic=True)
    inputs = [torch.randn(b, 16) for b in (3, 5, 3, 5, 3)]
    inputs += [torch.randn(5, 16), torch.randn(3, 16)]
    with torch.no_grad():
        for x in inputs:
            out, doubled = compiled(x)
            torch.testing.assert_close(out, model(x), rtol=RTOL, atol=ATOL)
            assert doubled == 2 * x.shape[0]
    stats = _stats()
    batches = [x.shape[0] for x in inputs]
    assert stats.calls == len(inputs) and stats.compiles == 2
    assert stats.bucket_hits == {(4,): batches.count(3), (8,): batches.count(5)}
    assert stats.real_elements == 16 * sum(batches)
    assert stats.padded_elements == 16 * (4 * batches.count(3) + 8 * batches.count(5))


@pytest.mark.smoke
def test_calls_at_a_buckets_own_sizes_run_its_model_directly_with_the_same_results_and_runtime_stats() -> None:
    """A route whose sizes are its bucket's (batch 4 and 8 here) runs the bucket's model without the
    bundle's bucket choice; padded sizes (3, 5) keep the bundle. Results, and the runtime's execution
    and bucket-hit counters, are those of the bundle path."""
    torch.manual_seed(0)
    model = _mlp().eval()
    compiled = torch.compile(model, backend="nkipy", dynamic=True)
    batches = [4, 3, 8, 5, 4, 3, 8, 5, 4]
    with torch.no_grad():
        compiled(torch.randn(2, 16))  # the first call compiles and takes the general path
        spiky.reset_stats()
        for batch in batches:
            x = torch.randn(batch, 16)
            torch.testing.assert_close(compiled(x), model(x), rtol=RTOL, atol=ATOL)
    runtime = spiky.get_stats()
    assert runtime.total_executions == len(batches) and runtime.bucket_hits == {1: len(batches)}
    stats = _stats()
    assert stats.bucket_hits[(4,)] == batches.count(4) + batches.count(3)
    assert stats.bucket_hits[(8,)] == batches.count(8) + batches.count(5)
    (graph,) = [ref() for ref in spiky.torch.dynamic._STATS]
    assert graph is not None and graph._routes is not None
    runs = {route.real_elements // 16: getattr(route.run, "keywords", None) == {"bucket": 1}
            for route in graph._routes.values()}  # batch -> runs the model directly
    assert runs == {2: True, 3: False, 4: True, 5: False, 8: True}


@pytest.mark.smoke
def test_routes_outlive_buckets_added_for_other_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bucket compiled for a new size leaves the routes of the sizes seen before in place (each
    runs what it ran), so a second turn over the same sizes takes no general call; a bucket that fits a
    route's size more tightly than its own makes that route choose again."""
    general: list[int] = []
    original = DynamicGraph._call_general

    def counted(self: DynamicGraph, args: list[object]) -> list[object]:
        general.append(1)
        return original(self, args)

    monkeypatch.setattr(DynamicGraph, "_call_general", counted)
    torch.manual_seed(0)
    model = _mlp().eval()
    compiled = torch.compile(model, backend="nkipy", dynamic=True)
    with torch.no_grad():
        for batch in [3, 9, 5, 20, 2] * 2:  # each new size a new bucket: 4, 16, 8, 32, 2
            x = torch.randn(batch, 16)
            torch.testing.assert_close(compiled(x), model(x), rtol=RTOL, atol=ATOL)
        assert len(general) == 5  # the first turn only
        (graph,) = [ref() for ref in spiky.torch.dynamic._STATS]
        assert graph is not None and graph._routes is not None
        assert {route.sizes: route.key for route in graph._routes.values()} == {
            (3,): (4,), (9,): (16,), (5,): (8,), (20,): (32,), (2,): (2,)}
        graph.compile_bucket((6,), "a tighter bucket for batch 5", jit=False)
        assert {route.sizes for route in graph._routes.values()} == {(3,), (9,), (20,), (2,)}
        x = torch.randn(5, 16)
        torch.testing.assert_close(compiled(x), model(x), rtol=RTOL, atol=ATOL)
    assert len(general) == 6 and _stats().bucket_hits[(6,)] == 1


# --- positions along padded dims: argmax / argmin / topk return real indices (issue 15) -----------------
#
# Flattening (s0, s1) or its transpose merges a padded dim into the middle of another: the padding sits
# between real elements, so an index counted in the bucket (106) is not the real one (61). Ties (few
# distinct values), -inf (the fill of a masked argmax) and NaN make any slip visible.

Ranking = Callable[[torch.Tensor], "torch.Tensor | tuple[torch.Tensor, torch.Tensor]"]
RANKINGS: dict[str, tuple[Ranking, bool]] = {
    # name -> (function, whether it returns topk (values, indices) whose tie order torch leaves open)
    "argmax_flat": (lambda x: x.argmax(), False),
    "argmin_flat": (lambda x: x.argmin(), False),
    "argmax_transposed": (lambda x: x.t().argmax(), False),
    "argmin_transposed_reshaped": (lambda x: x.t().reshape(1, -1).argmin(dim=1), False),
    "max_dim_of_transposed": (lambda x: torch.max(x.t(), dim=1), False),
    "topk1_flat": (lambda x: x.flatten().topk(1), True),
    "topk1_flat_smallest": (lambda x: x.flatten().topk(1, largest=False), True),
    "topk3_flat": (lambda x: x.flatten().topk(3), True),
    "topk3_transposed_smallest": (lambda x: x.t().flatten().topk(3, largest=False), True),
}
RANKING_SIZES = [(3, 18), (17, 4), (33, 2), (18, 33), (4, 17)]  # (rows, cols): every row count of 1, 3, 17, 33
RANKING_DATA: dict[str, Callable[[int, int], torch.Tensor]] = {
    "ties": lambda r, c: torch.randint(-2, 3, (r, c)).float(),
    "specials": lambda r, c: torch.tensor([float("-inf"), float("inf"), float("nan"), 0.0, 1.0])[
        torch.randint(0, 5, (r, c))],
    "all_minus_inf": lambda r, c: torch.full((r, c), float("-inf")),
    "late_extremes": lambda r, c: _late_extremes(r, c),
}


def _late_extremes(rows: int, cols: int) -> torch.Tensor:
    """Ties everywhere, and the extremes (twice each) in the last row and column: positions far from 0."""
    x = torch.randint(-1, 2, (rows, cols)).float()
    x[-1, -1] = x[-1, cols // 2] = x[rows // 2, -1] = 9.0
    x[-1, cols // 3] = x[rows // 3, -1] = -9.0
    return x


@pytest.mark.parametrize("name", sorted(RANKINGS))
def test_rankings_over_padded_dims_return_real_indices(name: str) -> None:
    _check_ranking(name, {})


# On the neuron target (fake stack, ~2 s per NEFF) one bucket per symbol keeps it to two compiles per case
# (the first call's graph, rows specialised to 1, then the one dynamic in both dims); the flat argmax (an
# int64 index over padded rows and columns) and topk of a transposed view (values and int64 indices through
# a sort) stand for the table.
NEURON_RANKINGS = ["argmax_flat", "topk3_transposed_smallest"]
ONE_BUCKET = {"buckets": [64]}


@pytest.mark.parametrize("name", NEURON_RANKINGS)
def test_rankings_over_padded_dims_return_real_indices_on_neuron(name: str, neuron_target: FakeNeuron) -> None:
    _check_ranking(name, ONE_BUCKET)
    assert len(neuron_target.neffs) == 2


def _check_ranking(name: str, options: dict[str, object]) -> None:
    fn, open_ties = RANKINGS[name]
    compiled = torch.compile(fn, backend="nkipy", dynamic=True, options=options)
    torch.manual_seed(0)
    for (rows, cols), (kind, make) in [(s, d) for s in [(1, 17), *RANKING_SIZES] for d in RANKING_DATA.items()]:
        x = make(rows, cols)
        got, want = compiled(x), fn(x)
        if not open_ties:
            for g, w in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,),
                            strict=True):
                torch.testing.assert_close(g, w, rtol=0, atol=0, equal_nan=True, msg=f"{rows}x{cols} {kind}")
            continue
        values, indices = got
        torch.testing.assert_close(values, want[0], rtol=0, atol=0, equal_nan=True, msg=f"{rows}x{cols} {kind}")
        # the indices point at those values, and among equal values keep index order (a stable sort)
        source = x.t().flatten() if "transposed" in name else x.flatten()
        largest = "smallest" not in name
        stable = torch.sort(source, descending=largest, stable=True).indices[: indices.numel()]
        torch.testing.assert_close(indices, stable, rtol=0, atol=0, msg=f"{rows}x{cols} {kind}")
    assert any(stats.padded for stats in bucket_stats())  # the symbols were padded, not compiled exact


SCANS_AND_SORTS: dict[str, Callable[[torch.Tensor], torch.Tensor | tuple[torch.Tensor, torch.Tensor]]] = {
    "cumsum_padded_tail": lambda x: torch.cumsum(x, 1),  # the prefix of a real element never reaches the padding
    "cumsum_flattened": lambda x: torch.cumsum(x.flatten(), 0),  # padding between real elements: masked
    "cumprod_transposed": lambda x: torch.cumprod(x.t(), 1),
    "sort_flattened_descending": lambda x: torch.sort(x.flatten(), descending=True, stable=True),
    "sort_rows": lambda x: torch.sort(x, dim=1, stable=True),
    "argsort_transposed": lambda x: torch.argsort(x.t().flatten(), stable=True),
}


@pytest.mark.parametrize("name", sorted(SCANS_AND_SORTS))
def test_scans_and_sorts_over_padded_dims_match_eager(name: str) -> None:
    _check_scan_or_sort(name, {})


@pytest.mark.parametrize("name", ["sort_rows"])  # a stable sort with int64 indices along a padded dim
def test_scans_and_sorts_over_padded_dims_match_eager_on_neuron(name: str, neuron_target: FakeNeuron) -> None:
    _check_scan_or_sort(name, ONE_BUCKET)
    assert len(neuron_target.neffs) == 2


def _check_scan_or_sort(name: str, options: dict[str, object]) -> None:
    fn = SCANS_AND_SORTS[name]
    compiled = torch.compile(fn, backend="nkipy", dynamic=True, options=options)
    torch.manual_seed(0)
    for (rows, cols), (kind, make) in [(s, d) for s in [(1, 17), *RANKING_SIZES] for d in RANKING_DATA.items()]:
        x = make(rows, cols) if "cumprod" not in name else make(rows, cols).clamp(-2, 2)
        got, want = compiled(x), fn(x)
        for g, w in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,),
                        strict=True):
            # sums may associate differently on XLA:CPU; orders and indices are exact
            tol = {"rtol": 1e-5, "atol": 1e-5} if "cum" in name else {"rtol": 0, "atol": 0}
            torch.testing.assert_close(g, w, equal_nan=True, **tol, msg=f"{rows}x{cols} {kind}")


# --- convolution nets train: convolution_backward (input, weight, bias gradients) against eager -------------


class ConvNet2d(nn.Module):
    """conv (padding), strided grouped conv, transposed conv (output_padding), a head."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, stride=2, groups=2)
        self.up = nn.ConvTranspose2d(8, 4, 3, stride=2, output_padding=1)
        self.head = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.up(F.relu(self.c2(F.relu(self.c1(x))))))
        return self.head(h.mean(dim=(2, 3)))


class ConvNet1d(nn.Module):
    """Stride-1 convolutions over a sequence whose length may be padded too (no zero padding of their own)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(4, 6, 3, dilation=2)
        self.up = nn.ConvTranspose1d(6, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(torch.tanh(self.c1(x))).sum(dim=2)


class ConvNet3d(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv3d(2, 4, (2, 3, 3), stride=(1, 2, 1), padding=(1, 0, 1))
        self.up = nn.ConvTranspose3d(4, 2, 2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(torch.sigmoid(self.c(x))).flatten(1).mean(1, keepdim=True)


CONV_NETS: dict[str, tuple[Callable[[], nn.Module], Callable[[int], tuple[int, ...]], tuple[int, ...]]] = {
    # name -> (factory, input shape for a batch size, dims to keep static under dynamic=True)
    "conv2d": (ConvNet2d, lambda b: (b, 3, 9, 9), (1, 2, 3)),  # strided convs need static image sizes
    "conv1d_dynamic_length": (ConvNet1d, lambda b: (b, 4, 5 + 2 * b), (1,)),
    "conv3d": (ConvNet3d, lambda b: (b, 2, 4, 5, 4), (1, 2, 3, 4)),
}


@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize("name", sorted(CONV_NETS))
def test_conv_net_gradients_match_eager(name: str, dynamic: bool) -> None:
    factory, shape, static_dims = CONV_NETS[name]
    torch.manual_seed(0)
    model = factory()
    compiled = torch.compile(model, backend="nkipy", dynamic=dynamic)
    for batch in (3, 17):
        x = torch.randn(shape(batch), requires_grad=True)
        xc = x.detach().clone().requires_grad_()
        if dynamic:
            torch._dynamo.mark_static(xc, static_dims)
        compiled(xc).square().mean().backward()
        got = [xc.grad, *(p.grad for p in model.parameters())]
        got = [g.clone() for g in got if g is not None]
        model.zero_grad()
        model(x).square().mean().backward()
        want = [x.grad, *(p.grad for p in model.parameters())]
        assert len(got) == len(want) == 1 + len(list(model.parameters()))
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5, msg=f"{name} batch {batch}")
        model.zero_grad()
    if dynamic:
        assert any(stats.padded for stats in bucket_stats())  # buckets served the batch sizes
