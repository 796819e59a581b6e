"""Bad tensors give a clear InvalidInput naming the problem; good ones are coerced."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.errors import InvalidInput
from edge_agent.runtime.engine import Engine

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


def test_engine_keeps_working_after_bad_input(engine: Engine) -> None:
    for _ in range(3):
        with pytest.raises(InvalidInput):
            engine.predict("iris", {"float_input": [[1.0, 2.0]]})
    assert engine.predict("iris", {"float_input": GOOD}).results[0]["label"] == "setosa"


def test_images_to_tabular_model_is_a_clear_error(engine: Engine) -> None:
    with pytest.raises(InvalidInput, match="takes tensors, not images"):
        engine.predict("iris", images=[b"\x89PNG"])
