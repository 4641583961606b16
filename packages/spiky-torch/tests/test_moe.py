"""Mixture-of-experts layers through torch.compile(backend="nkipy"), against eager (fp32).

transformers' sparse MoE blocks route each token to its top-k experts, sort the (token, expert)
pairs by expert, count them per expert with ``torch.histc``, and multiply each expert's rows by
its weights in one grouped matmul (under torch.compile in float32, the custom op
``transformers::grouped_mm_fallback``). The blocks run static and with the token count dynamic
(one compiled function for several lengths, padded to buckets), and the grouped matmul runs
alone with rows past the last group (transformers' expert-parallel sentinels: zeros).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

import spiky.torch
from spiky_ir import fx

tf = pytest.importorskip("transformers", reason="the MoE blocks come from transformers")

TOL: dict[str, float] = {"rtol": 1e-5, "atol": 1e-5}
LENGTHS = (5, 9, 16)
LOWERED = ("aten.histc.default", "transformers.grouped_mm_fallback.default")


@pytest.fixture(autouse=True)
def _host() -> Iterator[None]:
    spiky.torch.init_nkipy_backend(target="host")
    yield
    torch._dynamo.reset()


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How often the lowerings under test ran: proves the compiled graphs contained them."""
    counts: dict[str, int] = {}
    for name in LOWERED:
        target = next(t for t in fx.LOWERINGS if str(t) == name)
        original = fx.LOWERINGS[target]

        def counted(ctx: Any, node: Any, original: Any = original, name: str = name) -> Any:
            counts[name] = counts.get(name, 0) + 1
            return original(ctx, node)

        monkeypatch.setitem(fx.LOWERINGS, target, counted)
    return counts


def _mixtral() -> Any:
    return tf.MixtralConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                            num_attention_heads=4, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2)


def _qwen2_moe() -> Any:
    return tf.Qwen2MoeConfig(vocab_size=64, hidden_size=32, intermediate_size=48, moe_intermediate_size=24,
                             shared_expert_intermediate_size=40, num_hidden_layers=1, num_attention_heads=4,
                             num_key_value_heads=2, num_experts=6, num_experts_per_tok=3)


BLOCKS: dict[str, Callable[[], Any]] = {"mixtral": _mixtral, "qwen2_moe": _qwen2_moe}


def _block(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(BLOCKS[name]())
    return model.model.layers[0].mlp.eval()  # type: ignore[no-any-return]


def _first(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out  # type: ignore[no-any-return]


@pytest.mark.parametrize(("name", "dynamic"), [("mixtral", False), ("mixtral", True), ("qwen2_moe", True)],
                         ids=["mixtral-static", "mixtral-dynamic", "qwen2_moe-dynamic"])
def test_sparse_moe_block(name: str, dynamic: bool, calls: dict[str, int]) -> None:
    block = _block(name)
    compiled = torch.compile(block, backend="nkipy")
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for length in LENGTHS if dynamic else LENGTHS[1:2]:
            x = torch.randn(2, length, 32, generator=gen)
            if dynamic:
                torch._dynamo.mark_dynamic(x, 1)
            torch.testing.assert_close(_first(compiled(x)), _first(block(x)), **TOL)
    assert set(calls) == set(LOWERED), calls


# (rows, experts, rows per expert): a group may be empty; rows past the last group give zeros.
GROUPED: dict[str, tuple[int, int, list[int]]] = {
    "all_rows": (7, 3, [2, 0, 5]),
    "sentinel_rows": (9, 4, [1, 3, 0, 2]),
}


@pytest.mark.parametrize("name", list(GROUPED))
def test_grouped_mm_fallback(name: str, calls: dict[str, int]) -> None:
    rows, experts, sizes = GROUPED[name]
    gen = torch.Generator().manual_seed(2)
    x, w = torch.randn(rows, 8, generator=gen), torch.randn(experts, 8, 5, generator=gen)
    offs = torch.cumsum(torch.tensor(sizes), 0).to(torch.int32)

    def grouped(x: torch.Tensor, w: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
        return torch.ops.transformers.grouped_mm_fallback(x, w, offs)  # type: ignore[no-any-return]

    want = grouped(x, w, offs)
    assert (want[int(offs[-1]):] == 0).all()
    torch.testing.assert_close(torch.compile(grouped, backend="nkipy")(x, w, offs), want, **TOL)
    assert calls.get(LOWERED[1]) == 1
