"""Writer and reader of the fake NEFF format that the fake libnrt (fake_nrt.c) loads.

A fake NEFF is a 1024-byte header (``b"NEFF"``, a little-endian uint32 format version 1, zeros)
followed by a POSIX ustar archive whose member ``spiky_io.txt`` lists the I/O (the grammar is
documented at the top of fake_nrt.c). Extra members (e.g. the HLO module the fake neuronx-cc
compiled) may be added; the fake runtime ignores them. Output is deterministic (mtime 0, fixed
owner), so equal inputs give equal bytes.

    write_fake_neff(path, inputs=[("x", "float32", (2, 3))], outputs=[("output0", "float32", (2, 3))],
                    neff_id="kernel_ab12")
"""

from __future__ import annotations

import io
import struct
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

HEADER_SIZE = 1024
FORMAT_VERSION = 1
IO_MEMBER = "spiky_io.txt"

# NRT dtype codes (docs/neuron-interfaces.md); bool travels as u8.
DTYPE_CODES: dict[str, int] = {
    "float32": 0xA,
    "float16": 0x7,
    "bfloat16": 0x6,
    "int8": 0x2,
    "uint8": 0x3,
    "int16": 0x4,
    "uint16": 0x5,
    "int32": 0x8,
    "uint32": 0x9,
    "int64": 0xC,
    "uint64": 0x1,
    "float8_e3m4": 0xD,
    "float8_e4m3": 0xE,
    "float8_e5m2": 0xF,
    "bool": 0x3,
}
ITEMSIZE: dict[int, int] = {
    0xA: 4, 0x8: 4, 0x9: 4,
    0x7: 2, 0x6: 2, 0x4: 2, 0x5: 2,
    0x2: 1, 0x3: 1, 0xD: 1, 0xE: 1, 0xF: 1,
    0xC: 8, 0x1: 8,
}  # fmt: skip

# (name, dtype name or NRT code, shape)
TensorDecl = tuple[str, "str | int", Sequence[int]]


@dataclass(frozen=True)
class NeffTensor:
    name: str
    dtype: int
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        n = ITEMSIZE[self.dtype]
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class FakeNeff:
    neff_id: str
    inputs: tuple[NeffTensor, ...]
    outputs: tuple[NeffTensor, ...]
    collectives: bool
    members: dict[str, bytes]


def dtype_code(dtype: str | int) -> int:
    """NRT dtype code of a dtype name (``"float32"``) or a code passed through."""
    if isinstance(dtype, int):
        if dtype not in ITEMSIZE:
            raise ValueError(f"unknown NRT dtype code {dtype:#x}; known: {sorted(ITEMSIZE)}")
        return dtype
    try:
        return DTYPE_CODES[dtype]
    except KeyError:
        raise ValueError(f"no NRT dtype for {dtype!r}; known: {sorted(DTYPE_CODES)}") from None


def _io_lines(kind: str, decls: Sequence[TensorDecl]) -> list[str]:
    lines = []
    for name, dtype, shape in decls:
        if not name or any(c.isspace() for c in name) or len(name.encode()) > 255:
            raise ValueError(f"NEFF {kind} name {name!r} must be 1..255 bytes without whitespace")
        dims = [int(d) for d in shape]
        if any(d < 1 for d in dims):
            raise ValueError(f"NEFF {kind} {name!r} has shape {dims}; a NEFF drops zero-element tensors")
        lines.append(" ".join([kind, name, str(dtype_code(dtype)), str(len(dims)), *map(str, dims)]))
    return lines


def fake_neff_bytes(
    inputs: Sequence[TensorDecl],
    outputs: Sequence[TensorDecl],
    neff_id: str,
    collectives: bool = False,
    extra_members: Mapping[str, bytes] | None = None,
) -> bytes:
    """The bytes of a fake NEFF with these inputs/outputs, in this order."""
    if not neff_id.strip() or "\n" in neff_id or len(neff_id.encode()) > 255:
        raise ValueError(f"neff_id {neff_id!r} must be one line of 1..255 bytes")
    lines = [f"id {neff_id}", f"collectives {int(collectives)}"]
    lines += _io_lines("input", inputs) + _io_lines("output", outputs)
    members = {IO_MEMBER: ("\n".join(lines) + "\n").encode()}
    for name, data in (extra_members or {}).items():
        if name == IO_MEMBER:
            raise ValueError(f"extra member may not be named {IO_MEMBER}")
        members[name] = data

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    header = b"NEFF" + struct.pack("<I", FORMAT_VERSION)
    return header.ljust(HEADER_SIZE, b"\0") + buf.getvalue()


def write_fake_neff(
    path: Path | str,
    inputs: Sequence[TensorDecl],
    outputs: Sequence[TensorDecl],
    neff_id: str,
    collectives: bool = False,
    extra_members: Mapping[str, bytes] | None = None,
) -> Path:
    """Writes a fake NEFF to ``path`` and returns the path."""
    out = Path(path)
    out.write_bytes(fake_neff_bytes(inputs, outputs, neff_id, collectives, extra_members))
    return out


def read_fake_neff(data: bytes) -> FakeNeff:
    """Parses a fake NEFF (the inverse of fake_neff_bytes; raises ValueError when malformed)."""
    if data[:4] != b"NEFF" or len(data) < HEADER_SIZE:
        raise ValueError("not a fake NEFF: bad magic or short header")
    (version,) = struct.unpack_from("<I", data, 4)
    if version != FORMAT_VERSION:
        raise ValueError(f"fake NEFF version {version}, expected {FORMAT_VERSION}")
    members: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(data[HEADER_SIZE:]), mode="r:") as tar:
        for info in tar.getmembers():
            f = tar.extractfile(info)
            if f is not None:
                members[info.name.removeprefix("./")] = f.read()
    if IO_MEMBER not in members:
        raise ValueError(f"fake NEFF has no {IO_MEMBER}")
    neff_id = ""
    collectives = False
    tensors: dict[str, list[NeffTensor]] = {"input": [], "output": []}
    for raw in members[IO_MEMBER].decode().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, _, rest = line.partition(" ")
        if key == "id":
            neff_id = rest.strip()
        elif key == "collectives":
            collectives = rest.strip() == "1"
        elif key in tensors:
            name, dtype, ndim, *dims = rest.split()
            if len(dims) != int(ndim):
                raise ValueError(f"bad {IO_MEMBER} line: {line!r}")
            tensors[key].append(NeffTensor(name, int(dtype), tuple(int(d) for d in dims)))
        else:
            raise ValueError(f"bad {IO_MEMBER} line: {line!r}")
    return FakeNeff(neff_id, tuple(tensors["input"]), tuple(tensors["output"]), collectives, members)
