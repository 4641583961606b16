"""Every op has every rule (shape, reference, HLO, padding, kernel source), or records why not.

The rules live next to their op in ``spiky_ir/ops/<family>.py`` and are registered into the
tables their consumers own; a missing rule must be declared on the op (``OpDef.no_rule``)
with its reason, never be a silent absence.
"""

from __future__ import annotations

import numpy as np
import pytest

from spiky_ir import DType, Graph, IRError, TensorType, all_ops, aten_overloads, get_op
from spiky_ir.hlo.rules import HLO_RULES
from spiky_ir.kernel_source import RULES as KERNEL_RULES
from spiky_ir.kernel_source import KernelEmitter, kernel_helper, kernel_source
from spiky_ir.padding import PAD_RULES, pad_graph
from spiky_ir.registry import RULE_TABLES, OpDef, register_op

pytestmark = pytest.mark.smoke

TABLES = {"hlo": HLO_RULES, "padding": PAD_RULES, "kernel_source": KERNEL_RULES}
F32 = DType.float32


def test_the_tables_are_the_ones_the_registry_knows() -> None:
    assert set(TABLES) == set(RULE_TABLES)


@pytest.mark.parametrize("name", sorted(all_ops()))
def test_op_has_every_rule_or_records_why(name: str) -> None:
    op = get_op(name)
    assert callable(op.shape_rule) and callable(op.reference) and op.doc
    for table, rules in TABLES.items():
        why = op.no_rule.get(table)
        if name in rules:
            assert why is None, f"op '{name}' has a {table} rule and also says why it has none: {why}"
        else:
            assert why, f"op '{name}' has no {table} rule and records no reason (OpDef.no_rule[{table!r}])"
            assert len(why.split()) >= 5, f"op '{name}': {table} reason {why!r} explains nothing"


@pytest.mark.parametrize(("table", "rules"), TABLES.items())
def test_no_rule_for_an_unknown_op(table: str, rules: dict[str, object]) -> None:
    assert sorted(set(rules) - set(all_ops())) == [], f"{table} rules for ops the registry does not have"


def test_elementwise_ops_carry_their_numpy_function_and_type_rule() -> None:
    for name, op in all_ops().items():
        assert (op.elementwise is not None) == (op.category in ("unary", "binary")), name


def test_aten_overloads_are_listed_per_op() -> None:
    assert aten_overloads("exp") == ("aten.exp.default",)
    assert aten_overloads("multiply") == ("aten.mul.Tensor", "aten.mul.Scalar")
    assert set(aten_overloads("matmul")) == {"aten.mm.default", "aten.bmm.default", "aten.matmul.default",
                                             "aten.dot.default"}
    assert "aten.sum.dim_IntList" in aten_overloads("sum")
    assert aten_overloads("softmax") == ()  # its lowering (half_to_float) is a composite in spiky_ir.fx
    owners: dict[str, str] = {}
    for name, op in all_ops().items():
        for overload in op.aten:
            assert overload not in owners, f"{overload} is declared by both '{owners[overload]}' and '{name}'"
            owners[overload] = name


def _opdef(**fields: object) -> OpDef:
    return OpDef("test_op_not_registered", "unary", 1, {}, lambda types, _attrs: [types[0]],
                 lambda xs, _attrs: [xs[0]], "doc", **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(("fields", "message"), [
    ({"aten": ("exp.default",)}, r"declares ATen overload 'exp.default'; write it as 'namespace.op.overload'"),
    ({"no_rule": {"hlos": "typo"}}, r"records no_rule for unknown table\(s\) \['hlos'\]; tables: hlo, padding"),
])
def test_register_op_rejects_malformed_declarations(fields: dict[str, object], message: str) -> None:
    with pytest.raises(IRError, match=message):
        register_op(_opdef(**fields))
    assert "test_op_not_registered" not in all_ops()


def test_register_op_rejects_a_second_op_of_one_name() -> None:
    with pytest.raises(IRError, match=r"op 'exp' is already registered"):
        register_op(OpDef("exp", "unary", 1, {}, get_op("exp").shape_rule, get_op("exp").reference))


def test_recorded_reasons_reach_the_user() -> None:
    g = Graph()
    x = g.add_input("x", TensorType((4, 3), F32))
    g.set_outputs([g.add_op("all_reduce", [x], {"reduce_op": "sum", "group_name": "g"})])
    with pytest.raises(IRError, match=r"op 'all_reduce' has no NumPy kernel form \(a NumPy kernel has no process"):
        kernel_source(g)

    g = Graph()
    x = g.add_input("x", TensorType(("s0", 5), F32))
    i = g.add_input("i", TensorType(("s0", 1), DType.int64))
    u = g.add_input("u", TensorType(("s0", 1), F32))
    g.set_outputs([g.add_op("scatter", [x, i, u], {"axis": 1})])
    plan = pad_graph(g, {"s0"})
    assert plan.padded == frozenset()
    assert plan.exact["s0"].startswith("op 'scatter' has no padding rule: garbage indices in padded rows")
    assert plan.output_layouts == [(("s0",), (5,))]


def test_kernel_helper_functions_are_registered_up_front() -> None:
    # Registered before any kernel is written, so that no value of a graph takes the helper's name.
    def local_helper(x: object) -> object:
        return x

    with pytest.raises(IRError, match=r"'local_helper' is not a registered kernel helper; call kernel_helper"):
        KernelEmitter(Graph()).function(local_helper)
    assert kernel_helper(np.exp) == "np.exp" and KernelEmitter(Graph()).function(np.exp) == "np.exp"
