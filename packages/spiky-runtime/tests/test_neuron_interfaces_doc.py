"""docs/neuron-interfaces.md agrees with the libnrt ABI the runtime declares and the fake implements.

The page's tables are parsed and compared with ``csrc/nrt_api.h`` (the function declarations,
status codes, dtype codes and the tensor info layout) and with the fake libnrt's Python side
(spiky-torch's ``spiky/testing/fake_nrt``). The driver's use of exactly the documented functions is checked in
``test_nrt_driver.py``.
"""

from __future__ import annotations

import ctypes
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
NRT_API_H = PACKAGE_ROOT / "csrc" / "nrt_api.h"
DOC = PACKAGE_ROOT.parents[1] / "docs" / "neuron-interfaces.md"
# The fake libnrt ships with spiky-torch (spiky.testing.fake_nrt); its build, control and NEFF modules
# use only the standard library, so they load by path here without installing spiky-torch.
FAKE_DIR = Path(__file__).resolve().parents[2] / "spiky-torch" / "src" / "spiky" / "testing" / "fake_nrt"

pytestmark = pytest.mark.smoke


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_fake_nrt_{name}", FAKE_DIR / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


build = _load("build")
neff = _load("neff")
control = _load("control")


def _table(heading: str) -> list[list[str]]:
    """The rows (cells without backticks) of the first table under ``### heading``."""
    assert DOC.is_file(), f"{DOC} is missing: it documents the Neuron interfaces the runtime uses"
    text = DOC.read_text()
    marker = f"\n### {heading}\n"
    assert marker in text, f"{DOC.name} has no '### {heading}' section"
    section = text.split(marker, 1)[1].split("\n#", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    assert len(rows) > 2, f"no table under '### {heading}'"
    return [[cell.strip().strip("`") for cell in row.strip("|").split("|")] for row in rows[2:]]


# ---- C declarations: the doc's signatures against nrt_api.h's SPIKY_NRT_SYMBOLS --------------

# The doc writes the SDK's C names; nrt_api.h declares the same types under its own names.
_C_TYPES = {
    "NRT_STATUS": "int",
    "nrt_model_t": "NrtModel",
    "nrt_tensor_t": "NrtTensor",
    "nrt_tensor_set_t": "NrtTensorSet",
    "nrt_tensor_info_array_t": "NrtTensorInfoArray",
}


def _normalize(ctype: str) -> str:
    """A C type without spaces, ``std::`` or SDK spellings: ``const nrt_tensor_t *`` -> ``constNrtTensor*``."""
    words = re.sub(r"\bstd::", "", ctype)
    words = re.sub(r"\w+", lambda m: _C_TYPES.get(m.group(0), m.group(0)), words)
    return re.sub(r"\s+", "", words)


def _parameter_types(params: str) -> list[str]:
    params = params.strip()
    if params in ("", "void"):
        return []
    types = []
    for param in params.split(","):
        name = re.search(r"(\w+)\s*$", param)
        assert name is not None, param
        types.append(_normalize(param[: name.start()]))  # drop the parameter's name
    return types


def _declared() -> dict[str, tuple[str, list[str]]]:
    """name -> (return type, parameter types) from nrt_api.h's X-macro."""
    text = NRT_API_H.read_text()
    macro = text.split("#define SPIKY_NRT_SYMBOLS(X)", 1)[1].split("\n\n", 1)[0].replace("\\\n", " ")
    entries = re.findall(r"X\((\w+),\s*([^,]+?),\s*\(([^()]*)\)\)", macro)
    assert len(entries) == len(build.NRT_SYMBOLS), entries
    return {name: (_normalize(ret), _parameter_types(params)) for name, ret, params in entries}


def _documented() -> dict[str, tuple[str, list[str]]]:
    out = {}
    for name, signature, _use in _table("Functions"):
        match = re.fullmatch(r"(.+?)\b(nrt_\w+)\((.*)\)", signature)
        assert match is not None and match.group(2) == name, f"row {name}: cannot read signature {signature!r}"
        out[name] = (_normalize(match.group(1)), _parameter_types(match.group(3)))
    return out


def test_documented_functions_are_the_declared_ones() -> None:
    documented, declared = _documented(), _declared()
    assert sorted(documented) == sorted(declared) == sorted(build.NRT_SYMBOLS)
    for name, (ret, params) in documented.items():
        assert (ret, params) == declared[name], f"{name}: doc {ret}({params}), nrt_api.h {declared[name]}"


# ---- status codes ------------------------------------------------------------------------------


def _enum(name: str) -> dict[str, int]:
    body = NRT_API_H.read_text().split(f"enum {name} : int {{", 1)[1].split("};", 1)[0]
    return {key: int(value, 0) for key, value in re.findall(r"(\w+)\s*=\s*(0x[0-9A-Fa-f]+|\d+)", body)}


def test_status_codes_match_nrt_api_h() -> None:
    rows = _table("Status codes")
    documented = {name: code for code, name, _meaning in rows if "-" not in code}
    declared = {key.removeprefix("NRT_"): code for key, code in _enum("NrtStatus").items()}
    assert {name: int(code) for name, code in documented.items()} == declared
    ranges = [(code, name) for code, name, _meaning in rows if "-" in code]
    assert ranges == [("1200-1206", "EXEC_HW_ERR")]
    source = (PACKAGE_ROOT / "csrc" / "nrt_api.cc").read_text()
    assert "kFirstHwError = 1200" in source and "kLastHwError = 1206" in source and '"EXEC_HW_ERR"' in source
    # The fake's Python constants are a subset with the same values.
    fake = {key.removeprefix("NRT_"): value for key, value in vars(control).items()
            if key.startswith("NRT_") and isinstance(value, int) and key != "NRT_TENSOR_NAME_MAX"}
    assert fake and all(declared[key] == value for key, value in fake.items()), fake


# ---- dtype codes ---------------------------------------------------------------------------------


def test_dtype_codes_match_nrt_api_h_and_the_fake() -> None:
    rows = _table("NRT dtype codes")
    documented = {dtype: (int(code, 16), enum_name, int(size)) for code, dtype, enum_name, size in rows}
    declared = _enum("NrtDtype")
    for dtype, (code, enum_name, size) in documented.items():
        assert declared[enum_name] == code, dtype
        assert neff.DTYPE_CODES[dtype] == code, dtype
        assert neff.ITEMSIZE[code] == size, dtype
    assert {code for code, _, _ in documented.values()} == set(declared.values())
    # Every fake dtype is documented; bool is the one without a code of its own (it travels as u8).
    assert set(neff.DTYPE_CODES) - set(documented) == {"bool"}
    assert neff.DTYPE_CODES["bool"] == documented["uint8"][0]


# ---- tensor info layout --------------------------------------------------------------------------


def test_tensor_info_layout_matches_nrt_api_h_and_the_fake() -> None:
    rows = _table("Tensor info")
    documented = {field: int(offset) for offset, field, _ctype, _meaning in rows}
    fake = {name: getattr(control.NrtTensorInfo, name).offset for name, _ in control.NrtTensorInfo._fields_}
    assert documented == fake
    if ctypes.sizeof(ctypes.c_void_p) == 8:  # the doc states the LP64 layout, as nrt_api.h's static_assert
        text = DOC.read_text().split("\n### Tensor info\n", 1)[1]
        size = re.search(r"An entry is (\d+) bytes", text)
        assert size is not None and int(size.group(1)) == ctypes.sizeof(control.NrtTensorInfo)
        asserted = re.findall(r"offsetof\(NrtTensorInfo, (\w+)\) == (\d+)", NRT_API_H.read_text())
        assert {field: int(offset) for field, offset in asserted} == {k: v for k, v in documented.items() if v}
        assert f"sizeof(NrtTensorInfo) == {size.group(1)}" in NRT_API_H.read_text()
