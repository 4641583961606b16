"""ctypes binding of the fake libnrt: the libnrt ABI and the fake_nrt_* control functions.

Tests that drive the fake directly use ``FakeNrt.lib`` (argtypes set for every nrt_* function);
tests of a driver that dlopens the same file (same path -> same handle, same state) use only the
control side to install an execute rule and inject failures:

    fake = FakeNrt(build_fake_libnrt(tmp_path))
    fake.set_execute(lambda neff_id, ins, outs: ...)   # ins/outs: name -> writable memoryview
    fake.fail_next_execute(NRT_TIMEOUT)

This module and its siblings (build.py, neff.py, fake_nrt.c) use only the standard library, so
spiky-runtime's tests load them by path without importing spiky.
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

# NRT_STATUS codes (docs/neuron-interfaces.md).
NRT_SUCCESS = 0
NRT_FAILURE = 1
NRT_INVALID = 2
NRT_INVALID_HANDLE = 3
NRT_RESOURCE = 4
NRT_TIMEOUT = 5
NRT_HW_ERROR = 6
NRT_UNSUPPORTED_NEFF_VERSION = 10
NRT_UNINITIALIZED = 13
NRT_CLOSED = 14
NRT_EXEC_BAD_INPUT = 1002
NRT_EXEC_COMPLETED_WITH_NUM_ERR = 1003
NRT_EXEC_COMPLETED_WITH_ERR = 1004
NRT_EXEC_NC_BUSY = 1005

NRT_TENSOR_NAME_MAX = 256


class NrtTensorInfo(ctypes.Structure):
    """``nrt_tensor_info_t`` as docs/neuron-interfaces.md lays it out."""

    _fields_ = [
        ("name", ctypes.c_char * NRT_TENSOR_NAME_MAX),
        ("usage", ctypes.c_int),
        ("size", ctypes.c_size_t),
        ("dtype", ctypes.c_int),
        ("shape", ctypes.POINTER(ctypes.c_uint32)),
        ("ndim", ctypes.c_uint32),
    ]


class NrtTensorInfoArrayHeader(ctypes.Structure):
    """``nrt_tensor_info_array_t`` without its flexible array member (entries follow it)."""

    _fields_ = [("tensor_count", ctypes.c_uint64)]


def tensor_infos(array_ptr: int) -> list[NrtTensorInfo]:
    """The entries of an ``nrt_tensor_info_array_t*`` (read in place, valid until freed)."""
    header = NrtTensorInfoArrayHeader.from_address(array_ptr)
    entries = (NrtTensorInfo * header.tensor_count).from_address(array_ptr + ctypes.sizeof(header))
    return list(entries)


# (neff_id, inputs, outputs) -> NRT_STATUS; inputs/outputs map NEFF names, in NEFF order, to
# memoryviews of the tensor bytes (outputs writable).
ExecuteRule = Callable[[str, dict[str, memoryview], dict[str, memoryview]], int]

_ExecuteFn = ctypes.CFUNCTYPE(
    ctypes.c_int,
    ctypes.c_void_p,
    ctypes.c_char_p,
    ctypes.c_int,
    ctypes.POINTER(ctypes.c_char_p),
    ctypes.POINTER(ctypes.c_void_p),
    ctypes.POINTER(ctypes.c_size_t),
    ctypes.c_int,
    ctypes.POINTER(ctypes.c_char_p),
    ctypes.POINTER(ctypes.c_void_p),
    ctypes.POINTER(ctypes.c_size_t),
)

_P = ctypes.c_void_p
_PP = ctypes.POINTER(ctypes.c_void_p)
_NRT_SIGNATURES: dict[str, tuple[object, list[object]]] = {
    "nrt_init": (ctypes.c_int, [ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p]),
    "nrt_close": (None, []),
    "nrt_get_total_nc_count": (ctypes.c_int, [ctypes.POINTER(ctypes.c_uint32)]),
    "nrt_get_visible_nc_count": (ctypes.c_int, [ctypes.POINTER(ctypes.c_uint32)]),
    "nrt_load": (ctypes.c_int, [_P, ctypes.c_size_t, ctypes.c_int32, ctypes.c_int32, _PP]),
    "nrt_load_collectives": (
        ctypes.c_int,
        [_P, ctypes.c_size_t, ctypes.c_int32, ctypes.c_int32, ctypes.c_uint32, ctypes.c_uint32, _PP],
    ),
    "nrt_unload": (ctypes.c_int, [_P]),
    "nrt_get_model_tensor_info": (ctypes.c_int, [_P, _PP]),
    "nrt_free_model_tensor_info": (ctypes.c_int, [_P]),
    "nrt_tensor_allocate": (ctypes.c_int, [ctypes.c_int, ctypes.c_int, ctypes.c_size_t, ctypes.c_char_p, _PP]),
    "nrt_tensor_free": (None, [_PP]),
    "nrt_tensor_write": (ctypes.c_int, [_P, _P, ctypes.c_size_t, ctypes.c_size_t]),
    "nrt_tensor_read": (ctypes.c_int, [_P, _P, ctypes.c_size_t, ctypes.c_size_t]),
    "nrt_tensor_copy": (ctypes.c_int, [_P, ctypes.c_size_t, _P, ctypes.c_size_t, ctypes.c_size_t]),
    "nrt_tensor_memset": (ctypes.c_int, [_P, ctypes.c_uint64, ctypes.c_int, ctypes.c_size_t]),
    "nrt_tensor_get_size": (ctypes.c_size_t, [_P]),
    "nrt_tensor_get_va": (ctypes.c_void_p, [_P]),
    "nrt_tensor_allocate_slice": (ctypes.c_int, [_P, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_char_p, _PP]),
    "nrt_allocate_tensor_set": (ctypes.c_int, [_PP]),
    "nrt_destroy_tensor_set": (None, [_PP]),
    "nrt_add_tensor_to_tensor_set": (ctypes.c_int, [_P, ctypes.c_char_p, _P]),
    "nrt_execute": (ctypes.c_int, [_P, _P, _P]),
    "nrt_profile_start": (ctypes.c_int, [_P, ctypes.c_char_p]),
    "nrt_profile_stop": (ctypes.c_int, [ctypes.c_char_p]),
}

_CONTROL_SIGNATURES: dict[str, tuple[object, list[object]]] = {
    "fake_nrt_last_error": (ctypes.c_char_p, []),
    "fake_nrt_set_execute_callback": (None, [_ExecuteFn, ctypes.c_void_p]),
    "fake_nrt_fail_allocation_at": (None, [ctypes.c_long]),
    "fake_nrt_fail_next_execute": (None, [ctypes.c_int]),
    "fake_nrt_fail_next_allocate": (None, [ctypes.c_int]),
    "fake_nrt_fail_next_load": (None, [ctypes.c_int]),
    "fake_nrt_current_neff": (ctypes.c_void_p, [ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_uint64)]),
    "fake_nrt_current_model": (ctypes.c_void_p, []),
    "fake_nrt_set_device_capacity": (None, [ctypes.c_size_t]),
    "fake_nrt_set_timing": (None, [ctypes.c_int, ctypes.c_double, ctypes.c_double, ctypes.c_double, ctypes.c_double]),
    "fake_nrt_set_execute_time": (ctypes.c_int, [ctypes.c_char_p, ctypes.c_double]),
    "fake_nrt_reset": (None, []),
    "fake_nrt_teardown": (ctypes.c_uint64, []),
    "fake_nrt_live_tensors": (ctypes.c_uint64, []),
    "fake_nrt_live_models": (ctypes.c_uint64, []),
    "fake_nrt_live_tensor_sets": (ctypes.c_uint64, []),
    "fake_nrt_live_tensor_infos": (ctypes.c_uint64, []),
    "fake_nrt_execute_count": (ctypes.c_uint64, []),
    "fake_nrt_double_unloads": (ctypes.c_uint64, []),
    "fake_nrt_contract_violations": (ctypes.c_uint64, []),
    "fake_nrt_bytes_written": (ctypes.c_uint64, []),
    "fake_nrt_bytes_read": (ctypes.c_uint64, []),
    "fake_nrt_device_bytes_in_use": (ctypes.c_uint64, [ctypes.c_int]),
    "fake_nrt_call_count": (ctypes.c_int64, [ctypes.c_char_p]),
    "fake_nrt_model_rank": (ctypes.c_int32, [_P]),
    "fake_nrt_model_world_size": (ctypes.c_int32, [_P]),
    "fake_nrt_model_vnc": (ctypes.c_int32, [_P]),
    "fake_nrt_model_neff_id": (ctypes.c_char_p, [_P]),
}


@dataclass(frozen=True)
class TimingModel:
    """How long the fake's transfers and executions take (``FakeNrt.set_timing``); off unless set.

    A transfer lasts ``latency_us`` + bytes / bandwidth, one at a time per direction (the host link
    is full duplex, so an upload and a download overlap); a device-side copy or fill lasts bytes /
    ``device_gbps``; an execution holds its NeuronCore for ``execute_ms`` (per NEFF id in
    ``execute_ms_per_neff``, else ``execute_ms``; None: the execute rule's own time, e.g. the XLA:CPU
    run). Bandwidths are in GB/s (1e9 bytes/s); ``math.inf`` makes a phase free. The defaults are
    Trn1's (docs/fake-neuron.md gives the sources): PCIe Gen4 x16 and the chip's HBM.
    """

    h2d_gbps: float = 31.5
    d2h_gbps: float = 31.5
    latency_us: float = 10.0
    device_gbps: float = 820.0
    execute_ms: float | None = None
    execute_ms_per_neff: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("h2d_gbps", "d2h_gbps", "device_gbps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"TimingModel.{name} must be a number > 0 (GB/s; math.inf = free), got {value!r}")
        if isinstance(self.latency_us, bool) or not isinstance(self.latency_us, int | float) \
                or not 0 <= self.latency_us < math.inf:
            raise ValueError(f"TimingModel.latency_us must be a finite number >= 0, got {self.latency_us!r}")
        times = {"execute_ms": self.execute_ms} if self.execute_ms is not None else {}
        times.update({f"execute_ms_per_neff[{k!r}]": v for k, v in self.execute_ms_per_neff.items()})
        for name, value in times.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
                raise ValueError(f"TimingModel.{name} must be a finite number of ms >= 0, got {value!r}")

    @classmethod
    def trn1(cls, **changes: object) -> TimingModel:
        """Trn1 (Trainium): PCIe Gen4 x16 (31.5 GB/s per direction), 820 GB/s HBM per chip."""
        return cls(**changes)  # type: ignore[arg-type]

    @classmethod
    def trn2(cls, **changes: object) -> TimingModel:
        """Trn2 (Trainium2): PCIe Gen5 x16 (63 GB/s per direction, assumed), 2.9 TB/s HBM per chip."""
        base: dict[str, object] = {"h2d_gbps": 63.0, "d2h_gbps": 63.0, "device_gbps": 2900.0}
        base.update(changes)
        return cls(**base)  # type: ignore[arg-type]

    def transfer_ms(self, nbytes: int, h2d: bool = True) -> float:
        """The modelled time of one host <-> device transfer of ``nbytes``."""
        gbps = self.h2d_gbps if h2d else self.d2h_gbps
        return self.latency_us / 1e3 + nbytes / (gbps * 1e9) * 1e3


def _bps(gbps: float) -> float:
    return 0.0 if math.isinf(gbps) else gbps * 1e9  # the fake reads <= 0 as infinite


def _bytes_at(address: int, size: int) -> memoryview:
    return memoryview((ctypes.c_ubyte * size).from_address(address)).cast("B")


class FakeNrt:
    """The fake libnrt loaded with ctypes. ``lib`` exposes the raw functions (signatures set)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.lib = ctypes.CDLL(str(self.path))
        for table in (_NRT_SIGNATURES, _CONTROL_SIGNATURES):
            for name, (restype, argtypes) in table.items():
                fn = getattr(self.lib, name, None)
                if fn is None:  # a build with this symbol omitted
                    continue
                fn.restype = restype
                fn.argtypes = argtypes
        self._callback: object = None
        self.callback_errors: list[BaseException] = []

    # ---- execution rule -------------------------------------------------------------------
    def set_execute(self, rule: ExecuteRule | None) -> None:
        """Installs the rule nrt_execute runs (None removes it). A rule that raises returns
        NRT_FAILURE; the exception is appended to ``callback_errors``."""
        if rule is None:
            self.lib.fake_nrt_set_execute_callback(_ExecuteFn(), None)
            self._callback = None
            return

        def trampoline(
            _user: int | None,
            neff_id: bytes,
            n_in: int,
            in_names: ctypes.Array[ctypes.c_char_p],
            in_bufs: ctypes.Array[ctypes.c_void_p],
            in_sizes: ctypes.Array[ctypes.c_size_t],
            n_out: int,
            out_names: ctypes.Array[ctypes.c_char_p],
            out_bufs: ctypes.Array[ctypes.c_void_p],
            out_sizes: ctypes.Array[ctypes.c_size_t],
        ) -> int:
            try:
                ins = {(in_names[i] or b"").decode(): _bytes_at(in_bufs[i] or 0, in_sizes[i]) for i in range(n_in)}
                outs = {(out_names[i] or b"").decode(): _bytes_at(out_bufs[i] or 0, out_sizes[i]) for i in range(n_out)}
                return int(rule(neff_id.decode(), ins, outs))
            except BaseException as exc:
                self.callback_errors.append(exc)
                return NRT_FAILURE

        fn = _ExecuteFn(trampoline)
        self.lib.fake_nrt_set_execute_callback(fn, None)
        self._callback = fn  # keep the thunk alive while C holds it

    # ---- injections and lifecycle of the fake ---------------------------------------------
    def fail_allocation_at(self, n: int) -> None:
        """The n-th nrt_tensor_allocate from now (1 = the next) returns NRT_RESOURCE; 0 disarms."""
        self.lib.fake_nrt_fail_allocation_at(n)

    def fail_next_execute(self, status: int) -> None:
        """The next nrt_execute that passes validation returns ``status``."""
        self.lib.fake_nrt_fail_next_execute(status)

    def fail_next_allocate(self, status: int = NRT_RESOURCE) -> None:
        """The next nrt_tensor_allocate that passes validation returns ``status`` (0 disarms)."""
        self.lib.fake_nrt_fail_next_allocate(status)

    def fail_next_load(self, status: int) -> None:
        """The next nrt_load / nrt_load_collectives of a valid NEFF returns ``status`` (0 disarms)."""
        self.lib.fake_nrt_fail_next_load(status)

    def set_device_capacity(self, bytes_per_core: int) -> None:
        """Device bytes per core before nrt_tensor_allocate returns NRT_RESOURCE; 0 = unlimited."""
        self.lib.fake_nrt_set_device_capacity(bytes_per_core)

    def set_timing(self, timing: TimingModel | None) -> None:
        """Turns the timing model on with ``timing``'s figures, or off (None); see :class:`TimingModel`."""
        if timing is None:
            self.lib.fake_nrt_set_timing(0, 0.0, 0.0, 0.0, 0.0)
            self.lib.fake_nrt_set_execute_time(None, -1.0)
            return
        if not isinstance(timing, TimingModel):
            raise TypeError(f"set_timing: expected a TimingModel or None, got {type(timing).__name__}")
        self.lib.fake_nrt_set_timing(1, _bps(timing.h2d_gbps), _bps(timing.d2h_gbps), timing.latency_us / 1e6,
                                     _bps(timing.device_gbps))
        self.lib.fake_nrt_set_execute_time(None, -1.0 if timing.execute_ms is None else timing.execute_ms / 1e3)
        for neff_id, ms in timing.execute_ms_per_neff.items():
            self.set_execute_time(neff_id, ms)

    def set_execute_time(self, neff_id: str | None, ms: float | None) -> None:
        """How long executions of ``neff_id`` (None: every NEFF without its own entry) last with the
        timing model on; ``ms=None`` drops the entry (the execute rule's own time)."""
        if ms is not None and not 0 <= ms < math.inf:
            raise ValueError(f"set_execute_time: ms must be a finite number >= 0 or None, got {ms!r}")
        status = self.lib.fake_nrt_set_execute_time(None if neff_id is None else neff_id.encode(),
                                                    -1.0 if ms is None else ms / 1e3)
        if status != 0:
            raise RuntimeError(f"set_execute_time: the fake holds at most 64 per-NEFF times; {neff_id!r} did not fit")

    def reset(self) -> None:
        """Clears injections, counters, capacity, last error, the execute rule and the timing model."""
        self.lib.fake_nrt_reset()
        self._callback = None
        self.callback_errors.clear()

    def teardown(self) -> int:
        """Frees all live objects, returns to "never initialised", resets; returns the leak count."""
        leaked = int(self.lib.fake_nrt_teardown())
        self._callback = None
        self.callback_errors.clear()
        return leaked

    # ---- observations ---------------------------------------------------------------------
    def last_error(self) -> str:
        return (self.lib.fake_nrt_last_error() or b"").decode()

    def live_tensors(self) -> int:
        return int(self.lib.fake_nrt_live_tensors())

    def live_models(self) -> int:
        return int(self.lib.fake_nrt_live_models())

    def live_tensor_sets(self) -> int:
        return int(self.lib.fake_nrt_live_tensor_sets())

    def live_tensor_infos(self) -> int:
        return int(self.lib.fake_nrt_live_tensor_infos())

    def execute_count(self) -> int:
        return int(self.lib.fake_nrt_execute_count())

    def double_unloads(self) -> int:
        return int(self.lib.fake_nrt_double_unloads())

    def contract_violations(self) -> int:
        return int(self.lib.fake_nrt_contract_violations())

    def device_bytes_in_use(self, core: int = 0) -> int:
        return int(self.lib.fake_nrt_device_bytes_in_use(core))

    def call_count(self, symbol: str) -> int:
        return int(self.lib.fake_nrt_call_count(symbol.encode()))

    def bytes_written(self) -> int:
        """Bytes copied host -> device by successful nrt_tensor_write calls since the last reset."""
        return int(self.lib.fake_nrt_bytes_written())

    def bytes_read(self) -> int:
        """Bytes copied device -> host by successful nrt_tensor_read calls since the last reset."""
        return int(self.lib.fake_nrt_bytes_read())

    def current_neff_serial(self) -> int:
        """The load serial (unique per load) of the model whose execute rule runs on this thread; 0 if none."""
        serial = ctypes.c_uint64()
        self.lib.fake_nrt_current_neff(None, ctypes.byref(serial))
        return int(serial.value)

    def current_neff(self) -> bytes | None:
        """The NEFF bytes of the model whose execute rule runs on this thread, else None."""
        size = ctypes.c_size_t()
        address = self.lib.fake_nrt_current_neff(ctypes.byref(size), None)
        return ctypes.string_at(address, size.value) if address else None

    def current_model(self) -> int | None:
        """The handle of the model whose execute rule runs on this thread (for :meth:`model_rank`); None if none."""
        address = self.lib.fake_nrt_current_model()
        return int(address) if address else None

    def model_rank(self, model: int | None) -> int:
        return int(self.lib.fake_nrt_model_rank(model))

    def model_world_size(self, model: int | None) -> int:
        return int(self.lib.fake_nrt_model_world_size(model))

    def model_vnc(self, model: int | None) -> int:
        return int(self.lib.fake_nrt_model_vnc(model))

    def model_neff_id(self, model: int | None) -> str:
        return (self.lib.fake_nrt_model_neff_id(model) or b"").decode()
