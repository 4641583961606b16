"""The module conventions the Neuron toolchain expects (docs/neuron-interfaces.md), checked on the proto."""

from __future__ import annotations

import jax  # noqa: F401  a pinned dev dependency: a missing jax must fail collection, not skip
import numpy as np
import pytest

from spiky_ir import DType, Graph, IRError, TensorType, execute
from spiky_ir.hlo import HloModule, emit_hlo
from spiky_ir.hlo import schema as s
from spiky_ir.hlo.builder import ComputationBuilder, ModuleBuilder
from spiky_ir.hlo.xla_cpu import parse_text_with_xla, parse_with_xla, run_hlo

pytestmark = pytest.mark.smoke
F32 = DType.float32


def _mlp_graph() -> Graph:
    g = Graph(name="mlp")
    x = g.add_input("x", TensorType((4, 8), F32))
    w = g.add_input("w", TensorType((16, 8), F32))
    b = g.add_input("b", TensorType((16,), F32))
    h = g.add_op("matmul", [x, g.add_op("transpose", [w], {"axes": (1, 0)})])
    relu = g.add_op("maximum", [g.add_op("add", [h, b]), g.add_op("constant", [], {"value": 0.0, "dtype": F32})])
    g.set_outputs([relu, x, relu])  # a bare parameter and a repeated result
    return g


def _entry(module: HloModule) -> s.Computation:
    return module.computations[-1]


def _attr(ins: s.Instruction, key: str) -> str | None:
    return ins.frontend_attributes.map.get(key) if ins.frontend_attributes else None


def test_entry_ids_layouts_and_io_names() -> None:
    art = emit_hlo(_mlp_graph(), name="kernel_abc")
    module = HloModule.decode(art.proto)
    entry = _entry(module)
    assert module.name == "kernel_abc"
    assert module.entry_computation_name == entry.name == "main"
    assert module.entry_computation_id == entry.id
    ids = [c.id for c in module.computations] + [i.id for c in module.computations for i in c.instructions]
    assert len(ids) == len(set(ids)), "ids must be unique module-wide"
    for comp in module.computations:
        for ins in comp.instructions:
            assert ins.shape is not None
            for shape in ins.shape.tuple_shapes or [ins.shape]:
                assert shape.layout is not None
                assert shape.layout.minor_to_major == list(reversed(range(len(shape.dimensions))))
    params = [i for i in entry.instructions if i.opcode == "parameter"]
    assert [_attr(p, "neff_input_names") for p in params] == ["x", "w", "b"] == list(art.input_names)
    assert [p.parameter_number for p in params] == [0, 1, 2]


def test_root_tuple_copies_bare_parameters_and_repeats() -> None:
    art = emit_hlo(_mlp_graph())
    entry = _entry(HloModule.decode(art.proto))
    by_id = {i.id: i for i in entry.instructions}
    root = by_id[entry.root_id]
    assert root.opcode == "tuple"
    assert _attr(root, "neff_output_names") == "output0,output1,output2"
    assert art.output_names == ("output0", "output1", "output2")
    first, second, third = (by_id[i] for i in root.operand_ids)
    assert second.opcode == "copy" and by_id[second.operand_ids[0]].opcode == "parameter"
    assert third.opcode == "copy" and third.operand_ids == [first.id]
    assert len(set(root.operand_ids)) == 3


def test_single_result_root_is_a_named_copy() -> None:
    g = Graph()
    x = g.add_input("x", TensorType((3,), F32))
    g.set_outputs([x])
    entry = _entry(HloModule.decode(emit_hlo(g).proto))
    root = next(i for i in entry.instructions if i.id == entry.root_id)
    assert root.opcode == "copy" and _attr(root, "neff_output_names") == "output0"


def test_promotion_and_broadcast_are_explicit() -> None:
    g = Graph()
    x = g.add_input("x", TensorType((2, 3), DType.int32))
    y = g.add_input("y", TensorType((3,), DType.float16))
    g.set_outputs([g.add_op("add", [x, y])])
    entry = _entry(HloModule.decode(emit_hlo(g).proto))
    add = next(i for i in entry.instructions if i.opcode == "add")
    by_id = {i.id: i for i in entry.instructions}
    assert [by_id[o].opcode for o in add.operand_ids] == ["convert", "broadcast"]
    assert by_id[add.operand_ids[1]].dimensions == [1]


def test_program_shapes() -> None:
    art = emit_hlo(_mlp_graph())
    module = HloModule.decode(art.proto)
    ps = module.host_program_shape
    assert ps is not None and ps == _entry(module).program_shape
    assert [p.dimensions for p in ps.parameters] == [[4, 8], [16, 8], [16]]
    assert ps.parameter_names == ["x", "w", "b"]
    assert ps.result is not None and [t.dimensions for t in ps.result.tuple_shapes] == [[4, 16], [4, 8], [4, 16]]


def test_text_form_is_what_xla_reads_from_the_proto() -> None:
    art = emit_hlo(_mlp_graph())
    assert parse_text_with_xla(art.text) == parse_with_xla(art.proto)
    assert "ENTRY main {" in art.text and 'neff_output_names="output0,output1,output2"' in art.text


def test_inplace_input_is_must_alias() -> None:
    g = Graph()
    cache = g.add_input("cache", TensorType((4,), F32))
    upd = g.add_input("upd", TensorType((4,), F32))
    g.set_outputs([g.add_op("exp", [upd]), g.add_op("add", [cache, upd])])
    art = emit_hlo(g, inplace={"cache": 1})
    module = HloModule.decode(art.proto)
    assert art.input_names == ("cache.must_alias_input", "upd")
    assert art.aliases == {1: 0}
    assert module.input_output_alias == s.InputOutputAlias(
        entries=[s.AliasEntry(output_shape_index=[1], parameter_number=0, kind=s.MUST_ALIAS)]
    )
    assert "input_output_alias={ {1}: (0, {}, must-alias) }" in art.text
    assert parse_text_with_xla(art.text) == parse_with_xla(art.proto)
    a, b = np.arange(4, dtype=np.float32), np.ones(4, np.float32)
    expected = execute(g, [a, b])
    for got, want in zip(run_hlo(art.proto, [a.copy(), b]), expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_empty_inputs_can_be_constants_instead_of_parameters() -> None:
    """``drop_empty_inputs`` (the neuron target: a NEFF carries no zero-element tensor): an empty
    input becomes a constant of its shape, the other parameters are renumbered, an in-place alias
    follows its parameter, and the results are those of the graph with the empty array passed."""
    g = Graph()
    x = g.add_input("x", TensorType((2, 3), F32))
    e = g.add_input("e", TensorType((0, 3), F32))
    cache = g.add_input("cache", TensorType((2, 3), F32))
    total = g.add_op("sum", [e], {"axes": (0,), "keepdims": True})
    g.set_outputs([g.add_op("add", [x, total]), g.add_op("multiply", [e, e]), g.add_op("add", [cache, x])])
    art = emit_hlo(g, inplace={"cache": 2}, drop_empty_inputs=True)
    module = HloModule.decode(art.proto)
    params = [i for i in _entry(module).instructions if i.opcode == "parameter"]
    assert art.input_names == ("x", "cache.must_alias_input") == tuple(_attr(p, "neff_input_names") for p in params)
    assert [p.parameter_number for p in params] == [0, 1] and art.aliases == {2: 1}
    assert len(module.host_program_shape.parameters) == 2
    xs, cs = np.arange(6, dtype=np.float32).reshape(2, 3), np.ones((2, 3), np.float32)
    expected = execute(g, [xs, np.zeros((0, 3), np.float32), cs])
    for got, want in zip(run_hlo(art.proto, [xs, cs.copy()]), expected, strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-6)
    assert emit_hlo(g).input_names == ("x", "e", "cache")  # off by default (XLA:CPU takes empty parameters)
    with pytest.raises(IRError, match="updated in place cannot have zero elements"):
        g2 = Graph()
        empty = g2.add_input("empty", TensorType((0,), F32))
        g2.set_outputs([g2.add_op("exp", [empty])])
        emit_hlo(g2, inplace={"empty": 0}, drop_empty_inputs=True)


@pytest.mark.parametrize(
    ("inplace", "message"),
    [({"nope": 0}, "'nope' is not an input"), ({"cache": 3}, "names output 3"),
     ({"small": 0}, "types differ")],
)
def test_bad_inplace_is_rejected(inplace: dict[str, int], message: str) -> None:
    g = Graph()
    cache = g.add_input("cache", TensorType((4,), F32))
    g.add_input("small", TensorType((2,), F32))
    g.set_outputs([g.add_op("exp", [cache])])
    with pytest.raises(IRError, match=message):
        emit_hlo(g, inplace=inplace)


def test_symbolic_graph_is_rejected() -> None:
    g = Graph()
    x = g.add_input("x", TensorType(("s0", 4), F32))
    g.set_outputs([g.add_op("exp", [x])])
    with pytest.raises(IRError, match="symbolic; specialize"):
        emit_hlo(g)


def test_collectives_and_reducers_first() -> None:
    """Collectives carry replica groups and reducer computations, which precede ``main``."""
    module = ModuleBuilder()
    main = ComputationBuilder(module, "main")
    x = main.parameter(0, F32, (4, 6), "x", {"neff_input_names": "x"})
    summed = main.all_reduce(x, "add", [[0]])
    gathered = main.all_gather(summed, 1, [[0]])
    scattered = main.reduce_scatter(gathered, "max", 0, [[0]])
    swapped = main.all_to_all(scattered, 0, [[0]])
    total = main.reduce(swapped, main.constant(0.0, F32), [0, 1], "add")
    root = main.copy(total, {"neff_output_names": "output0"})
    entry = main.finish(root)
    proto = s.HloModule(name="coll", entry_computation_name="main", computations=[*module.reducers, entry],
                        host_program_shape=entry.program_shape, entry_computation_id=entry.id).encode()
    decoded = HloModule.decode(proto)
    assert [c.name for c in decoded.computations] == ["add_f32", "max_f32", "main"]
    ops = {i.opcode: i for i in decoded.computations[-1].instructions}
    assert ops["all-reduce"].replica_groups == [s.ReplicaGroup(replica_ids=[0])]
    assert ops["all-reduce"].called_computation_ids == [decoded.computations[0].id]
    assert ops["reduce-scatter"].called_computation_ids == [decoded.computations[1].id]
    a = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
    (out,) = run_hlo(proto, [a])  # one replica: every collective is the identity
    np.testing.assert_allclose(out, a.sum(), rtol=1e-5)
