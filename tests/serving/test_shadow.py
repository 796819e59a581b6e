"""Shadow evaluation in the real gateway (``edge-agent serve`` as a process): a staged iris version
gets a sampled copy of live requests; callers only ever get the active version's answers.

- iris 2: the same model, labels in the same order: agreement 1.0;
- iris 3: the same model with two labels swapped (it passes its golden self-test, which compares
  output tensors): disagreement on every row whose top-1 is one of the swapped classes;
- the bounds: a queue of 1 and a rate limit count what they drop.
The rows are drawn around the three classes' centres (seeded); the expected disagreement is
computed from the active answers, not hard-coded. Requests bypass the prediction cache (a cache
hit computes nothing, so nothing is mirrored)."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from edge_agent.runtime.package import read_manifest, write_manifest
from edge_agent.runtime.store import ModelStore
from tests.conftest import MODELS
from tests.serving.gateway_proc import Gateway, run_gateway

CENTRES = [[5.0, 3.4, 1.5, 0.2], [5.9, 2.8, 4.3, 1.3], [6.6, 3.0, 5.6, 2.0]]  # setosa, versicolor, virginica
ROWS = (np.repeat(CENTRES, 50, axis=0) + np.random.default_rng(7).normal(0, 0.15, (150, 4))).round(2).tolist()


def stage_copy(model_dir: Path, version: str, *, swap: bool) -> None:
    """iris/<version>: iris/1 with its manifest's version changed (and two labels swapped)."""
    pkg = model_dir / "iris" / version
    shutil.copytree(MODELS / "iris" / "1", pkg, ignore=shutil.ignore_patterns("samples"))
    m = read_manifest(pkg)
    labels = list(m.labels or [])
    if swap:
        labels[1], labels[2] = labels[2], labels[1]
    write_manifest(pkg, m.model_copy(update={"version": version, "labels": labels}))


@pytest.fixture
def device(tmp_path: Path) -> Iterator[tuple[Gateway, ModelStore, Path]]:
    model_dir, data_dir = tmp_path / "models", tmp_path / "data"
    shutil.copytree(MODELS / "iris" / "1", model_dir / "iris" / "1")
    stage_copy(model_dir, "2", swap=False)
    stage_copy(model_dir, "3", swap=True)
    store = ModelStore(model_dir, data_dir / "store-state.json")
    store.set_active("iris", "1")
    env = {"EDGE_SHADOW__SAMPLE": "1.0", "EDGE_SHADOW__MAX_PER_S": "1000", "EDGE_SHADOW__QUEUE": "256"}
    with run_gateway(model_dir, data_dir, env=env) as gw:
        yield gw, store, data_dir / "shadow" / "iris.json"


def ask(gw: Gateway, rows: list[list[float]]) -> list[dict[str, Any]]:
    answers = []
    for row in rows:
        r = httpx.post(
            f"{gw.url}/v1/models/iris/predict",
            json={"data": [row]},
            headers={"Cache-Control": "no-cache"},
            timeout=10,
        )
        assert r.status_code == 200, r.text
        doc = r.json()
        assert doc["version"] == "1"  # the caller's answer comes from the active version alone
        answers.append(doc["results"][0])
    return answers


def figures(path: Path, samples: int, timeout: float = 30.0) -> dict[str, Any]:
    deadline, doc = time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            doc = {}
        if doc.get("samples", 0) + doc.get("dropped", 0) + doc.get("rate_limited", 0) >= samples:
            return doc
        time.sleep(0.1)
    raise AssertionError(f"shadow figures for {samples} samples not written; last: {doc}")


def test_an_identical_candidate_agrees_and_a_label_swap_does_not(
    device: tuple[Gateway, ModelStore, Path],
) -> None:
    gw, store, path = device
    store.set_staged("iris", "2")
    time.sleep(1.5)  # the gateway looks for staged versions every second
    ask(gw, ROWS[:40])
    good = figures(path, 40)
    assert (good["active"], good["candidate"]) == ("1", "2")
    assert good["samples"] == 40 and good["agreement"] == 1.0 and good["max_abs_diff"] == 0.0
    assert good["dropped"] == 0 and good["errors"] == 0
    assert good["active_ms_p50"] > 0 and good["candidate_ms_p50"] > 0

    store.set_staged("iris", "3")
    time.sleep(1.5)
    answers = ask(gw, ROWS)
    bad = figures(path, len(ROWS))
    swapped = sum(a["label"] in ("versicolor", "virginica") for a in answers)
    assert bad["candidate"] == "3" and bad["samples"] == len(ROWS)
    assert bad["agreement"] == pytest.approx(1 - swapped / len(ROWS))  # exact: one row per request
    assert bad["agreement"] < 0.5  # two of three classes disagree
    assert bad["max_abs_diff"] == 0.0  # the tensors are the same; only the labels differ

    store.set_staged("iris", None)  # withdrawn: figures removed
    deadline = time.monotonic() + 10
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not path.exists()


def test_the_shadow_is_bounded_and_counts_what_it_drops(tmp_path: Path) -> None:
    model_dir, data_dir = tmp_path / "models", tmp_path / "data"
    shutil.copytree(MODELS / "iris" / "1", model_dir / "iris" / "1")
    stage_copy(model_dir, "2", swap=False)
    store = ModelStore(model_dir, data_dir / "store-state.json")
    store.set_active("iris", "1")
    store.set_staged("iris", "2")
    env = {"EDGE_SHADOW__SAMPLE": "1.0", "EDGE_SHADOW__MAX_PER_S": "2", "EDGE_SHADOW__QUEUE": "1"}
    with run_gateway(model_dir, data_dir, env=env) as gw:
        time.sleep(1.5)
        ask(gw, ROWS[:60])
        doc = figures(data_dir / "shadow" / "iris.json", 60)
    # 2 per second with a burst of 2: most of 60 quick requests are skipped and counted
    assert doc["rate_limited"] > 0
    assert doc["samples"] + doc["dropped"] + doc["rate_limited"] == 60
    assert doc["samples"] < 30
