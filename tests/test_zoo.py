"""The model zoo's fast subset (tools/zoo), and gradients of HF Llama through SDPA.

Each fast case runs eager and nkipy (host target; Inductor only in tools/bench/bench_zoo.py)
and must end with exactly the status tools/zoo/expected.py records: never ``WRONG``; a case
that starts passing must be flipped there, so progress is recorded; a case that newly fails
fails here. The fast cases run on the neuron target too, through the fake Neuron stack
(``run_case(target="neuron")``), expected to end with the same status.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

from zoo.cases import BY_NAME, CASES, TOLERANCE
from zoo.expected import EXPECTED
from zoo.runner import STATUSES, rel_err, run_case

FAST = [c.name for c in CASES if c.fast]


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A fresh compile cache per test; the backend reset before and after."""
    import spiky.torch

    monkeypatch.setenv("SPIKY_CACHE", str(tmp_path / "cache"))
    torch._dynamo.reset()
    spiky.torch.reset_nkipy_backend()
    yield
    torch._dynamo.reset()
    spiky.torch.reset_nkipy_backend()


def test_expected_table_covers_every_case() -> None:
    assert set(EXPECTED) == set(BY_NAME), (
        f"tools/zoo/expected.py and tools/zoo/cases.py disagree: missing {sorted(set(BY_NAME) - set(EXPECTED))}, "
        f"unknown {sorted(set(EXPECTED) - set(BY_NAME))}"
    )
    bad = {name: s for name, s in EXPECTED.items() if s not in STATUSES}
    assert not bad, f"expected statuses must be one of {STATUSES}: {bad}"
    wrong_fast = [name for name in FAST if EXPECTED[name] == "WRONG"]
    assert not wrong_fast, f"a fast case may not be expected WRONG: {wrong_fast}"


@pytest.mark.parametrize("name", FAST)
def test_fast_case_has_its_expected_status(name: str) -> None:
    _check_status(name, "host")


# All four fast cases on neuron (one NEFF each; the fake compiles a zoo model in a few seconds): token ids
# through the int64 boundary (llama's causal decoder, bert's encoder with token types, roberta's position ids
# computed by an int64 cumsum over the ids) and torchvision's convolutions (resnet18).
@pytest.mark.parametrize("name", FAST)
def test_fast_case_on_neuron_has_its_expected_status(name: str) -> None:
    _check_status(name, "neuron")


def _check_status(name: str, target: str) -> None:
    result = run_case(BY_NAME[name], inductor=False, timed_calls=1, target=target)
    assert result.status != "WRONG", (
        f"{name} on {target} gives wrong results: max error {result.max_err} ({result.error})")
    want = EXPECTED[name]
    if result.status != want:
        better = STATUSES.index(result.status) < STATUSES.index(want)
        hint = "it improved: flip it in tools/zoo/expected.py" if better else "a regression"
        pytest.fail(f"{name} on {target}: status {result.status}, tools/zoo/expected.py says {want} ({hint}); "
                    f"max error {result.max_err}, error: {result.error}")


def _llama_training_errors(table: dict[Any, Any]) -> tuple[float, list[tuple[str, float]]]:
    """Loss and per-parameter gradient relative errors of HF Llama trained through aot_autograd
    with this decomposition table (graphs run as traced), against eager."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    model, inputs = BY_NAME["llama_train"].build()
    assert model.config._attn_implementation == "sdpa"  # the library's default attention
    ref = copy.deepcopy(model)
    ref_loss = ref(**inputs).loss
    ref_loss.backward()

    def run_traced(gm: torch.fx.GraphModule, _inputs: Any) -> Any:
        return make_boxed_func(gm.forward)

    backend = aot_autograd(fw_compiler=run_traced, bw_compiler=run_traced, decompositions=table)
    loss = torch.compile(model, backend=backend)(**inputs).loss
    loss.backward()
    grads = []
    for (name, p), q in zip(model.named_parameters(), ref.parameters(), strict=True):
        assert p.grad is not None and q.grad is not None, name
        grads.append((name, rel_err(p.grad, q.grad)))
    assert len(grads) == len(list(ref.parameters())) > 10
    return rel_err(loss, ref_loss), grads


def test_llama_sdpa_training_gradients_match_eager() -> None:
    """HF Llama with its default SDPA attention, one training step through our decomposition table.

    torch's core_aten_decompositions() has an export-only decomposition of SDPA's CPU kernel
    that put the attention matrix where the backward reads the logsumexp: identical loss,
    gradients off by 10-30x. The nkipy end-to-end row of this case is the zoo's llama_train.
    """
    from spiky.torch.decompositions import spiky_decompositions

    tol = TOLERANCE[torch.float32]
    loss_err, grads = _llama_training_errors(spiky_decompositions())
    assert loss_err <= tol
    bad = [(name, f"{err:.2e}") for name, err in grads if err > tol]
    assert not bad, f"gradients off (relative error > {tol}): {bad}"


def test_torch_core_table_gets_llama_gradients_wrong() -> None:
    """The check above catches the bug: with torch's table the loss is right, gradients are not."""
    from torch._decomp import core_aten_decompositions

    tol = TOLERANCE[torch.float32]
    loss_err, grads = _llama_training_errors(core_aten_decompositions())
    assert loss_err <= tol
    assert max(err for _, err in grads) > 100 * tol
