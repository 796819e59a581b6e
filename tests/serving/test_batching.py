"""Dynamic batching under real concurrency: 500 simultaneous requests with
different inputs each get their own answer (checked against direct runtime
calls), and the runtime really was called with batches larger than one."""

from __future__ import annotations

import asyncio
import re

import httpx
import numpy as np
import onnxruntime as ort

from edge_agent.runtime.package import read_manifest
from tests.conftest import MODELS
from tests.serving.gateway_proc import Gateway

N = 500
# fp32 kernels may sum in another order for another batch size; 1e-4 on
# softmax probabilities is far below any difference that changes a label.
ATOL = 1e-4


def _batch_histogram(text: str, model: str) -> tuple[float, float]:
    count = re.search(rf'edge_batch_size_count{{model="{model}"}} (\S+)', text)
    total = re.search(rf'edge_batch_size_sum{{model="{model}"}} (\S+)', text)
    if count is None or total is None:  # no request for this model yet
        return 0.0, 0.0
    return float(count.group(1)), float(total.group(1))


async def _fire(url: str, bodies: list[dict]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=N, max_keepalive_connections=N)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        return await asyncio.gather(*(client.post(url, json=b) for b in bodies))


def test_500_concurrent_requests_each_get_their_own_answer(gateway: Gateway) -> None:
    rng = np.random.default_rng(7)
    x = rng.random((N, 1, 8, 8), dtype=np.float32)
    before = _batch_histogram(httpx.get(f"{gateway.url}/metrics").text, "digits")
    responses = asyncio.run(
        _fire(f"{gateway.url}/v1/models/digits/predict", [{"data": x[i : i + 1].tolist()} for i in range(N)])
    )
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200][
        :3
    ]
    pkg = MODELS / "digits" / "1"
    sess = ort.InferenceSession(str(pkg / read_manifest(pkg).file), providers=["CPUExecutionProvider"])
    logits = sess.run(["logits"], {"input": x})[0]
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    want = e / e.sum(axis=1, keepdims=True)
    for i, r in enumerate(responses):
        got = r.json()["results"][0]
        assert got["index"] == int(want[i].argmax()), i
        np.testing.assert_allclose(got["probabilities"], want[i], atol=ATOL)
    after = _batch_histogram(httpx.get(f"{gateway.url}/metrics").text, "digits")
    calls, rows = after[0] - before[0], after[1] - before[1]
    assert rows == N
    assert calls < N, "every request ran alone: no batching happened"
    print(f"500 requests -> {calls:.0f} runtime calls, mean batch {rows / calls:.1f}")


def test_batched_iris_rows_match_single_rows(gateway: Gateway) -> None:
    rng = np.random.default_rng(3)
    rows = (rng.random((200, 4)) * [4, 2, 5, 2] + [4, 2, 1, 0.1]).astype(np.float32)
    responses = asyncio.run(
        _fire(f"{gateway.url}/v1/models/iris/predict?raw=true", [{"data": [r.tolist()]} for r in rows])
    )
    sess = ort.InferenceSession(str(MODELS / "iris" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    labels, probs = sess.run(None, {"float_input": rows})
    for i, r in enumerate(responses):
        assert r.status_code == 200
        doc = r.json()
        assert doc["results"][0]["index"] == int(labels[i])
        np.testing.assert_allclose(
            doc["outputs"]["output_probability"][0], [probs[i][k] for k in range(3)], atol=1e-6
        )
