"""Prediction cache: keys, bounds, LRU order, TTL, restart persistence, shared totals;
and in the gateway's service (real engine, real models): single flight, version
switch, per-model disable."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest

from edge_agent.cache.prediction import (
    Answer,
    PredictionCache,
    decode_answer,
    encode_answer,
    prediction_key,
    tensors_digest,
)
from edge_agent.config import AgentConfig, CacheConfig
from edge_agent.errors import ModelNotReady
from edge_agent.runtime.engine import Engine
from edge_agent.runtime.inputs import validate
from edge_agent.runtime.package import Classification, TensorSpec, read_manifest
from edge_agent.runtime.store import ModelStore
from edge_agent.serving.metrics import Metrics
from edge_agent.serving.service import InferenceService
from edge_agent.storage import Storage
from tests.conftest import MODELS
from tests.helpers import BOOK, EXPECTED, make_package

ROW = [5.1, 3.5, 1.4, 0.2]
T = TypeVar("T")
BOOK_IRIS = [c for c in EXPECTED["cases"] if c["model"] == "iris_svc.onnx"]


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        self.t += 0.001  # every reading is later than the last: a strict LRU order
        return self.t


class Events:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def __call__(self, event: str, n: int) -> None:
        self.counts[event] = self.counts.get(event, 0) + n


def answer(i: int, floats: int = 16) -> Answer:
    return Answer({"scores": np.full((1, floats), i, dtype=np.float32)}, [{"label": str(i), "score": i / 10}])


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "agent.sqlite3"


@pytest.fixture
def make_cache(db: Path) -> Iterator[Callable[..., PredictionCache]]:
    made: list[PredictionCache] = []

    def make(**kw: object) -> PredictionCache:
        settings: dict = {"max_entries": 100, "max_bytes": 1 << 20, "ttl_s": 60.0, "clock": Clock()} | kw
        cache = PredictionCache(Storage(db), **settings)
        made.append(cache)
        return cache

    yield make
    for cache in made:
        cache.close()


def test_json_rows_and_float32_npy_are_one_key() -> None:
    m = read_manifest(MODELS / "iris" / "1")
    as_json = validate(m, {"float_input": [ROW]})  # float64 rows from JSON, coerced
    buf = io.BytesIO()
    np.save(buf, np.asarray([ROW], dtype=np.float32))
    buf.seek(0)
    as_npy = validate(m, {"float_input": np.load(buf)})
    one_sample = validate(m, {"float_input": ROW})  # no batch dimension
    assert tensors_digest(as_json) == tensors_digest(as_npy) == tensors_digest(one_sample)
    other = validate(m, {"float_input": [[5.1, 3.5, 1.4, 0.3]]})
    assert tensors_digest(other) != tensors_digest(as_json)
    d = tensors_digest(as_json)
    assert prediction_key("iris", "1", "f", d) != prediction_key("iris", "2", "f", d)


def test_answer_round_trips_exactly() -> None:
    outputs = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.array([1, 2, 3], dtype=np.int64)}
    results = [{"label": "x", "score": 0.1 + 0.2, "top_k": [{"index": 1}]}]
    got = decode_answer(encode_answer(Answer(outputs, results)) or b"")
    assert got.results == results
    for k, v in outputs.items():
        np.testing.assert_array_equal(got.outputs[k], v)
        assert got.outputs[k].dtype == v.dtype
        assert not got.outputs[k].flags.writeable  # a hit cannot corrupt the cache
    assert encode_answer(Answer({"o": np.array([object()])}, [])) is None


def test_entry_bound_evicts_least_recently_used(make_cache) -> None:
    events = Events()
    cache = make_cache(max_entries=3, on_event=events)
    for k in "abc":
        cache.put(k, "m", "1", answer(ord(k)))
    cache.flush()
    assert cache.get("a") is not None  # a is now more recent than b
    cache.put("d", "m", "1", answer(4))
    cache.flush()
    assert cache.get("b") is None
    assert all(cache.get(k) is not None for k in "acd")
    assert cache.stats().entries == 3
    assert events.counts["eviction"] == 1


def test_byte_bound_evicts_until_it_holds(make_cache) -> None:
    size = len(encode_answer(answer(0, floats=1000)) or b"")
    events = Events()
    cache = make_cache(max_bytes=2 * size + 10, on_event=events)
    for k in "abcd":
        cache.put(k, "m", "1", answer(0, floats=1000))
        cache.flush()
    assert [k for k in "abcd" if cache.get(k) is not None] == ["c", "d"]
    assert cache.stats().bytes == 2 * size
    assert events.counts["eviction"] == 2
    assert not cache.put("huge", "m", "1", answer(0, floats=3000))  # bigger than the whole cache


def test_ttl_expires_entries(make_cache, db: Path) -> None:
    clock, events = Clock(), Events()
    cache = make_cache(ttl_s=10.0, clock=clock, on_event=events)
    cache.put("k", "m", "1", answer(1))
    cache.flush()
    clock.t += 9.0
    assert cache.get("k") is not None
    clock.t += 2.0
    assert cache.get("k") is None
    cache.flush()
    assert events.counts == {"hit": 1, "miss": 1, "expired": 1}
    fresh = make_cache(ttl_s=10.0, clock=clock)  # from disk, not memory: expired there too
    assert fresh.get("k") is None
    assert fresh.stats().entries == 0


def test_entries_survive_a_restart(make_cache, db: Path) -> None:
    cache = make_cache(clock=time.time)
    cache.put("k", "m", "1", answer(7))
    cache.close()
    reopened = PredictionCache(Storage(db), max_entries=100, max_bytes=1 << 20, ttl_s=60.0)
    try:
        assert reopened.stats().memory_entries == 0
        got = reopened.get("k")
        assert got is not None and got.results == [{"label": "7", "score": 0.7}]
        assert reopened.stats().entries == 1
    finally:
        reopened.close()


def test_last_use_is_batched_and_written_before_eviction(make_cache, db: Path) -> None:
    cache = make_cache(max_entries=2)
    cache.put("a", "m", "1", answer(1))
    cache.put("b", "m", "1", answer(2))
    cache.flush()
    before = dict(Storage(db).conn.execute("SELECT key, last_used FROM prediction_cache").fetchall())
    assert cache.get("a") is not None
    after = dict(Storage(db).conn.execute("SELECT key, last_used FROM prediction_cache").fetchall())
    assert after == before  # a hit wrote nothing
    cache.put("c", "m", "1", answer(3))  # the pending last-use of a is written first: b goes
    cache.flush()
    keys = {r[0] for r in Storage(db).conn.execute("SELECT key FROM prediction_cache")}
    assert keys == {"a", "c"}


def test_bounds_hold_across_processes_sharing_the_file(make_cache) -> None:
    one, two = make_cache(max_entries=4), make_cache(max_entries=4)
    for i in range(3):
        one.put(f"one{i}", "m", "1", answer(i))
        one.flush()
        two.put(f"two{i}", "m", "1", answer(i))
        two.flush()
    assert one.stats().entries == two.stats().entries == 4


def test_purge_keeps_only_the_serving_version(make_cache) -> None:
    cache = make_cache()
    cache.put("old", "iris", "1", answer(1))
    cache.put("new", "iris", "2", answer(2))
    cache.put("other", "digits", "1", answer(3))
    cache.purge("iris", keep_version="2")
    cache.flush()
    assert cache.get("old") is None
    assert cache.get("new") is not None and cache.get("other") is not None
    assert cache.stats().entries == 2
    cache.purge()
    cache.flush()
    assert cache.stats().entries == 0


# -- in the gateway's service ------------------------------------------------------------
def add_book_iris_version(root: Path, version: str = "2") -> Path:
    """A second iris version whose answers differ: the book's SVC (same inputs, outputs, labels)."""
    return make_package(
        root,
        "iris",
        version,
        BOOK / "iris_svc.onnx",
        {"float_input": np.array([c["input"] for c in BOOK_IRIS], dtype=np.float32)},
        {
            "output_probability": np.array([c["probabilities"] for c in BOOK_IRIS], dtype=np.float32),
            "output_label": np.array([c["label"] for c in BOOK_IRIS], dtype=np.int64),
        },
        atol=EXPECTED["atol"],
        backend="onnx",
        task="classification",
        inputs=[TensorSpec(name="float_input", dtype="float32", shape=[None, 4])],
        outputs=[
            TensorSpec(name="output_label", dtype="int64", shape=[None]),
            TensorSpec(name="output_probability", dtype="float32", shape=[None, 3], kind="sequence_of_maps"),
        ],
        labels=["setosa", "versicolor", "virginica"],
        postprocessing=Classification(output="output_probability", label_output="output_label"),
    )


@pytest.fixture
def service(make_store, tmp_path: Path) -> Iterator[InferenceService]:
    store: ModelStore = make_store("iris")
    config = AgentConfig(model_dir=store.root, data_dir=tmp_path / "data")
    svc = InferenceService(Engine(store), config, Metrics())
    svc.start()
    yield svc
    svc.close()
    svc.engine.close()


def run(svc: InferenceService, coro: Coroutine[Any, Any, T]) -> T:
    """One event loop per call: batchers belong to a loop, so the service restarts on each."""
    svc.start()
    return asyncio.run(coro)


def _sample(svc: InferenceService, metric: str, labels: dict[str, str]) -> float:
    return svc.metrics.registry.get_sample_value(metric, labels) or 0.0


def test_20_concurrent_identical_requests_compute_once(service: InferenceService) -> None:
    async def fire() -> list:
        return await asyncio.gather(
            *(service.predict("iris", tensors={"float_input": [[6.0, 3.0, 4.8, 1.8]]}) for _ in range(20))
        )

    preds = run(service, fire())
    rows = _sample(service, "edge_batch_size_sum", {"model": "iris"})
    assert rows == 1, "the runtime saw more than one copy of the request"
    assert sorted(p.cache["prediction"] for p in preds) == ["coalesced"] * 19 + ["miss"]
    assert all(p.results == preds[0].results for p in preds)
    assert _sample(service, "edge_cache_events_total", {"cache": "prediction", "event": "coalesced"}) == 19


def test_version_switch_never_serves_the_old_answer(service: InferenceService) -> None:
    async def ask() -> tuple[str, list[float], dict[str, str]]:
        p = await service.predict("iris", tensors={"float_input": [ROW]})
        return p.version, p.results[0]["probabilities"], p.cache

    v1 = run(service, ask())
    assert run(service, ask()) == (v1[0], v1[1], {"prediction": "hit"})
    add_book_iris_version(service.engine.store.root)
    service.engine.activate("iris", "2")
    service.forget("iris")
    version, probs, cache = run(service, ask())
    assert (version, cache) == ("2", {"prediction": "miss"})
    np.testing.assert_allclose(probs, BOOK_IRIS[0]["probabilities"], atol=EXPECTED["atol"])
    assert np.abs(np.subtract(probs, v1[1])).max() > 1e-4  # the versions really answer differently
    assert service.predictions is not None
    service.predictions.flush()
    assert service.predictions.stats().entries == 1  # version 1's answer was purged


def test_unloaded_model_is_not_answered_from_the_cache(service: InferenceService) -> None:
    run(service, service.predict("iris", tensors={"float_input": [ROW]}))
    service.engine.unload("iris")
    with pytest.raises(ModelNotReady):
        run(service, service.predict("iris", tensors={"float_input": [ROW]}))


def test_disabled_model_and_bypass_compute_every_time(make_store, tmp_path: Path) -> None:
    store = make_store("iris")
    config = AgentConfig(
        model_dir=store.root,
        data_dir=tmp_path / "data",
        cache=CacheConfig(prediction_disabled_models=["iris"]),
    )
    svc = InferenceService(Engine(store), config, Metrics())
    try:
        for _ in range(2):
            p = run(svc, svc.predict("iris", tensors={"float_input": [ROW]}))
            assert p.cache == {} and p.timings_ms["infer"] > 0
    finally:
        svc.close()
        svc.engine.close()


def test_bypass_skips_the_lookup(service: InferenceService) -> None:
    for _ in range(2):
        p = run(service, service.predict("iris", tensors={"float_input": [ROW]}, cache=False))
        assert p.cache == {} and "cache_lookup" not in p.timings_ms
