"""The fake libnrt's execute rule of :func:`spiky.testing.fake_neuron`: a NEFF's HLO on XLA:CPU.

The fake ``neuronx-cc`` (:mod:`spiky.testing.neuronx_cc`) embeds the HLO module in the NEFF. On
``nrt_execute`` the rule asks the fake libnrt for the bytes of the NEFF being executed (the
loaded copy, whatever file or cache it came from), compiles its HLO once per load with XLA:CPU
(``spiky_ir.hlo.xla_cpu``, needs the pinned jax), and runs it on the bound tensors' bytes. Where
the compiler narrowed a 64-bit type, inputs are widened to the module's types before the run and
results narrowed to the NEFF's after it, as the narrowed program would compute (wrapping on
overflow instead of whatever the device does).

A NEFF whose HLO has collectives across ranks (all-reduce, all-gather, reduce-scatter, all-to-all
over replica groups of several ranks) is split at them into stages run in order, with the
collectives performed between the stages over ``torch.distributed``
(:mod:`spiky.testing.xla_collectives`); NEFFs without them run as one module.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from spiky.testing.fake_nrt.control import NRT_SUCCESS, FakeNrt
from spiky.testing.fake_nrt.neff import NeffTensor, read_fake_neff
from spiky.testing.neuronx_cc import PRIMITIVE_DTYPES
from spiky.testing.xla_collectives import ProcessGroups, cross_rank_collectives, stage_module
from spiky_ir.hlo import HloModule

HLO_MEMBER = "model.hlo.pb"


def _numpy_dtype(name: str) -> np.dtype[Any]:
    if name == "bfloat16":
        import ml_dtypes

        bfloat16: np.dtype[Any] = np.dtype(ml_dtypes.bfloat16)
        return bfloat16
    return np.dtype(name)


# NRT dtype code -> numpy dtype, for the codes the fake compiler writes (bool travels as uint8).
_NRT_NUMPY: dict[int, str] = {
    0xA: "float32", 0x7: "float16", 0x6: "bfloat16", 0x2: "int8", 0x3: "uint8", 0x4: "int16", 0x5: "uint16",
    0x8: "int32", 0x9: "uint32", 0xC: "int64", 0x1: "uint64",
}  # fmt: skip


def nrt_numpy_dtype(code: int) -> np.dtype[Any]:
    """The numpy dtype of an NRT dtype code (fp8 codes are not supported by the rule)."""
    try:
        return _numpy_dtype(_NRT_NUMPY[code])
    except KeyError:
        raise ValueError(f"the XLA execute rule cannot run NRT dtype code {code:#x}; "
                         f"it runs {sorted(hex(c) for c in _NRT_NUMPY)}") from None


@dataclass(frozen=True)
class _Program:
    neff_id: str
    inputs: tuple[NeffTensor, ...]
    input_dtypes: tuple[np.dtype[Any], ...]
    """Per NEFF input: the module parameter's numpy type (the NEFF may declare a narrower one)."""
    outputs: tuple[tuple[int, NeffTensor], ...]
    """(index among the module's results, NEFF output) for each output the NEFF kept."""
    executable: Any


class XlaExecuteRule:
    """``fake.set_execute(XlaExecuteRule(fake))``: run each executed NEFF's embedded HLO on XLA:CPU.

    Thread-safe; programs are compiled once per load of a NEFF (the fake's load serial).
    """

    def __init__(self, fake: FakeNrt) -> None:
        self.fake = fake
        self._programs: dict[int, _Program] = {}
        self._lock = threading.Lock()
        self._groups = ProcessGroups()

    def _program(self) -> _Program:
        serial = self.fake.current_neff_serial()
        if serial == 0:
            raise RuntimeError("XlaExecuteRule called outside nrt_execute")
        with self._lock:
            program = self._programs.get(serial)
            if program is None:
                data = self.fake.current_neff()
                if data is None:
                    raise RuntimeError("XlaExecuteRule called outside nrt_execute")
                program = self._programs[serial] = self._compile(data)
        return program

    def _compile(self, data: bytes) -> _Program:
        from spiky_ir.hlo.xla_cpu import compile_hlo

        neff = read_fake_neff(data)
        proto = neff.members.get(HLO_MEMBER)
        if proto is None:
            raise ValueError(f"NEFF {neff.neff_id!r} has no {HLO_MEMBER} member: it was not written by the fake "
                             "neuronx-cc (spiky.testing), so the XLA execute rule cannot run it")
        module = HloModule.decode(proto)
        shape = module.host_program_shape
        if shape is None or shape.result is None:
            raise ValueError(f"NEFF {neff.neff_id!r}: its HLO module has no host_program_shape")
        params = [_numpy_dtype(PRIMITIVE_DTYPES[p.element_type]) for p in shape.parameters]
        if len(params) != len(neff.inputs):
            raise ValueError(f"NEFF {neff.neff_id!r} declares {len(neff.inputs)} inputs, its HLO has {len(params)}")
        entry = module.computations[-1]
        root = next(i for i in entry.instructions if i.id == entry.root_id)
        assert root.frontend_attributes is not None
        result_index = {name: i for i, name in enumerate(root.frontend_attributes.map["neff_output_names"].split(","))}
        outputs = tuple((result_index[t.name], t) for t in neff.outputs)
        if not cross_rank_collectives(module):
            return _Program(neff.neff_id, neff.inputs, tuple(params), outputs, compile_hlo(proto))
        # Collectives across ranks: XLA:CPU alone would compute over this process only. Split the
        # module at them and perform them between the stages over torch.distributed.
        model = self.fake.current_model()
        rank, world = self.fake.model_rank(model), self.fake.model_world_size(model)
        staged = stage_module(module, neff.neff_id, rank, world, self._groups, compile_hlo,
                              lambda element_type: _numpy_dtype(PRIMITIVE_DTYPES[element_type]))
        return _Program(neff.neff_id, neff.inputs, tuple(params), outputs, staged)

    def __call__(self, neff_id: str, ins: dict[str, memoryview], outs: dict[str, memoryview]) -> int:
        program = self._program()
        arrays = []
        for tensor, dtype in zip(program.inputs, program.input_dtypes, strict=True):
            array = np.frombuffer(ins[tensor.name], nrt_numpy_dtype(tensor.dtype)).reshape(tensor.shape)
            arrays.append(array.astype(dtype, copy=False))
        results = program.executable(arrays)
        for index, tensor in program.outputs:
            result = np.ascontiguousarray(results[index]).astype(nrt_numpy_dtype(tensor.dtype), copy=False)
            np.frombuffer(outs[tensor.name], np.uint8)[:] = result.reshape(-1).view(np.uint8)
        return NRT_SUCCESS
