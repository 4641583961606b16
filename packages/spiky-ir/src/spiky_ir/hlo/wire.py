"""A small proto3 wire codec: enough of protobuf to write and read ``xla.HloModuleProto``.

Messages are dataclasses whose fields carry their proto field number and kind in the
dataclass metadata (see :func:`pb`); :class:`Message` encodes and decodes any of them
with one table-driven routine, so the schema (``schema.py``) is declarations only.

Proto3 rules followed: scalars equal to their default are not written; repeated numeric
fields are written packed (readers accept packed and unpacked); a sub-message field is
written whenever it is set (``None`` means absent), even when empty; maps are repeated
``{key = 1, value = 2}`` entries written in key order so the bytes are deterministic.
Unknown fields are skipped when reading, as protobuf does.

>>> from spiky_ir.hlo.schema import Shape
>>> Shape.decode(Shape(element_type=11, dimensions=[2, 3]).encode()).dimensions
[2, 3]
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterator
from typing import Any, ClassVar, TypeVar

from spiky_ir.errors import IRError

# Wire types of the protobuf encoding.
VARINT, FIXED64, LEN, FIXED32 = 0, 1, 2, 5

_MASK64 = (1 << 64) - 1
_WIRE_TYPE = {
    "int64": VARINT, "int32": VARINT, "uint64": VARINT, "bool": VARINT, "enum": VARINT,
    "float": FIXED32, "double": FIXED64, "string": LEN, "bytes": LEN,
}
_SCALAR_KINDS = tuple(_WIRE_TYPE)


class WireError(IRError):
    """Bytes that are not a valid encoding of the expected message."""


def pb(number: int, kind: str, default: Any = None, *, repeated: bool = False, message: str = "") -> Any:
    """Declare a message field: ``name: int = pb(2, "enum", 0)``.

    ``kind`` is a scalar kind (``int64``, ``int32``, ``uint64``, ``bool``, ``enum``,
    ``float``, ``double``, ``string``, ``bytes``), ``"message"`` (with ``message=`` the
    class name) or ``"map"`` (string → string).
    """
    if kind not in (*_SCALAR_KINDS, "message", "map"):
        raise ValueError(f"unknown proto field kind {kind!r}")
    meta = {"pb": (number, kind, repeated, message)}
    if repeated:
        return dataclasses.field(default_factory=list, metadata=meta)
    if kind == "map":
        return dataclasses.field(default_factory=dict, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


# --- primitives -------------------------------------------------------------------------------


def encode_varint(value: int) -> bytes:
    """Base-128 varint of ``value``; negative values use their 64-bit two's complement."""
    value &= _MASK64
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode_varint(data: bytes, pos: int) -> tuple[int, int]:
    """The varint at ``data[pos:]`` and the position after it."""
    result = shift = 0
    while True:
        if pos >= len(data):
            raise WireError(f"truncated varint at byte {pos} of {len(data)}")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise WireError(f"varint longer than 10 bytes at byte {pos}")


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _tag(number: int, wire_type: int) -> bytes:
    return encode_varint(number << 3 | wire_type)


def _scalar_payload(kind: str, value: Any) -> tuple[int, bytes]:
    """Wire type and bytes of one scalar value."""
    if kind in ("int64", "int32", "uint64", "enum"):
        return VARINT, encode_varint(int(value))
    if kind == "bool":
        return VARINT, b"\x01" if value else b"\x00"
    if kind == "float":
        return FIXED32, struct.pack("<f", value)
    if kind == "double":
        return FIXED64, struct.pack("<d", value)
    raw = value.encode() if kind == "string" else bytes(value)
    return LEN, encode_varint(len(raw)) + raw


def _iter_fields(data: bytes) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, raw value) for each field in ``data``."""
    pos = 0
    while pos < len(data):
        key, pos = decode_varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise WireError(f"field number 0 at byte {pos}")
        value: Any
        if wire_type == VARINT:
            value, pos = decode_varint(data, pos)
        elif wire_type == FIXED64:
            value, pos = data[pos : pos + 8], pos + 8
        elif wire_type == FIXED32:
            value, pos = data[pos : pos + 4], pos + 4
        elif wire_type == LEN:
            size, pos = decode_varint(data, pos)
            value, pos = data[pos : pos + size], pos + size
        else:
            raise WireError(f"unsupported wire type {wire_type} for field {number}")
        if pos > len(data):
            raise WireError(f"field {number} runs past the end of the message ({pos} > {len(data)})")
        yield number, wire_type, value


def _decode_scalar(kind: str, wire_type: int, raw: Any, where: str) -> Any:
    expected = _WIRE_TYPE[kind]
    if wire_type != expected:
        raise WireError(f"{where}: wire type {wire_type}, expected {expected} for a {kind}")
    if kind in ("int64", "int32", "enum"):
        return _signed64(raw)
    if kind == "uint64":
        return raw
    if kind == "bool":
        return bool(raw)
    if kind == "float":
        return struct.unpack("<f", raw)[0]
    if kind == "double":
        return struct.unpack("<d", raw)[0]
    if kind == "string":
        try:
            return bytes(raw).decode()
        except UnicodeDecodeError as exc:
            raise WireError(f"{where}: string is not valid UTF-8") from exc
    return bytes(raw)


def _unpack(kind: str, raw: bytes, where: str) -> list[Any]:
    """Values of a packed repeated scalar field."""
    if kind == "float":
        return [v for (v,) in struct.iter_unpack("<f", raw)] if len(raw) % 4 == 0 else _bad(where)
    if kind == "double":
        return [v for (v,) in struct.iter_unpack("<d", raw)] if len(raw) % 8 == 0 else _bad(where)
    out, pos = [], 0
    while pos < len(raw):
        value, pos = decode_varint(raw, pos)
        out.append(_decode_scalar(kind, VARINT, value, where))
    return out


def _bad(where: str) -> list[Any]:
    raise WireError(f"{where}: packed fixed-width field has a partial element")


# --- messages --------------------------------------------------------------------------------

M = TypeVar("M", bound="Message")


class Message:
    """Base of the schema dataclasses: ``encode()`` and ``decode(bytes)``."""

    _by_name: ClassVar[dict[str, type[Message]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        Message._by_name[cls.__name__] = cls

    @classmethod
    def _fields(cls) -> list[tuple[str, int, str, bool, str]]:
        cached: list[tuple[str, int, str, bool, str]] | None = cls.__dict__.get("_field_table")
        if cached is None:
            cached = [(f.name, *f.metadata["pb"]) for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
            cls._field_table = cached  # type: ignore[attr-defined]
        return cached

    def encode(self) -> bytes:
        """The proto3 wire bytes of this message."""
        out = bytearray()
        for name, number, kind, repeated, _message in self._fields():
            value = getattr(self, name)
            if kind == "map":
                for key in sorted(value):
                    entry = _scalar_payload("string", key)[1], _scalar_payload("string", value[key])[1]
                    body = _tag(1, LEN) + entry[0] + _tag(2, LEN) + entry[1]
                    out += _tag(number, LEN) + encode_varint(len(body)) + body
            elif kind == "message":
                for item in value if repeated else ([] if value is None else [value]):
                    body = item.encode()
                    out += _tag(number, LEN) + encode_varint(len(body)) + body
            elif repeated:
                if not value:
                    continue
                if kind in ("string", "bytes"):
                    for item in value:
                        out += _tag(number, LEN) + _scalar_payload(kind, item)[1]
                else:
                    body = b"".join(_scalar_payload(kind, item)[1] for item in value)
                    out += _tag(number, LEN) + encode_varint(len(body)) + body
            elif value is not None and value != _default(kind):
                wire_type, payload = _scalar_payload(kind, value)
                out += _tag(number, wire_type) + payload
        return bytes(out)

    @classmethod
    def decode(cls: type[M], data: bytes) -> M:
        """Parse ``data``; raises :class:`WireError` naming the message and field if malformed."""
        by_number = {number: (name, kind, repeated, message) for name, number, kind, repeated, message in cls._fields()}
        values: dict[str, Any] = {}
        for number, wire_type, raw in _iter_fields(bytes(data)):
            spec = by_number.get(number)
            if spec is None:
                continue
            name, kind, repeated, message = spec
            where = f"{cls.__name__}.{name} (field {number})"
            if kind == "map":
                if wire_type != LEN:
                    raise WireError(f"{where}: map entry with wire type {wire_type}")
                entry = {n: _decode_scalar("string", w, r, where) for n, w, r in _iter_fields(raw)}
                values.setdefault(name, {})[entry.get(1, "")] = entry.get(2, "")
            elif kind == "message":
                if wire_type != LEN:
                    raise WireError(f"{where}: sub-message with wire type {wire_type}")
                item = Message._by_name[message].decode(raw)
                if repeated:
                    values.setdefault(name, []).append(item)
                else:
                    values[name] = item
            elif repeated:
                if wire_type == LEN and kind not in ("string", "bytes"):
                    values.setdefault(name, []).extend(_unpack(kind, raw, where))
                else:
                    values.setdefault(name, []).append(_decode_scalar(kind, wire_type, raw, where))
            else:
                values[name] = _decode_scalar(kind, wire_type, raw, where)
        return cls(**values)


def _default(kind: str) -> Any:
    return {"string": "", "bytes": b"", "bool": False, "float": 0.0, "double": 0.0}.get(kind, 0)
