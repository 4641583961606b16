"""int64 on the neuron target, as the real compiler has it (through the strict fake Neuron stack).

neuronx-cc computes int64 as int32 unless given ``--native-int64=enabled``. The neuron target hands it
HLO with every s64 already narrowed, loads the NEFF with int32 where the graph has int64, narrows int64
inputs at each call (a value int32 cannot hold raises SpikyRangeError) and widens int32 results back to
int64, so results have eager's dtypes. Every case compiles one graph (~2 s on the fake), so the table is
one graph per kind of int64 use: ids in, indices out, indices in the middle, an integer scan.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from spiky import SpikyRangeError
from spiky.cache import HLO_TEXT
from spiky.testing import FakeNeuron, fake_neuron
from spiky.torch.config import BackendConfig
from spiky.torch.neuron import Int64Boundary
from spiky.torch.neuronx_cc import native_int64
from spiky_ir import DType, Graph, TensorType

NATIVE = "--native-int64=enabled"


class Embed(nn.Module):
    """Token ids in (int64, as every tokenizer gives them), the id of each row's largest logit out."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.table = nn.Embedding(50, 8)
        self.head = nn.Linear(8, 50)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.table(ids)
        return hidden, self.head(hidden).argmax(-1)


def _index_select(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    order = x.argsort(dim=-1)  # int64 indices made inside the graph (gather), and given by the caller (rows)
    return torch.gather(x, 1, order) + x.index_select(0, rows) + x.index_select(1, order[0])


def _cumsum(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return ids.cumsum(-1), (ids * 3 - 1).sum(-1)


# name, function or module factory, inputs (made after seeding)
Case = tuple[str, Callable[[], Callable[..., object]], Callable[[], tuple[torch.Tensor, ...]]]
CASES: list[Case] = [
    ("embedding_argmax", Embed, lambda: (torch.randint(0, 50, (3, 7)),)),
    ("gather_index_select", lambda: _index_select, lambda: (torch.randn(4, 9), torch.tensor([3, 0, 3, 1]))),
    ("cumsum_int64", lambda: _cumsum, lambda: (torch.randint(-1000, 1000, (5, 11)),)),
]


def _check(got: object, want: object) -> None:
    got_t = got if isinstance(got, tuple) else (got,)
    want_t = want if isinstance(want, tuple) else (want,)
    assert len(got_t) == len(want_t)
    for g, w in zip(got_t, want_t, strict=True):
        assert isinstance(g, torch.Tensor) and isinstance(w, torch.Tensor)
        assert g.dtype == w.dtype and g.shape == w.shape
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)  # ints exact; fp32 rows of a Linear


def _declared(neuron: FakeNeuron) -> set[str]:
    return {dtype for neff in neuron.neffs for _, dtype, _ in neff.inputs + neff.outputs}


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_int64_graphs_run_narrowed_and_return_int64(cache: Path, case: Case) -> None:
    _, make, inputs = case
    fn = make()
    torch.manual_seed(1)
    args = inputs()
    with fake_neuron(cache) as neuron, torch.no_grad():
        got = torch.compile(fn, backend="nkipy")(*args)
    _check(got, fn(*args))
    assert "int64" not in _declared(neuron)
    (neff,) = neuron.neffs
    assert not neff.native_int64
    (hlo,) = cache.rglob(HLO_TEXT)  # what neuronx-cc was given: no s64 anywhere
    assert "s64" not in hlo.read_text() and "s32" in hlo.read_text()


def test_dynamic_sequence_lengths_with_int64_ids(cache: Path) -> None:
    """The dynamic path: ids padded in their bucket (as int32), real lengths already int32."""
    model = Embed().eval()
    compiled = torch.compile(model, backend="nkipy", dynamic=True)
    with fake_neuron(cache) as neuron, torch.no_grad():
        torch.manual_seed(2)
        for seq in (5, 7, 12, 5):
            ids = torch.randint(0, 50, (2, seq))
            _check(compiled(ids), model(ids))
        with pytest.raises(SpikyRangeError, match=r"holds -2147483649"):
            compiled(torch.tensor([[1, -(2**31) - 1, 3, 4, 5]]))
    assert "int64" not in _declared(neuron) and len(neuron.neffs) >= 2


def test_out_of_range_input_names_the_input_the_value_and_the_flag(cache: Path) -> None:
    model = Embed().eval()
    with fake_neuron(cache) as neuron, torch.no_grad():
        compiled = torch.compile(model, backend="nkipy")
        _check(compiled(torch.tensor([[1, 2, 3]])), model(torch.tensor([[1, 2, 3]])))
        executed = neuron.execute_count()
        with pytest.raises(SpikyRangeError, match=r"int64 input \d+ \(%\w+\) holds 4294967296, outside the int32 "
                                                  r"range \[-2147483648, 2147483647\].*--native-int64=enabled"):
            compiled(torch.tensor([[1, 2**32, 3]]))
        assert neuron.execute_count() == executed  # refused before the device saw a wrapped index


def test_native_int64_keeps_s64_on_the_device(cache: Path) -> None:
    model = Embed().eval()
    ids = torch.tensor([[1, 2, 49]])
    with fake_neuron(cache, additional_compiler_args=NATIVE) as neuron, torch.no_grad():
        _check(torch.compile(model, backend="nkipy")(ids), model(ids))
        # beyond int32 is the user's business then: the NEFF takes the int64 as it is
        big = torch.tensor([[2**33]])
        _check(torch.compile(_cumsum, backend="nkipy")(big), _cumsum(big))
    assert "int64" in _declared(neuron) and all(neff.native_int64 for neff in neuron.neffs)


def test_int64_arithmetic_past_int32_inside_the_graph_wraps_as_on_hardware(cache: Path) -> None:
    """Inputs are range-checked; values the graph computes are not (nothing can check them on the
    device): an int64 product past 2**31 wraps in int32, as neuronx-cc's narrowing does on a NeuronCore."""
    x = torch.tensor([3, 70_000, -70_000])
    with fake_neuron(cache) as neuron, torch.no_grad():
        got = torch.compile(lambda t: t * t, backend="nkipy")(x)
    assert got.dtype == torch.int64 and not neuron.neffs[0].native_int64
    torch.testing.assert_close(got, (x * x).to(torch.int32).to(torch.int64))  # 4.9e9 wraps to 605032704
    assert got[1].item() != (x * x)[1].item()


@pytest.mark.smoke
@pytest.mark.parametrize(("args", "native"), [
    ("", False), (NATIVE, True), ("--native-int64 enabled", True), ("--native-int64=disabled", False),
    ("--native-int64=enabled --native-int64=disabled", False), (["-O2", "--native-int64=enabled"], True),
])
def test_native_int64_reads_the_flag_like_a_command_line(args: str | list[str], native: bool) -> None:
    assert native_int64(args) is native


def _config(args: str) -> BackendConfig:
    return BackendConfig(nkipy_cache=Path("unused"), log_level=30, rank=0, world_size=1,
                         additional_compiler_args=args, target="neuron")


@pytest.mark.smoke
def test_boundary_narrows_checks_and_widens_without_compiling() -> None:
    g = Graph()
    ids = g.add_input("ids", TensorType((3,), DType.int64))
    x = g.add_input("x", TensorType((3,), DType.float32))
    g.set_outputs([g.add_op("add", [ids, ids]), x])
    config = _config("")
    boundary = Int64Boundary.of(g, "kernel_x", config)
    assert boundary is not None and boundary.inputs == ((0, "ids"),) and boundary.outputs == (0,)
    narrowed = boundary.narrow([np.array([-(2**31), 0, 2**31 - 1]), np.ones(3, np.float32)])
    assert narrowed[0].dtype == np.int32 and narrowed[1].dtype == np.float32
    widened = boundary.widen([np.array([1, -2, 3], np.int32), np.ones(3, np.float32)])
    assert widened[0].dtype == np.int64 and widened[0].tolist() == [1, -2, 3]
    with pytest.raises(SpikyRangeError, match=r"kernel_x: int64 input 0 \(%ids\) holds 2147483648"):
        boundary.narrow([np.array([0, 2**31, 1]), np.ones(3, np.float32)])
    assert Int64Boundary.of(g, "kernel_x", _config(NATIVE)) is None
    no_int = Graph()
    y = no_int.add_input("y", TensorType((3,), DType.float32))
    no_int.set_outputs([no_int.add_op("exp", [y])])
    assert Int64Boundary.of(no_int, "kernel_y", config) is None

