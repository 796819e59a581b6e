"""Every shipped model: golden self-test under its own backend, manifest
figures hold, and the digits variants agree with each other."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_agent.runtime.engine import Engine
from edge_agent.runtime.store import ModelStore
from tests.conftest import DATA, MODELS, bundled_models

DIGITS = ["digits", "digits_int8", "digits_tflite", "digits_tflite_int8"]
HELD = np.load(DATA / "digits_heldout.npz")
X = (HELD["images"].astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
Y = HELD["labels"]


@pytest.fixture(scope="module")
def eng(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    return Engine(ModelStore(MODELS, tmp_path_factory.mktemp("st") / "s.json"))


def test_all_expected_models_are_bundled() -> None:
    assert set(bundled_models()) >= {
        "iris",
        "iris_setosa",
        "iris_versicolor",
        "iris_virginica",
        *DIGITS,
        "face",
    }


@pytest.mark.parametrize("name", bundled_models())
def test_golden_self_test_passes_under_own_backend(name: str, tmp_path: Path) -> None:
    store = ModelStore(MODELS, tmp_path / "s.json")
    store.verify(name)
    model, report = store.load(name, None, Engine(store).options.backend)
    assert report.passed, report.message
    backend = {"onnx": "onnxruntime", "litert": "ai_edge_litert"}[model.manifest.backend]
    assert model.metadata()["runtime"] == backend


def _predict_labels(eng: Engine, name: str) -> np.ndarray:
    pred = eng.predict(name, {"input": X})
    return np.array([r["index"] for r in pred.results])


@pytest.mark.parametrize("name", DIGITS)
def test_heldout_accuracy_matches_manifest(eng: Engine, name: str) -> None:
    acc = float((_predict_labels(eng, name) == Y).mean())
    m = eng.store.manifest(name)
    assert m.metrics is not None and m.metrics.heldout_size == len(Y)
    assert acc == pytest.approx(m.metrics.heldout_accuracy, abs=1 / len(Y))  # one image of slack


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("digits", "digits_int8"),
        ("digits_tflite", "digits_tflite_int8"),
        ("digits", "digits_tflite"),
        ("digits_int8", "digits_tflite_int8"),
    ],
)
def test_digits_variants_agree_on_99_percent(eng: Engine, a: str, b: str) -> None:
    agree = float((_predict_labels(eng, a) == _predict_labels(eng, b)).mean())
    assert agree >= 0.99, f"{a} vs {b}: {agree:.4f}"


def test_int8_within_one_point_of_fp32(eng: Engine) -> None:
    fp32 = float((_predict_labels(eng, "digits") == Y).mean())
    for name in ("digits_int8", "digits_tflite_int8"):
        assert float((_predict_labels(eng, name) == Y).mean()) >= fp32 - 0.01


def test_tflite_int8_is_transparently_quantized(eng: Engine) -> None:
    model = eng.model("digits_tflite_int8")
    meta = model.metadata()
    assert meta["inputs"][0]["dtype"] == "int8" and "quantization" in meta["inputs"][0]
    out = eng.predict("digits_tflite_int8", {"input": X[:5]}).outputs["logits"]
    assert out.dtype == np.float32  # dequantized for the caller


def test_digit_sample_images_classified_through_preprocessing(eng: Engine) -> None:
    samples = sorted((MODELS / "digits_int8" / "1" / "samples").glob("digit_*.png"))
    assert samples
    for name in DIGITS:
        pred = eng.predict(name, images=[p.read_bytes() for p in samples])
        assert [r["label"] for r in pred.results] == [p.stem.split("_")[1] for p in samples]


def test_batch_of_32_equals_rows_one_by_one(eng: Engine) -> None:
    for name in DIGITS:
        batch = eng.predict(name, {"input": X[:32]}).outputs["logits"]
        single = np.concatenate(
            [eng.predict(name, {"input": X[i : i + 1]}).outputs["logits"] for i in range(32)]
        )
        np.testing.assert_allclose(batch, single, atol=1e-4)
