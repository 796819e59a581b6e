"""Affine (de)quantization of LiteRT tensors: float32 for callers, integers for the interpreter.

``quantize`` and ``dequantize`` are the definitions. The per-call forms compute exactly what they
compute, cheaper: ``Quantizer`` writes into buffers kept for the batch shape, and a one-byte output
is dequantized by a 256-entry table (``dequantize_table``) read with ``table.take(q)``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True, slots=True)
class QTensor:
    """One interpreter tensor as the backend sees it."""

    name: str
    index: int
    dtype: Any
    shape: tuple[int, ...]
    scale: float
    zero_point: int
    quantized: bool = False  # integer tensor with a scale: callers see float32


_LIMITS: dict[np.dtype[Any], tuple[int, int]] = {}


def limits(dtype: np.dtype[Any]) -> tuple[int, int]:
    found = _LIMITS.get(dtype)
    if found is None:
        info = np.iinfo(dtype)
        found = _LIMITS[dtype] = (int(info.min), int(info.max))
    return found


def quantize(x: np.ndarray, t: QTensor) -> np.ndarray:
    """round(x / scale) + zero point (halves to even), clipped to the integer type."""
    lo, hi = limits(t.dtype)
    q = x / t.scale
    np.rint(q, out=q)
    q += t.zero_point
    np.minimum(q, hi, out=q)
    np.maximum(q, lo, out=q)
    return q.astype(t.dtype)


def dequantize(q: np.ndarray, t: QTensor) -> np.ndarray:
    x = q.astype(np.float32)
    x -= np.float32(t.zero_point)
    x *= np.float32(t.scale)
    return x


def dequantize_table(t: QTensor) -> np.ndarray | None:
    """``dequantize`` of every value of a one-byte type, indexed by the byte (None for wider types).

    ``table.take(q)`` reads it with the tensor itself as the index: a uint8 value is its byte, and
    an int8 value v < 0 is taken from the end, entry 256 + v, which is its byte too."""
    if not t.quantized or t.dtype.itemsize != 1:
        return None
    return dequantize(np.arange(256, dtype=np.uint8).view(t.dtype), t)


def _clip_ufunc() -> Any:
    """numpy's ``clip`` ufunc (what ``np.clip`` ends in, after ~1 us of Python), or None."""
    for module in ("numpy._core.umath", "numpy.core.umath"):  # numpy 2, numpy 1
        try:
            clip = getattr(importlib.import_module(module), "clip", None)
        except ImportError:
            continue
        if isinstance(clip, np.ufunc):
            return clip
    return None


_CLIP = _clip_ufunc()
_F32 = np.dtype(np.float32)
# 1.5 * 2**23: a float32 in [2**23, 2**24) is an integer, its low mantissa bits are that integer
# minus 2**23, and 2**22 is a multiple of 2**16.
_ROUNDER = float(2**23 + 2**22)


class Quantizer:
    """``quantize`` for one input, into buffers kept for the last shape (callers hold the model's lock).

    float32 data, a one- or two-byte type and an even zero point (int8 inputs usually have -128;
    uint8 ones 0 or 128) take four passes: v = x / scale, clipped to [lo - zp, hi - zp]; then
    v + (1.5 * 2**23 + zp), which the float addition rounds to an integer, halves to even
    (1.5 * 2**23 + zp is even, so a half rounds as it does in ``rint(v)``); that float's low bits
    read as an integer (a uint32 view, cast down, which keeps the low bytes) are rint(v) + zp,
    already within [lo, hi]. Clipping before rounding gives what clipping after does, the bounds
    being integers. Other inputs take ``quantize``'s operations, its clip fused into one ufunc
    (five passes). Either way the integers are the ones ``quantize`` gives (tests/runtime/test_quantize.py).

    The buffer returned is reused by the next call: ``set_tensor`` copies it into the interpreter."""

    __slots__ = ("_f", "_q", "_u", "dtype", "hi", "lo", "magic", "rounder", "scale", "zero_point")

    def __init__(self, t: QTensor) -> None:
        self.scale, self.zero_point, self.dtype = t.scale, t.zero_point, t.dtype
        self.lo, self.hi = limits(t.dtype)
        self.magic = t.dtype.itemsize <= 2 and t.zero_point % 2 == 0 and _CLIP is not None
        self.rounder = _ROUNDER + t.zero_point
        self._f: np.ndarray | None = None  # the float work buffer, x's dtype
        self._u: np.ndarray | None = None  # the same bytes as uint32 (float32 only)
        self._q: np.ndarray | None = None  # the integer tensor

    def _buffers(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        f = self._f = np.empty(x.shape, x.dtype)
        self._q = np.empty(x.shape, self.dtype)
        self._u = f.view(np.uint32) if x.dtype == _F32 and self.magic else None
        return f, self._q, self._u

    def __call__(self, x: np.ndarray) -> np.ndarray:
        f, q, u = self._f, self._q, self._u
        if f is None or q is None or f.shape != x.shape or f.dtype != x.dtype:
            f, q, u = self._buffers(x)
        zp = self.zero_point
        np.divide(x, self.scale, out=f)
        if u is not None:
            _CLIP(f, self.lo - zp, self.hi - zp, out=f)
            np.add(f, self.rounder, out=f)
            np.copyto(q, u, casting="unsafe")
            return q
        np.rint(f, out=f)
        np.add(f, zp, out=f)
        if _CLIP is not None:
            _CLIP(f, self.lo, self.hi, out=f)
        else:
            np.minimum(f, self.hi, out=f)
            np.maximum(f, self.lo, out=f)
        np.copyto(q, f, casting="unsafe")  # the cast astype() makes
        return q
