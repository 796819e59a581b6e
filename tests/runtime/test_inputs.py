"""Bad tensors give a clear InvalidInput naming the problem; good ones are coerced."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from edge_agent.errors import InvalidInput
from edge_agent.runtime.engine import Engine
from edge_agent.runtime.inputs import DOT_MAX, nonfinite

GOOD = [[5.1, 3.5, 1.4, 0.2]]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"float_input": [[1.0, 2.0, 3.0]]}, r"shape \[1, 3\], expected \[N, 4\] \(dimension 1 must be 4\)"),
        ({"float_input": [[[1.0, 2.0, 3.0, 4.0]]]}, r"shape \[1, 1, 4\], expected \[N, 4\]"),
        ({"float_input": [[1.0, 2.0], [1.0, 2.0, 3.0, 4.0]]}, "rectangular array"),
        ({"float_input": [["a", "b", "c", "d"]]}, "rectangular array of numbers"),
        ({"float_input": [[1.0, float("nan"), 3.0, 4.0]]}, "NaN or infinity"),
        ({"float_input": [[1.0, float("inf"), 3.0, 4.0]]}, "NaN or infinity"),
        ({"float_input": np.zeros((1, 4), np.complex64)}, "dtype complex64, expected float32"),
        ({"float_input": [[1e39, 0, 0, 0]]}, "out of float32 range"),
        # float64 arrays (what JSON numbers decode to) take the cast-once path: the same refusals
        ({"float_input": np.array([[1e39, 0, 0, 0]])}, "out of float32 range"),
        ({"float_input": np.array([[0, 0, 0, -1e300]])}, "out of float32 range"),
        ({"float_input": np.array([[1.0, np.nan, 3.0, 4.0]])}, "NaN or infinity"),
        ({"float_input": np.array([[1.0, 2.0, 3.0, -np.inf]])}, "NaN or infinity"),
        ({"float_input": np.zeros((2000, 4))}, "over the limit of 1024"),
        ({"float_input": np.zeros((1, 5))}, r"shape \[1, 5\], expected \[N, 4\]"),
        ({"float_input": np.zeros((0, 4))}, "empty batch"),
        ({"float_input": np.zeros((2000, 4))}, "over the limit of 1024"),
        ({"x": GOOD}, r"unknown input\(s\) \['x'\]"),
        ({}, "missing input 'float_input'"),
    ],
)
def test_bad_tensor_inputs(engine: Engine, payload: dict, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        engine.predict("iris", payload)


def test_single_row_without_batch_dim_and_ints_are_accepted(engine: Engine) -> None:
    a = engine.predict("iris", {"float_input": [5.1, 3.5, 1.4, 0.2]})
    b = engine.predict("iris", {"float_input": np.array(GOOD, dtype=np.float64)})
    c = engine.predict("iris", {"float_input": [[5, 3, 1, 0]]})
    assert len(a.results) == len(b.results) == len(c.results) == 1
    np.testing.assert_array_equal(a.outputs["output_probability"], b.outputs["output_probability"])


def test_float64_arrays_are_cast_to_float32_up_to_its_range(engine: Engine) -> None:
    edge = np.array([[3.4e38, -3.4e38, 1e-50, 0.0]])  # finite float32 values (the last two: 0)
    out = engine.validate(engine.model("iris"), {"float_input": edge})["float_input"]
    assert out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, edge.astype(np.float32))


def test_engine_keeps_working_after_bad_input(engine: Engine) -> None:
    for _ in range(3):
        with pytest.raises(InvalidInput):
            engine.predict("iris", {"float_input": [[1.0, 2.0]]})
    assert engine.predict("iris", {"float_input": GOOD}).results[0]["label"] == "setosa"


def test_images_to_tabular_model_is_a_clear_error(engine: Engine) -> None:
    with pytest.raises(InvalidInput, match="takes tensors, not images"):
        engine.predict("iris", images=[b"\x89PNG"])


# -- the finiteness test of the fast path (one dot product with zeros for float32) ------------------
SIZES = [
    *range(1, 70),
    127,
    128,
    129,
    255,
    256,
    257,
    2047,
    2048,
    2049,
    DOT_MAX - 1,
    DOT_MAX,
    DOT_MAX + 1,
    3 * DOT_MAX,
]


@pytest.mark.parametrize("size", SIZES)
def test_nonfinite_finds_nan_and_infinities_anywhere(size: int) -> None:
    rng = np.random.default_rng(size)
    x = rng.uniform(-3.4e38, 3.4e38, size).astype(np.float32)  # large: products with 0 stay 0
    x[:: max(1, size // 5)] = np.float32(1e-45)  # subnormals
    assert not nonfinite(x)
    places = (
        range(size)
        if size <= 300
        else sorted({*range(40), *range(size - 40, size), *rng.integers(0, size, 60)})
    )
    for i in places:
        for bad in (np.nan, np.inf, -np.inf):
            y = x.copy()
            y[i] = bad
            assert nonfinite(y), (i, bad)


def test_nonfinite_float16_and_all_bad() -> None:
    assert nonfinite(np.array([1.0, np.inf], np.float16))
    assert not nonfinite(np.array([1.0, 65504.0], np.float16))
    assert nonfinite(np.full(64, np.nan, np.float32)) and nonfinite(np.array([np.inf, -np.inf], np.float32))


def test_nonfinite_gives_no_numpy_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert nonfinite(np.array([0.0, np.inf, 1.0], np.float32))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("rows", [1, 32, 200])
def test_prepared_float32_arrays_with_nan_or_infinity_are_refused(
    engine: Engine, bad: float, rows: int
) -> None:
    x = np.tile(np.array(GOOD, np.float32), (rows, 1))
    x[rows // 2, 3] = bad
    with pytest.raises(InvalidInput, match="NaN or infinity"):
        engine.predict("iris", {"float_input": x})
    x[rows // 2, 3] = 0.2
    assert len(engine.predict("iris", {"float_input": x}).results) == rows


def test_one_input_fast_path_refuses_what_the_full_check_refuses(engine: Engine) -> None:
    good = np.array(GOOD, np.float32)
    assert engine.predict("iris", {"float_input": good}).results[0]["label"] == "setosa"
    with pytest.raises(InvalidInput, match="empty batch"):
        engine.predict("iris", {"float_input": good[:0]})
    with pytest.raises(InvalidInput, match="over the limit of 1024"):
        engine.predict("iris", {"float_input": np.zeros((1025, 4), np.float32)})
    with pytest.raises(InvalidInput, match=r"unknown input\(s\) \['x'\]"):
        engine.predict("iris", {"x": good})
    with pytest.raises(InvalidInput, match="expected"):
        engine.predict("iris", {"float_input": np.zeros((1, 5), np.float32)})
    strided = np.zeros((2, 8), np.float32)[:, ::2]  # not contiguous: copied, then accepted
    assert len(engine.predict("iris", {"float_input": strided}).results) == 2
