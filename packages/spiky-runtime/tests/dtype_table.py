"""The dtypes spiky_runtime supports, one row each: the table every dtype-parametrised test runs over.

A test takes a ``dtype_case`` argument and conftest.py runs it once per row (ids are the names).
Rows are in the runtime's own order (csrc/tensor_spec.cc), which test_model.py checks against the
runtime's error message, so a dtype added to the C++ table without a row here fails a test.

Values are compared bit for bit (``case.bits``): NaN payloads, -0.0 and the rounding of fill
values are part of the contract, and ``==`` would hide them. numpy has no bfloat16: its row uses
``ml_dtypes.bfloat16``, which rounds a float64 through float32 (as torch does); numpy's
float64 -> float16 cast rounds once.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import ml_dtypes
import numpy as np

BITS_OF_SIZE = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


@dataclass(frozen=True)
class DTypeCase:
    name: str
    itemsize: int
    kind: str  # "bool", "int" or "float"
    fills: tuple[float, ...]  # pad values a bundle must write exactly (as numpy converts them)
    bad_fills: tuple[float, ...] = ()  # pad values a bundle must reject

    @property
    def np_dtype(self) -> np.dtype[Any]:
        if self.name == "bfloat16":
            return np.dtype(ml_dtypes.bfloat16)
        return np.dtype(self.name)

    def bits(self, arr: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """The raw bits of `arr` (which must have this dtype) as unsigned integers."""
        assert arr.dtype == self.np_dtype, (arr.dtype, self.np_dtype)
        return np.ascontiguousarray(arr).view(BITS_OF_SIZE[self.itemsize])

    def convert(self, values: Sequence[float] | float) -> np.ndarray[Any, Any]:
        """`values` (float64) as this dtype, the way numpy / ml_dtypes convert them."""
        with warnings.catch_warnings(), np.errstate(over="ignore", invalid="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)  # float16 overflow to inf
            return np.asarray(values, np.float64).astype(self.np_dtype)

    def sample(self, shape: tuple[int, ...], seed: int = 0) -> np.ndarray[Any, Any]:
        """Random values of this dtype, floats with inf, -inf, NaN, -0.0 and subnormals mixed in."""
        rng = np.random.default_rng(seed)
        if self.kind == "bool":
            return rng.integers(0, 2, shape).astype(bool)
        if self.kind == "int":
            info = np.iinfo(self.np_dtype)
            return rng.integers(info.min, info.max, size=shape, dtype=self.np_dtype, endpoint=True)
        # Any bit pattern is a value of a float type: random bits cover every class of value.
        raw = rng.integers(0, 2 ** (8 * self.itemsize), size=shape, dtype=np.uint64, endpoint=False)
        out = raw.astype(BITS_OF_SIZE[self.itemsize]).view(self.np_dtype)
        flat = out.reshape(-1)
        specials = self.convert([math.inf, -math.inf, math.nan, -0.0, 0.0, 1.0])
        flat[: min(flat.size, specials.size)] = specials[: flat.size]
        return out

    def __repr__(self) -> str:
        return self.name


# Fill values worth checking for every float type: the padding-safety neutrals (0, -inf, 1),
# values each type rounds (0.1; 1 + 2**-8 + 2**-30 and 1 + 2**-11 + 2**-40, which rounding through
# float32 first would change), exact ties of float16 and bfloat16 (to even: down, then up), one
# that overflows float16 but not bfloat16 (1e30), the tie at the top of float16 (65520), NaN,
# -0.0, and float16 subnormals with their ties.
_FLOAT_FILLS = (0.0, -math.inf, math.inf, 1.0, -3.0, 0.1, 1 + 2**-8 + 2**-30, 1 + 2**-11 + 2**-40,
                1 + 2**-11, 1 + 3 * 2**-11, 1 + 2**-8, -(1 + 3 * 2**-8), 1e30, 65520.0, 65519.0, math.nan,
                -0.0, 3e-8, 2**-25, 3 * 2**-25, 1e-40)

DTYPES: tuple[DTypeCase, ...] = (
    DTypeCase("bool", 1, "bool", (0.0, 1.0), (2.0, -1.0, 0.5)),
    DTypeCase("int8", 1, "int", (0.0, -1.0, 127.0, -128.0), (128.0, 1.5, math.inf)),
    DTypeCase("int16", 2, "int", (0.0, -1.0, 32767.0, -32768.0), (32768.0, -0.5)),
    DTypeCase("int32", 4, "int", (0.0, -1.0, 2.0**31 - 1, -(2.0**31)), (2.0**31, math.nan)),
    DTypeCase("int64", 8, "int", (0.0, -1.0, 2.0**62, -(2.0**63)), (2.0**63, -math.inf)),
    DTypeCase("uint8", 1, "int", (0.0, 7.0, 255.0), (256.0, -1.0)),
    DTypeCase("float16", 2, "float", _FLOAT_FILLS),
    DTypeCase("float32", 4, "float", _FLOAT_FILLS),
    DTypeCase("float64", 8, "float", _FLOAT_FILLS),
    DTypeCase("bfloat16", 2, "float", _FLOAT_FILLS),
)
NAMES: tuple[str, ...] = tuple(case.name for case in DTYPES)
BY_NAME: dict[str, DTypeCase] = {case.name: case for case in DTYPES}
