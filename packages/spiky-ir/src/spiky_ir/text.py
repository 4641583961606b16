"""The text form of a graph: stable, versioned, and what compile-cache keys hash.

::

    spiky-ir v1
    graph main(%x: f32[4,16], %w: f32[64,16]) {
      %t = transpose(%w) {axes=(1,0)} : f32[16,64]
      %mm = matmul(%x, %t) : f32[4,64]
      return %mm
    }

Attributes are printed sorted by name; a dense array (the data of a ``literal``) prints
as ``dense<f32[2,3]:HEX>``, its little-endian bytes in hex, so it reads back bit for bit.
Node ``source`` locations are debug information and are not part of the text (two graphs
that compute the same thing from different source lines share a cache entry).

The printer is :func:`spiky_ir.ir.print_graph` (``str(graph)`` uses it, so it lives
with the graph); this module re-exports it next to the parser.
"""

from __future__ import annotations

import json
import re

from spiky_ir.dtypes import DType
from spiky_ir.errors import IRError
from spiky_ir.ir import TEXT_VERSION, Graph, Value, print_graph
from spiky_ir.symbolic import Dim, canonical
from spiky_ir.types import Attr, DenseArray, TensorType, format_attr

__all__ = ["TEXT_VERSION", "format_attr", "parse_graph", "print_graph"]


# --- parser -----------------------------------------------------------------------------------

_NAME = re.compile(r"%([A-Za-z0-9_]+)")
_TYPE = re.compile(r"([a-z0-9]+)\[([^\]]*)\]")
_HEADER = re.compile(r"graph ([A-Za-z0-9_.\-]+)\((.*)\) \{$")
_NODE = re.compile(r"  (%[A-Za-z0-9_]+(?:, %[A-Za-z0-9_]+)*) = ([a-z0-9_]+)\(")
_NUMBER = re.compile(r"-?(?:\d+\.?\d*(?:e[+-]?\d+)?|inf|nan)")


def _parse_dim(text: str) -> Dim:
    text = text.strip()
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    return canonical(text)


def _parse_type(text: str, where: str) -> TensorType:
    m = _TYPE.fullmatch(text.strip())
    if m is None:
        raise IRError(f"{where}: cannot read type {text!r}; expected e.g. f32[4,s0]")
    dims = m.group(2)
    shape = tuple(_parse_dim(d) for d in dims.split(",")) if dims else ()
    return TensorType(shape, DType.parse(m.group(1)))


def _parse_dense(text: str, pos: int, where: str) -> tuple[DenseArray, int]:
    """``dense<f32[2,3]:HEX>`` starting at ``pos``."""
    end = text.find(">", pos)
    colon = text.find(":", pos)
    if end < 0 or not pos < colon < end:
        raise IRError(f"{where}: cannot read dense array at {text[pos:pos + 40]!r}; expected dense<TYPE:HEX>")
    t = _parse_type(text[pos + len("dense<"):colon], where)
    try:
        data = bytes.fromhex(text[colon + 1:end])
        return DenseArray(t.dtype, t.static_shape(), data), end + 1
    except ValueError:
        raise IRError(f"{where}: dense array data {text[colon + 1:end][:40]!r} is not hex") from None
    except IRError as exc:
        raise IRError(f"{where}: {exc}") from None


def _parse_attr_value(text: str, pos: int, where: str) -> tuple[Attr, int]:
    if text.startswith("dense<", pos):
        return _parse_dense(text, pos, where)
    if text.startswith('"', pos):
        value, end = json.JSONDecoder().raw_decode(text, pos)
        return str(value), end
    if text.startswith("(", pos):
        end = text.index(")", pos)
        body = text[pos + 1:end]
        items = tuple(_parse_dim(v) for v in body.split(",")) if body else ()
        return items, end + 1
    m = re.compile(r"[A-Za-z0-9_.+\-]+").match(text, pos)
    if m is None:
        raise IRError(f"{where}: cannot read attribute value at {text[pos:]!r}")
    word = m.group(0)
    if word in ("none", "true", "false"):
        return {"none": None, "true": True, "false": False}[word], m.end()
    if re.fullmatch(r"-?\d+", word):
        return int(word), m.end()
    if _NUMBER.fullmatch(word):
        return float(word), m.end()
    try:
        return DType.parse(word), m.end()
    except IRError:
        raise IRError(f"{where}: cannot read attribute value {word!r}") from None


def _parse_attrs(text: str, pos: int, where: str) -> tuple[dict[str, Attr], int]:
    """Parse ``{k=v, ...}`` starting at ``text[pos] == '{'``; return attrs and the end."""
    attrs: dict[str, Attr] = {}
    pos += 1
    while True:
        m = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=").match(text, pos)
        if m is None:
            raise IRError(f"{where}: expected 'name=value' at {text[pos:]!r}")
        value, pos = _parse_attr_value(text, m.end(), where)
        attrs[m.group(1)] = value
        if text.startswith(", ", pos):
            pos += 2
        elif text.startswith("}", pos):
            return attrs, pos + 1
        else:
            raise IRError(f"{where}: expected ', ' or '}}' at {text[pos:]!r}")


def parse_graph(text: str) -> Graph:
    """Read the text form back into a graph; ``print_graph(parse_graph(t)) == t`` for printed ``t``.

    Result types are re-inferred from the op registry and must match the printed ones,
    so a hand-edited text that is inconsistent raises :class:`IRError` naming the line.

    >>> from spiky_ir import parse_graph
    >>> g = parse_graph('''spiky-ir v1
    ... graph main(%x: f32[2]) {
    ...   %e = exp(%x) : f32[2]
    ...   return %e
    ... }
    ... ''')
    >>> g.nodes[0].op
    'exp'
    """
    lines = text.rstrip("\n").split("\n")
    if not lines or lines[0] != f"spiky-ir v{TEXT_VERSION}":
        found = lines[0] if lines else ""
        raise IRError(
            f"text starts with {found!r}, expected 'spiky-ir v{TEXT_VERSION}'; it was written by "
            "another version of spiky-ir (re-dump it with this one)"
        )
    header = _HEADER.fullmatch(lines[1]) if len(lines) > 1 else None
    if header is None:
        raise IRError(f"line 2: expected 'graph NAME(%x: TYPE, ...) {{', got {lines[1:2]!r}")
    graph = Graph(name=header.group(1))
    env: dict[str, Value] = {}
    params = header.group(2)
    for param in re.split(r", (?=%)", params) if params else []:
        name, _, type_text = param.partition(": ")
        where = f"line 2 (input {name})"
        m = _NAME.fullmatch(name)
        if m is None:
            raise IRError(f"{where}: bad input name {name!r}")
        env[m.group(1)] = graph.add_input(m.group(1), _parse_type(type_text, where), exact=True)
    if lines[-1] != "}" or not lines[-2].startswith("  return "):
        raise IRError("the text must end with '  return %v, ...' and '}'")
    for lineno, line in enumerate(lines[2:-2], start=3):
        where = f"line {lineno}"
        m = _NODE.match(line)
        if m is None:
            raise IRError(f"{where}: expected '  %r = op(%a, ...) {{attrs}} : TYPE', got {line!r}")
        results = [r.strip()[1:] for r in m.group(1).split(",")]
        op = m.group(2)
        close = line.index(")", m.end())
        operand_text = line[m.end():close]
        operands = []
        for ref in operand_text.split(", ") if operand_text else []:
            name = ref.strip()[1:]
            if name not in env:
                raise IRError(f"{where}: operand %{name} of {op} is not defined above")
            operands.append(env[name])
        pos = close + 1
        attrs: dict[str, Attr] = {}
        if line.startswith(" {", pos):
            attrs, pos = _parse_attrs(line, pos + 1, where)
        if not line.startswith(" : ", pos):
            raise IRError(f"{where}: expected ' : TYPES' after the operands of {op}")
        types = [_parse_type(t.group(0), where) for t in _TYPE.finditer(line, pos + 3)]
        try:
            node = graph.add_node(op, operands, attrs, result_names=results)
        except IRError as exc:
            raise type(exc)(f"{where}: {exc}") from None
        inferred = [v.type for v in node.outputs]
        if inferred != types:
            raise IRError(
                f"{where}: {op} is printed with types {[str(t) for t in types]}, "
                f"but infers {[str(t) for t in inferred]}"
            )
        for value in node.outputs:
            env[value.name] = value
    outs = []
    for ref in lines[-2].removeprefix("  return ").split(", "):
        name = ref.strip()[1:]
        if name not in env:
            raise IRError(f"line {len(lines) - 1}: returned %{name} is not defined")
        outs.append(env[name])
    graph.set_outputs(outs)
    return graph
