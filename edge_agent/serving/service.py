"""The gateway's inference path: engine + dynamic batching + metrics.

Every HTTP flavour (book, v1, v2) ends in ``InferenceService.predict``.
Image decoding runs in the thread pool so the event loop keeps accepting
requests; validation is vectorised and runs inline; the runtime call goes
through the model's batcher (or straight to the pool when batching is off).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from edge_agent.config import AgentConfig
from edge_agent.runtime.batcher import Batcher, QueueTimeout
from edge_agent.runtime.engine import Engine, Prediction
from edge_agent.runtime.inputs import validate
from edge_agent.runtime.package import Batching
from edge_agent.runtime.postprocess import postprocess
from edge_agent.runtime.preprocess import Geometry
from edge_agent.serving.metrics import Metrics


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


class InferenceService:
    def __init__(self, engine: Engine, config: AgentConfig, metrics: Metrics) -> None:
        self.engine = engine
        self.config = config
        self.metrics = metrics
        self._batchers: dict[tuple[str, str], Batcher] = {}
        self.executor = self._new_executor()

    @staticmethod
    def _new_executor() -> ThreadPoolExecutor:
        return ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="infer")

    def start(self) -> None:
        """Called on each application start: batchers belong to one event loop."""
        self._batchers.clear()
        if getattr(self.executor, "_shutdown", False):
            self.executor = self._new_executor()

    def batching(self, name: str, manifest_batching: Batching) -> Batching:
        override = self.config.batching.get(name)
        if override is None:
            return manifest_batching
        return manifest_batching.model_copy(
            update={k: v for k, v in override.model_dump().items() if v is not None}
        )

    def _batcher(self, name: str, version: str) -> Batcher | None:
        key = (name, version)
        if key in self._batchers:
            return self._batchers[key]
        model = self.engine.model(name, version)
        policy = self.batching(name, model.manifest.batching)
        if not policy.enabled:
            return None
        hist = self.metrics.batch_size.labels(name)
        batcher = Batcher(
            run=lambda inputs: self.engine.infer(model, inputs),
            executor=self.executor,
            max_batch_size=policy.max_batch_size,
            max_queue_delay_s=policy.max_queue_delay_ms / 1000.0,
            on_batch=hist.observe,
        )
        self._batchers[key] = batcher
        return batcher

    def forget(self, name: str) -> None:
        """Drop batchers of ``name`` (after activate / rollback / unload)."""
        for key in [k for k in self._batchers if k[0] == name]:
            del self._batchers[key]

    async def predict(
        self,
        name: str,
        version: str | None = None,
        tensors: Mapping[str, Any] | None = None,
        images: Sequence[bytes] | None = None,
        timeout_s: float | None = None,
    ) -> Prediction:
        t0 = time.perf_counter()
        timeout_s = timeout_s or self.config.request_timeout_s
        model = self.engine.model(name, version)
        m = model.manifest
        version = m.version
        geos: Sequence[Geometry | None]
        if images is not None:
            loop = asyncio.get_running_loop()
            inputs, geos = await loop.run_in_executor(self.executor, self.engine.prepare_images, m, images)
        else:
            inputs = validate(m, tensors or {}, self.engine.options.max_rows)
            geos = [None] * next(iter(inputs.values())).shape[0]
        t1 = time.perf_counter()
        batcher = self._batcher(name, version)
        if batcher is None:
            self.metrics.batch_size.labels(name).observe(len(geos))
            loop = asyncio.get_running_loop()
            try:
                outputs = await asyncio.wait_for(
                    loop.run_in_executor(self.executor, self.engine.infer, model, inputs), timeout_s
                )
            except TimeoutError:
                raise QueueTimeout(f"no answer within {timeout_s * 1000:.0f} ms; retry later") from None
            queued = 0.0
        else:
            outputs, queued = await batcher.submit(inputs, max(0.001, timeout_s - (t1 - t0)))
        t2 = time.perf_counter()
        results = postprocess(m, outputs, geos)
        t3 = time.perf_counter()
        timings = {
            "preprocess": _ms(t1 - t0),
            "queue": _ms(queued),
            "infer": _ms(t2 - t1 - queued),
            "postprocess": _ms(t3 - t2),
            "total": _ms(t3 - t0),
        }
        self.metrics.observe_stages(name, timings)
        return Prediction(m.name, version, outputs, results, timings)

    def close(self) -> None:
        self._batchers.clear()
        self.executor.shutdown(wait=False, cancel_futures=True)
