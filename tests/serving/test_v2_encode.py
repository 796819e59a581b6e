"""The v2 answer's output tensors: the datatype each numpy dtype is named by, and binary data
always little-endian, whatever the byte order of the array the runtime gave."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest

from edge_agent.runtime.engine import Prediction
from edge_agent.runtime.package import read_manifest
from edge_agent.serving.v2 import V2_TO_NP, _encode_response
from tests.conftest import MODELS

MANIFEST = read_manifest(MODELS / "iris" / "1")


def answer(arr: np.ndarray, binary: bool) -> tuple[dict[str, Any], bytes]:
    """(JSON header, binary data) of the answer with ``arr`` as its one output."""
    pred = Prediction("iris", "1", {"out": arr}, [{}] * len(arr))
    response = _encode_response({"parameters": {"binary_data_output": binary}}, pred, MANIFEST)
    body = bytes(response.body)
    size = int(response.headers.get("inference-header-content-length", len(body)))
    return orjson.loads(body[:size]), body[size:]


@pytest.mark.parametrize("v2_name", sorted(V2_TO_NP))
@pytest.mark.parametrize("order", ["<", ">", "="])
def test_every_dtype_is_named_and_written_little_endian(v2_name: str, order: str) -> None:
    dtype = V2_TO_NP[v2_name]
    dtype = dtype.newbyteorder(order)  # (one-byte types have no byte order: the same dtype)
    values = np.arange(6).reshape(2, 3) % 2 if v2_name == "BOOL" else np.arange(6).reshape(2, 3) * 3 + 1
    arr = values.astype(dtype)
    doc, _ = answer(arr, binary=False)
    (out,) = doc["outputs"]
    assert out["datatype"] == v2_name and out["shape"] == [2, 3]
    assert np.array_equal(np.asarray(out["data"]).reshape(2, 3), values)
    doc, blob = answer(arr, binary=True)
    (out,) = doc["outputs"]
    assert out["datatype"] == v2_name
    assert blob == values.astype(V2_TO_NP[v2_name]).astype(V2_TO_NP[v2_name].newbyteorder("<")).tobytes()


def test_a_dtype_v2_has_no_name_for_is_sent_as_fp32() -> None:
    arr = np.array([[1.5, 2.5]], np.longdouble)
    doc, blob = answer(arr, binary=True)
    (out,) = doc["outputs"]
    assert out["datatype"] == "FP32"
    assert blob == np.array([1.5, 2.5], "<f4").tobytes()


def test_a_strided_output_is_written_in_c_order() -> None:
    arr = np.arange(12, dtype=np.float32).reshape(3, 4).T  # Fortran order view
    _, blob = answer(arr, binary=True)
    assert blob == np.ascontiguousarray(arr).astype("<f4").tobytes()


def test_a_strided_output_is_sent_in_c_order_as_json_too() -> None:
    arr = np.arange(12, dtype=np.float32).reshape(3, 4).T
    doc, _ = answer(arr, binary=False)
    assert doc["outputs"][0]["data"] == np.ascontiguousarray(arr).reshape(-1).tolist()
