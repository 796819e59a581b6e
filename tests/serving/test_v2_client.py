"""An off-the-shelf Open Inference Protocol v2 client (Triton's ``tritonclient``
from PyPI, default settings: binary tensor data) against the real gateway."""

from __future__ import annotations

import numpy as np
import tritonclient.http as triton

from edge_agent.runtime.package import load_golden, read_manifest
from tests.conftest import MODELS
from tests.helpers import EXPECTED
from tests.serving.gateway_proc import Gateway

ASTRONAUT = (MODELS / "face" / "1" / "samples" / "astronaut.png").read_bytes()


def _client(gw: Gateway) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url=f"127.0.0.1:{gw.port}")


def test_health_and_metadata(gateway: Gateway) -> None:
    c = _client(gateway)
    assert c.is_server_live() and c.is_server_ready()
    assert c.is_model_ready("face")
    meta = c.get_model_metadata("face")
    assert meta["platform"] == "tensorflow_lite"
    assert {o["name"] for o in meta["outputs"]} >= {"regressors", "classificators", "boxes"}
    assert "binary_tensor_data" in c.get_server_metadata()["extensions"]


def test_classification_book_iris_binary_default(gateway: Gateway) -> None:
    c = _client(gateway)
    cases = [x for x in EXPECTED["cases"] if x["model"] == "iris_svc.onnx"]
    rows = np.array([x["input"] for x in cases], dtype=np.float32)
    inp = triton.InferInput("float_input", list(rows.shape), "FP32")
    inp.set_data_from_numpy(rows)  # binary_data=True by default
    res = c.infer("book_iris", [inp])
    np.testing.assert_allclose(
        res.as_numpy("output_probability"), [x["probabilities"] for x in cases], atol=EXPECTED["atol"]
    )
    assert res.as_numpy("output_label").tolist() == [x["label"] for x in cases]


def test_classification_extension_digits(gateway: Gateway) -> None:
    c = _client(gateway)
    m = read_manifest(MODELS / "digits_int8" / "1")
    inputs, outputs = load_golden(MODELS / "digits_int8" / "1", m)
    x = inputs["input"]
    inp = triton.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    res = c.infer("digits_int8", [inp], outputs=[triton.InferRequestedOutput("logits", class_count=2)])
    top = res.as_numpy("logits")
    assert top.shape == (x.shape[0], 2)
    want = outputs["logits"].argmax(axis=1)
    got = [int(row[0].decode().split(":")[1]) for row in top]
    assert got == want.tolist()


def test_detection_with_encoded_image_bytes(gateway: Gateway) -> None:
    c = _client(gateway)
    img = np.array([ASTRONAUT], dtype=np.object_)
    inp = triton.InferInput("input", [1], "BYTES")
    inp.set_data_from_numpy(img)
    res = c.infer("face", [inp], outputs=[triton.InferRequestedOutput("boxes")])
    boxes = res.as_numpy("boxes")
    assert boxes.shape == (1, 7)
    _, score, x0, y0, x1, y1, _ = boxes[0].tolist()
    assert score > 0.85
    assert abs(x0 - 179) < 10 and abs(y0 - 82) < 10 and abs(x1 - 271) < 10 and abs(y1 - 175) < 10


def test_json_mode_client_also_works(gateway: Gateway) -> None:
    c = _client(gateway)
    rows = np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32)
    inp = triton.InferInput("float_input", [1, 4], "FP32")
    inp.set_data_from_numpy(rows, binary_data=False)
    out = triton.InferRequestedOutput("output_probability", binary_data=False)
    res = c.infer("book_iris", [inp], outputs=[out])
    np.testing.assert_allclose(
        res.as_numpy("output_probability")[0], EXPECTED["cases"][0]["probabilities"], atol=EXPECTED["atol"]
    )
