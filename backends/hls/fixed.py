"""Fixed-point types and the integer arithmetic that ``ap_fixed<W,I,AP_RND,AP_SAT>`` performs.

A value of ``FixedType(W, I)`` is stored as a signed W-bit integer code ``c`` meaning
``c * 2**-(W-I)``. Every layer output type uses AP_RND (round half toward +inf) and AP_SAT
(saturate), so a conversion from a wider exact accumulator is ``floor(acc * 2**-s + 1/2)``
clamped to the code range: the same integer formula here (numpy int64) and in the C kernels,
which is why the emulator and the C simulation agree bit for bit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from compiler.errors import CompileError

_PATTERN = re.compile(r"^\s*ap_fixed\s*<\s*(\d+)\s*,\s*(-?\d+)\s*>\s*$")
MAX_EXACT_BITS = 62  # accumulators must fit int64 in the emulator (with a guard bit)


@dataclass(frozen=True)
class FixedType:
    width: int
    integer: int  # integer bits including the sign bit

    @property
    def frac(self) -> int:
        return self.width - self.integer

    @property
    def lo(self) -> int:
        return -(1 << (self.width - 1))

    @property
    def hi(self) -> int:
        return (1 << (self.width - 1)) - 1

    @property
    def max_value(self) -> float:
        return self.hi * 2.0 ** -self.frac

    @property
    def min_value(self) -> float:
        return self.lo * 2.0 ** -self.frac

    def cpp(self, rounding: bool = True) -> str:
        """The C++ type: layer results round and saturate; accumulators are exact (defaults)."""
        mode = ",AP_RND,AP_SAT" if rounding else ""
        return f"ap_fixed<{self.width},{self.integer}{mode}>"

    def __str__(self) -> str:
        return f"ap_fixed<{self.width},{self.integer}>"

    def code_ctype(self) -> str:
        """Smallest C integer type holding this type's codes (weights are stored as codes)."""
        for bits, name in ((8, "signed char"), (16, "short"), (32, "int")):
            if self.width <= bits:
                return name
        return "long long"


def parse_fixed(text: str, where: str = "hls_precision") -> FixedType:
    """``"ap_fixed<16,6>"`` -> FixedType(16, 6); names the option on a bad string."""
    m = _PATTERN.match(str(text))
    if not m:
        raise CompileError(f"{where}: cannot parse {text!r}; write a type like 'ap_fixed<16,6>' (or 'auto')")
    width, integer = int(m.group(1)), int(m.group(2))
    if not 2 <= width <= 32 or not 1 <= integer <= width:
        raise CompileError(f"{where}: {text!r} is outside what this backend emits "
                           "(width 2..32, integer bits 1..width)")
    return FixedType(width, integer)


def saturate(codes: np.ndarray, t: FixedType) -> np.ndarray:
    return np.clip(codes, t.lo, t.hi)


def quantize(x: np.ndarray, t: FixedType) -> np.ndarray:
    """Float -> codes of ``t``: round half up, saturate (what ap_fixed's float constructor does
    with AP_RND/AP_SAT; float64 holds x * 2**f exactly)."""
    scaled = np.asarray(x, dtype=np.float64) * 2.0 ** t.frac
    return saturate(np.floor(scaled + 0.5), t).astype(np.int64)


def dequantize(codes: np.ndarray, t: FixedType) -> np.ndarray:
    return (np.asarray(codes, dtype=np.float64) * 2.0 ** -t.frac).astype(np.float32)


def shift_round(codes: np.ndarray, shift: int) -> np.ndarray:
    """``floor(codes * 2**-shift + 1/2)`` in integers (shift > 0 drops bits, < 0 adds zeros)."""
    codes = np.asarray(codes, dtype=np.int64)
    if shift <= 0:
        return codes << -shift
    return (codes + (1 << (shift - 1))) >> shift


def convert(codes: np.ndarray, src_frac: int, t: FixedType) -> np.ndarray:
    """Codes with ``src_frac`` fraction bits -> codes of ``t`` (AP_RND, AP_SAT)."""
    return saturate(shift_round(codes, src_frac - t.frac), t)


def accumulator(x: FixedType, w: FixedType, n_terms: int, bias: bool = True) -> FixedType:
    """A type holding any sum of ``n_terms`` products x*w (+ a bias) exactly:
    W = Wx + Ww + ceil(log2 n) (+1 with bias)."""
    growth = int(np.ceil(np.log2(max(n_terms, 1)))) + (1 if bias else 0)
    frac = x.frac + w.frac
    integer = x.integer + w.integer + growth
    if integer + frac > MAX_EXACT_BITS:
        raise CompileError(f"an exact accumulator for {x} x {w} over {n_terms} terms needs {integer + frac} bits "
                           f"(> {MAX_EXACT_BITS}); use narrower types in hls_precision / hls_precision_map")
    return FixedType(integer + frac, integer)
