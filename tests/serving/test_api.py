"""The gateway over real HTTP: the book's models give the book's answers through
/predict, /v1 and /v2; bad requests get clear 4xx answers."""

from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
import pytest

from tests.conftest import MODELS
from tests.helpers import EXPECTED
from tests.runtime.test_images import png_header_only
from tests.serving.gateway_proc import Gateway

ATOL = EXPECTED["atol"]
IRIS_CASES = [c for c in EXPECTED["cases"] if c["model"] == "iris_svc.onnx"]
ASTRONAUT = (MODELS / "face" / "1" / "samples" / "astronaut.png").read_bytes()


def test_book_endpoints(gateway: Gateway) -> None:
    base = gateway.url
    assert httpx.get(f"{base}/health").json() == {"health": "ok"}
    assert httpx.get(f"{base}/label").json() == {"0": "setosa", "1": "versicolor", "2": "virginica"}
    meta = httpx.get(f"{base}/metadata").json()
    assert meta["data_structure"] == "(1,4)" and meta["prediction_structure"] == "(1,3)"
    test = httpx.get(f"{base}/predict/test").json()
    np.testing.assert_allclose(test["prediction"], IRIS_CASES[0]["probabilities"], atol=ATOL)
    one = httpx.post(f"{base}/predict", json={"data": [IRIS_CASES[0]["input"]]}).json()
    np.testing.assert_allclose(one["prediction"], IRIS_CASES[0]["probabilities"], atol=ATOL)
    many = httpx.post(f"{base}/predict", json={"data": [c["input"] for c in IRIS_CASES]}).json()
    assert len(many["prediction"]) == 3  # every row answered, unlike the book
    for got, case in zip(many["prediction"], IRIS_CASES, strict=True):
        np.testing.assert_allclose(got, case["probabilities"], atol=ATOL)
    labels = httpx.post(f"{base}/predict/label", json={"data": [c["input"] for c in IRIS_CASES]}).json()
    assert labels["prediction"] == [{"label": c["label_name"]} for c in IRIS_CASES]


@pytest.mark.parametrize("case", EXPECTED["cases"], ids=lambda c: c["model"])
def test_v1_matches_book(gateway: Gateway, case: dict) -> None:
    from tests.helpers import book_name

    r = httpx.post(
        f"{gateway.url}/v1/models/{book_name(case['model'])}/predict", json={"data": [case["input"]]}
    )
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["version"] == "1" and set(doc["timings_ms"]) >= {"queue", "preprocess", "infer", "postprocess"}
    assert doc["results"][0]["index"] == case["label"]
    np.testing.assert_allclose(doc["results"][0]["probabilities"], case["probabilities"], atol=ATOL)


def test_v2_json_matches_book(gateway: Gateway) -> None:
    rows = [c["input"] for c in IRIS_CASES]
    body = {"inputs": [{"name": "float_input", "shape": [3, 4], "datatype": "FP32", "data": rows}]}
    r = httpx.post(f"{gateway.url}/v2/models/book_iris/infer", json=body)
    assert r.status_code == 200, r.text
    outs = {o["name"]: o for o in r.json()["outputs"]}
    probs = np.array(outs["output_probability"]["data"]).reshape(outs["output_probability"]["shape"])
    np.testing.assert_allclose(probs, [c["probabilities"] for c in IRIS_CASES], atol=ATOL)
    assert outs["output_label"]["data"] == [c["label"] for c in IRIS_CASES]


def test_v1_npy_and_image_inputs(gateway: Gateway) -> None:
    buf = io.BytesIO()
    np.save(buf, np.array([c["input"] for c in IRIS_CASES], dtype=np.float32))
    r = httpx.post(
        f"{gateway.url}/v1/models/book_iris/predict",
        content=buf.getvalue(),
        headers={"content-type": "application/x-npy"},
    )
    assert [row["index"] for row in r.json()["results"]] == [c["label"] for c in IRIS_CASES]
    for kwargs in (
        {"content": ASTRONAUT, "headers": {"content-type": "image/png"}},
        {"files": {"file": ("a.png", ASTRONAUT, "image/png")}},
        {"json": {"images": [base64.b64encode(ASTRONAUT).decode()]}},
    ):
        r = httpx.post(f"{gateway.url}/v1/models/face/predict", **kwargs)  # type: ignore[arg-type]
        assert r.status_code == 200, r.text
        boxes = r.json()["results"][0]["boxes"]
        assert len(boxes) == 1 and boxes[0]["score"] > 0.85
        assert abs(boxes[0]["xmin"] - 179) < 10 and abs(boxes[0]["ymax"] - 175) < 10


def test_models_listing_and_description(gateway: Gateway) -> None:
    models = {m["name"]: m for m in httpx.get(f"{gateway.url}/v1/models").json()["models"]}
    assert models["face"]["ready"] and models["face"]["backend"] == "litert"
    d = httpx.get(f"{gateway.url}/v1/models/digits_int8").json()
    assert d["quantization"]["scheme"] == "int8_static_qdq" and d["labels"][3] == "3"


# -- bad input: clear 4xx, never 5xx --------------------------------------------------
@pytest.mark.parametrize(
    ("path", "kwargs", "status", "needle"),
    [
        ("/v1/models/iris/predict", {"json": {"data": [[1, 2, 3]]}}, 422, "expected [N, 4]"),
        (
            "/v1/models/iris/predict",
            {"json": {"data": [["a", "b", "c", "d"]]}},
            422,
            "rectangular array of numbers",
        ),
        ("/v1/models/iris/predict", {"json": {"data": [[1, None, 3, 4]]}}, 422, "rectangular array"),
        (
            "/v1/models/iris/predict",
            {"content": b"{nope", "headers": {"content-type": "application/json"}},
            422,
            "not valid JSON",
        ),
        (
            "/v1/models/iris/predict",
            {"content": b"\x93NUMPYxx", "headers": {"content-type": "application/x-npy"}},
            422,
            "not a valid .npy",
        ),
        (
            "/v1/models/face/predict",
            {"content": ASTRONAUT[: len(ASTRONAUT) // 2], "headers": {"content-type": "image/png"}},
            422,
            "truncated",
        ),
        (
            "/v1/models/face/predict",
            {"content": b"I am text", "headers": {"content-type": "image/jpeg"}},
            422,
            "not an image",
        ),
        (
            "/v1/models/face/predict",
            {"content": png_header_only(30000, 30000), "headers": {"content-type": "image/png"}},
            422,
            "over the limit",
        ),
        ("/v1/models/face/predict", {"json": {"images": ["!!notbase64"]}}, 422, "not valid base64"),
        ("/v1/models/nope/predict", {"json": {"data": [[1, 2, 3, 4]]}}, 404, "no model named 'nope'"),
        ("/v1/models/iris/versions/9/predict", {"json": {"data": [[1, 2, 3, 4]]}}, 404, "no version '9'"),
        (
            "/v2/models/iris/infer",
            {
                "json": {
                    "inputs": [
                        {"name": "float_input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3]}
                    ]
                }
            },
            422,
            "holds 4 elements",
        ),
        (
            "/v2/models/iris/infer",
            {
                "json": {
                    "inputs": [
                        {"name": "float_input", "shape": [1, 4], "datatype": "FP64X", "data": [1, 2, 3, 4]}
                    ]
                }
            },
            422,
            "unknown datatype",
        ),
        (
            "/v2/models/iris/infer",
            {
                "json": {
                    "inputs": [
                        {"name": "float_input", "shape": [1, 4], "datatype": "INT8", "data": [1, 2, 3, 999]}
                    ]
                }
            },
            422,
            "INT8 data must lie in [-128, 127]",
        ),
        (
            "/v2/models/iris/infer",
            {
                "json": {
                    "inputs": [
                        {"name": "float_input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}
                    ],
                    "outputs": [{"name": "x"}],
                }
            },
            422,
            "unknown output 'x'",
        ),
        (
            "/v2/models/iris/infer",
            {"content": b'{"inputs": []}xx', "headers": {"Inference-Header-Content-Length": "999"}},
            422,
            "outside the body",
        ),
    ],
)
def test_bad_requests_get_clear_4xx(
    gateway: Gateway, path: str, kwargs: dict, status: int, needle: str
) -> None:
    r = httpx.post(gateway.url + path, **kwargs)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]


def test_body_over_limit_is_refused_before_reading(gateway: Gateway) -> None:
    big = b"0" * (10 * 1024 * 1024 + 1)
    r = httpx.post(
        f"{gateway.url}/v1/models/iris/predict", content=big, headers={"content-type": "application/json"}
    )
    assert r.status_code == 413 and "over the limit" in r.json()["error"]

    def chunks():  # no Content-Length: counted while streaming
        for _ in range(11):
            yield b"1" * (1024 * 1024)

    r = httpx.post(
        f"{gateway.url}/v1/models/iris/predict",
        content=chunks(),
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 413


def test_unload_gives_503_then_load_restores(gateway: Gateway) -> None:
    url = gateway.url
    assert httpx.post(f"{url}/v2/repository/models/iris_setosa/unload").status_code == 200
    r = httpx.post(f"{url}/v1/models/iris_setosa/predict", json={"data": [[1, 2, 3, 4]]})
    assert r.status_code == 503 and "unloaded" in r.json()["error"]
    assert httpx.get(f"{url}/v2/models/iris_setosa/ready").status_code == 400
    index = httpx.post(f"{url}/v2/repository/index").json()
    assert {"name": "iris_setosa", "version": "1", "state": "UNAVAILABLE"}.items() <= next(
        r for r in index if r["name"] == "iris_setosa"
    ).items()
    assert httpx.post(f"{url}/v2/repository/models/iris_setosa/load").status_code == 200
    assert (
        httpx.post(f"{url}/v1/models/iris_setosa/predict", json={"data": [[1, 2, 3, 4]]}).status_code == 200
    )
    assert httpx.post(f"{url}/v2/repository/models/nope/load").status_code == 404


def test_metrics_exposed(gateway: Gateway) -> None:
    httpx.post(f"{gateway.url}/v1/models/iris/predict", json={"data": [[1, 2, 3, 4]]})
    text = httpx.get(f"{gateway.url}/metrics").text
    for needle in (
        "edge_requests_total{",
        "edge_stage_seconds_bucket{",
        'stage="infer"',
        "edge_batch_size_bucket",
        "edge_models_loaded",
        "process_resident_memory_bytes",
        "edge_request_failures_total{",
    ):
        assert needle in text, needle


def test_error_bodies_are_json_everywhere(gateway: Gateway) -> None:
    r = httpx.get(f"{gateway.url}/no/such/route")
    assert r.status_code == 404 and "error" in r.json()
    r = httpx.post(f"{gateway.url}/v1/models/iris/predict?raw=maybe", json={"data": [[1, 2, 3, 4]]})
    assert r.status_code == 422 and json.loads(r.text)["code"] == "invalid_request"


def _requests_total(gateway: Gateway, model: str, endpoint: str, status: int) -> float:
    text = httpx.get(f"{gateway.url}/metrics").text
    line = f'edge_requests_total{{endpoint="{endpoint}",model="{model}",status="{status}"}} '
    return next((float(x[len(line) :]) for x in text.splitlines() if x.startswith(line)), 0.0)


def test_hot_routes_are_counted_like_routed_ones(gateway: Gateway) -> None:
    """The fast path (serving/fastpath.py) counts what it answers with the middleware's labels."""
    v1 = "/v1/models/{name}/predict"
    ok0, missing0 = _requests_total(gateway, "iris", v1, 200), _requests_total(gateway, "nope", v1, 404)
    assert (
        httpx.post(f"{gateway.url}/v1/models/iris/predict", json={"data": [[1, 2, 3, 4]]}).status_code == 200
    )
    assert (
        httpx.post(f"{gateway.url}/v1/models/nope/predict", json={"data": [[1, 2, 3, 4]]}).status_code == 404
    )
    assert _requests_total(gateway, "iris", v1, 200) == ok0 + 1
    assert _requests_total(gateway, "nope", v1, 404) == missing0 + 1
