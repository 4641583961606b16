"""FX → IR lowerings that real models need, against torch eager (fp32 unless a case says otherwise).

- lifted constant tensors (``get_attr``) become ``literal`` nodes whose data is an attribute
  (:class:`spiky_ir.types.DenseArray`, text form ``dense<f32[2]:HEX>``, exact);
- ``prims.convert_element_type`` (Dynamo's float64 scalar inputs under ``dynamic=True``);
- negative starts of slices and negative indices over symbolic dims (their real length);
- ``as_strided`` where sizes, strides and offsets prove it a view, refused otherwise;
- torch's fused ``_transformer_encoder_layer_fwd`` (``nn.TransformerEncoderLayer`` under no_grad);
- training batch norm (``_native_batch_norm_legit_functional``: running stats with momentum and
  the unbiased variance) and ``_native_batch_norm_legit.no_stats``;
- the backward of SDPA (``_scaled_dot_product_flash_attention_for_cpu_backward``).

Each graph is traced with ``make_fx`` (symbolic shapes where a case says dynamic), lowered,
run by the reference executor at one or more sizes and compared with eager; the emitted
NKIPy kernel must agree with the reference bit for bit, and the text form round-trips (the
conftest checks every graph built here).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the FX lowering needs torch (spiky-ir[torch])")
ml_dtypes = pytest.importorskip("ml_dtypes", reason="bfloat16 arrays need ml_dtypes")

from torch._decomp import core_aten_decompositions  # noqa: E402
from torch.fx.experimental.proxy_tensor import make_fx  # noqa: E402

from spiky_ir import (  # noqa: E402
    DType,
    Graph,
    IRError,
    LoweringError,
    TensorType,
    execute,
    parse_graph,
    print_graph,
    specialize,
)
from spiky_ir.fx import lower_fx, tensor_to_numpy  # noqa: E402
from spiky_ir.kernel_source import run_kernel  # noqa: E402
from spiky_ir.padding import pad_graph  # noqa: E402
from spiky_ir.types import DenseArray  # noqa: E402

F = torch.nn.functional
aten = torch.ops.aten
F32_TOL = {"rtol": 1e-5, "atol": 1e-5}
"""fp32 composites against eager: a few roundings apart (matmul and reduction order)."""


def _numpy(t: torch.Tensor) -> np.ndarray[Any, Any]:
    return tensor_to_numpy(t)


def _torch(a: np.ndarray[Any, Any]) -> torch.Tensor:
    if a.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(np.ascontiguousarray(a))


def _trace(fn: Callable[..., Any], inputs: Sequence[Any], dynamic: bool | Sequence[Sequence[int]] = False) -> Any:
    """make_fx to core ATen, in fake mode as aot_autograd traces (real-mode tracing records views
    without their storage offsets). ``dynamic``: every dim symbolic (True), or per input the
    dims that are (the others static, as Dynamo keeps parameters)."""
    decompositions = core_aten_decompositions()
    if isinstance(dynamic, bool):
        return make_fx(fn, tracing_mode="symbolic" if dynamic else "fake", decomposition_table=decompositions)(*inputs)
    from torch._dynamo.source import ConstantSource
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext

    mode = FakeTensorMode(shape_env=ShapeEnv())  # duck sizing: equal sizes share a symbol, as in Dynamo
    fakes = []
    for i, (t, dims) in enumerate(zip(inputs, [*dynamic, *[()] * (len(inputs) - len(dynamic))], strict=True)):
        sizes = [DimDynamic.DUCK if d in dims else DimDynamic.STATIC for d in range(t.dim())]
        fakes.append(mode.from_tensor(t, source=ConstantSource(f"input{i}"),
                                      symbolic_context=StatelessSymbolicContext(dynamic_sizes=sizes)))
    with mode:
        return make_fx(fn, tracing_mode="fake", decomposition_table=decompositions)(*fakes)


def _check(graph: Graph, fn: Callable[..., Any], inputs: Sequence[torch.Tensor], tol: dict[str, float] | None = None,
           ) -> list[np.ndarray[Any, Any]]:
    """Reference executor vs ``fn`` in eager; the kernel source vs the reference, bit for bit."""
    arrays = [_numpy(t) for t in inputs]
    outputs = execute(graph, arrays)
    expected = fn(*inputs)
    expected = list(expected) if isinstance(expected, tuple | list) else [expected]
    assert len(outputs) == len(expected)
    for out, exp in zip(outputs, expected, strict=True):
        actual = _torch(out)
        assert actual.dtype == exp.dtype and tuple(actual.shape) == tuple(exp.shape)
        torch.testing.assert_close(actual, exp.detach(), equal_nan=True, **(tol or F32_TOL))
    static = specialize(graph, _bindings(graph, arrays))
    for kernel_out, ref_out in zip(run_kernel(static, arrays), outputs, strict=True):
        assert kernel_out.dtype == ref_out.dtype
        np.testing.assert_array_equal(kernel_out, ref_out)
    return outputs


def _bindings(graph: Graph, arrays: Sequence[np.ndarray[Any, Any]]) -> dict[str, int]:
    """Symbol → size, from the inputs' dims that are plain symbols."""
    return {d: size for v, a in zip(graph.inputs, arrays, strict=True) for d, size in zip(v.type.shape, a.shape,
                                                                                        strict=True)
            if isinstance(d, str) and d.isidentifier()}


def _ops(graph: Graph) -> list[str]:
    return [n.op for n in graph.nodes]


# --- dense literals ------------------------------------------------------------------------------

_NAN_PAYLOAD = np.array([0x7FC00001], np.uint32).view(np.float32)[0]
LITERALS: dict[str, np.ndarray[Any, Any]] = {
    "f32_specials": np.array([[1.5, -0.0, np.inf], [-np.inf, np.nan, 1e-45]], np.float32),
    "f32_nan_payload": np.array([_NAN_PAYLOAD, 1.0], np.float32),
    "f16": np.array([0.1, -65504.0, 6e-8], np.float16),
    "bf16": np.array([1.5, -7.0, 3.0e38], ml_dtypes.bfloat16),
    "f64": np.array(0.1, np.float64),
    "i64": np.array([[1, -2], [3, 2**62]], np.int64),
    "i8": np.array([-128, 127], np.int8),
    "u8": np.array([0, 255], np.uint8),
    "bool": np.array([True, False, True]),
    "empty": np.zeros((0, 3), np.float32),
    "rank0_int": np.array(-7, np.int32),
}


@pytest.mark.smoke
@pytest.mark.parametrize("name", LITERALS)
def test_dense_array_round_trips_bit_for_bit(name: str) -> None:
    array = LITERALS[name]
    dense = DenseArray.from_numpy(array)
    assert dense.type == TensorType(array.shape, DType.from_numpy(array.dtype))
    back = dense.to_numpy()
    assert back.dtype == array.dtype and back.shape == array.shape and back.tobytes() == array.tobytes()
    back[...] = 0  # a fresh array: writing it leaves the attribute alone
    assert dense.to_numpy().tobytes() == array.tobytes()
    g = Graph()
    g.set_outputs([g.add_op("literal", [], {"value": dense})])
    text = print_graph(g)
    assert f"{{value=dense<{dense.type}:{array.tobytes().hex()}>}}" in text
    parsed = parse_graph(text)
    assert print_graph(parsed) == text and parsed.nodes[0].attrs["value"] == dense
    (ref,) = execute(g, [])
    assert ref.dtype == array.dtype and ref.tobytes() == array.tobytes()
    # The kernel writes the values as an np.array; NaNs become the quiet NaN (payload not kept).
    (kernel,) = run_kernel(g, [])
    assert kernel.dtype == array.dtype
    np.testing.assert_array_equal(kernel, array)
    if name != "f32_nan_payload":
        assert kernel.tobytes() == array.tobytes()


@pytest.mark.smoke
def test_dense_arrays_compare_by_value() -> None:
    a = DenseArray.from_numpy(np.array([1.0, 2.0], np.float32))
    assert a == DenseArray.from_numpy(np.array([1.0, 2.0], np.float32)) and hash(a) == hash(DenseArray(
        DType.float32, (2,), a.data))
    assert a != DenseArray.from_numpy(np.array([1.0, 2.5], np.float32))
    assert a != DenseArray.from_numpy(np.array([[1.0, 2.0]], np.float32))
    assert a != DenseArray.from_numpy(np.array([0, 1073741824, 0, 1073741824], np.int32)[:2])


@pytest.mark.smoke
@pytest.mark.parametrize(("make", "message"), [
    (lambda: DenseArray(DType.float32, (3,), b"\0" * 8), r"dense array f32\[3\] needs 12 bytes of data, got 8"),
    (lambda: DenseArray(DType.float32, ("s0",), b""), r"shape \('s0',\) must be non-negative ints"),  # type: ignore[arg-type]
    (lambda: parse_graph("spiky-ir v1\ngraph main() {\n  %l = literal() {value=dense<f32[1]:zz000000>} : f32[1]\n"
                         "  return %l\n}\n"), r"line 3: dense array data 'zz000000' is not hex"),
    (lambda: parse_graph("spiky-ir v1\ngraph main() {\n  %l = literal() {value=dense<f32[2]:00000000>} : f32[2]\n"
                         "  return %l\n}\n"), r"line 3: dense array f32\[2\] needs 8 bytes of data, got 4"),
    (lambda: parse_graph("spiky-ir v1\ngraph main() {\n  %l = literal() {value=dense<f32[s0]:>} : f32[s0]\n"
                         "  return %l\n}\n"), r"line 3: type f32\[s0\] has symbolic dim 's0'"),
])
def test_malformed_dense_arrays_are_refused(make: Callable[[], Any], message: str) -> None:
    with pytest.raises(IRError, match=message):
        make()


CONSTANTS: dict[str, tuple[Callable[..., Any], tuple[torch.Tensor, ...]]] = {
    # a DynamicCache starts from torch.tensor([]) and concatenates the keys onto it
    "empty_cache_cat": (lambda x: torch.cat([torch.tensor([]).reshape(2, 0, 4), x], 1) * 2, (torch.randn(2, 3, 4),)),
    "float_table": (lambda x: x * torch.tensor([[0.5, -1.25, 3.0]]) + torch.tensor(0.1), (torch.randn(4, 3),)),
    "int_gather": (lambda x: x[:, torch.tensor([2, 0, 2, 1])], (torch.randn(3, 4),)),
    "bool_mask": (lambda x: x.masked_fill(torch.tensor([True, False, True, False]), 0.0), (torch.randn(2, 4),)),
    "bf16": (lambda x: x * torch.tensor([1.5, -2.0], dtype=torch.bfloat16), (torch.randn(3, 2).bfloat16(),)),
}


@pytest.mark.smoke
@pytest.mark.parametrize("name", CONSTANTS)
def test_lifted_constants_become_literals(name: str) -> None:
    fn, inputs = CONSTANTS[name]
    gm = _trace(fn, inputs)
    assert "get_attr" in [n.op for n in gm.graph.nodes]
    graph = lower_fx(gm)
    assert "literal" in _ops(graph)
    _check(graph, fn, inputs, {"rtol": 0.0, "atol": 0.0})


@pytest.mark.smoke
def test_constant_data_is_part_of_the_graph_text() -> None:
    """The compile cache hashes the text: two constants of one shape must not share an entry."""
    def adding(values: list[float]) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda a: a + torch.tensor(values)

    x = torch.randn(3)
    texts = {print_graph(lower_fx(_trace(adding(c), (x,)))) for c in ([1.0, 2.0, 3.0], [1.0, 2.0, 4.0])}
    assert len(texts) == 2


@pytest.mark.smoke
def test_literal_in_a_dynamic_graph_pads_as_a_creation() -> None:
    gm = _trace(lambda x: torch.cat([x, torch.tensor([[7.0, 8.0]])], 0).sum(0), (torch.randn(5, 2),), dynamic=True)
    graph = lower_fx(gm)
    sym = graph.inputs[0].type.shape[0]
    assert isinstance(sym, str) and "literal" in _ops(graph)
    plan = pad_graph(graph, {sym})
    assert sym in plan.padded or sym in plan.exact  # decided by the padding rules, not refused by the literal
    x = torch.randn(9, 2)
    (out,) = execute(graph, [x.numpy()])
    np.testing.assert_allclose(out, (x.sum(0) + torch.tensor([7.0, 8.0])).numpy(), rtol=1e-6)


@pytest.mark.smoke
def test_get_attr_that_is_not_a_tensor_is_refused() -> None:
    gm = _trace(lambda x: x + 1, (torch.randn(2),))
    gm.meta_module_attr = torch.nn.ReLU()
    graph = gm.graph
    out = next(n for n in graph.nodes if n.op == "output")
    with graph.inserting_before(out):
        graph.get_attr("meta_module_attr")
    with pytest.raises(LoweringError, match=r"reads attribute 'meta_module_attr', a ReLU; only tensor attributes"):
        lower_fx(gm)


@pytest.mark.smoke
def test_get_attr_of_a_fake_tensor_is_refused() -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode

    gm = _trace(lambda x: x + torch.tensor([1.0, 2.0]), (torch.randn(2),))
    name = next(n.target for n in gm.graph.nodes if n.op == "get_attr")
    with FakeTensorMode() as mode:
        setattr(gm, name, mode.from_tensor(torch.ones(2)))
    with pytest.raises(LoweringError, match=r"tensor attribute '_tensor_constant0' that has no data"):
        lower_fx(gm)


# --- dynamic-shape scalars and symbolic negative offsets -------------------------------------------


@pytest.mark.smoke
def test_float64_scalar_input_cast_by_convert_element_type() -> None:
    """Dynamo passes a norm's eps as a float64 rank-0 input and casts it with the prim."""

    def fn(x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        e = torch.ops.prims.convert_element_type.default(eps, torch.float32)
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + e)

    inputs = (torch.randn(2, 5, 8), torch.tensor(1e-6, dtype=torch.float64))
    gm = make_fx(fn, tracing_mode="symbolic")(*inputs)
    assert "prims.convert_element_type.default" in [str(n.target) for n in gm.graph.nodes]
    graph = lower_fx(gm)
    assert graph.inputs[1].type == TensorType((), DType.float64)
    for length in (3, 11):
        x = torch.randn(2, length, 8)
        _check(graph, fn, (x, inputs[1]))


SYMBOLIC_SLICES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "last_position": lambda h: h[:, -1:, :],  # transformers' logits_to_keep=1
    "last_three": lambda h: h[:, -3:],
    "drop_first_and_last": lambda h: h[:, 1:-1] * 2,
    "negative_start_and_end": lambda h: h[:, -4:-1],
}


@pytest.mark.smoke
@pytest.mark.parametrize("name", SYMBOLIC_SLICES)
def test_negative_slice_bounds_over_symbolic_dims(name: str) -> None:
    fn = SYMBOLIC_SLICES[name]
    graph = lower_fx(_trace(fn, (torch.randn(2, 9, 4),), dynamic=True))
    assert isinstance(graph.inputs[0].type.shape[1], str)
    for length in (5, 9, 16):
        _check(graph, fn, (torch.randn(2, length, 4),), {"rtol": 0.0, "atol": 0.0})


def _mask_lookup(mask: torch.Tensor, batch: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
    """transformers' padding_mask_function, vmapped: ``padding_mask[batch_idx, kv_idx]``."""
    return mask[batch, kv]


@pytest.mark.smoke
def test_negative_indices_over_symbolic_dims_wrap_by_the_real_length() -> None:
    def inputs(length: int) -> tuple[torch.Tensor, ...]:
        gen = torch.Generator().manual_seed(length)
        mask = torch.rand(3, length, generator=gen) > 0.3
        batch = torch.tensor([0, -1, 1]).view(3, 1, 1, 1)  # -1 wraps over the batch dim
        kv = (torch.arange(length) - 2).view(1, 1, 1, length)  # -2, -1 wrap over the length
        return mask, batch, kv

    graph = lower_fx(_trace(_mask_lookup, inputs(7), dynamic=True))
    assert "dim_value" in _ops(graph)
    for length in (5, 9, 23):
        _check(graph, _mask_lookup, inputs(length), {"rtol": 0.0, "atol": 0.0})
    # Under padding the length must be the real one: a take along the padded axis is refused,
    # so the symbol is compiled at exact sizes rather than read with a padded stride.
    sym = graph.inputs[0].type.shape[1]
    plan = pad_graph(graph, {sym})
    assert sym in plan.exact and "take" in plan.exact[sym]


# --- as_strided ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Strided:
    source: Callable[[torch.Tensor], torch.Tensor]
    """Builds as_strided's input from a flat (48,) tensor (its layout is what torch gives it)."""
    size: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int | None = None


def _dense(a: torch.Tensor) -> torch.Tensor:
    return a.view(4, 12) * 1


AS_STRIDED: dict[str, Strided] = {
    # ConvNeXt: the (N, C, 1, 1) result of adaptive average pooling, restrided to channels-last strides
    "nc11_channels_last": Strided(lambda a: a[:8].reshape(2, 4, 1, 1) * 1, (2, 4, 1, 1), (4, 1, 4, 4)),
    "same_layout": Strided(_dense, (4, 12), (12, 1)),
    "columns_every_4th": Strided(_dense, (4, 3), (12, 4)),
    "transpose": Strided(_dense, (12, 4), (1, 12)),
    "interleaved_dims": Strided(_dense, (2, 3), (1, 2), 5),
    "offset_window": Strided(_dense, (2, 5), (10, 2), 3),
    "past_the_end_rows": Strided(_dense, (2, 5), (30, 2), 1),  # row 1 ends at 41: padded buffer, not read
    "from_transposed_source": Strided(lambda a: a.view(4, 12).t() * 1, (6, 2), (1, 12), 1),
    "from_channels_last_source": Strided(
        lambda a: a.view(2, 3, 2, 4).contiguous(memory_format=torch.channels_last) * 1, (2, 3, 8), (24, 1, 3)),
    "with_offset_source": Strided(lambda a: (a * 1)[8:], (5, 8), (8, 1), 8),
    "broadcast_stride_0": Strided(_dense, (3, 4, 2), (0, 12, 1), 1),
    "single_element": Strided(_dense, (1, 1), (7, 7), 13),
    "empty": Strided(_dense, (0, 5), (1, 1)),
}


def _strided_fn(case: Strided) -> Callable[[torch.Tensor], torch.Tensor]:
    def fn(a: torch.Tensor) -> torch.Tensor:
        return torch.as_strided(case.source(a), case.size, case.stride, case.offset) + 0

    return fn


@pytest.mark.smoke
@pytest.mark.parametrize("name", AS_STRIDED)
def test_as_strided_views_lower_exactly(name: str) -> None:
    fn = _strided_fn(AS_STRIDED[name])
    a = torch.randn(48)
    gm = _trace(fn, (a,))
    assert aten.as_strided.default in [n.target for n in gm.graph.nodes]
    graph = lower_fx(gm)
    assert "take" not in _ops(graph)  # a view: slices, reshapes, transposes, pads
    _check(graph, fn, (a,), {"rtol": 0.0, "atol": 0.0})


AS_STRIDED_REFUSED: dict[str, tuple[Strided, str]] = {
    "overlapping_windows": (Strided(_dense, (5, 4), (2, 1)),
                            r"its elements overlap or interleave \(the dims inside stride 2 span 4 elements\)"),
    "reads_before_the_input": (Strided(lambda a: (a * 1)[8:], (4,), (1,), 2),
                               r"it reads storage 2\.\.5, outside the input's 8\.\.47"),
    "reads_past_the_input": (Strided(lambda a: (a * 1)[:40], (3, 4), (12, 3), 10),
                             r"it reads storage 10\.\.43, outside the input's 0\.\.39"),
    "sparse_source": (Strided(lambda a: (a * 1).view(4, 12)[:, :6], (4, 3), (12, 2)),
                      r"the input is not a dense block of its storage \(dim of size 4 has stride 12"),
}


@pytest.mark.smoke
@pytest.mark.parametrize("name", AS_STRIDED_REFUSED)
def test_as_strided_that_is_not_a_view_is_refused(name: str) -> None:
    case, message = AS_STRIDED_REFUSED[name]
    fn = _strided_fn(case)
    try:
        gm = _trace(fn, (torch.randn(48),))
    except RuntimeError as exc:  # torch itself rejects some out-of-bounds layouts
        pytest.fail(f"case {name} is not a layout torch accepts: {exc}")
    with pytest.raises(LoweringError, match=r"as_strided from size .* is not a view that reshape/transpose/slice "
                                            r"can express: " + message):
        lower_fx(gm)


@pytest.mark.smoke
def test_as_strided_with_symbolic_sizes() -> None:
    """Dynamic batch through ConvNeXt's restride: only strides of size-1 dims change, so it is x."""

    def pooled(x: torch.Tensor) -> torch.Tensor:
        p = x.mean((2, 3), keepdim=True)
        return torch.as_strided(p, p.shape, (p.shape[1], 1, p.shape[1], p.shape[1])) * 2

    graph = lower_fx(_trace(pooled, (torch.randn(3, 4, 2, 2),), dynamic=True))
    assert "as_strided" not in str(graph)
    for batch in (2, 5):
        _check(graph, pooled, (torch.randn(batch, 4, 2, 2),))

    def transposed(x: torch.Tensor) -> torch.Tensor:
        return torch.as_strided(x * 1, (x.shape[1], x.shape[0]), (1, x.shape[1])) + 0

    with pytest.raises(LoweringError, match=r"with symbolic sizes is lowered only when it keeps the input's layout"):
        lower_fx(_trace(transposed, (torch.randn(3, 4),), dynamic=True))


# --- nn.TransformerEncoderLayer's fused inference path ------------------------------------------------


@dataclass(frozen=True)
class EncoderCase:
    norm_first: bool
    activation: str  # relu | gelu
    masks: str  # none | key_padding | src_mask | both | float_src_mask


ENCODER_CASES = [EncoderCase(nf, act, m) for nf, act, m in [
    (False, "relu", "none"), (True, "gelu", "none"), (False, "gelu", "key_padding"), (True, "relu", "key_padding"),
    (False, "relu", "src_mask"), (True, "gelu", "both"), (False, "gelu", "float_src_mask"),
]]


def _encoder_layer(case: EncoderCase) -> torch.nn.TransformerEncoderLayer:
    torch.manual_seed(0)
    return torch.nn.TransformerEncoderLayer(16, 4, 32, dropout=0.1, activation=case.activation, batch_first=True,
                                            norm_first=case.norm_first).eval()


def _encoder_masks(case: EncoderCase, batch: int, length: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(src_mask, src_key_padding_mask) as a user passes them: True (or -inf) masks a key out."""
    padding = torch.arange(length).expand(batch, length) >= torch.tensor([length, length - 2])[:batch, None]
    causal = torch.ones(length, length, dtype=torch.bool).triu(1)
    return {
        "none": (None, None), "key_padding": (None, padding), "src_mask": (causal, None), "both": (causal, padding),
        "float_src_mask": (torch.zeros(length, length).masked_fill(causal, float("-inf")), None),
    }[case.masks]


def _fused_call(layer: torch.nn.TransformerEncoderLayer, src: torch.Tensor, src_mask: torch.Tensor | None,
                padding: torch.Tensor | None) -> tuple[Callable[..., torch.Tensor], list[torch.Tensor]]:
    """The fast path's own call (the arguments nn.TransformerEncoderLayer.forward builds), as a
    function of tensors: src, the merged mask (if any), then the layer's weights."""
    padding = F._canonical_mask(mask=padding, mask_name="src_key_padding_mask", other_type=F._none_or_dtype(src_mask),
                                other_name="src_mask", target_type=src.dtype)
    src_mask = F._canonical_mask(mask=src_mask, mask_name="src_mask", other_type=None, other_name="",
                                 target_type=src.dtype, check_other=False)
    merged, mask_type = layer.self_attn.merge_masks(src_mask, padding, src)
    weights = [layer.self_attn.in_proj_weight, layer.self_attn.in_proj_bias, layer.self_attn.out_proj.weight,
               layer.self_attn.out_proj.bias, layer.norm1.weight, layer.norm1.bias, layer.norm2.weight,
               layer.norm2.bias, layer.linear1.weight, layer.linear1.bias, layer.linear2.weight, layer.linear2.bias]
    gelu = layer.activation_relu_or_gelu == 2

    def fused(x: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        mask, w = (rest[0], rest[1:]) if merged is not None else (None, rest)
        return aten._transformer_encoder_layer_fwd(x, 16, 4, w[0], w[1], w[2], w[3], gelu, layer.norm_first,
                                                   layer.norm1.eps, *w[4:], mask, mask_type)

    tensors = [src, *([] if merged is None else [merged.contiguous()]), *(w.detach() for w in weights)]
    return fused, tensors


@pytest.mark.smoke
@pytest.mark.parametrize("case", ENCODER_CASES, ids=lambda c: f"{'pre' if c.norm_first else 'post'}-{c.activation}-"
                                                               f"{c.masks}")
@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_fused_transformer_encoder_layer(case: EncoderCase, dynamic: bool) -> None:
    layer = _encoder_layer(case)
    gen = torch.Generator().manual_seed(1)
    src = torch.randn(2, 6, 16, generator=gen)
    fused, tensors = _fused_call(layer, src, *_encoder_masks(case, 2, 6))
    with torch.no_grad():  # the fused op is the layer's inference path
        torch.testing.assert_close(fused(*tensors), layer(src, *_encoder_masks(case, 2, 6)), rtol=0.0, atol=0.0)
        # dynamic: every dim of the input (as dynamic=True makes it; the embedding dim gets pinned
        # to the op's embed_dim) and the mask's batch and lengths
        masks = [(0, 2, 3) if tensors[1].dim() == 4 else tuple(range(tensors[1].dim()))] if len(tensors) == 14 else []
        gm = _trace(fused, tensors, [(0, 1, 2), *masks] if dynamic else False)
    assert aten._transformer_encoder_layer_fwd.default in [n.target for n in gm.graph.nodes]
    graph = lower_fx(gm)
    assert graph.inputs[0].type.shape[2] == 16
    for batch, length in ((2, 6), (1, 9), (2, 4)) if dynamic else ((2, 6),):
        src = torch.randn(batch, length, 16, generator=gen)
        _, tensors = _fused_call(layer, src, *_encoder_masks(case, batch, length))
        with torch.no_grad():
            _check(graph, fused, tensors)


@pytest.mark.smoke
def test_fused_encoder_layer_needs_the_embedding_dim_it_is_given() -> None:
    layer = _encoder_layer(ENCODER_CASES[0])
    fused, tensors = _fused_call(layer, torch.randn(2, 6, 16), None, None)
    with torch.no_grad():
        gm = _trace(fused, tensors, [(0, 1, 2)])
    node = next(n for n in gm.graph.nodes if n.target is aten._transformer_encoder_layer_fwd.default)
    node.args = (node.args[0], 24, *node.args[2:])
    with pytest.raises(LoweringError, match=r"the input's last dim is the embedding dim, 24, but it is s\d+; torch's "
                                            r"own kernel rejects this call too"):
        lower_fx(gm)


@pytest.mark.smoke
def test_fused_encoder_layer_refuses_an_unknown_mask_type() -> None:
    layer = _encoder_layer(ENCODER_CASES[0])
    fused, tensors = _fused_call(layer, torch.randn(2, 6, 16), None, _encoder_masks(ENCODER_CASES[2], 2, 6)[1])
    with torch.no_grad():
        gm = _trace(fused, tensors)
    node = next(n for n in gm.graph.nodes if n.target is aten._transformer_encoder_layer_fwd.default)
    node.args = (*node.args[:19], 3)
    with pytest.raises(LoweringError, match=r"_transformer_encoder_layer_fwd.*mask_type 3 is not 0, 1 or 2"):
        lower_fx(gm)


# --- batch norm in training ------------------------------------------------------------------------


@dataclass(frozen=True)
class NormCase:
    shape: tuple[int, ...]
    momentum: float
    affine: bool = True
    training: bool = True


BATCH_NORMS = {
    "conv_4d": NormCase((4, 3, 5, 5), 0.1),
    "linear_2d": NormCase((6, 4), 0.3),
    "seq_3d_no_affine": NormCase((2, 3, 7), 0.1, affine=False),
    "one_per_channel_batch": NormCase((2, 5, 1, 1), 0.5),
    "eval_mode": NormCase((4, 3, 5, 5), 0.1, training=False),
}


def _batch_norm_inputs(case: NormCase, batch: int | None = None) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    shape = case.shape if batch is None else (batch, *case.shape[1:])
    c = shape[1]
    x = torch.randn(shape, generator=gen) * 2 + 0.5
    params = [torch.rand(c, generator=gen) + 0.5, torch.randn(c, generator=gen)] if case.affine else []
    return [x, *params, torch.randn(c, generator=gen), torch.rand(c, generator=gen) + 0.5]


def _functional_batch_norm(case: NormCase) -> Callable[..., tuple[torch.Tensor, ...]]:
    def fn(x: torch.Tensor, *rest: torch.Tensor) -> tuple[torch.Tensor, ...]:
        w, b, rm, rv = rest if case.affine else (None, None, *rest)
        return aten._native_batch_norm_legit_functional(x, w, b, rm, rv, case.training, case.momentum, 1e-5)

    return fn


def _module_batch_norm(case: NormCase, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """What nn.BatchNorm does in eager: the output, then its running buffers after the call."""
    x, *rest = inputs
    w, b, rm, rv = rest if case.affine else (None, None, *rest)
    rm, rv = rm.clone(), rv.clone()
    out = F.batch_norm(x, rm, rv, w, b, training=case.training, momentum=case.momentum, eps=1e-5)
    return out, rm, rv


@pytest.mark.smoke
@pytest.mark.parametrize("name", BATCH_NORMS)
@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_training_batch_norm_updates_running_stats_like_torch(name: str, dynamic: bool) -> None:
    case = BATCH_NORMS[name]
    fn = _functional_batch_norm(case)
    gm = _trace(fn, _batch_norm_inputs(case), [(0,)] if dynamic else False)  # dynamic batch
    assert aten._native_batch_norm_legit_functional.default in [n.target for n in gm.graph.nodes]
    graph = lower_fx(gm)
    for batch in (case.shape[0], 3) if dynamic else (None,):
        inputs = _batch_norm_inputs(case, batch)
        outputs = _check(graph, fn, inputs)
        # and the module's semantics: the updated buffers nn.BatchNorm would hold after the call
        out, running_mean, running_var = _module_batch_norm(case, inputs)
        for ours, theirs in zip((outputs[0], outputs[3], outputs[4]), (out, running_mean, running_var), strict=True):
            torch.testing.assert_close(_torch(ours), theirs, **F32_TOL)


@pytest.mark.smoke
@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_batch_norm_without_running_stats(dynamic: bool) -> None:
    def fn(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return aten._native_batch_norm_legit.no_stats(x, w, b, True, 0.1, 1e-5)

    inputs = _batch_norm_inputs(NormCase((4, 3, 5, 5), 0.1))[:3]
    graph = lower_fx(_trace(fn, inputs, [(0, 2, 3)] if dynamic else False))
    _check(graph, fn, inputs)
    if dynamic:
        _check(graph, fn, [inputs[0][1:, :, 1:, 1:].contiguous(), *inputs[1:]])
    module = torch.nn.BatchNorm2d(3, track_running_stats=False)
    with torch.no_grad():
        module.weight.copy_(inputs[1])
        module.bias.copy_(inputs[2])
        torch.testing.assert_close(_torch(execute(graph, [_numpy(t) for t in inputs])[0]), module(inputs[0]),
                                   **F32_TOL)


# --- SDPA backward -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttentionCase:
    q: tuple[int, int, int, int]  # (B, H, L, E)
    kv: tuple[int, int, int, int]  # (B, Hk, S, E)
    causal: bool = False
    mask: str = "none"  # none | additive | broadcast | fully_masked_row
    scale: float | None = None


ATTENTION = {
    "plain": AttentionCase((2, 2, 5, 8), (2, 2, 5, 8)),
    "causal": AttentionCase((1, 2, 6, 4), (1, 2, 6, 4), causal=True),
    "cross_lengths": AttentionCase((1, 2, 3, 4), (1, 2, 7, 4)),
    "causal_cross_lengths": AttentionCase((1, 2, 4, 4), (1, 2, 6, 4), causal=True),
    "additive_mask": AttentionCase((2, 2, 5, 8), (2, 2, 5, 8), mask="additive"),
    "broadcast_mask": AttentionCase((2, 2, 5, 8), (2, 2, 5, 8), mask="broadcast"),
    "causal_and_mask": AttentionCase((1, 2, 6, 4), (1, 2, 6, 4), causal=True, mask="additive"),
    "fully_masked_row": AttentionCase((1, 2, 4, 4), (1, 2, 4, 4), mask="fully_masked_row"),
    "grouped_query": AttentionCase((1, 4, 5, 8), (1, 2, 5, 8), causal=True),
    "scale": AttentionCase((1, 2, 5, 8), (1, 2, 5, 8), scale=0.3),
}


def _attention_inputs(case: AttentionCase, length: int | None = None) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    (b, h, ell, e), (_, hk, s, _) = case.q, case.kv
    if length is not None:
        ell = s = length
    q, k, v = (torch.randn(shape, generator=gen) for shape in ((b, h, ell, e), (b, hk, s, e), (b, hk, s, e)))
    grad = torch.randn(b, h, ell, e, generator=gen)
    if case.mask == "none":
        return [grad, q, k, v]
    mask = torch.randn((ell, s) if case.mask == "additive" else (b, 1, ell, s), generator=gen)
    if case.mask == "broadcast":
        mask = mask.masked_fill(torch.rand(b, 1, ell, s, generator=gen) < 0.3, float("-inf"))
        mask[..., 0] = 0.0  # every row keeps a key
    if case.mask == "fully_masked_row":
        mask[:, :, 1] = float("-inf")
    return [grad, q, k, v, mask]


def _attention_backward(case: AttentionCase) -> Callable[..., tuple[torch.Tensor, ...]]:
    """The backward op alone, of (grad, q, k, v, [mask], out, logsumexp): out and logsumexp are
    torch's own forward results, so the test checks the backward lowering by itself."""

    def fn(grad: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *rest: torch.Tensor,
           ) -> tuple[torch.Tensor, ...]:
        *mask, out, lse = rest
        return aten._scaled_dot_product_flash_attention_for_cpu_backward(
            grad, q, k, v, out, lse, 0.0, case.causal, attn_mask=mask[0] if mask else None, scale=case.scale)

    return fn


def _with_forward(case: AttentionCase, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """``inputs`` and torch's forward results (output, logsumexp) for them."""
    with torch.no_grad():
        out, lse = aten._scaled_dot_product_flash_attention_for_cpu(
            *inputs[1:4], 0.0, case.causal, attn_mask=inputs[4] if len(inputs) > 4 else None, scale=case.scale)
    return [*inputs, out, lse]


@pytest.mark.smoke
@pytest.mark.parametrize("name", ATTENTION)
@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_sdpa_backward_matches_autograd(name: str, dynamic: bool) -> None:
    case = ATTENTION[name]
    fn = _attention_backward(case)
    inputs = _with_forward(case, _attention_inputs(case))
    # dynamic: the lengths (grad, q, k, v: dim 2; the mask: its last two; out: 2; logsumexp: 2)
    lengths = [(2,), (2,), (2,), (2,), *([(2, 3) if inputs[4].dim() == 4 else (0, 1)] if len(inputs) == 7 else []),
               (2,), (2,)]
    gm = _trace(fn, inputs, lengths if dynamic else False)
    assert aten._scaled_dot_product_flash_attention_for_cpu_backward.default in [n.target for n in gm.graph.nodes]
    graph = lower_fx(gm)
    same_length = case.q[2] == case.kv[2]
    for length in (None, 9, 3) if dynamic and same_length else (None,):
        inputs = _attention_inputs(case, length)
        outputs = _check(graph, fn, _with_forward(case, inputs), {"rtol": 1e-4, "atol": 1e-5})
        # the same gradients autograd computes through SDPA itself
        grad, *qkv = inputs[:4]
        q, k, v = (t.clone().requires_grad_() for t in qkv)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=inputs[4] if len(inputs) > 4 else None,
                                              is_causal=case.causal, scale=case.scale,
                                              enable_gqa=case.q[1] != case.kv[1])
        attn.backward(grad)
        for ours, t in zip(outputs, (q, k, v), strict=True):
            assert t.grad is not None
            torch.testing.assert_close(_torch(ours), t.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.smoke
def test_sdpa_backward_with_dropout_is_refused() -> None:
    case = ATTENTION["plain"]
    gm = _trace(_attention_backward(case), _with_forward(case, _attention_inputs(case)))
    node = next(n for n in gm.graph.nodes
                if n.target is aten._scaled_dot_product_flash_attention_for_cpu_backward.default)
    node.args = (*node.args[:6], 0.1, *node.args[7:])
    with pytest.raises(LoweringError, match=r"dropout_p=0.1 has random masks that cannot be replayed"):
        lower_fx(gm)


@pytest.mark.smoke
def test_sdpa_backward_reads_a_minus_inf_logsumexp_as_a_masked_row() -> None:
    """A forward that saved -inf for a fully masked row (rather than torch's 0) gets zero gradients there."""
    case = ATTENTION["fully_masked_row"]
    fn = _attention_backward(case)
    inputs = _with_forward(case, _attention_inputs(case))
    graph = lower_fx(_trace(fn, inputs))
    inputs[-1] = inputs[-1].clone()
    assert (inputs[-1][:, :, 1] == 0).all()  # torch's own convention
    inputs[-1][:, :, 1] = float("-inf")
    d_q, d_k, d_v = (_torch(a) for a in execute(graph, [_numpy(t) for t in inputs]))
    expected = fn(*_with_forward(case, _attention_inputs(case)))
    for ours, theirs in zip((d_q, d_k, d_v), expected, strict=True):
        assert torch.isfinite(ours).all()
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
