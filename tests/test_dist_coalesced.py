"""Coalesced collectives, eager collectives under fallback, and collectives over dynamic sizes,
across two real processes (torchrun on loopback, gloo; worker: workers/dist_coalesced.py).

Tolerances against eager (the worker's ``TOL``): float32 rtol = atol = 1e-6, int64 exact,
bfloat16 rtol = atol = 8e-3 (one ulp at 1). The collectives themselves come out bit-exact
(asserted below); only compiled float32 math around them (tanh, a sum) may differ by an ulp.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

WORKER = Path(__file__).parent / "workers" / "dist_coalesced.py"


def _run(torchrun: Any, **env: str) -> list[dict[str, Any]]:
    """The worker on 2 ranks (the ``torchrun`` fixture of tests/conftest.py); one report per rank."""
    reports: list[dict[str, Any]] = torchrun.reports(torchrun.run(WORKER, nproc=2, **env).stdout)
    assert [r["rank"] for r in reports] == [0, 1], reports
    return reports


@pytest.mark.slow
def test_coalesced_fallback_and_dynamic_collectives_match_eager(torchrun: Any) -> None:
    reports = _run(torchrun)
    for r in reports:
        # coalesced: (5 reduce ops x 2 collectives + all_gather) for float32 and bfloat16, int64 without avg
        # fallback: 3 programs x each rank late once; dynamic: 3 functions x 4 lengths + the pair x 3 lengths
        assert r["checks"] == {"coalesced": 11 + 9 + 11, "fallback": 6, "dynamic": 15}, r
        assert r["mismatches"] == 0
        diffs = r["diffs"]
        assert diffs["coalesced/float32"] == diffs["coalesced/int64"] == diffs["coalesced/bfloat16"] == 0.0
        assert diffs["dynamic/float32"] == 0.0
        assert diffs["fallback/float32"] <= 1e-5
        # one symbolic graph per function served every length (no recompiles)
        assert r["graphs"] == {"reduce_scatter": [4], "all_to_all": [4], "reduce_scatter_op": [4],
                               "all_reduce_coalesced": [3]}, r["graphs"]
        errors = r["errors"]
        assert errors["reduce_scatter_op"].startswith("ShapeError: ")
        assert "reduce_scatter input dim 0 (5) is not divisible by the group size 2" in errors["reduce_scatter_op"]
        assert "all_to_all input dim 0 (5) is not divisible by the group size 2" in errors["all_to_all"]
        # funcol.reduce_scatter_tensor checks divisibility itself, before any graph runs
        for mode in ("eager", "compiled"):
            assert "input dimension 0 (5 must be a multiple of group_size 2" in errors[f"funcol_reduce_scatter_{mode}"]


@pytest.mark.slow
def test_without_eager_waits_the_fallback_reads_collectives_in_flight(torchrun: Any) -> None:
    """The fallback check detects the bug it guards against: with every wait_tensor compiled (the
    identity) again, compiled partitions read buffers that eager collectives have not filled yet."""
    reports = _run(torchrun, SPIKY_TEST_PARTS="fallback", SPIKY_TEST_WAIT_COMPILED="1")
    for r in reports:
        assert r["checks"] == {"fallback": 6}, r
    # the rank that is on time reads too early in each of the 6 calls (3 programs x 2 orders)
    assert sum(r["mismatches"] for r in reports) >= 6, reports
    assert all(r["diffs"]["fallback/float32"] > 0.1 for r in reports), reports
