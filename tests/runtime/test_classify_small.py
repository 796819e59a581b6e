"""A small classification answer is computed in plain Python; it must say what numpy's version says:
the same top-k classes in the same order (ties keep class order), probabilities within one float32
rounding step, and the same answer for rows that are not all finite (those go to numpy)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edge_agent.runtime import postprocess
from edge_agent.runtime.package import Classification

LABELS = ["zero", "one", "two"]  # fewer labels than classes: the rest are named by index


def both(scores: np.ndarray, spec: Classification, monkeypatch: pytest.MonkeyPatch) -> tuple[list, list]:  # type: ignore[type-arg]
    small = postprocess.classify({"o": scores}, spec, LABELS)
    with monkeypatch.context() as m:
        m.setattr(postprocess, "SMALL_ROWS", 0)  # numpy's version for every answer
        vectorised = postprocess.classify({"o": scores}, spec, LABELS)
    return small, vectorised


def same(small: list, vectorised: list, ulp_of_one: float = float(np.spacing(np.float32(1.0)))) -> None:  # type: ignore[type-arg]
    assert len(small) == len(vectorised)
    for a, b in zip(small, vectorised, strict=True):
        assert [t["index"] for t in a["top_k"]] == [t["index"] for t in b["top_k"]]
        assert [t["label"] for t in a["top_k"]] == [t["label"] for t in b["top_k"]]
        assert (a["label"], a["index"]) == (b["label"], b["index"])
        # one float32 rounding step of the largest probability (1.0 at most): numpy's exp and sum
        # round in float32, ours in double and once at the end
        assert np.allclose(a["probabilities"], b["probabilities"], rtol=0, atol=ulp_of_one)
        assert all(np.float32(v) == v for v in a["probabilities"])  # float32 values, as numpy's


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("rows", [1, 2, 4])
@pytest.mark.parametrize("classes", [1, 2, 10, 64])
def test_softmax_answers_match_numpy(
    seed: int, rows: int, classes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    scale = [0.1, 1.0, 10.0, 60.0][seed % 4]  # from near-uniform to one class taking everything
    scores = (np.random.default_rng(seed).standard_normal((rows, classes)) * scale).astype(np.float32)
    spec = Classification(output="o", top_k=5, apply_softmax=True)
    small, vectorised = both(scores, spec, monkeypatch)
    same(small, vectorised)
    assert math.isclose(sum(small[0]["probabilities"]), 1.0, abs_tol=1e-5)


def test_ties_keep_class_order_and_scores_without_softmax_are_passed_through(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scores = np.array([[0.25, 0.5, 0.25, 0.5, 0.0]], np.float32)
    spec = Classification(output="o", top_k=4, apply_softmax=False)
    small, vectorised = both(scores, spec, monkeypatch)
    assert small == vectorised  # no arithmetic: exactly equal
    assert [t["index"] for t in small[0]["top_k"]] == [1, 3, 0, 2]
    assert small[0]["top_k"][2]["label"] == "zero" and small[0]["top_k"][1]["label"] == "3"
    logits = np.array([[1.0, 3.0, 3.0, -2.0]], np.float32)
    small, vectorised = both(logits, Classification(output="o", top_k=3, apply_softmax=True), monkeypatch)
    same(small, vectorised)
    assert [t["index"] for t in small[0]["top_k"]] == [1, 2, 0]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_row_that_is_not_finite_gets_numpys_answer(bad: float, monkeypatch: pytest.MonkeyPatch) -> None:
    scores = np.array([[0.5, 1.0, 2.0], [1.0, bad, 0.0]], np.float32)
    spec = Classification(output="o", top_k=2, apply_softmax=True)
    small, vectorised = both(scores, spec, monkeypatch)
    assert repr(small) == repr(vectorised)  # the very same (NaNs included)


def test_large_answers_and_other_shapes_stay_vectorised(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = postprocess._classify_small

    def spy(rows, spec, labels):  # type: ignore[no-untyped-def]
        calls.append(len(rows))
        return real(rows, spec, labels)

    monkeypatch.setattr(postprocess, "_classify_small", spy)
    spec = Classification(output="o", top_k=3, apply_softmax=True)
    postprocess.classify({"o": np.zeros((5, 10), np.float32)}, spec, LABELS)  # over SMALL_ROWS
    postprocess.classify({"o": np.zeros((1, 65), np.float32)}, spec, LABELS)  # over SMALL_CLASSES
    postprocess.classify({"o": np.zeros(3, np.float32)}, spec, LABELS)  # one score per row
    assert calls == []
    postprocess.classify({"o": np.zeros((2, 10), np.float32)}, spec, LABELS)
    assert calls == [2]
