"""Models the project never built, imported with the real ``edge-agent models import`` and then
served by ``/v1``, ``/v2`` and ``edge-agent predict`` with the bare runtime's answer.

* ``dyn``: an ONNX classifier built here, dynamic batch dimension, golden from a JSON sample;
* ``handcrop``: MediaPipe's hand re-crop TFLite (a registry package's file), seeded golden;
* ``yolo``: a YOLO-shaped ONNX detector built here whose output holds known boxes;
* ``digits_byo``: the bundled digits fp32 re-imported from its bare ``.onnx``, image samples.

Then ``models verify`` is clean and, after a restart, every golden self-test passes.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import onnxruntime as ort
import pytest
from ai_edge_litert.interpreter import Interpreter

from tests.conftest import DATA, MODELS, ROOT
from tests.runtime.onnx_builders import constant_yolo, dynamic_classifier
from tests.serving.gateway_proc import Gateway, run_gateway

FP32_ATOL = 1e-5  # same runtime, same kernels, same machine: only thread scheduling could differ
YOLO_SIZE = 64
# Known predictions of the YOLO model, in its 64x64 input pixels: (cx, cy, w, h, score class 0, score class 1)
YOLO_ROWS = [
    (20.0, 30.0, 16.0, 12.0, 0.90, 0.05),  # a "cat" box
    (21.0, 30.0, 16.0, 12.0, 0.80, 0.05),  # same place, same class, lower score: NMS drops it
    (21.0, 31.0, 16.0, 12.0, 0.05, 0.70),  # same place, other class: class-aware NMS keeps it
    (48.0, 40.0, 10.0, 20.0, 0.10, 0.60),  # a "dog" box elsewhere, past the image's bottom edge
    (10.0, 10.0, 8.0, 8.0, 0.30, 0.20),  # below --min-score 0.5: dropped
    (40.0, 20.0, 6.0, 6.0, 0.01, 0.02),
    (5.0, 50.0, 6.0, 6.0, 0.00, 0.01),
    (60.0, 60.0, 4.0, 4.0, 0.02, 0.00),  # 8 anchors > 6 rows: layout auto = yolov8 [1, 4+C, A]
]
IMAGE_W, IMAGE_H = 128, 64  # letterboxed into 64x64: scale 0.5, 16 px of padding above and below


def expected_yolo_boxes() -> list[tuple[str, float, float, float, float, float]]:
    """The kept rows mapped back through the letterbox by hand: x / 0.5, (y - 16) / 0.5, clipped."""
    out = []
    for i in (0, 2, 3):
        cx, cy, w, h, s0, s1 = YOLO_ROWS[i]
        label, score = ("cat", s0) if s0 > s1 else ("dog", s1)
        x0, x1 = (cx - w / 2) / 0.5, (cx + w / 2) / 0.5
        y0, y1 = (cy - h / 2 - 16) / 0.5, (cy + h / 2 - 16) / 0.5
        clip_x, clip_y = (lambda v: min(max(v, 0.0), IMAGE_W)), (lambda v: min(max(v, 0.0), IMAGE_H))
        out.append((label, score, clip_x(x0), clip_y(y0), clip_x(x1), clip_y(y1)))  # clipped to the image
    return sorted(out, key=lambda b: -b[1])


def edge_agent(root: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")}
    cmd = [sys.executable, "-m", "edge_agent.cli", "--model-dir", str(root / "models")]
    cmd += ["--data-dir", str(root / "data"), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=180, check=False)


def _imported(r: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert r.returncode == 0, r.stderr
    text = r.stdout
    return dict(json.loads(text[: text.rindex("}") + 1]))


class Imports:
    def __init__(self, tmp: Path) -> None:
        self.root = tmp / "store"
        self.tmp = tmp
        src = tmp / "src"
        src.mkdir()
        # dyn: built here, dynamic batch, a JSON sample
        self.dyn_path, _, _ = dynamic_classifier(src / "dyn.onnx")
        self.dyn_rows = np.random.default_rng(3).normal(size=(3, 4)).astype(np.float32)
        (src / "rows.json").write_text(json.dumps({"data": self.dyn_rows.tolist()}))
        (src / "abc.txt").write_text("a\nb\nc\n")
        self.manifests: dict[str, dict[str, Any]] = {}
        self.manifests["dyn"] = _imported(
            edge_agent(self.root, "models", "import", self.dyn_path, "--name", "dyn", "--postprocess",
                       "classification", "--labels", src / "abc.txt", "--sample", src / "rows.json")
        )  # fmt: skip
        # handcrop: TFLite from the mediapipe wheel, seeded golden
        self.hand_path = DATA / "mediapipe" / "hand_recrop.tflite"
        self.manifests["handcrop"] = _imported(
            edge_agent(
                self.root, "models", "import", self.hand_path, "--name", "handcrop", "--task", "detection"
            )
        )
        # yolo: [1, 4+2, 6] known predictions
        preds = np.asarray(YOLO_ROWS, dtype=np.float32).T[None]
        self.yolo_path = constant_yolo(src / "yolo.onnx", preds, YOLO_SIZE)
        (src / "pets.txt").write_text("cat\ndog\n")
        self.manifests["yolo"] = _imported(
            edge_agent(self.root, "models", "import", self.yolo_path, "--name", "yolo", "--postprocess", "yolo",
                       "--input-range", "0:1", "--labels", src / "pets.txt", "--min-score", "0.5", "--iou", "0.5")
        )  # fmt: skip
        # digits re-imported from the bare .onnx, golden from two sample images
        samples = MODELS / "digits" / "1" / "samples"
        (src / "digits.txt").write_text("\n".join(str(i) for i in range(10)) + "\n")
        self.digits_path = MODELS / "digits" / "1" / "digits.onnx"
        self.manifests["digits_byo"] = _imported(
            edge_agent(self.root, "models", "import", self.digits_path, "--name", "digits_byo", "--postprocess",
                       "classification", "--input-range", "0:1", "--labels", src / "digits.txt",
                       "--sample", samples / "digit_0.png", samples / "digit_2.png", "--activate")
        )  # fmt: skip
        rng = np.random.default_rng(11)
        self.image = rng.integers(0, 256, size=(IMAGE_H, IMAGE_W, 3), dtype=np.uint8)
        ok, png = cv2.imencode(".png", self.image)
        assert ok
        self.png = png.tobytes()
        (src / "noise.png").write_bytes(self.png)
        self.hand_x = rng.random((1, 256, 256, 3), dtype=np.float32)
        np.save(src / "hand.npy", self.hand_x)
        heldout = np.load(DATA / "digits_heldout.npz")
        self.digits_x = (heldout["images"][:40].astype(np.float32) / 16.0)[:, None]
        np.save(src / "digits.npy", self.digits_x)
        self.src = src


@pytest.fixture(scope="module")
def imports(tmp_path_factory: pytest.TempPathFactory) -> Imports:
    return Imports(tmp_path_factory.mktemp("import"))


@pytest.fixture(scope="module")
def gateway(imports: Imports) -> Iterator[Gateway]:
    with run_gateway(imports.root / "models", imports.root / "data") as gw:
        yield gw


def bare_onnx(path: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {sess.get_inputs()[0].name: x}), strict=True))


def bare_tflite(path: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    return {d["name"]: np.array(it.get_tensor(d["index"])) for d in it.get_output_details()}


def npy(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x)
    return buf.getvalue()


def v1(gw: Gateway, name: str, **kw: Any) -> dict[str, Any]:
    r = httpx.post(f"{gw.url}/v1/models/{name}/predict", params={"raw": "true"}, timeout=60, **kw)
    assert r.status_code == 200, r.text
    return dict(r.json())


def v2(gw: Gateway, name: str, inputs: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    r = httpx.post(f"{gw.url}/v2/models/{name}/infer", json={"inputs": inputs}, timeout=60)
    assert r.status_code == 200, r.text
    return {
        o["name"]: np.asarray(o["data"], dtype=np.float32).reshape(o["shape"]) for o in r.json()["outputs"]
    }


def cli_predict(imports: Imports, name: str, path: Path) -> list[dict[str, Any]]:
    r = edge_agent(imports.root, "predict", name, path, "--json")
    assert r.returncode == 0, r.stderr
    return list(json.loads(r.stdout)["results"])


# -- what the importer wrote ------------------------------------------------------------------
def test_manifests_made_from_the_files(imports: Imports) -> None:
    dyn = imports.manifests["dyn"]
    assert dyn["backend"] == "onnx" and dyn["inputs"][0]["shape"] == [None, 4]
    assert dyn["batching"]["enabled"] is True  # every input and output has a dynamic first dim
    assert dyn["postprocessing"]["apply_softmax"] is False  # rows already sum to 1
    assert "rows.json" in dyn["golden"]["origin"]
    hand = imports.manifests["handcrop"]
    assert hand["backend"] == "litert" and hand["inputs"][0]["shape"] == [1, 256, 256, 3]
    assert hand["batching"]["enabled"] is False  # a TFLite batch of 1 is not a dynamic batch
    assert hand["golden"]["origin"].startswith("seeded inputs")
    assert "fp32" in hand["golden"]["tolerance_reason"]
    yolo = imports.manifests["yolo"]
    assert yolo["postprocessing"]["type"] == "yolo" and yolo["preprocessing"]["layout"] == "NCHW"
    assert yolo["preprocessing"]["resize"]["mode"] == "letterbox"
    digits = imports.manifests["digits_byo"]
    assert digits["preprocessing"]["color"] == "gray" and digits["labels"][3] == "3"


# -- served with the bare runtime's answer ------------------------------------------------------
def test_dyn_onnx(imports: Imports, gateway: Gateway) -> None:
    want = bare_onnx(imports.dyn_path, imports.dyn_rows)["probs"]
    body = v1(gateway, "dyn", json={"data": imports.dyn_rows.tolist()})
    np.testing.assert_allclose(np.asarray(body["outputs"]["probs"]), want, atol=FP32_ATOL)
    assert [r["label"] for r in body["results"]] == ["abc"[i] for i in want.argmax(1)]
    got = v2(
        gateway,
        "dyn",
        [{"name": "x", "datatype": "FP32", "shape": [3, 4], "data": imports.dyn_rows.ravel().tolist()}],
    )
    np.testing.assert_allclose(got["probs"], want, atol=FP32_ATOL)
    rows = cli_predict(imports, "dyn", imports.src / "rows.json")
    np.testing.assert_allclose([r["probabilities"] for r in rows], want, atol=FP32_ATOL)


def test_tflite_from_the_mediapipe_wheel(imports: Imports, gateway: Gateway) -> None:
    want = bare_tflite(imports.hand_path, imports.hand_x)["output_crop"]
    body = v1(gateway, "handcrop", content=npy(imports.hand_x), headers={"content-type": "application/x-npy"})
    np.testing.assert_allclose(np.asarray(body["outputs"]["output_crop"]), want, atol=FP32_ATOL)
    got = v2(
        gateway,
        "handcrop",
        [
            {
                "name": "input_1",
                "datatype": "FP32",
                "shape": [1, 256, 256, 3],
                "data": imports.hand_x.ravel().tolist(),
            }
        ],
    )
    np.testing.assert_allclose(got["output_crop"], want, atol=FP32_ATOL)
    rows = cli_predict(imports, "handcrop", imports.src / "hand.npy")
    np.testing.assert_allclose(np.asarray(rows[0]["output_crop"]), want[0], atol=FP32_ATOL)


def _boxes(rows: list[dict[str, Any]]) -> list[tuple[str, float, float, float, float, float]]:
    return [(b["label"], b["score"], b["xmin"], b["ymin"], b["xmax"], b["ymax"]) for b in rows[0]["boxes"]]


def test_yolo_detector_decodes_known_boxes(imports: Imports, gateway: Gateway) -> None:
    want = expected_yolo_boxes()
    body = v1(gateway, "yolo", content=imports.png, headers={"content-type": "image/png"})
    got = _boxes(body["results"])
    assert [g[0] for g in got] == [w[0] for w in want]
    np.testing.assert_allclose([g[1:] for g in got], [w[1:] for w in want], atol=0.06)  # rounding to 0.1 px
    x = np.zeros((1, 3, YOLO_SIZE, YOLO_SIZE), np.float32)
    np.testing.assert_allclose(
        np.asarray(body["outputs"]["output0"]), bare_onnx(imports.yolo_path, x)["output0"], atol=FP32_ATOL
    )
    out = v2(
        gateway,
        "yolo",
        [
            {
                "name": "images",
                "datatype": "BYTES",
                "shape": [1],
                "data": [base64.b64encode(imports.png).decode()],
            }
        ],
    )
    np.testing.assert_allclose(out["boxes"][:, 2:6], [w[2:] for w in want], atol=0.06)
    assert out["boxes"][:, 6].tolist() == [0.0 if w[0] == "cat" else 1.0 for w in want]  # class index column
    assert _boxes(cli_predict(imports, "yolo", imports.src / "noise.png")) == got


def test_digits_reimported_from_its_bare_onnx(imports: Imports, gateway: Gateway) -> None:
    want = bare_onnx(imports.digits_path, imports.digits_x)["logits"]
    body = v1(
        gateway, "digits_byo", content=npy(imports.digits_x), headers={"content-type": "application/x-npy"}
    )
    np.testing.assert_allclose(np.asarray(body["outputs"]["logits"]), want, atol=FP32_ATOL)
    assert [r["label"] for r in body["results"]] == [str(i) for i in want.argmax(1)]
    got = v2(
        gateway,
        "digits_byo",
        [
            {
                "name": "input",
                "datatype": "FP32",
                "shape": list(imports.digits_x.shape),
                "data": imports.digits_x.ravel().tolist(),
            }
        ],
    )
    np.testing.assert_allclose(got["logits"], want, atol=FP32_ATOL)
    rows = cli_predict(imports, "digits_byo", imports.src / "digits.npy")
    assert [r["label"] for r in rows] == [str(i) for i in want.argmax(1)]


# -- the store afterwards ----------------------------------------------------------------------
def test_verify_clean_and_selftest_after_restart(imports: Imports, gateway: Gateway) -> None:
    r = edge_agent(imports.root, "models", "verify")
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(line.split()[1] for line in r.stdout.splitlines()) == [
        "digits_byo/1", "dyn/1", "handcrop/1", "yolo/1",
    ]  # fmt: skip
    r = edge_agent(imports.root, "models", "selftest")  # a new process: loads from disk again
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("pass") == 4
    with run_gateway(imports.root / "models", imports.root / "data") as again:  # the server restarted
        for name in imports.manifests:
            d = httpx.get(f"{again.url}/v1/models/{name}", timeout=30).json()
            assert d["load_error"] is None, d
            assert httpx.get(f"{again.url}/v2/models/{name}/ready", timeout=30).status_code == 200
