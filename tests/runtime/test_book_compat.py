"""The book's reference iris models give exactly the book's expected outputs
(tolerance 1e-5, as the reference README states: float32 onnxruntime output)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_agent.runtime.engine import Engine
from edge_agent.runtime.store import ModelStore
from tests.helpers import EXPECTED, book_name, make_book_store

ATOL = 1e-5
LABELS = {
    "iris_svc.onnx": ["setosa", "versicolor", "virginica"],
    "iris_svc_0_setosa.onnx": ["setosa", "not setosa"],
    "iris_svc_0_versicolor.onnx": ["versicolor", "not versicolor"],
    "iris_svc_0_virginica.onnx": ["virginica", "not virginica"],
}


def _book_engine(tmp_path: Path) -> Engine:
    root = make_book_store(tmp_path / "store")
    return Engine(ModelStore(root, tmp_path / "state.json"))


@pytest.mark.parametrize("case", EXPECTED["cases"], ids=lambda c: f"{c['model']}-{c['input']}")
def test_one_row_matches_book(tmp_path: Path, case: dict) -> None:
    engine = _book_engine(tmp_path)
    name = book_name(case["model"])
    pred = engine.predict(name, {"float_input": [case["input"]]})
    assert len(pred.results) == 1
    row = pred.results[0]
    assert row["index"] == case["label"]
    assert row["label"] == case["label_name"]
    np.testing.assert_allclose(row["probabilities"], case["probabilities"], atol=ATOL, rtol=0)


def test_batch_of_rows_answers_every_row(tmp_path: Path) -> None:
    engine = _book_engine(tmp_path)
    cases = [c for c in EXPECTED["cases"] if c["model"] == "iris_svc.onnx"]
    pred = engine.predict("book_iris", {"float_input": [c["input"] for c in cases]})
    assert len(pred.results) == len(cases) == 3
    for row, case in zip(pred.results, cases, strict=True):
        assert row["index"] == case["label"]
        np.testing.assert_allclose(row["probabilities"], case["probabilities"], atol=ATOL, rtol=0)
    probs = pred.outputs["output_probability"]
    assert probs.shape == (3, 3) and probs.dtype == np.float32


def test_book_models_pass_self_test_built_from_book_table(tmp_path: Path) -> None:
    engine = _book_engine(tmp_path)
    assert engine.load_all() == {n: None for n in engine.store.names()}


def test_microservice_proxy_winner_is_weak(tmp_path: Path) -> None:
    """The book's proxy rule picks virginica at 0.304 for [1, 2, 3, 4]."""
    engine = _book_engine(tmp_path)
    proxy = EXPECTED["microservice_proxy"]
    scores = {
        cls: engine.predict(f"book_{cls}", {"float_input": [proxy["input"]]}).results[0]["probabilities"][0]
        for cls in ("setosa", "versicolor", "virginica")
    }
    winner = max(scores, key=lambda k: scores[k])
    assert winner == proxy["winner"]
    assert scores[winner] == pytest.approx(proxy["winner_probability"], abs=ATOL)
    assert scores[winner] < 0.5
