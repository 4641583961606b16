"""Collectives across processes for the XLA execute rule (:mod:`spiky.testing.xla_rule`).

XLA:CPU runs one process's HLO alone: a collective over a replica group of several ranks would
reduce, gather or exchange this rank's values only. So a NEFF whose HLO has such collectives is
split at them: the entry computation's instructions are placed in stages by *collective depth*
(how many collectives lie on the longest path from the parameters to the instruction), each stage
becomes its own HLO module (parameters: the values it reads from outside the stage; root: a tuple
of the values later stages, collectives or the NEFF's outputs read), compiled once with XLA:CPU,
and the collectives between stages run in Python over ``torch.distributed`` (gloo) on numpy arrays.
Independent collectives of the same depth run between the same two stages, in HLO order.

Replica ids are global ranks (``spiky_dist.replica_groups``); each replica-group layout gets its own
process groups (``dist.new_group`` for every group of the layout, created lazily, in the same order
on every rank: all ranks execute the same NEFFs in the same order). They are never ``WORLD``: the
execute rule runs on the runtime's execution thread while the program's own thread may issue eager
collectives on ``WORLD`` (DTensor, FSDP), and two threads sharing one group could interleave their
collectives differently on each rank.

What is refused (``NotImplementedError``): collectives outside the entry computation, collective
opcodes other than all-reduce / all-gather / reduce-scatter / all-to-all (array forms), replica
groups that do not partition ``range(world_size)`` into equal groups, and reducers other than
add / multiply / maximum / minimum / and / or. A ``RuntimeError`` when ``torch.distributed`` is not
initialised or its rank and world size are not the ones the NEFF was loaded with.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from spiky_ir.hlo import HloModule
from spiky_ir.hlo import schema as s

COLLECTIVE_OPCODES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all")
"""The collectives the emulator performs between processes."""

Array = np.ndarray[Any, np.dtype[Any]]
Layout = tuple[tuple[int, ...], ...]


def cross_rank_collectives(module: HloModule) -> list[s.Instruction]:
    """Every instruction of ``module`` with a replica group of more than one rank."""
    found = []
    for computation in module.computations:
        for instruction in computation.instructions:
            if any(len(g.replica_ids) > 1 for g in instruction.replica_groups):
                found.append(instruction)
    return found


def _layout(instruction: s.Instruction, world: int, where: str) -> Layout:
    """The instruction's replica groups, checked to be equal groups of global ranks covering the world."""
    layout = tuple(tuple(int(r) for r in g.replica_ids) for g in instruction.replica_groups)
    ranks = sorted(r for g in layout for r in g)
    if ranks != list(range(world)) or len({len(g) for g in layout}) != 1:
        raise NotImplementedError(
            f"{where}: {instruction.opcode} {instruction.name} has replica groups {[list(g) for g in layout]}, which "
            f"do not split the {world} ranks of the job into equal groups; the contract emulator maps replica ids "
            "to global ranks and cannot run this layout")
    return layout


@dataclass(frozen=True)
class _Stage:
    executable: Callable[[Sequence[Array]], list[Array]]
    inputs: tuple[int, ...]
    """Ids of the values the stage reads (its parameters, in order)."""
    outputs: tuple[int, ...]
    """Ids of the values the stage's root tuple returns, in order."""


@dataclass(frozen=True)
class _Collective:
    instruction: s.Instruction
    operand: int
    kind: str
    """The opcode."""
    reducer: str
    """The reducer computation's root opcode (all-reduce, reduce-scatter), else ""."""
    dimension: int
    group: tuple[int, ...]
    """The replica group holding this rank (global ranks, in group order)."""
    process_group: Any
    dtype: np.dtype[Any]
    dims: tuple[int, ...]


_REDUCERS = ("add", "multiply", "maximum", "minimum", "and", "or")


def _reduce_op(reducer: str, dtype: np.dtype[Any]) -> Any:
    import torch.distributed as dist

    if dtype == np.bool_:  # travels as uint8: or == max, and == min
        return dist.ReduceOp.MAX if reducer in ("or", "add", "maximum") else dist.ReduceOp.MIN
    return {"add": dist.ReduceOp.SUM, "multiply": dist.ReduceOp.PRODUCT, "maximum": dist.ReduceOp.MAX,
            "minimum": dist.ReduceOp.MIN, "and": dist.ReduceOp.BAND, "or": dist.ReduceOp.BOR}[reducer]


def _reduce(array: Array, reducer: str, group: Any) -> Array:
    """All-reduce ``array`` over ``group``; 16-bit floats reduce in float32 and round once, bool as uint8."""
    import torch
    import torch.distributed as dist

    dtype = array.dtype
    wide = array.astype(np.uint8) if dtype == np.bool_ else array
    if (dtype.kind == "f" and dtype.itemsize == 2) or dtype.name == "bfloat16":
        wide = array.astype(np.float32)
    tensor = torch.from_numpy(np.array(wide, copy=True, order="C"))
    dist.all_reduce(tensor, _reduce_op(reducer, dtype), group=group)
    result: Array = tensor.numpy().astype(dtype)
    return result


def _gather(array: Array, size: int, group: Any) -> list[Array]:
    """Every group rank's ``array`` (same shape and type on all), in group order, moved as raw bytes."""
    import torch
    import torch.distributed as dist

    raw = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    tensor = torch.from_numpy(raw.copy())
    parts = [torch.empty_like(tensor) for _ in range(size)]
    dist.all_gather(parts, tensor, group=group)
    return [p.numpy().view(array.dtype).reshape(array.shape) for p in parts]


class StagedProgram:
    """A NEFF's HLO split at its cross-rank collectives: ``program(inputs) -> results`` like an executable."""

    def __init__(self, stages: list[_Stage | list[_Collective]], parameters: tuple[int, ...],
                 results: tuple[int, ...], rank: int) -> None:
        self._steps = stages
        self._parameters = parameters
        self._results = results
        self.rank = rank
        self.stage_count = sum(isinstance(step, _Stage) for step in stages)
        self.collective_count = sum(len(step) for step in stages if isinstance(step, list))

    def __call__(self, inputs: Sequence[Array]) -> list[Array]:
        values: dict[int, Array] = dict(zip(self._parameters, inputs, strict=True))
        with _COLLECTIVE_LOCK:  # one collective sequence at a time per process (same order on every rank)
            for step in self._steps:
                if isinstance(step, _Stage):
                    outs = step.executable([values[i] for i in step.inputs])
                    values.update(zip(step.outputs, outs, strict=True))
                else:
                    for collective in step:
                        values[collective.instruction.id] = self._perform(collective, values[collective.operand])
        return [values[i] for i in self._results]

    def _perform(self, c: _Collective, x: Array) -> Array:
        size, index = len(c.group), c.group.index(self.rank)
        d = c.dimension
        if c.kind == "all-reduce":
            out = _reduce(x, c.reducer, c.process_group)
        elif c.kind == "all-gather":
            out = np.concatenate(_gather(x, size, c.process_group), axis=d)
        elif c.kind == "reduce-scatter":
            out = np.split(_reduce(x, c.reducer, c.process_group), size, axis=d)[index]
        else:  # all-to-all: block j of this rank's input goes to group rank j, which concatenates in rank order
            out = np.concatenate([np.split(p, size, axis=d)[index] for p in _gather(x, size, c.process_group)], axis=d)
        if out.shape != c.dims or out.dtype != c.dtype:
            raise RuntimeError(f"the emulated {c.kind} {c.instruction.name} made {out.dtype}{list(out.shape)}, "
                               f"its HLO says {c.dtype}{list(c.dims)}")
        return np.ascontiguousarray(out)


_COLLECTIVE_LOCK = threading.Lock()


class ProcessGroups:
    """The process group of this rank for each replica-group layout, created on first use."""

    def __init__(self) -> None:
        self._groups: dict[Layout, Any] = {}

    def get(self, layout: Layout, rank: int) -> Any:
        import torch.distributed as dist

        if layout not in self._groups:
            mine = None
            for ranks in layout:  # every rank creates every group of the layout, in the same order
                group = dist.new_group(list(ranks))
                if rank in ranks:
                    mine = group
            self._groups[layout] = mine
        return self._groups[layout]


def _shape(instruction: s.Instruction) -> s.Shape:
    assert instruction.shape is not None, instruction.name
    return instruction.shape


def check_distributed(neff_id: str, rank: int, world: int) -> None:
    """Fail clearly unless torch.distributed is initialised with the rank and world the NEFF was loaded with."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            f"NEFF {neff_id!r} has collectives across ranks: the contract emulator performs them over "
            "torch.distributed, which is not initialised in this process (run under torchrun and call "
            "dist.init_process_group('gloo') before compiling)")
    if (dist.get_rank(), dist.get_world_size()) != (rank, world):
        raise RuntimeError(
            f"NEFF {neff_id!r} was loaded as rank {rank} of {world}, but torch.distributed is rank "
            f"{dist.get_rank()} of {dist.get_world_size()}: the emulator cannot map its replica groups")


def stage_module(
    module: HloModule, neff_id: str, rank: int, world: int, groups: ProcessGroups,
    compile_stage: Callable[[bytes], Callable[[Sequence[Array]], list[Array]]],
    numpy_dtype: Callable[[int], np.dtype[Any]],
) -> StagedProgram:
    """Split ``module`` at its cross-rank collectives (see the module docstring) and compile the stages.

    ``compile_stage`` compiles one serialized stage module; ``numpy_dtype`` maps an HLO element type.
    """
    where = f"NEFF {neff_id!r}"
    if rank < 0 or world < 1:
        raise RuntimeError(f"{where} has collectives across ranks but was not loaded with nrt_load_collectives "
                           "(no rank and world size)")
    collectives = cross_rank_collectives(module)
    entry = next((c for c in module.computations if c.id == module.entry_computation_id), module.computations[-1])
    for c in collectives:
        if c.opcode not in COLLECTIVE_OPCODES:
            raise NotImplementedError(f"{where}: {c.opcode} {c.name} across replicas: the contract emulator performs "
                                      f"{', '.join(COLLECTIVE_OPCODES)} only")
        if all(c is not i for i in entry.instructions):
            raise NotImplementedError(f"{where}: {c.opcode} {c.name} is inside a called computation; the contract "
                                      "emulator performs collectives of the entry computation only")
        if len(c.operand_ids) != 1 or c.shape is None or c.shape.element_type == s.TUPLE:
            raise NotImplementedError(f"{where}: {c.opcode} {c.name} has {len(c.operand_ids)} operands or a tuple "
                                      "result; the contract emulator performs single-array collectives only")
    layouts = [_layout(c, world, where) for c in collectives]
    check_distributed(neff_id, rank, world)

    computations = {c.id: c for c in module.computations}
    by_id = {i.id: i for i in entry.instructions}
    root = by_id[entry.root_id]
    collective_ids = {c.id for c in collectives}
    final = tuple(root.operand_ids) if root.opcode == "tuple" else (root.id,)

    depth: dict[int, int] = {}
    for ins in entry.instructions:
        if any(o not in depth for o in ins.operand_ids):
            raise NotImplementedError(f"{where}: instruction {ins.name} comes before its operands")
        depth[ins.id] = max((depth[o] for o in ins.operand_ids), default=0) + (ins.id in collective_ids)
    stageable = [i for i in entry.instructions if i.opcode != "parameter" and i.id not in collective_ids
                 and not (i is root and root.opcode == "tuple")]
    users: dict[int, set[int]] = {}
    for ins in entry.instructions:
        for o in ins.operand_ids:
            users.setdefault(o, set()).add(ins.id)
    sub = [c for c in module.computations if c is not entry]
    next_id = max(*by_id, *computations) + 1

    steps: list[_Stage | list[_Collective]] = []
    for level in range(max(depth.values(), default=0) + 1):
        if level:
            step = []
            for c, layout in zip(collectives, layouts, strict=True):
                if depth[c.id] != level:
                    continue
                reducer = ""
                if c.opcode in ("all-reduce", "reduce-scatter"):
                    called = computations[c.called_computation_ids[0]]
                    reducer = next(i for i in called.instructions if i.id == called.root_id).opcode
                    if reducer not in _REDUCERS:
                        raise NotImplementedError(f"{where}: {c.opcode} {c.name} reduces with {reducer!r}; the "
                                                  f"contract emulator performs {', '.join(_REDUCERS)}")
                assert c.shape is not None
                step.append(_Collective(
                    c, c.operand_ids[0], c.opcode, reducer, c.dimensions[0] if c.dimensions else 0,
                    next(g for g in layout if rank in g), groups.get(layout, rank),
                    numpy_dtype(c.shape.element_type), tuple(c.shape.dimensions)))
            steps.append(step)
        members = [i for i in stageable if depth[i.id] == level]
        member_ids = {i.id for i in members}
        outputs = tuple(i.id for i in members
                        if i.id in final or any(u not in member_ids for u in users.get(i.id, ())))
        if not outputs:
            continue
        inputs = tuple(dict.fromkeys(o for i in members for o in i.operand_ids if o not in member_ids))
        params = [s.Instruction(name=by_id[v].name, opcode="parameter", shape=_shape(by_id[v]), id=v,
                                parameter_number=k) for k, v in enumerate(inputs)]
        result = s.Shape(element_type=s.TUPLE, tuple_shapes=[_shape(by_id[v]) for v in outputs])
        stage_root = s.Instruction(name=f"stage_root.{next_id}", opcode="tuple", shape=result, id=next_id,
                                   operand_ids=list(outputs))
        shape = s.ProgramShape(parameters=[_shape(p) for p in params], result=result,
                               parameter_names=[p.name for p in params])
        computation = s.Computation(name=f"{entry.name}_stage{level}", instructions=[*params, *members, stage_root],
                                    program_shape=shape, id=entry.id, root_id=next_id)
        stage = HloModule(name=f"{module.name}_stage{level}", entry_computation_name=computation.name,
                          computations=[*sub, computation], host_program_shape=shape, id=module.id,
                          entry_computation_id=entry.id)
        steps.append(_Stage(compile_stage(stage.encode()), inputs, outputs))
    parameters = tuple(i.id for i in sorted((i for i in entry.instructions if i.opcode == "parameter"),
                                            key=lambda i: i.parameter_number))
    return StagedProgram(steps, parameters, final, rank)
