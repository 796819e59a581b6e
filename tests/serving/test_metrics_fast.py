"""The per-request series (serving/metrics.py ``LoopCounter``, ``LoopHistogram``): the same
exposition as prometheus_client's ``Counter`` and ``Histogram``, bucket edges, recorded by the
event loop thread only, and a real gateway's ``/metrics`` after real requests."""

from __future__ import annotations

import asyncio
import math
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import prometheus_client
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from edge_agent.config import load_config, with_overrides
from edge_agent.serving.app import create_app
from edge_agent.serving.metrics import (
    BATCH_BUCKETS,
    STAGE_BUCKETS,
    STAGES,
    CounterChild,
    HistogramChild,
    LoopCounter,
    LoopHistogram,
    Metrics,
)
from tests.conftest import MODELS, copy_models
from tests.serving.gateway_proc import Gateway

HOT = ("edge_requests", "edge_stage_seconds", "edge_batch_size")
ASTRONAUT = (MODELS / "face" / "1" / "samples" / "astronaut.png").read_bytes()
# on every bound, either side of some, zero, negative, past the last bound, ints, tiny and huge
STAGE_VALUES = [
    *STAGE_BUCKETS,
    *(math.nextafter(b, math.inf) for b in STAGE_BUCKETS[:5]),
    *(math.nextafter(b, 0.0) for b in STAGE_BUCKETS[-3:]),
    0.0,
    -0.5,
    11.0,
    1e300,
    3,
    5e-324,
    0.1 + 0.2,
]
CREATED = re.compile(r"^([a-zA-Z_:]+_created(?:\{.*\})?) \S+$", re.M)


def _masked(text: bytes) -> str:
    """Exposition text with the ``_created`` timestamps (when each series began) blanked."""
    return CREATED.sub(r"\1 <created>", text.decode())


def _families(text: bytes) -> dict[str, tuple[str, str, list[tuple[str, dict[str, str], float]]]]:
    """Parsed families: name -> (help, type, samples), ``_created`` values replaced by 0."""
    return {
        f.name: (
            f.documentation,
            f.type,
            [(s.name, s.labels, 0.0 if s.name.endswith("_created") else s.value) for s in f.samples],
        )
        for f in text_string_to_metric_families(text.decode())
    }


def _series(line: str) -> str:
    """The series a line of the text format is about (``# HELP name ...``, ``name{...} value``)."""
    return line.split(" ")[2] if line.startswith("#") else re.split(r"[{ ]", line)[0]


def _pair() -> tuple[CollectorRegistry, LoopCounter, LoopHistogram, CollectorRegistry, Counter, Histogram]:
    ours, ref = CollectorRegistry(), CollectorRegistry()
    labels = ("model", "endpoint", "status")
    counter = LoopCounter("edge_requests", "Requests.", labels, registry=ours)
    hist = LoopHistogram("edge_stage_seconds", "Time.", ("model", "stage"), STAGE_BUCKETS, registry=ours)
    ref_counter = Counter("edge_requests", "Requests.", labels, registry=ref)
    ref_hist = Histogram(
        "edge_stage_seconds", "Time.", ("model", "stage"), buckets=STAGE_BUCKETS, registry=ref
    )
    return ours, counter, hist, ref, ref_counter, ref_hist


def test_same_text_as_prometheus_client_for_the_same_observations() -> None:
    ours, counter, hist, ref, ref_counter, ref_hist = _pair()
    assert _masked(generate_latest(ours)) == _masked(generate_latest(ref))  # no series yet: HELP, TYPE
    for i, v in enumerate(STAGE_VALUES):
        stage = STAGES[i % len(STAGES)]
        hist.labels("m1", stage).observe(v)
        ref_hist.labels("m1", stage).observe(v)
        if i % 3 == 0:
            hist.labels("m2", "queue").observe(v)
            ref_hist.labels("m2", "queue").observe(v)
    for labels, n in [
        (("m1", "/v1/x", "200"), 5),
        (("m2", "/v2/y", "404"), 1),
        (("", "unmatched", "500"), 2),
    ]:
        for _ in range(n):
            counter.labels(*labels).inc()
            ref_counter.labels(*labels).inc()
    counter.labels("m1", "/v1/x", "200").inc(2.5)
    ref_counter.labels("m1", "/v1/x", "200").inc(2.5)
    text, want = generate_latest(ours), generate_latest(ref)
    assert _masked(text) == _masked(want)
    assert _families(text) == _families(want)
    assert len(CREATED.findall(text.decode())) == len(CREATED.findall(want.decode())) == 3 + 5  # one a series
    assert b'edge_stage_seconds_bucket{le="+Inf",model="m1",stage="queue"}' in text


def test_created_series_follow_prometheus_client_switch() -> None:
    prometheus_client.disable_created_metrics()
    try:
        ours, counter, hist, ref, ref_counter, ref_hist = _pair()
        for c, h in ((counter, hist), (ref_counter, ref_hist)):
            c.labels("m", "/e", "200").inc()
            h.labels("m", "infer").observe(0.003)
        text = generate_latest(ours)
        assert b"_created" not in text and text == generate_latest(ref)
    finally:
        prometheus_client.enable_created_metrics()


def test_a_value_on_a_bound_counts_in_that_bucket() -> None:
    registry = CollectorRegistry()
    hist = LoopHistogram("h", "H.", ("model",), BATCH_BUCKETS, registry=registry)
    child = hist.labels("m")
    for rows in BATCH_BUCKETS:  # 1, 2, 4, ..., 256: each exactly on its bound
        child.observe(rows)
    child.observe(257)
    child.observe(0)
    assert child.counts == [2, 1, 1, 1, 1, 1, 1, 1, 1, 1]  # 0 and 1 in le=1; 257 in +Inf
    bucket = {
        s.labels["le"]: s.value
        for f in text_string_to_metric_families(generate_latest(registry).decode())
        for s in f.samples
        if s.name == "h_bucket"
    }
    assert bucket == {
        "1.0": 2.0,
        "2.0": 3.0,
        "4.0": 4.0,
        "8.0": 5.0,
        "16.0": 6.0,
        "32.0": 7.0,
        "64.0": 8.0,
        "128.0": 9.0,
        "256.0": 10.0,
        "+Inf": 11.0,
    }
    seconds = LoopHistogram("s", "S.", (), STAGE_BUCKETS, registry=registry).labels()
    seconds.observe(0.001)
    seconds.observe(math.nextafter(0.001, 1.0))
    assert seconds.counts[STAGE_BUCKETS.index(0.001)] == 1
    assert seconds.counts[STAGE_BUCKETS.index(0.001) + 1] == 1


def test_metrics_render_as_prometheus_client_did() -> None:
    """The gateway's Metrics against a reference built as metrics.py built it before (prometheus_client
    Counter and Histogram), fed what a few requests record."""
    metrics = Metrics()
    ref = CollectorRegistry()
    requests = Counter(
        "edge_requests",
        "Requests handled, by model, endpoint and HTTP status.",
        ["model", "endpoint", "status"],
        registry=ref,
    )
    stage = Histogram(
        "edge_stage_seconds",
        "Time per request in each stage.",
        ["model", "stage"],
        buckets=STAGE_BUCKETS,
        registry=ref,
    )
    batch = Histogram(
        "edge_batch_size",
        "Rows per runtime call (dynamic batching).",
        ["model"],
        buckets=BATCH_BUCKETS,
        registry=ref,
    )
    timings = [
        {"preprocess": 0.031, "queue": 0.0, "infer": 0.012, "postprocess": 0.008, "total": 0.07},
        {"preprocess": 2.5, "queue": 1.0, "infer": 100.0, "postprocess": 0.25, "total": 104.0},
        {"preprocess": 0.2, "infer": 3.0, "postprocess": 0.1},  # the prep/model services' chain
    ]
    for i, t in enumerate(timings * 3):
        model = ("digits_int8", "face")[i % 2]
        metrics.observe_stages(model, t)
        for s in STAGES:
            if s in t:
                stage.labels(model, s).observe(t[s] / 1000.0)
        metrics.stage.labels(model, "cache_lookup").observe(0.00002 * i)
        stage.labels(model, "cache_lookup").observe(0.00002 * i)
        metrics.batch_size.labels(model).observe(i + 1)
        batch.labels(model).observe(i + 1)
        metrics.requests.labels(model, "/v1/models/{name}/predict", "200").inc()
        requests.labels(model, "/v1/models/{name}/predict", "200").inc()
    ours = {k: v for k, v in _families(metrics.render()).items() if k.startswith(HOT)}
    assert ours == _families(generate_latest(ref))
    lines = [x for x in _masked(metrics.render()).splitlines() if _series(x).startswith(HOT)]
    assert lines == _masked(generate_latest(ref)).splitlines()


def test_label_count_and_negative_increments_are_refused() -> None:
    metrics = Metrics()
    with pytest.raises(ValueError, match="3 label values"):
        metrics.requests.labels("m", "/e")
    with pytest.raises(ValueError, match="2 label values"):
        metrics.stage.labels("m")
    with pytest.raises(ValueError, match="non-negative"):
        metrics.requests.labels("m", "/e", "200").inc(-1)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        LoopCounter("edge_requests", "Again.", ("model",), registry=metrics.registry)
    with pytest.raises(ValueError, match="increasing order"):
        LoopHistogram("h", "H.", (), (1.0, 0.5), registry=metrics.registry)
    with pytest.raises(ValueError, match="below"):
        LoopHistogram("h", "H.", (), (math.inf,), registry=metrics.registry)


# -- who records: the event loop thread, and only it --------------------------------------------


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> Iterator[set[int]]:
    """Thread ids of every call that records a per-request series."""
    threads: set[int] = set()

    def spy(cls: type, name: str) -> None:
        original = getattr(cls, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            threads.add(threading.get_ident())
            return original(*args, **kwargs)

        monkeypatch.setattr(cls, name, wrapper)

    spy(Metrics, "observe_stages")
    spy(HistogramChild, "observe")
    spy(CounterChild, "inc")
    spy(LoopHistogram, "labels")
    spy(LoopCounter, "labels")
    yield threads


def test_only_the_event_loop_thread_records(recorded: set[int], tmp_path: Path) -> None:
    """Tiny inline calls, batches run in the executor, images decoded there, cache hits and
    coalesced requests, v2, errors: the series are recorded without a lock, so all of it must
    happen on the loop's thread (the executor's threads must never record them)."""
    root = copy_models(tmp_path / "models", ["digits_int8", "face"])
    env = {"EDGE_LOG_LEVEL": "WARNING", "EDGE_BATCHING": '{"digits_int8": {"enabled": true}}'}
    app = create_app(with_overrides(load_config(env=env), model_dir=root, data_dir=tmp_path / "data"))
    rng = np.random.default_rng(3)

    async def scenario() -> tuple[int, str]:
        loop_thread = threading.get_ident()
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client,
        ):
            digits = "/v1/models/digits_int8/predict"

            async def tensor(n: int, cache: bool) -> int:
                body = {"data": rng.random((n, 1, 8, 8)).tolist()}
                headers = {} if cache else {"Cache-Control": "no-cache"}
                return (await client.post(digits, json=body, headers=headers)).status_code

            codes = [await tensor(1, False), await tensor(2, True)]
            codes += await asyncio.gather(*(tensor(1 + i % 3, False) for i in range(24)))  # batched
            same = {"data": [[[[0.5] * 8] * 8]]}
            codes += [
                r.status_code
                for r in await asyncio.gather(*(client.post(digits, json=same) for _ in range(6)))
            ]
            png = {"content-type": "image/png"}
            codes += [
                (await client.post("/v1/models/face/predict", content=ASTRONAUT, headers=png)).status_code
                for _ in range(2)
            ]
            v2 = {
                "inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.1] * 64}]
            }
            codes.append((await client.post("/v2/models/digits_int8/infer", json=v2)).status_code)
            codes.append((await client.post("/v1/models/nope/predict", json=same)).status_code)
            codes.append((await client.post(digits, json={"data": [[1.0] * 3]})).status_code)
            assert codes.count(200) == len(codes) - 2, codes
            return loop_thread, (await client.get("/metrics")).text

    loop_thread, text = asyncio.run(scenario())
    assert recorded == {loop_thread}
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    v1 = "/v1/models/{name}/predict"
    ok = samples[("edge_requests_total", (("endpoint", v1), ("model", "digits_int8"), ("status", "200")))]
    assert ok == 2 + 24 + 6
    assert samples[("edge_requests_total", (("endpoint", v1), ("model", "face"), ("status", "200")))] == 2
    calls = samples[("edge_batch_size_count", (("model", "digits_int8"),))]
    assert (
        calls < samples[("edge_stage_seconds_count", (("model", "digits_int8"), ("stage", "infer")))]
    )  # batches
    events = {s[1][1][1] for s in samples if s[0] == "edge_cache_events_total"}
    assert {"hit", "coalesced"} <= events
    assert samples[("edge_requests_total", (("endpoint", v1), ("model", "nope"), ("status", "404")))] == 1


# -- a real gateway process -----------------------------------------------------------------------


def _scrape(gw: Gateway) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{gw.url}/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def test_gateway_metrics_after_real_requests(gateway: Gateway) -> None:
    v1 = "/v1/models/{name}/predict"
    ok = ("edge_requests_total", (("endpoint", v1), ("model", "digits_int8"), ("status", "200")))
    infer = ("edge_stage_seconds_count", (("model", "digits_int8"), ("stage", "infer")))
    rows = ("edge_batch_size_sum", (("model", "digits_int8"),))
    before = _scrape(gateway)
    n = 7
    for i in range(n):
        body = {"data": [[[[i / n] * 8] * 8], [[[0.5] * 8] * 8]]}
        r = httpx.post(
            f"{gateway.url}/v1/models/digits_int8/predict", json=body, headers={"Cache-Control": "no-cache"}
        )
        assert r.status_code == 200, r.text
    after = _scrape(gateway)
    assert after[ok] - before.get(ok, 0.0) == n
    assert after[infer] - before.get(infer, 0.0) == n
    assert after[rows] - before.get(rows, 0.0) == 2 * n
    inf = ("edge_stage_seconds_bucket", (("le", "+Inf"), ("model", "digits_int8"), ("stage", "infer")))
    assert after[inf] == after[infer]
    total = ("edge_stage_seconds_sum", (("model", "digits_int8"), ("stage", "infer")))
    assert 0 < after[total] - before.get(total, 0.0) < n  # seconds: a tiny model, well under 1 s each
