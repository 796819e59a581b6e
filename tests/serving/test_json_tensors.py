"""JSON tensors: one numpy conversion after structural checks; bad data refused clearly.

The decoders are called directly (``/v2``: ``_json_tensor``; ``/v1`` and ``/predict``: the
engine's input checks on the parsed JSON) and through a real gateway process."""

from __future__ import annotations

from math import prod

import httpx
import numpy as np
import pytest

from edge_agent.errors import InvalidInput
from edge_agent.runtime.engine import Engine
from edge_agent.runtime.inputs import MAX_DEPTH
from edge_agent.serving.v2 import _json_tensor
from tests.serving.gateway_proc import Gateway


def deep(levels: int) -> list:
    out: list = [1.0]
    for _ in range(levels - 1):
        out = [out]
    return out


# -- /v2 JSON ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("data", "shape", "dtype", "expected"),
    [
        ([[1, 2], [3, 4]], [2, 2], "FP32", np.array([[1, 2], [3, 4]], np.float32)),
        ([1, 2, 3, 4], [2, 2], "FP32", np.array([[1, 2], [3, 4]], np.float32)),  # flat, row-major
        ([[1, 2, 3, 4]], [4], "INT8", np.array([1, 2, 3, 4], np.int8)),  # nesting differs from shape
        ([True, False], [2], "BOOL", np.array([True, False])),
        ([True, False], [2], "FP32", np.array([1.0, 0.0], np.float32)),  # booleans are 1 / 0, as before
        ([3.0, -2.0], [2], "INT32", np.array([3, -2], np.int32)),  # integral numbers are integers
        ([True, 7], [2], "UINT8", np.array([1, 7], np.uint8)),
        (2.5, [1], "FP64", np.array([2.5])),  # a lone number for one element
        ([], [0, 4], "FP32", np.zeros((0, 4), np.float32)),
    ],
)
def test_v2_json_data_convert_to_the_datatype(
    data: object, shape: list[int], dtype: str, expected: np.ndarray
) -> None:
    got = _json_tensor("x", data, shape, dtype, prod(shape))
    assert got.dtype == expected.dtype and got.shape == tuple(shape)
    np.testing.assert_array_equal(got, expected.reshape(shape))


@pytest.mark.parametrize(
    ("data", "shape", "dtype", "needle"),
    [
        ([[1, 2], [3]], [3], "FP32", r"data nested as \[2, 2\] hold 4"),  # ragged, the count is off
        ([[1, 2], [3, 4, 5]], [4], "FP32", "not a rectangular array"),  # ragged, the count fits
        ([[1, 2], 3, 4], [6], "FP32", "not a rectangular array"),  # numbers and lists at one level
        ([1, "a", 3, 4], [4], "FP32", "rectangular array of numbers"),
        ([1, None, 3, 4], [4], "FP32", "rectangular array of numbers"),
        (["1.5", "2", "3", "4"], [4], "FP32", "rectangular array of numbers"),  # numeric strings: not parsed
        (["1", "2"], [2], "INT32", "rectangular array of numbers"),
        ([1.5, 2.0], [2], "INT32", "whole numbers, not fractions"),  # never truncated to 1
        ([1, 0], [2], "BOOL", "true or false, not numbers"),
        ([0.5, 1.0], [2], "BOOL", "true or false, not numbers"),
        ([-1, 2], [2], "UINT8", r"must lie in \[0, 255\]"),  # never wrapped to 255
        ([1e10], [1], "INT32", r"must lie in \[-2147483648, 2147483647\]"),
        ([{"a": 1}], [1], "FP32", "rectangular array of numbers"),
        ([1, 2, 3, 999], [4], "INT8", r"must lie in \[-128, 127\]"),
        ([1e39], [1], "FP32", "not all FP32 numbers"),
        ([2**70], [1], "INT64", "too large for 64 bits"),
        (deep(MAX_DEPTH + 1), [1] * (MAX_DEPTH + 1), "FP32", f"more than {MAX_DEPTH} levels deep"),
        ([1.0] * 4, [1 << 30, 4], "FP32", r"holds 4294967296 elements, data has 4"),  # huge claim
    ],
)
def test_v2_json_bad_data_are_refused(data: object, shape: list[int], dtype: str, needle: str) -> None:
    with pytest.raises(InvalidInput, match=needle):
        _json_tensor("x", data, shape, dtype, prod(shape))


# -- /v1 and /predict JSON: lists straight into the engine's checks ------------------------------
@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        ([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0]], "rectangular array"),
        ([[1.0, 2.0, 3.0, 4.0], 5.0], "rectangular array"),
        ([[1.0, "x", 3.0, 4.0]], "rectangular array of numbers"),
        ([[1.0, {"a": 1}, 3.0, 4.0]], "rectangular array of numbers"),
        ([[2**70, 1, 1, 1]], "rectangular array of numbers"),
        (deep(MAX_DEPTH + 5), f"more than {MAX_DEPTH} levels deep"),
        (deep(3), r"has shape \[1, 1, 1\], expected \[N, 4\]"),
        ([[1.0, 2.0, 3.0, 4.0]] * 5000, "batch of 5000 rows is over the limit of 1024"),
    ],
)
def test_v1_lists_bad_data_are_refused(engine: Engine, payload: object, needle: str) -> None:
    with pytest.raises(InvalidInput, match=needle):
        engine.predict("iris", {"float_input": payload})


def test_v1_booleans_and_integers_are_numbers(engine: Engine) -> None:
    as_bools = engine.predict("iris", {"float_input": [[True, False, True, False]]})
    as_floats = engine.predict("iris", {"float_input": np.array([[1.0, 0.0, 1.0, 0.0]], np.float32)})
    np.testing.assert_array_equal(
        as_bools.outputs["output_probability"], as_floats.outputs["output_probability"]
    )


# -- over HTTP ------------------------------------------------------------------------------------
def _v2(data: object, shape: list[int], dtype: str = "FP32") -> dict:
    return {"inputs": [{"name": "float_input", "shape": shape, "datatype": dtype, "data": data}]}


@pytest.mark.parametrize(
    ("path", "body", "needle"),
    [
        ("/v2/models/iris/infer", _v2([[1, 2, 3], [4]], [1, 4]), "holds 4 elements"),
        ("/v2/models/iris/infer", _v2([[1, 2], [3, 4, 5, 6]], [1, 4]), "not a rectangular array"),
        ("/v2/models/iris/infer", _v2([[1, "a", 3, 4]], [1, 4]), "rectangular array of numbers"),
        (
            "/v2/models/iris/infer",
            _v2([["5.1", "3.5", "1.4", "0.2"]], [1, 4]),
            "rectangular array of numbers",
        ),
        ("/v2/models/iris/infer", _v2(deep(40), [1] * 40), "levels deep"),
        ("/v1/models/iris/predict", {"data": [[1, 2, 3, 4], [1, 2]]}, "rectangular array"),
        ("/v1/models/iris/predict", {"data": deep(40)}, "levels deep"),
        ("/v1/models/iris/predict", {"data": [[1, 2, 3, 4]] * 2000}, "over the limit of 1024"),
        ("/predict", {"data": [[1, 2, 3, 4], [1, 2, "x", 4]]}, "rectangular array of numbers"),
    ],
)
def test_bad_json_tensors_get_422_over_http(gateway: Gateway, path: str, body: dict, needle: str) -> None:
    r = httpx.post(gateway.url + path, json=body)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/json"
    assert needle in r.json()["error"] and r.json()["code"] == "invalid_input"


def test_nested_and_flat_v2_json_give_the_same_answer(gateway: Gateway) -> None:
    rows = [[5.1, 3.5, 1.4, 0.2], [6.3, 3.3, 6.0, 2.5]]
    flat = [v for row in rows for v in row]
    nested = httpx.post(gateway.url + "/v2/models/iris/infer", json=_v2(rows, [2, 4])).json()
    plain = httpx.post(gateway.url + "/v2/models/iris/infer", json=_v2(flat, [2, 4])).json()
    assert nested["outputs"] == plain["outputs"]
    v1 = httpx.post(gateway.url + "/v1/models/iris/predict", json={"data": rows}).json()
    assert [r["label"] for r in v1["results"]] == ["setosa", "virginica"]
