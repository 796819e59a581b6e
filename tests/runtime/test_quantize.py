"""The per-call (de)quantization of LiteRT tensors gives exactly what the definitions give."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.runtime.backends._quant import QTensor, Quantizer, dequantize, dequantize_table, quantize

CASES = (
    [(np.int8, zp) for zp in (-128, -127, -3, 0, 1, 2, 126, 127)]
    + [(np.uint8, zp) for zp in (0, 1, 128, 255)]
    + [(np.int16, zp) for zp in (0, -1000, 3, 30000)]
)
SCALES = [0.003921568859368563, 0.17172519862651825, 0.05, 3.0, 1e-6, 250.0]


def values(scale: float) -> np.ndarray:
    """Exact halves of a step (ties), their float neighbours, wide random values and extremes."""
    k = np.arange(-70000, 70000, dtype=np.float32)
    s = np.float32(scale)
    half = (k + np.float32(0.5)) * s
    ties = (k + np.float32(0.5)) * np.float32(3.0)  # x / 3.0 is exactly k + 0.5
    special = [0.0, -0.0, 1e30, -1e30, 3.4e38, -3.4e38, np.inf, -np.inf, 1e-45, -1e-45]
    rng = np.random.default_rng(7)
    return np.concatenate(
        [
            k * s,
            half,
            np.nextafter(half, np.float32(np.inf)),
            np.nextafter(half, np.float32(-np.inf)),
            ties,
            rng.normal(0, 300 * scale, 200_000).astype(np.float32),
            np.array(special, np.float32),
        ]
    )


@pytest.mark.parametrize(("dtype", "zero_point"), CASES)
def test_quantizer_gives_the_integers_quantize_gives(dtype: type, zero_point: int) -> None:
    for scale in SCALES:
        t = QTensor("x", 0, np.dtype(dtype), (-1, 8), scale, zero_point, True)
        x = values(scale)
        with np.errstate(over="ignore"):  # x / scale overflows to inf for the largest values
            want = quantize(x, t)
            got = Quantizer(t)(x)
        assert got.dtype == want.dtype and np.array_equal(got, want), (scale, np.flatnonzero(got != want)[:5])


def test_quantizer_reuses_its_buffers_and_follows_the_shape() -> None:
    t = QTensor("x", 0, np.dtype(np.int8), (-1, 4), 0.05, -128, True)
    quantizer = Quantizer(t)
    rng = np.random.default_rng(1)
    a, b = (rng.normal(0, 3, (n, 4)).astype(np.float32) for n in (32, 1))
    first = quantizer(a)
    assert np.array_equal(first, quantize(a, t))
    assert quantizer(a) is first  # the same buffer: set_tensor copies it before the next call
    assert np.array_equal(quantizer(b), quantize(b, t)) and quantizer(b).shape == (1, 4)
    assert np.array_equal(quantizer(a), quantize(a, t))


def test_float16_input_takes_the_five_pass_path() -> None:
    t = QTensor("x", 0, np.dtype(np.int8), (-1, 4), 0.05, -128, True)
    x = np.random.default_rng(2).normal(0, 3, (8, 4)).astype(np.float16)
    assert np.array_equal(Quantizer(t)(x), quantize(x, t))


@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
def test_dequantize_table_take_is_dequantize(dtype: type) -> None:
    t = QTensor("y", 0, np.dtype(dtype), (-1, 10), 0.17172519862651825, 40, True)
    table = dequantize_table(t)
    assert table is not None
    q = np.arange(256, dtype=np.uint8).view(dtype).reshape(16, 16)
    assert np.array_equal(table.take(q), dequantize(q, t))
    assert table.take(q).dtype == np.float32


def test_no_table_for_wider_or_float_tensors() -> None:
    assert dequantize_table(QTensor("y", 0, np.dtype(np.int16), (-1,), 0.1, 0, True)) is None
    assert dequantize_table(QTensor("y", 0, np.dtype(np.float32), (-1,), 0.0, 0, False)) is None
