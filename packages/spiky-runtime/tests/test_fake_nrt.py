"""Contract tests of the fake libnrt (spiky-torch's ``spiky/testing/fake_nrt/fake_nrt.c``), driven through ctypes.

The fake stands in for the Neuron Runtime in every test of the nrt driver, so each rule it claims
to enforce (docs/neuron-interfaces.md plus the header comment of fake_nrt.c) is checked here.
"""

from __future__ import annotations

import ctypes
import importlib.util
import io
import re
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

# The fake libnrt ships with spiky-torch (spiky.testing.fake_nrt); its build, control and NEFF modules
# use only the standard library, so they load by path here without installing spiky-torch.
FAKE_DIR = Path(__file__).resolve().parents[2] / "spiky-torch" / "src" / "spiky" / "testing" / "fake_nrt"


def _load(name: str) -> ModuleType:
    # tests/ is not a package (pytest runs with --import-mode=importlib): load by path.
    spec = importlib.util.spec_from_file_location(f"_fake_nrt_{name}", FAKE_DIR / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


build = _load("build")
neff = _load("neff")
control = _load("control")
C = control  # status codes (C.NRT_*)
OK: int = control.NRT_SUCCESS

F32 = 0xA
ENV_VARS = ("NEURON_RT_VISIBLE_CORES", "NEURON_RT_NUM_CORES", "FAKE_NRT_TOTAL_CORES", "FAKE_NRT_LOCK_DIR")


@pytest.fixture(scope="module")
def lib_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path: Path = build.build_fake_libnrt(tmp_path_factory.mktemp("fake_nrt"))
    return path


@pytest.fixture(scope="module")
def loaded(lib_path: Path) -> Any:
    return control.FakeNrt(lib_path)


@pytest.fixture
def fake(loaded: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The fake, never initialised, with no injections and a clean environment."""
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    loaded.teardown()
    yield loaded
    loaded.teardown()


@pytest.fixture
def nrt(fake: Any) -> Any:
    """The raw library, initialised (2 cores, both visible)."""
    assert fake.lib.nrt_init(1, b"", b"") == C.NRT_SUCCESS
    return fake.lib


# ---- small helpers over the raw C API --------------------------------------------------------


def alloc(nrt: Any, size: int, name: str = "t", vnc: int = 0) -> ctypes.c_void_p:
    t = ctypes.c_void_p()
    st = nrt.nrt_tensor_allocate(0, vnc, size, name.encode(), ctypes.byref(t))
    assert st == C.NRT_SUCCESS, st
    return t


def write(nrt: Any, t: ctypes.c_void_p, data: bytes, offset: int = 0) -> int:
    return int(nrt.nrt_tensor_write(t, data, offset, len(data)))


def read(nrt: Any, t: ctypes.c_void_p, size: int, offset: int = 0) -> bytes:
    buf = ctypes.create_string_buffer(size)
    st = nrt.nrt_tensor_read(t, buf, offset, size)
    assert st == C.NRT_SUCCESS, st
    return buf.raw


def free(nrt: Any, t: ctypes.c_void_p) -> None:
    nrt.nrt_tensor_free(ctypes.byref(t))


def load(nrt: Any, data: bytes, vnc: int = 0) -> tuple[int, ctypes.c_void_p]:
    model = ctypes.c_void_p()
    st = nrt.nrt_load(data, len(data), vnc, -1, ctypes.byref(model))
    return int(st), model


def new_set(nrt: Any, bindings: dict[str, ctypes.c_void_p]) -> ctypes.c_void_p:
    s = ctypes.c_void_p()
    assert nrt.nrt_allocate_tensor_set(ctypes.byref(s)) == C.NRT_SUCCESS
    for name, t in bindings.items():
        assert nrt.nrt_add_tensor_to_tensor_set(s, name.encode(), t) == C.NRT_SUCCESS
    return s


def destroy_set(nrt: Any, s: ctypes.c_void_p) -> None:
    nrt.nrt_destroy_tensor_set(ctypes.byref(s))


def add_neff(shape: tuple[int, ...] = (2, 3), neff_id: str = "kernel_add") -> bytes:
    data: bytes = neff.fake_neff_bytes(
        inputs=[("a", "float32", shape), ("b", "float32", shape)],
        outputs=[("output0", "float32", shape)],
        neff_id=neff_id,
    )
    return data


def add_rule(neff_id: str, ins: dict[str, memoryview], outs: dict[str, memoryview]) -> int:
    a = np.frombuffer(ins["a"], dtype=np.float32)
    b = np.frombuffer(ins["b"], dtype=np.float32)
    np.frombuffer(outs["output0"], dtype=np.float32)[:] = a + b
    return OK


class AddModel:
    """A loaded add NEFF with its tensors and sets, for the execute tests."""

    def __init__(self, nrt: Any, shape: tuple[int, ...] = (2, 3)) -> None:
        self.nrt = nrt
        n = int(np.prod(shape)) * 4
        st, self.model = load(nrt, add_neff(shape))
        assert st == C.NRT_SUCCESS
        self.a, self.b, self.out = alloc(nrt, n, "a"), alloc(nrt, n, "b"), alloc(nrt, n, "out")
        self.x = np.arange(n // 4, dtype=np.float32)
        write(nrt, self.a, self.x.tobytes())
        write(nrt, self.b, (10 * self.x).tobytes())
        self.ins = new_set(nrt, {"a": self.a, "b": self.b})
        self.outs = new_set(nrt, {"output0": self.out})

    def execute(self) -> int:
        return int(self.nrt.nrt_execute(self.model, self.ins, self.outs))

    def result(self) -> np.ndarray[Any, np.dtype[np.float32]]:
        return np.frombuffer(read(self.nrt, self.out, self.x.nbytes), dtype=np.float32)

    def close(self) -> None:
        destroy_set(self.nrt, self.ins)
        destroy_set(self.nrt, self.outs)
        for t in (self.a, self.b, self.out):
            free(self.nrt, t)
        assert self.nrt.nrt_unload(self.model) == C.NRT_SUCCESS


# ---- the library itself ----------------------------------------------------------------------


@pytest.mark.smoke
def test_exports_exactly_the_documented_symbols(lib_path: Path, loaded: Any) -> None:
    out = subprocess.run(["nm", "-D", "--defined-only", str(lib_path)], capture_output=True, text=True, check=True)
    exported = {line.split()[-1] for line in out.stdout.splitlines() if line.strip()}
    assert {s for s in exported if s.startswith("nrt_")} == set(build.NRT_SYMBOLS)
    assert {s for s in exported if not s.startswith("nrt_")} == set(control._CONTROL_SIGNATURES)
    readelf = subprocess.run(["readelf", "-d", str(lib_path)], capture_output=True, text=True, check=True)
    assert "Library soname: [libnrt.so.1]" in readelf.stdout


@pytest.mark.smoke
def test_omitted_symbol_is_absent(tmp_path: Path) -> None:
    path = build.build_fake_libnrt(tmp_path, omit_symbols=["nrt_execute", "nrt_profile_stop"])
    lib = ctypes.CDLL(str(path))  # another path: a separate copy, even with the same soname
    for name in build.NRT_SYMBOLS:
        assert hasattr(lib, name) == (name not in {"nrt_execute", "nrt_profile_stop"}), name
    with pytest.raises(ValueError, match="nrt_exec"):
        build.build_fake_libnrt(tmp_path, omit_symbols=["nrt_exec"])


# ---- lifecycle and cores ---------------------------------------------------------------------

_P = ctypes.c_void_p()
_CALLS_NEEDING_INIT: dict[str, tuple[Any, ...]] = {
    "nrt_load": (b"NEFF", 4, 0, -1, ctypes.byref(_P)),
    "nrt_load_collectives": (b"NEFF", 4, 0, -1, 0, 1, ctypes.byref(_P)),
    "nrt_unload": (None,),
    "nrt_get_model_tensor_info": (None, ctypes.byref(_P)),
    "nrt_free_model_tensor_info": (None,),
    "nrt_tensor_allocate": (0, 0, 8, b"t", ctypes.byref(_P)),
    "nrt_tensor_write": (None, b"x", 0, 1),
    "nrt_tensor_read": (None, None, 0, 0),
    "nrt_tensor_copy": (None, 0, None, 0, 0),
    "nrt_tensor_memset": (None, 0, 0, 0),
    "nrt_tensor_allocate_slice": (None, 0, 1, b"s", ctypes.byref(_P)),
    "nrt_allocate_tensor_set": (ctypes.byref(_P),),
    "nrt_add_tensor_to_tensor_set": (None, b"x", None),
    "nrt_execute": (None, None, None),
    "nrt_profile_start": (None, b"/tmp/x.ntff"),
    "nrt_profile_stop": (b"/tmp/x.ntff",),
}


@pytest.mark.smoke
@pytest.mark.parametrize("call", sorted(_CALLS_NEEDING_INIT))
def test_calls_before_init_and_after_close(fake: Any, call: str) -> None:
    fn = getattr(fake.lib, call)
    assert fn(*_CALLS_NEEDING_INIT[call]) == C.NRT_UNINITIALIZED
    assert call in fake.last_error() and "before nrt_init" in fake.last_error()
    assert fake.lib.nrt_init(1, b"2.0", b"") == C.NRT_SUCCESS
    fake.lib.nrt_close()
    assert fn(*_CALLS_NEEDING_INIT[call]) == C.NRT_CLOSED
    assert "after nrt_close" in fake.last_error()


@pytest.mark.smoke
def test_lifecycle_is_once_per_process(fake: Any) -> None:
    lib = fake.lib
    lib.nrt_close()  # before init: a violation, not a crash
    assert fake.contract_violations() == 1
    assert lib.nrt_init(1, b"", b"") == C.NRT_SUCCESS
    assert lib.nrt_init(1, b"", b"") == C.NRT_FAILURE
    assert "already initialised" in fake.last_error()
    lib.nrt_close()
    lib.nrt_close()
    assert fake.contract_violations() == 2
    assert lib.nrt_init(1, b"", b"") == C.NRT_FAILURE
    assert "after nrt_close" in fake.last_error()
    t = ctypes.c_void_p(1234)
    lib.nrt_tensor_free(ctypes.byref(t))  # after close: a violation
    assert fake.contract_violations() == 4  # wrong state + unknown handle
    assert t.value is None


@pytest.mark.smoke
@pytest.mark.parametrize(
    ("env", "total", "visible"),
    [
        ({}, 2, 2),
        ({"FAKE_NRT_TOTAL_CORES": "8"}, 8, 8),
        ({"NEURON_RT_VISIBLE_CORES": "1"}, 2, 1),
        ({"NEURON_RT_VISIBLE_CORES": "0-1"}, 2, 2),
        ({"FAKE_NRT_TOTAL_CORES": "4", "NEURON_RT_VISIBLE_CORES": "2-3"}, 4, 2),
        ({"FAKE_NRT_TOTAL_CORES": "4", "NEURON_RT_NUM_CORES": "3"}, 4, 3),
    ],
)
def test_core_counts(fake: Any, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], total: int, visible: int) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)

    def counts() -> tuple[int, int]:
        total_n, visible_n = ctypes.c_uint32(), ctypes.c_uint32()
        assert fake.lib.nrt_get_total_nc_count(ctypes.byref(total_n)) == C.NRT_SUCCESS
        assert fake.lib.nrt_get_visible_nc_count(ctypes.byref(visible_n)) == C.NRT_SUCCESS
        return total_n.value, visible_n.value

    assert counts() == (total, visible), "callable before nrt_init"
    assert fake.lib.nrt_init(1, b"", b"") == C.NRT_SUCCESS
    assert counts() == (total, visible)
    monkeypatch.setenv("NEURON_RT_VISIBLE_CORES", "0")
    assert counts() == (total, visible), "fixed at nrt_init"
    assert fake.lib.nrt_get_visible_nc_count(None) == C.NRT_INVALID


@pytest.mark.smoke
@pytest.mark.parametrize(
    "env",
    [
        {"NEURON_RT_VISIBLE_CORES": "a"},
        {"NEURON_RT_VISIBLE_CORES": "1-"},
        {"NEURON_RT_VISIBLE_CORES": "1-0"},
        {"NEURON_RT_VISIBLE_CORES": "2"},  # beyond the 2 cores
        {"NEURON_RT_VISIBLE_CORES": "-1"},
        {"NEURON_RT_NUM_CORES": "3"},
        {"FAKE_NRT_TOTAL_CORES": "0"},
    ],
)
def test_bad_core_environment_fails_init(fake: Any, monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert fake.lib.nrt_init(1, b"", b"") == C.NRT_INVALID
    assert next(iter(env)) in fake.last_error()
    monkeypatch.delenv(next(iter(env)))
    assert fake.lib.nrt_init(1, b"", b"") == C.NRT_SUCCESS  # a failed init leaves the runtime unopened


@pytest.mark.smoke
def test_vnc_is_an_index_into_the_visible_cores(fake: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_NRT_TOTAL_CORES", "4")
    monkeypatch.setenv("NEURON_RT_VISIBLE_CORES", "2-3")
    lib = fake.lib
    assert lib.nrt_init(1, b"", b"") == C.NRT_SUCCESS
    t = alloc(lib, 16, vnc=1)
    assert fake.device_bytes_in_use(3) == 16 and fake.device_bytes_in_use(1) == 0
    bad = ctypes.c_void_p()
    assert lib.nrt_tensor_allocate(0, 2, 16, b"x", ctypes.byref(bad)) == C.NRT_INVALID
    assert lib.nrt_tensor_allocate(0, -1, 16, b"x", ctypes.byref(bad)) == C.NRT_INVALID
    data = add_neff()
    m = ctypes.c_void_p()
    assert lib.nrt_load(data, len(data), 2, -1, ctypes.byref(m)) == C.NRT_INVALID
    assert "outside the 2 visible core(s)" in fake.last_error()
    assert lib.nrt_load(data, len(data), 1, 2, ctypes.byref(m)) == C.NRT_INVALID  # 1 + 2 cores > 2
    assert lib.nrt_load(data, len(data), 0, 2, ctypes.byref(m)) == C.NRT_SUCCESS
    assert fake.model_vnc(m) == 0
    assert lib.nrt_unload(m) == C.NRT_SUCCESS
    free(lib, t)


def test_second_process_on_a_core_gets_nc_busy(
    fake: Any, lib_path: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FAKE_NRT_LOCK_DIR", str(tmp_path))
    monkeypatch.setenv("NEURON_RT_VISIBLE_CORES", "0")
    assert fake.lib.nrt_init(1, b"", b"") == C.NRT_SUCCESS
    child = "import ctypes,sys; sys.exit(ctypes.CDLL(sys.argv[1]).nrt_init(1, None, None) % 256)"

    def other_process(cores: str) -> int:
        env = {"FAKE_NRT_LOCK_DIR": str(tmp_path), "NEURON_RT_VISIBLE_CORES": cores}
        return subprocess.run([sys.executable, "-c", child, str(lib_path)], env=env, check=False).returncode

    assert other_process("0") == C.NRT_EXEC_NC_BUSY % 256
    assert other_process("0-1") == C.NRT_EXEC_NC_BUSY % 256
    assert other_process("1") == C.NRT_SUCCESS
    fake.lib.nrt_close()  # releases the cores
    assert other_process("0") == C.NRT_SUCCESS


# ---- tensors ---------------------------------------------------------------------------------


@pytest.mark.smoke
def test_tensor_write_read_copy_memset(fake: Any, nrt: Any) -> None:
    t = alloc(nrt, 16, "t")
    assert read(nrt, t, 16) == bytes(16), "fresh tensors are zeroed"
    assert nrt.nrt_tensor_get_size(t) == 16
    assert write(nrt, t, b"abcd", offset=4) == C.NRT_SUCCESS
    assert read(nrt, t, 8) == b"\0\0\0\0abcd"
    assert read(nrt, t, 2, offset=5) == b"bc"
    u = alloc(nrt, 8, "u")
    assert nrt.nrt_tensor_copy(t, 4, u, 2, 4) == C.NRT_SUCCESS
    assert read(nrt, u, 8) == b"\0\0abcd\0\0"
    assert nrt.nrt_tensor_memset(u, 6, 0x7F, 2) == C.NRT_SUCCESS
    assert read(nrt, u, 8) == b"\0\0abcd\x7f\x7f"
    va = nrt.nrt_tensor_get_va(u)
    assert ctypes.string_at(va, 8) == b"\0\0abcd\x7f\x7f"
    assert nrt.nrt_tensor_write(t, b"", 16, 0) == C.NRT_SUCCESS  # empty range at the end is fine
    free(nrt, t)
    free(nrt, u)
    assert t.value is None and fake.live_tensors() == 0
    assert fake.device_bytes_in_use(0) == 0


@pytest.mark.smoke
@pytest.mark.parametrize(
    ("call", "args"),
    [
        ("write", (b"x" * 9, 8, 9)),
        ("write", (b"x", 16, 1)),
        ("write", (b"x", 2**63, 1)),
        ("read", (ctypes.create_string_buffer(17), 0, 17)),
        ("read", (ctypes.create_string_buffer(4), 14, 4)),
        ("copy_src", (12, 0, 5)),
        ("copy_dst", (0, 12, 5)),
        ("memset", (15, 0, 2)),
        ("memset", (2**64 - 1, 0, 1)),
    ],
)
def test_access_past_the_end_is_rejected(fake: Any, nrt: Any, call: str, args: tuple[Any, ...]) -> None:
    t = alloc(nrt, 16, "t")
    u = alloc(nrt, 16, "u")
    write(nrt, t, bytes(range(16)))
    if call == "write":
        st = nrt.nrt_tensor_write(t, *args)
    elif call == "read":
        st = nrt.nrt_tensor_read(t, *args)
    elif call.startswith("copy"):
        src_off, dst_off, size = args
        st = nrt.nrt_tensor_copy(t, src_off, u, dst_off, size)
    else:
        st = nrt.nrt_tensor_memset(t, *args)
    assert st == C.NRT_INVALID
    assert "past the end" in fake.last_error() or "too large" in fake.last_error()
    assert read(nrt, t, 16) == bytes(range(16)) and read(nrt, u, 16) == bytes(16), "no byte moved"


@pytest.mark.smoke
def test_bad_allocations_are_rejected(fake: Any, nrt: Any) -> None:
    t = ctypes.c_void_p()
    assert nrt.nrt_tensor_allocate(0, 0, 0, b"empty", ctypes.byref(t)) == C.NRT_INVALID
    assert "size 0" in fake.last_error() and "empty" in fake.last_error()
    assert nrt.nrt_tensor_allocate(7, 0, 8, b"x", ctypes.byref(t)) == C.NRT_INVALID
    assert nrt.nrt_tensor_allocate(0, 0, 8, b"x", None) == C.NRT_INVALID
    assert t.value is None and fake.live_tensors() == 0
    host = ctypes.c_void_p()
    assert nrt.nrt_tensor_allocate(1, 0, 8, b"host", ctypes.byref(host)) == C.NRT_SUCCESS
    free(nrt, host)


@pytest.mark.smoke
def test_stale_and_unknown_tensor_handles(fake: Any, nrt: Any) -> None:
    t = alloc(nrt, 8)
    stale = ctypes.c_void_p(t.value)
    free(nrt, t)
    assert nrt.nrt_tensor_write(stale, b"x", 0, 1) == C.NRT_INVALID_HANDLE
    assert nrt.nrt_tensor_read(ctypes.c_void_p(0xDEAD0), ctypes.create_string_buffer(1), 0, 1) == C.NRT_INVALID_HANDLE
    assert nrt.nrt_tensor_get_size(stale) == 0
    assert nrt.nrt_tensor_get_va(stale) is None
    assert fake.contract_violations() == 2
    nrt.nrt_tensor_free(ctypes.byref(stale))  # double free through a copy of the handle
    assert fake.contract_violations() == 3 and "freed twice" in fake.last_error()
    nrt.nrt_tensor_free(None)  # NULL is a no-op
    assert fake.contract_violations() == 3


@pytest.mark.smoke
def test_slices_share_storage_and_keep_it_alive(fake: Any, nrt: Any) -> None:
    parent = alloc(nrt, 32, "parent")
    s = ctypes.c_void_p()
    assert nrt.nrt_tensor_allocate_slice(parent, 8, 16, b"slice", ctypes.byref(s)) == C.NRT_SUCCESS
    assert nrt.nrt_tensor_get_size(s) == 16
    assert nrt.nrt_tensor_get_va(s) == nrt.nrt_tensor_get_va(parent) + 8
    write(nrt, s, b"hello")
    assert read(nrt, parent, 5, offset=8) == b"hello"
    assert nrt.nrt_tensor_write(s, b"x" * 17, 0, 17) == C.NRT_INVALID  # bounded by the slice
    ss = ctypes.c_void_p()
    assert nrt.nrt_tensor_allocate_slice(s, 4, 4, b"inner", ctypes.byref(ss)) == C.NRT_SUCCESS
    assert read(nrt, ss, 1) == b"o"
    bad = ctypes.c_void_p()
    for off, size in ((8, 25), (33, 1), (0, 0), (2**64 - 1, 2)):
        assert nrt.nrt_tensor_allocate_slice(parent, off, size, b"bad", ctypes.byref(bad)) == C.NRT_INVALID
    assert fake.device_bytes_in_use(0) == 32, "slices are not allocations"
    free(nrt, parent)
    assert fake.live_tensors() == 2 and fake.device_bytes_in_use(0) == 32
    assert read(nrt, s, 5) == b"hello", "the parent's storage outlives it while a slice lives"
    free(nrt, s)
    assert read(nrt, ss, 1) == b"o"
    free(nrt, ss)
    assert fake.live_tensors() == 0 and fake.device_bytes_in_use(0) == 0


# ---- models: NEFF parsing, tensor info, collectives, unload ----------------------------------


@pytest.mark.smoke
def test_tensor_info_layout_and_contents(fake: Any, nrt: Any) -> None:
    assert ctypes.sizeof(control.NrtTensorInfo) == 296
    offsets = {f: getattr(control.NrtTensorInfo, f).offset for f in ("name", "usage", "size", "dtype", "shape", "ndim")}
    assert offsets == {"name": 0, "usage": 256, "size": 264, "dtype": 272, "shape": 280, "ndim": 288}
    data = neff.fake_neff_bytes(
        inputs=[("x", "bfloat16", (4, 5, 6)), ("s", "int64", ()), ("k.must_alias_input", "int8", (3,))],
        outputs=[("output0", "float32", (7,)), ("output1", "bool", (2, 2))],
        neff_id="kernel_ab12",
    )
    st, model = load(nrt, data)
    assert st == C.NRT_SUCCESS
    assert fake.model_neff_id(model) == "kernel_ab12"
    info = ctypes.c_void_p()
    assert nrt.nrt_get_model_tensor_info(model, ctypes.byref(info)) == C.NRT_SUCCESS
    assert fake.live_tensor_infos() == 1
    entries = control.tensor_infos(info.value)
    got = [(e.name.decode(), e.usage, e.size, e.dtype, [e.shape[i] for i in range(e.ndim)]) for e in entries]
    assert got == [
        ("x", 0, 240, 0x6, [4, 5, 6]),
        ("s", 0, 8, 0xC, []),
        ("k.must_alias_input", 0, 3, 0x2, [3]),
        ("output0", 1, 28, 0xA, [7]),
        ("output1", 1, 4, 0x3, [2, 2]),
    ]
    assert nrt.nrt_free_model_tensor_info(info) == C.NRT_SUCCESS
    assert nrt.nrt_free_model_tensor_info(info) == C.NRT_INVALID_HANDLE
    assert fake.live_tensor_infos() == 0
    assert nrt.nrt_unload(model) == C.NRT_SUCCESS
    assert nrt.nrt_get_model_tensor_info(model, ctypes.byref(info)) == C.NRT_INVALID_HANDLE


def _corrupt(data: bytes, at: int, new: bytes) -> bytes:
    return data[:at] + new + data[at + len(new) :]


def _with_io(text: str, member: str = "spiky_io.txt") -> bytes:
    """A NEFF whose ``member`` holds ``text`` verbatim (to write malformed ones)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo(member)
        info.size = len(text.encode())
        tar.addfile(info, io.BytesIO(text.encode()))
    return b"NEFF\x01\0\0\0".ljust(1024, b"\0") + buf.getvalue()


_GOOD_IO = "id k\ninput a 10 1 4\noutput output0 10 1 4\n"
_BAD_NEFFS: dict[str, tuple[bytes, int, str]] = {
    "bad magic": (b"NEFX" + add_neff()[4:], C.NRT_UNSUPPORTED_NEFF_VERSION, "bad magic"),
    "empty": (b"", C.NRT_UNSUPPORTED_NEFF_VERSION, "bad magic"),
    "version 2": (_corrupt(add_neff(), 4, b"\x02"), C.NRT_UNSUPPORTED_NEFF_VERSION, "version 2"),
    "short header": (add_neff()[:600], C.NRT_INVALID, "1024-byte header"),
    "no archive": (add_neff()[:1024], C.NRT_INVALID, "no spiky_io.txt"),
    "bad checksum": (_corrupt(add_neff(), 1024 + 148, b"0000001"), C.NRT_INVALID, "checksum"),
    "not ustar": (_corrupt(add_neff(), 1024 + 257, b"xxxxx"), C.NRT_INVALID, "not a ustar"),
    "truncated": (add_neff()[: 1024 + 520], C.NRT_INVALID, "truncated"),
    "other member only": (_with_io(_GOOD_IO, member="io.txt"), C.NRT_INVALID, "no spiky_io.txt"),
    "io member in a directory": (_with_io(_GOOD_IO, member="sub/spiky_io.txt"), C.NRT_INVALID, "no spiky_io.txt"),
    "no id": (_with_io("input a 10 1 4\n"), C.NRT_INVALID, "no 'id'"),
    "two ids": (_with_io("id a\nid b\n"), C.NRT_INVALID, "repeated id"),
    "unknown keyword": (_with_io("id k\nweights w 10 1 4\n"), C.NRT_INVALID, "unknown keyword 'weights'"),
    "unknown dtype": (_with_io("id k\ninput a 11 1 4\n"), C.NRT_INVALID, "known dtype"),
    "ndim mismatch": (_with_io("id k\ninput a 10 2 4\n"), C.NRT_INVALID, "line 2"),
    "zero dim": (_with_io("id k\ninput a 10 2 4 0\n"), C.NRT_INVALID, ">= 1"),
    "negative dim": (_with_io("id k\ninput a 10 1 -4\n"), C.NRT_INVALID, ">= 1"),
    "ndim too big": (_with_io("id k\ninput a 10 9 1 1 1 1 1 1 1 1 1\n"), C.NRT_INVALID, "ndim <= 8"),
    "too many fields": (_with_io("id k\ninput a 10 8 1 1 1 1 1 1 1 1 1 1\n"), C.NRT_INVALID, "too many fields"),
    "duplicate input": (_with_io("id k\ninput a 10 1 4\ninput a 10 1 4\n"), C.NRT_INVALID, "declared twice"),
    "bad collectives": (_with_io("id k\ncollectives 2\n"), C.NRT_INVALID, "collectives takes"),
    "nul byte": (_with_io("id k\0\n"), C.NRT_INVALID, "NUL"),
}


@pytest.mark.smoke
@pytest.mark.parametrize("case", sorted(_BAD_NEFFS))
def test_malformed_neff_is_rejected(fake: Any, nrt: Any, case: str) -> None:
    data, status, reason = _BAD_NEFFS[case]
    st, model = load(nrt, data)
    assert st == status
    assert reason in fake.last_error()
    assert model.value is None and fake.live_models() == 0
    assert load(nrt, _with_io(_GOOD_IO))[0] == C.NRT_SUCCESS, "the good variant loads"


@pytest.mark.smoke
def test_collectives_need_load_collectives(fake: Any, nrt: Any) -> None:
    data = neff.fake_neff_bytes([("x", "float32", (4,))], [("output0", "float32", (4,))], "ar", collectives=True)
    st, _ = load(nrt, data)
    assert st == C.NRT_INVALID and "nrt_load_collectives" in fake.last_error()
    m = ctypes.c_void_p()
    assert nrt.nrt_load_collectives(data, len(data), 0, -1, 4, 4, ctypes.byref(m)) == C.NRT_INVALID
    assert nrt.nrt_load_collectives(data, len(data), 0, -1, 0, 0, ctypes.byref(m)) == C.NRT_INVALID
    assert nrt.nrt_load_collectives(data, len(data), 1, -1, 3, 4, ctypes.byref(m)) == C.NRT_SUCCESS
    assert (fake.model_rank(m), fake.model_world_size(m), fake.model_vnc(m)) == (3, 4, 1)
    st, plain = load(nrt, add_neff())
    assert st == C.NRT_SUCCESS and fake.model_rank(plain) == -1 and fake.model_world_size(plain) == -1
    assert fake.call_count("nrt_load_collectives") == 3 and fake.call_count("nrt_load") == 2
    for model in (m, plain):
        assert nrt.nrt_unload(model) == C.NRT_SUCCESS
    assert fake.model_rank(m) == -1


@pytest.mark.smoke
def test_double_unload_is_caught(fake: Any, nrt: Any) -> None:
    st, m = load(nrt, add_neff())
    assert st == C.NRT_SUCCESS and fake.live_models() == 1
    assert nrt.nrt_unload(m) == C.NRT_SUCCESS
    assert fake.live_models() == 0 and fake.double_unloads() == 0
    assert nrt.nrt_unload(m) == C.NRT_INVALID_HANDLE
    assert nrt.nrt_unload(ctypes.c_void_p(0x1000)) == C.NRT_INVALID_HANDLE
    assert fake.double_unloads() == 2 and "unloaded twice" in fake.last_error()


# ---- tensor sets and execute -----------------------------------------------------------------


@pytest.mark.smoke
def test_tensor_sets(fake: Any, nrt: Any) -> None:
    t = alloc(nrt, 4)
    s = new_set(nrt, {"a": t, "b": t})
    assert fake.live_tensor_sets() == 1
    assert nrt.nrt_add_tensor_to_tensor_set(s, b"", t) == C.NRT_INVALID
    assert nrt.nrt_add_tensor_to_tensor_set(s, b"x" * 256, t) == C.NRT_INVALID
    assert nrt.nrt_add_tensor_to_tensor_set(s, b"c", ctypes.c_void_p(0x1000)) == C.NRT_INVALID_HANDLE
    assert nrt.nrt_add_tensor_to_tensor_set(ctypes.c_void_p(0x1000), b"c", t) == C.NRT_INVALID_HANDLE
    copy = ctypes.c_void_p(s.value)
    destroy_set(nrt, s)
    assert s.value is None and fake.live_tensor_sets() == 0
    nrt.nrt_destroy_tensor_set(ctypes.byref(copy))
    assert fake.contract_violations() == 1 and "destroyed twice" in fake.last_error()
    free(nrt, t)


@pytest.mark.smoke
def test_execute_runs_the_rule(fake: Any, nrt: Any) -> None:
    seen: list[tuple[str, list[str], list[int], list[str]]] = []

    def rule(neff_id: str, ins: dict[str, memoryview], outs: dict[str, memoryview]) -> int:
        seen.append((neff_id, list(ins), [len(v) for v in ins.values()], list(outs)))
        return add_rule(neff_id, ins, outs)

    fake.set_execute(rule)
    m = AddModel(nrt)
    assert m.execute() == C.NRT_SUCCESS
    np.testing.assert_array_equal(m.result(), 11 * m.x)
    assert seen == [("kernel_add", ["a", "b"], [24, 24], ["output0"])]
    assert fake.execute_count() == 1 and fake.call_count("nrt_execute") == 1
    m.close()


@pytest.mark.smoke
def test_execute_without_a_rule_fails(fake: Any, nrt: Any) -> None:
    m = AddModel(nrt)
    assert m.execute() == C.NRT_FAILURE
    assert "no execute callback" in fake.last_error()
    m.close()


@pytest.mark.smoke
def test_rule_status_and_exceptions_propagate(fake: Any, nrt: Any) -> None:
    m = AddModel(nrt)
    fake.set_execute(lambda neff_id, ins, outs: C.NRT_EXEC_COMPLETED_WITH_NUM_ERR)
    assert m.execute() == C.NRT_EXEC_COMPLETED_WITH_NUM_ERR
    assert "callback returned 1003" in fake.last_error()

    def boom(neff_id: str, ins: dict[str, memoryview], outs: dict[str, memoryview]) -> int:
        raise RuntimeError("rule failed")

    fake.set_execute(boom)
    assert m.execute() == C.NRT_FAILURE
    assert [str(e) for e in fake.callback_errors] == ["rule failed"]
    m.close()


def _bad_bindings(m: AddModel, nrt: Any, case: str) -> tuple[ctypes.c_void_p, ctypes.c_void_p, list[ctypes.c_void_p]]:
    """Input and output sets for one execute contract case (plus tensors to free)."""
    small = alloc(nrt, 20, "small")
    ins = {"a": m.a, "b": m.b}
    outs = {"output0": m.out}
    if case == "missing input":
        del ins["b"]
    elif case == "unknown input":
        ins["c"] = m.a
    elif case == "mis-sized input":
        ins["b"] = small
    elif case == "output in input set":
        ins["output0"] = m.out
    elif case == "missing output":
        del outs["output0"]
    elif case == "unknown output":
        outs["output1"] = m.out
    elif case == "mis-sized output":
        outs["output0"] = small
    return new_set(nrt, ins), new_set(nrt, outs), [small]


_EXECUTE_CASES = {
    "missing input": "input 'b' is missing",
    "unknown input": "no input named 'c'",
    "mis-sized input": "input 'b' is 20 bytes, the NEFF expects 24",
    "output in input set": "no input named 'output0'",
    "missing output": "output 'output0' is missing",
    "unknown output": "no output named 'output1'",
    "mis-sized output": "output 'output0' is 20 bytes, the NEFF expects 24",
}


@pytest.mark.smoke
@pytest.mark.parametrize("case", sorted(_EXECUTE_CASES))
def test_execute_rejects_bad_bindings(fake: Any, nrt: Any, case: str) -> None:
    calls: list[str] = []

    def record(neff_id: str, ins: dict[str, memoryview], outs: dict[str, memoryview]) -> int:
        calls.append(neff_id)
        return OK

    fake.set_execute(record)
    m = AddModel(nrt)
    ins, outs, extra = _bad_bindings(m, nrt, case)
    assert nrt.nrt_execute(m.model, ins, outs) == C.NRT_EXEC_BAD_INPUT
    assert _EXECUTE_CASES[case] in fake.last_error()
    assert "model 'kernel_add'" in fake.last_error()
    assert calls == [] and fake.execute_count() == 0
    destroy_set(nrt, ins)
    destroy_set(nrt, outs)
    for t in extra:
        free(nrt, t)
    m.close()


def test_bf16_and_f16_io_execute_with_exact_bytes(fake: Any, nrt: Any) -> None:
    # 2-byte floats: NEFF dtype codes 6 (bf16) and 7 (f16), sizes from the shape, bytes untouched.
    data = neff.fake_neff_bytes([("x", "bfloat16", (3, 5)), ("y", "float16", (3, 5))],
                                [("out_bf16", "bfloat16", (3, 5)), ("out_f16", "float16", (3, 5))], "kernel_half")
    st, model = load(nrt, data)
    assert st == C.NRT_SUCCESS
    info = ctypes.c_void_p()
    assert nrt.nrt_get_model_tensor_info(model, ctypes.byref(info)) == C.NRT_SUCCESS
    got = [(e.name.decode(), e.usage, e.size, e.dtype) for e in control.tensor_infos(info.value)]
    assert got == [("x", 0, 30, 0x6), ("y", 0, 30, 0x7), ("out_bf16", 1, 30, 0x6), ("out_f16", 1, 30, 0x7)]
    assert nrt.nrt_free_model_tensor_info(info) == C.NRT_SUCCESS
    seen: dict[str, bytes] = {}

    def swap(neff_id: str, ins: dict[str, memoryview], outs: dict[str, memoryview]) -> int:
        seen.update({name: bytes(view) for name, view in ins.items()})
        outs["out_bf16"][:] = ins["x"]
        outs["out_f16"][:] = ins["y"]
        return OK

    fake.set_execute(swap)
    x_bytes, y_bytes = bytes(range(30)), bytes(range(100, 130))
    tensors = {name: alloc(nrt, 30, name) for name in ("x", "y", "out_bf16", "out_f16")}
    write(nrt, tensors["x"], x_bytes)
    write(nrt, tensors["y"], y_bytes)
    ins = new_set(nrt, {"x": tensors["x"], "y": tensors["y"]})
    outs = new_set(nrt, {"out_bf16": tensors["out_bf16"], "out_f16": tensors["out_f16"]})
    assert nrt.nrt_execute(model, ins, outs) == C.NRT_SUCCESS
    assert seen == {"x": x_bytes, "y": y_bytes}
    assert read(nrt, tensors["out_bf16"], 30) == x_bytes and read(nrt, tensors["out_f16"], 30) == y_bytes
    # A bf16 input bound to a float32-sized tensor (60 bytes) is refused before the rule runs.
    wide = alloc(nrt, 60, "wide")
    bad = new_set(nrt, {"x": wide, "y": tensors["y"]})
    assert nrt.nrt_execute(model, bad, outs) == C.NRT_EXEC_BAD_INPUT
    assert "model 'kernel_half' input 'x' is 60 bytes, the NEFF expects 30" in fake.last_error()
    assert fake.execute_count() == 1
    for s in (ins, outs, bad):
        destroy_set(nrt, s)
    for t in [*tensors.values(), wide]:
        free(nrt, t)
    assert nrt.nrt_unload(model) == C.NRT_SUCCESS


@pytest.mark.smoke
def test_execute_rejects_bad_handles(fake: Any, nrt: Any) -> None:
    fake.set_execute(add_rule)
    m = AddModel(nrt)
    assert nrt.nrt_execute(m.model, None, m.outs) == C.NRT_INVALID
    assert nrt.nrt_execute(m.model, m.ins, ctypes.c_void_p(0x1000)) == C.NRT_INVALID_HANDLE
    assert nrt.nrt_execute(ctypes.c_void_p(0x1000), m.ins, m.outs) == C.NRT_INVALID_HANDLE
    # A tensor freed while still bound in a set (the set must not outlive its tensors).
    doomed = alloc(nrt, 24, "doomed")
    ins = new_set(nrt, {"a": m.a, "b": doomed})
    free(nrt, doomed)
    replacement = alloc(nrt, 24, "reuses the address, maybe")
    assert nrt.nrt_execute(m.model, ins, m.outs) == C.NRT_INVALID_HANDLE
    assert "input 'b': its tensor was freed" in fake.last_error()
    assert fake.execute_count() == 0
    destroy_set(nrt, ins)
    free(nrt, replacement)
    m.close()


# ---- failure injection -----------------------------------------------------------------------


@pytest.mark.smoke
def test_fail_allocation_at(fake: Any, nrt: Any) -> None:
    fake.fail_allocation_at(3)
    first, second = alloc(nrt, 8), alloc(nrt, 8)
    s = ctypes.c_void_p()
    assert nrt.nrt_tensor_allocate_slice(first, 0, 4, b"s", ctypes.byref(s)) == C.NRT_SUCCESS  # not counted
    t = ctypes.c_void_p()
    assert nrt.nrt_tensor_allocate(0, 0, 8, b"third", ctypes.byref(t)) == C.NRT_RESOURCE
    assert "injected RESOURCE" in fake.last_error() and t.value is None
    fourth = alloc(nrt, 8)  # one-shot
    assert fake.live_tensors() == 4
    fake.fail_allocation_at(1)
    fake.reset()  # clears the injection
    fifth = alloc(nrt, 8)
    for x in (first, second, s, fourth, fifth):
        free(nrt, x)


@pytest.mark.smoke
def test_device_capacity(fake: Any, nrt: Any) -> None:
    fake.set_device_capacity(100)
    a = alloc(nrt, 60)
    t = ctypes.c_void_p()
    assert nrt.nrt_tensor_allocate(0, 0, 41, b"big", ctypes.byref(t)) == C.NRT_RESOURCE
    assert "60 of 100 used" in fake.last_error()
    b = alloc(nrt, 40, vnc=0)
    c = alloc(nrt, 100, vnc=1)  # the limit is per core
    free(nrt, a)
    d = alloc(nrt, 60)
    for x in (b, c, d):
        free(nrt, x)


@pytest.mark.smoke
@pytest.mark.parametrize(
    ("status", "runs_rule"),
    [
        (C.NRT_TIMEOUT, False),
        (C.NRT_HW_ERROR, False),
        (C.NRT_EXEC_COMPLETED_WITH_NUM_ERR, True),
        (C.NRT_EXEC_COMPLETED_WITH_ERR, True),
        (1200, False),
    ],
)
def test_fail_next_execute(fake: Any, nrt: Any, status: int, runs_rule: bool) -> None:
    fake.set_execute(add_rule)
    m = AddModel(nrt)
    fake.fail_next_execute(status)
    assert m.execute() == status
    assert f"injected status {status}" in fake.last_error()
    np.testing.assert_array_equal(m.result(), 11 * m.x if runs_rule else 0 * m.x)
    assert m.execute() == C.NRT_SUCCESS, "one-shot: the runtime is usable afterwards"
    np.testing.assert_array_equal(m.result(), 11 * m.x)
    assert fake.execute_count() == 2
    m.close()


# ---- accounting, profiling, threads ----------------------------------------------------------


@pytest.mark.smoke
def test_leak_accounting_over_cycles(fake: Any, nrt: Any) -> None:
    fake.set_execute(add_rule)
    for _ in range(200):
        m = AddModel(nrt, shape=(8,))
        info = ctypes.c_void_p()
        assert nrt.nrt_get_model_tensor_info(m.model, ctypes.byref(info)) == C.NRT_SUCCESS
        assert nrt.nrt_free_model_tensor_info(info) == C.NRT_SUCCESS
        assert m.execute() == C.NRT_SUCCESS
        m.close()
    counts = (fake.live_tensors(), fake.live_models(), fake.live_tensor_sets(), fake.live_tensor_infos())
    assert counts == (0, 0, 0, 0)
    assert fake.device_bytes_in_use(0) == 0 and fake.execute_count() == 200
    AddModel(nrt)  # left behind on purpose
    assert fake.teardown() == 6, "3 tensors + 1 model + 2 sets left behind"
    assert fake.live_tensors() == 0 and fake.live_models() == 0


@pytest.mark.smoke
def test_fail_next_allocate_and_load(fake: Any, nrt: Any) -> None:
    fake.fail_next_allocate(C.NRT_HW_ERROR)
    t = ctypes.c_void_p()
    assert nrt.nrt_tensor_allocate(0, 0, 8, b"t", ctypes.byref(t)) == C.NRT_HW_ERROR
    assert "injected status 6 for 8 bytes ('t')" in fake.last_error() and t.value is None
    free(nrt, alloc(nrt, 8))  # one-shot
    data = add_neff()
    fake.fail_next_load(C.NRT_UNSUPPORTED_NEFF_VERSION)
    st, _ = load(nrt, data)
    assert st == C.NRT_UNSUPPORTED_NEFF_VERSION
    assert "nrt_load: injected status 10 for NEFF 'kernel_add'" in fake.last_error() and fake.live_models() == 0
    st, m = load(nrt, data)  # one-shot
    assert st == OK and nrt.nrt_unload(m) == OK
    fake.fail_next_load(C.NRT_TIMEOUT)
    fake.reset()  # clears it
    st, m = load(nrt, data)
    assert st == OK and nrt.nrt_unload(m) == OK


@pytest.mark.smoke
def test_bytes_written_and_read(fake: Any, nrt: Any) -> None:
    t = alloc(nrt, 16)
    assert write(nrt, t, b"abcd") == OK and write(nrt, t, b"efgh", 8) == OK
    assert read(nrt, t, 16)[8:12] == b"efgh"
    assert write(nrt, t, b"x" * 17) == C.NRT_INVALID  # a refused call moves nothing
    assert (fake.bytes_written(), fake.bytes_read()) == (8, 16)
    fake.reset()
    assert (fake.bytes_written(), fake.bytes_read()) == (0, 0)
    free(nrt, t)


@pytest.mark.smoke
def test_rule_sees_the_neff_it_executes(fake: Any, nrt: Any) -> None:
    seen: list[tuple[int, bytes | None]] = []

    def rule(neff_id: str, ins: dict[str, memoryview], outs: dict[str, memoryview]) -> int:
        seen.append((fake.current_neff_serial(), fake.current_neff()))
        return add_rule(neff_id, ins, outs)

    fake.set_execute(rule)
    assert fake.current_neff() is None and fake.current_neff_serial() == 0  # outside an execution
    first, second = AddModel(nrt), AddModel(nrt)
    assert first.execute() == OK and first.execute() == OK and second.execute() == OK
    assert [data for _, data in seen] == [add_neff()] * 3
    serials = [serial for serial, _ in seen]
    assert serials[0] == serials[1] != 0 and serials[2] not in (0, serials[0]), "one serial per load"
    first.close()
    second.close()


@pytest.mark.smoke
def test_call_counts(fake: Any, nrt: Any) -> None:
    t = alloc(nrt, 8)
    write(nrt, t, b"x")
    write(nrt, t, b"y")
    free(nrt, t)
    assert fake.call_count("nrt_init") == 1
    assert fake.call_count("nrt_tensor_write") == 2
    assert fake.call_count("nrt_execute") == 0
    assert fake.call_count("nrt_bogus") == -1
    fake.reset()
    assert fake.call_count("nrt_tensor_write") == 0


@pytest.mark.smoke
def test_profile_start_stop(fake: Any, nrt: Any, tmp_path: Path) -> None:
    fake.set_execute(add_rule)
    m = AddModel(nrt)
    other = AddModel(nrt)
    path = tmp_path / "0.ntff"
    path.write_text("old contents that are longer than the new trace\n" * 10)
    assert nrt.nrt_profile_start(m.model, str(path).encode()) == C.NRT_SUCCESS
    assert nrt.nrt_profile_start(m.model, str(path).encode()) == C.NRT_INVALID  # already profiling
    for _ in range(3):
        assert m.execute() == C.NRT_SUCCESS
    assert other.execute() == C.NRT_SUCCESS  # another model: not in this trace
    assert nrt.nrt_profile_stop(str(path).encode()) == C.NRT_SUCCESS
    assert path.read_text() == "FAKE-NTFF\nneff_id kernel_add\nexecutions 3\n"
    assert nrt.nrt_profile_stop(str(path).encode()) == C.NRT_INVALID
    assert "not being profiled" in fake.last_error()
    assert nrt.nrt_profile_start(m.model, b"") == C.NRT_INVALID
    bad_dir = tmp_path / "missing" / "x.ntff"
    assert nrt.nrt_profile_start(m.model, str(bad_dir).encode()) == C.NRT_SUCCESS
    assert nrt.nrt_profile_stop(str(bad_dir).encode()) == C.NRT_FAILURE
    m.close()
    assert nrt.nrt_profile_start(m.model, str(path).encode()) == C.NRT_INVALID_HANDLE
    other.close()


def test_concurrent_executes(fake: Any, nrt: Any) -> None:
    active = 0
    peak = 0
    lock = threading.Lock()

    def slow_add(neff_id: str, ins: dict[str, memoryview], outs: dict[str, memoryview]) -> int:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(0.002)  # lets other threads enter nrt_execute meanwhile
        add_rule(neff_id, ins, outs)
        with lock:
            active -= 1
        return OK

    fake.set_execute(slow_add)
    models = [AddModel(nrt, shape=(16,)) for _ in range(4)]
    errors: list[str] = []

    def worker(m: AddModel, k: int) -> None:
        for i in range(25):
            x = np.full(16, k * 1000 + i, dtype=np.float32)
            write(nrt, m.a, x.tobytes())
            write(nrt, m.b, x.tobytes())
            if m.execute() != C.NRT_SUCCESS or not np.array_equal(m.result(), 2 * x):
                errors.append(f"thread {k} iteration {i}")

    threads = [threading.Thread(target=worker, args=(m, k)) for k, m in enumerate(models)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert fake.execute_count() == 100
    assert peak > 1, "executions run outside the fake's lock"
    for m in models:
        m.close()


# ---- the NEFF writer -------------------------------------------------------------------------


@pytest.mark.smoke
def test_neff_writer_round_trips(tmp_path: Path) -> None:
    path = neff.write_fake_neff(
        tmp_path / "model.neff",
        inputs=[("x", "float32", (2, 3)), ("y", 0x8, (5,))],
        outputs=[("output0", "bool", (2,))],
        neff_id="kernel 1",
        collectives=True,
        extra_members={"model.hlo.pb": b"\x08\x01"},
    )
    data = path.read_bytes()
    assert data[:4] == b"NEFF" and len(data) % 512 == 0
    assert data == neff.fake_neff_bytes(
        [("x", "float32", (2, 3)), ("y", 0x8, (5,))],
        [("output0", "bool", (2,))],
        "kernel 1",
        True,
        {"model.hlo.pb": b"\x08\x01"},
    ), "deterministic bytes"
    parsed = neff.read_fake_neff(data)
    assert parsed.neff_id == "kernel 1" and parsed.collectives
    assert [(t.name, t.dtype, t.shape, t.nbytes) for t in parsed.inputs] == [
        ("x", 0xA, (2, 3), 24),
        ("y", 0x8, (5,), 20),
    ]
    assert [(t.name, t.dtype, t.nbytes) for t in parsed.outputs] == [("output0", 0x3, 2)]
    assert parsed.members["model.hlo.pb"] == b"\x08\x01"


@pytest.mark.smoke
@pytest.mark.parametrize(
    ("inputs", "neff_id", "match"),
    [
        ([("x", "float32", (0, 3))], "k", "zero-element"),
        ([("x y", "float32", (1,))], "k", "without whitespace"),
        ([("x", "complex64", (1,))], "k", "no NRT dtype"),
        ([("x", 0xB, (1,))], "k", "unknown NRT dtype code"),
        ([], "a\nb", "one line"),
    ],
)
def test_neff_writer_rejects(inputs: list[Any], neff_id: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        neff.fake_neff_bytes(inputs, [], neff_id)


# ---- the timing model (off by default) --------------------------------------------------------


@pytest.mark.parametrize(("changes", "field"), [
    ({"h2d_gbps": 0}, "h2d_gbps"),
    ({"d2h_gbps": -1.0}, "d2h_gbps"),
    ({"device_gbps": "fast"}, "device_gbps"),
    ({"latency_us": -5}, "latency_us"),
    ({"latency_us": float("inf")}, "latency_us"),
    ({"execute_ms": -1.0}, "execute_ms"),
    ({"execute_ms_per_neff": {"kernel_add": float("nan")}}, "execute_ms_per_neff['kernel_add']"),
])
def test_timing_model_rejects_bad_figures(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=rf"TimingModel\.{re.escape(field)} must be"):
        control.TimingModel(**changes)


def test_timing_model_presets_and_transfer_time() -> None:
    trn1, trn2 = control.TimingModel.trn1(), control.TimingModel.trn2(execute_ms=2.0)
    assert (trn1.h2d_gbps, trn1.device_gbps, trn1.execute_ms) == (31.5, 820.0, None)
    assert (trn2.h2d_gbps, trn2.device_gbps, trn2.execute_ms) == (63.0, 2900.0, 2.0)
    assert trn1.transfer_ms(31_500_000) == pytest.approx(1.0 + 0.01)  # 1 ms of bytes + 10 us latency


def test_timing_model_is_a_floor_on_transfers_and_executions(fake: Any, nrt: Any) -> None:
    # Sleeps end at absolute CLOCK_MONOTONIC deadlines, so a timed call never returns early: the
    # modelled time is a lower bound of the wall time (an upper bound would be a timing assertion).
    fake.set_execute(add_rule)
    m = AddModel(nrt, shape=(1 << 18,))  # 1 MiB per tensor
    timing = control.TimingModel(h2d_gbps=1.0, d2h_gbps=2.0, latency_us=500.0, execute_ms=5.0,
                                 execute_ms_per_neff={"kernel_other": 50.0})
    fake.set_timing(timing)
    data = np.ones(1 << 18, np.float32).tobytes()
    start = time.monotonic()
    assert write(nrt, m.a, data) == OK
    assert time.monotonic() - start >= timing.transfer_ms(len(data)) / 1e3  # 1.05 ms + 0.5 ms
    start = time.monotonic()
    assert m.execute() == OK
    assert time.monotonic() - start >= 5e-3  # kernel_add has no entry of its own: the default
    start = time.monotonic()
    np.testing.assert_array_equal(m.result(), 1 + 10 * m.x)  # the numbers are the rule's
    assert time.monotonic() - start >= timing.transfer_ms(len(data), h2d=False) / 1e3
    fake.set_execute_time("kernel_add", 20.0)
    start = time.monotonic()
    assert m.execute() == OK
    assert time.monotonic() - start >= 20e-3
    assert fake.bytes_written() == 3 * len(data) and fake.execute_count() == 2
    fake.set_timing(None)  # off again; reset() and teardown() turn it off too
    m.close()


def test_execute_time_table_is_bounded(fake: Any) -> None:
    for i in range(64):
        fake.set_execute_time(f"kernel_{i}", 1.0)
    fake.set_execute_time("kernel_0", 2.0)  # an update takes no new entry
    with pytest.raises(RuntimeError, match="at most 64 per-NEFF times; 'kernel_64'"):
        fake.set_execute_time("kernel_64", 1.0)
    fake.set_execute_time("kernel_0", None)  # removing one makes room
    fake.set_execute_time("kernel_64", 1.0)
    with pytest.raises(ValueError, match="ms must be a finite number >= 0 or None"):
        fake.set_execute_time("kernel_1", -3.0)
    with pytest.raises(TypeError, match="expected a TimingModel or None, got dict"):
        fake.set_timing({"h2d_gbps": 1.0})
