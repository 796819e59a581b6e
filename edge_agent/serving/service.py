"""The gateway's inference path: caches + engine + dynamic batching + metrics.

Every HTTP flavour (book, v1, v2, data items) ends in ``InferenceService.predict``
(or ``predict_data``). A request goes:

    validate (tensors) -> prediction cache: a hit answers at once
    -> single flight: an identical request already running is waited for, not repeated
    -> prepare: decode + preprocess in the thread pool (images), or the data cache (items)
    -> the model's batcher (or straight to the pool when batching is off)
    -> postprocess -> remembered in the prediction cache

The prediction-cache key holds the version actually serving, so after an
activation or rollback the old version's answers never match (``forget``
purges them too). The answer says what the caches did in ``cache`` (e.g.
``{"prediction": "miss", "data": "hit"}``) and ``timings_ms["cache_lookup"]``.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.bootstrap import open_storage
from edge_agent.cache.data import DataCache
from edge_agent.cache.prediction import (
    Answer,
    PredictionCache,
    fingerprint,
    image_hash,
    images_digest,
    prediction_key,
    tensors_digest,
)
from edge_agent.config import AgentConfig
from edge_agent.errors import EdgeAgentError, InvalidInput
from edge_agent.runtime.backends import LoadedModel
from edge_agent.runtime.batcher import Batcher, QueueTimeout, RunCost
from edge_agent.runtime.engine import Engine, Prediction
from edge_agent.runtime.package import Batching, Manifest
from edge_agent.runtime.postprocess import postprocess
from edge_agent.runtime.preprocess import Geometry
from edge_agent.serving.drift_monitor import DriftMonitor
from edge_agent.serving.metrics import Metrics
from edge_agent.serving.shadow import ShadowEvaluator
from edge_agent.serving.turn_gather import TurnGather
from edge_agent.storage import Storage

Tensors = dict[str, np.ndarray]
Geometries = Sequence[Geometry | None]
HASH_INLINE_BYTES = 256 * 1024  # larger image bodies are hashed in the thread pool
HEX = frozenset("0123456789abcdef")


class PredictionNotCached(EdgeAgentError):
    """A look-up by digest found no cached answer: the client should send the input."""

    status = 404
    code = "prediction_not_cached"


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


@dataclass(slots=True)
class ServedPrediction(Prediction):
    """A prediction plus what the caches did: ``{"prediction": "hit" | "miss" | "coalesced",
    "data": "hit" | "miss"}`` (a key is absent when that cache was not used)."""

    cache: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Job:
    """One request, validated: tensors, encoded images or a data item id."""

    model: LoadedModel
    t0: float
    deadline: float
    inputs: Tensors | None = None
    images: Sequence[bytes] | None = None
    item: str | None = None
    validate_s: float = 0.0

    def digest(self) -> bytes:
        if self.inputs is not None:
            return tensors_digest(self.inputs)
        if self.images is not None:
            return images_digest([image_hash(b) for b in self.images])
        return images_digest([bytes.fromhex(self.item or "")])

    def hash_inline(self) -> bool:
        return self.images is None or sum(len(b) for b in self.images) <= HASH_INLINE_BYTES


class InferenceService:
    def __init__(
        self, engine: Engine, config: AgentConfig, metrics: Metrics, storage: Storage | None = None
    ) -> None:
        self.engine = engine
        self.config = config
        self.metrics = metrics
        self.storage = storage or open_storage(config)
        self._batchers: dict[tuple[str, str], Batcher | None] = {}  # None: batching off
        self._costs: dict[tuple[str, str], RunCost] = {}  # unbatched models: inline or executor
        self._inflight: dict[str, asyncio.Task[ServedPrediction]] = {}
        self._gather: TurnGather[_Job, ServedPrediction] = TurnGather(self._compute_group)
        self._fingerprints: dict[tuple[str, str], tuple[Manifest, str]] = {}
        self.executor = self._new_executor()
        self.predictions: PredictionCache | None = None
        self.data: DataCache = self._open_caches()
        self.shadow = ShadowEvaluator(engine, config.shadow, Path(config.data_dir) / "shadow")
        self.drift = DriftMonitor(engine.store, Path(config.data_dir) / "drift")

    @staticmethod
    def _new_executor() -> ThreadPoolExecutor:
        return ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="infer")

    def _open_caches(self) -> DataCache:
        c = self.config.cache
        if c.prediction_enabled:
            self.predictions = PredictionCache(
                self.storage,
                max_entries=c.prediction_max_entries,
                max_bytes=c.prediction_max_bytes,
                ttl_s=c.prediction_ttl_s,
                on_event=self._events("prediction"),
            )
        return DataCache(
            self.storage,
            max_bytes=c.data_max_bytes,
            max_pixels=self.config.max_image_pixels,
            on_event=self._events("data"),
            background=self.executor,
        )

    def _events(self, cache: str) -> Callable[[str, int], None]:
        def count(event: str, n: int) -> None:
            self.metrics.cache.labels(cache, event).inc(n)

        return count

    def start(self) -> None:
        """Called on each application start: batchers and in-flight tasks belong to one event loop."""
        self._batchers.clear()
        self._costs.clear()
        self._inflight.clear()
        self._gather.clear()
        if getattr(self.executor, "_shutdown", False):
            self.executor = self._new_executor()
            self.data = self._open_caches()

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
            self._batchers[key] = None
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
        """After activate / rollback / load / unload: drop batchers, purge other versions' answers."""
        for key in [k for k in self._batchers if k[0] == name]:
            del self._batchers[key]
        for key in [k for k in self._costs if k[0] == name]:
            del self._costs[key]
        active = self.engine.active_version(name)
        if self.predictions is not None and active is not None:
            self.predictions.purge(name, keep_version=active)

    def caching(self, name: str) -> bool:
        """Whether answers of model ``name`` go through the prediction cache."""
        return self.predictions is not None and name not in self.config.cache.prediction_disabled_models

    # -- entry points ------------------------------------------------------------------
    async def predict(
        self,
        name: str,
        version: str | None = None,
        tensors: Mapping[str, Any] | None = None,
        images: Sequence[bytes] | None = None,
        timeout_s: float | None = None,
        *,
        cache: bool = True,
    ) -> ServedPrediction:
        """Tensors or encoded images -> answer; ``cache=False`` bypasses the prediction cache."""
        t0 = time.perf_counter()
        deadline = t0 + (timeout_s or self.config.request_timeout_s)
        model = self.engine.model(name, version)
        if images is not None:
            job = _Job(model, t0, deadline, images=images)
        else:
            inputs = self.engine.validate(model, tensors or {})
            job = _Job(model, t0, deadline, inputs=inputs, validate_s=time.perf_counter() - t0)
        return await self._serve(job, cache)

    async def predict_data(
        self,
        name: str,
        item_id: str,
        version: str | None = None,
        timeout_s: float | None = None,
        *,
        cache: bool = True,
    ) -> ServedPrediction:
        """Predict on a registered data item; its preprocessed tensor comes from the data cache."""
        t0 = time.perf_counter()
        deadline = t0 + (timeout_s or self.config.request_timeout_s)
        model = self.engine.model(name, version)
        if model.manifest.preprocessing is None:
            raise InvalidInput(f"{name} takes tensors, not images: data items are images")
        self.data.require(item_id)
        return await self._serve(_Job(model, t0, deadline, item=item_id), cache)

    def cached_by_digest(self, name: str, sha256_hex: str) -> ServedPrediction:
        """The cached answer of the active version of image model ``name`` to the image whose
        bytes have this sha256 (a data item's id), without the image; PredictionNotCached if
        there is none (the client then sends the image)."""
        t0 = time.perf_counter()
        model = self.engine.model(name)
        m = model.manifest
        if m.preprocessing is None:
            raise InvalidInput(
                f"{name} takes tensors: answers are looked up by digest for image models only "
                "(the digest is the sha256 of the encoded image)"
            )
        if len(sha256_hex) != 64 or not all(c in HEX for c in sha256_hex):
            raise InvalidInput("the digest must be the sha256 of the image bytes: 64 lowercase hex digits")
        answer = None
        if self.predictions is not None and self.caching(name):
            digest = images_digest([bytes.fromhex(sha256_hex)])
            answer = self.predictions.get(prediction_key(m.name, m.version, self._fingerprint(m), digest))
        if answer is None:
            raise PredictionNotCached(
                f"no cached answer of {m.name}/{m.version} for the image with sha256 {sha256_hex}: "
                f"send the image (POST /v1/models/{name}/predict); its answer is then cached",
                upload=f"/v1/models/{name}/predict",
            )
        return self._hit(_Job(model, t0, t0, item=sha256_hex), answer, t0)

    # -- the prediction cache and single flight ----------------------------------------------
    async def _serve(self, job: _Job, use_cache: bool) -> ServedPrediction:
        m = job.model.manifest
        if not use_cache or self.predictions is None or not self.caching(m.name):
            return await self._compute(job)
        t1 = time.perf_counter()
        if job.hash_inline():
            digest = job.digest()
        else:
            digest = await asyncio.get_running_loop().run_in_executor(self.executor, job.digest)
        key = prediction_key(m.name, m.version, self._fingerprint(m), digest)
        task = self._inflight.get(key)
        leader = task is None
        if task is None:
            answer = self.predictions.get(key)
            if answer is not None:
                return self._hit(job, answer, t1)
            task = asyncio.get_running_loop().create_task(self._compute_and_remember(job, key))
            self._inflight[key] = task
            task.add_done_callback(functools.partial(self._landed, key))
        else:
            self.metrics.cache.labels("prediction", "coalesced").inc()
        t2 = time.perf_counter()
        self.metrics.stage.labels(m.name, "cache_lookup").observe(t2 - t1)
        try:
            pred = await asyncio.wait_for(asyncio.shield(task), max(0.001, job.deadline - t2))
        except TimeoutError:
            raise QueueTimeout(
                f"no answer within {(job.deadline - job.t0) * 1000:.0f} ms; retry later"
            ) from None
        if leader:
            pred.timings_ms["cache_lookup"] = _ms(t2 - t1)
            pred.cache["prediction"] = "miss"
            return pred
        t3 = time.perf_counter()
        timings = {
            "preprocess": _ms(job.validate_s),
            "cache_lookup": _ms(t2 - t1),
            "queue": _ms(t3 - t2),  # waiting for the identical request in flight
            "infer": 0.0,
            "postprocess": 0.0,
            "total": _ms(t3 - job.t0),
        }
        return ServedPrediction(
            pred.model, pred.version, pred.outputs, pred.results, timings, {"prediction": "coalesced"}
        )

    def _hit(self, job: _Job, answer: Answer, t1: float) -> ServedPrediction:
        m = job.model.manifest
        t2 = time.perf_counter()
        self.metrics.stage.labels(m.name, "cache_lookup").observe(t2 - t1)
        timings = {
            "preprocess": _ms(job.validate_s),
            "cache_lookup": _ms(t2 - t1),
            "queue": 0.0,
            "infer": 0.0,
            "postprocess": 0.0,
            "total": _ms(t2 - job.t0),
        }
        return ServedPrediction(
            m.name, m.version, answer.outputs, answer.results, timings, {"prediction": "hit"}
        )

    async def _compute_and_remember(self, job: _Job, key: str) -> ServedPrediction:
        pred = await self._compute(job)
        if self.predictions is not None:
            self.predictions.put(key, pred.model, pred.version, Answer(pred.outputs, pred.results))
        return pred

    def _landed(self, key: str, task: asyncio.Task[ServedPrediction]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved: the waiters got it; no "never retrieved" warning

    def _fingerprint(self, manifest: Manifest) -> str:
        memo = self._fingerprints.get((manifest.name, manifest.version))
        if memo is None or memo[0] is not manifest:
            memo = (manifest, fingerprint(manifest))
            self._fingerprints[(manifest.name, manifest.version)] = memo
        return memo[1]

    # -- computing an answer -----------------------------------------------------------
    async def _compute(self, job: _Job) -> ServedPrediction:
        """Tensors for a model that batches join the other requests of this loop turn (one
        runtime call and one post-processing pass for the group); anything else runs alone."""
        if job.inputs is not None:
            m = job.model.manifest
            batcher = self._batcher(m.name, m.version)
            if batcher is not None:
                inputs = job.inputs
                rows = next(iter(inputs.values())).shape[0]
                key = (m.name, m.version, *((k, v.shape[1:]) for k, v in inputs.items()))
                return await self._gather.submit(key, job, rows, batcher.max_batch_size)
        return await self._compute_one(job)

    async def _compute_group(self, jobs: list[_Job]) -> list[ServedPrediction]:
        """Jobs of one model version with inputs of one signature, computed together; if that fails
        (other than by the deadline), each is computed alone so that one's error stays its own."""
        if len(jobs) == 1:
            return [await self._compute_one(jobs[0])]
        first = jobs[0]
        m = first.model.manifest
        t1 = time.perf_counter()
        sizes = [next(iter(j.inputs.values())).shape[0] for j in jobs if j.inputs is not None]
        names = list(first.inputs or ())
        merged = {k: np.concatenate([j.inputs[k] for j in jobs if j.inputs is not None]) for k in names}
        rows = sum(sizes)
        try:
            outputs, queued = await self._infer(first.model, merged, rows, min(j.deadline for j in jobs) - t1)
            t2 = time.perf_counter()
            results = postprocess(m, outputs, [None] * rows)
        except QueueTimeout:
            raise
        except Exception:
            return [await self._compute_one(j) for j in jobs]
        t3 = time.perf_counter()
        self.drift.observe(m.name, m.version, merged[names[0]], results, [None] * rows)
        answers: list[ServedPrediction] = []
        offset = 0
        for job, n in zip(jobs, sizes, strict=True):
            mine = {k: v[offset : offset + n] for k, v in outputs.items()}
            timings = {
                "preprocess": _ms(job.validate_s),
                "queue": _ms(t1 - job.t0 - job.validate_s + queued),  # the turn, then the batcher
                "infer": _ms(t2 - t1 - queued),
                "postprocess": _ms(t3 - t2),
                "total": _ms(t3 - job.t0),
            }
            self.metrics.observe_stages(m.name, timings)
            self.shadow.offer(
                m.name,
                m.version,
                mine,
                results[offset : offset + n],
                timings["total"] - timings["queue"],
                tensors=job.inputs,
            )
            answers.append(
                ServedPrediction(m.name, m.version, mine, results[offset : offset + n], timings, {})
            )
            offset += n
        return answers

    async def _compute_one(self, job: _Job) -> ServedPrediction:
        m = job.model.manifest
        t1 = time.perf_counter()
        geos: Geometries
        used: dict[str, str]
        if job.inputs is not None:  # tensors: nothing to prepare (no coroutine for it)
            inputs, used = job.inputs, {}
            geos = [None] * next(iter(inputs.values())).shape[0]
        else:
            inputs, geos, used = await self._prepare(job)
        t2 = time.perf_counter()
        outputs, queued = await self._infer(job.model, inputs, len(geos), job.deadline - t2)
        t3 = time.perf_counter()
        results = postprocess(m, outputs, geos)
        t4 = time.perf_counter()
        timings = {
            "preprocess": _ms(job.validate_s + t2 - t1),
            "queue": _ms(queued),
            "infer": _ms(t3 - t2 - queued),
            "postprocess": _ms(t4 - t3),
            "total": _ms(t4 - job.t0),
        }
        self.metrics.observe_stages(m.name, timings)
        if inputs:  # handed to the drift thread (compared there with the package's reference)
            self.drift.observe(m.name, m.version, next(iter(inputs.values())), results, geos)
        if job.item is None:  # a copy for the staged version, if any (data items are not mirrored)
            compute_ms = timings["total"] - timings["queue"]  # what the candidate's figure compares with
            self.shadow.offer(
                m.name, m.version, outputs, results, compute_ms, tensors=job.inputs, images=job.images
            )
        return ServedPrediction(m.name, m.version, outputs, results, timings, used)

    async def _prepare(self, job: _Job) -> tuple[Tensors, Geometries, dict[str, str]]:
        m = job.model.manifest
        if job.inputs is not None:
            return job.inputs, [None] * next(iter(job.inputs.values())).shape[0], {}
        loop = asyncio.get_running_loop()
        if job.images is not None:
            inputs, geos = await loop.run_in_executor(
                self.executor, self.engine.prepare_images, m, job.images
            )
            return inputs, geos, {}
        item, spec = job.item or "", m.preprocessing
        if spec is None:  # checked by predict_data
            raise InvalidInput(f"{m.name} takes tensors, not images")
        found = self.data.cached(item, m)  # a hit is one quick read: no thread hop
        if found is not None:
            return {spec.input: found[0][None]}, [found[1]], {"data": "hit"}
        tensor, geo = await loop.run_in_executor(self.executor, self.data.prepare, item, m)
        return {spec.input: tensor[None]}, [geo], {"data": "miss"}

    async def _infer(
        self, model: LoadedModel, inputs: Tensors, rows: int, remaining_s: float
    ) -> tuple[Tensors, float]:
        m = model.manifest
        batcher = self._batcher(m.name, m.version)
        if batcher is not None:
            return await batcher.submit(inputs, max(0.001, remaining_s))
        self.metrics.batch_size.labels(m.name).observe(rows)
        cost = self._costs.get((m.name, m.version))
        if cost is None:
            cost = self._costs[(m.name, m.version)] = RunCost()
        run = functools.partial(self.engine.infer, model)
        # Only a tiny call runs on the loop here (or a short one when the process has one core):
        # without a batcher, concurrent requests may each use a core of their own in the executor,
        # which running a longer call inline would undo.
        if cost.inline(rows, alone=False, gathered=True):
            return cost.timed(run, inputs, rows), 0.0
        loop = asyncio.get_running_loop()
        timeout_s = max(0.001, remaining_s)
        try:
            outputs = await asyncio.wait_for(
                loop.run_in_executor(self.executor, cost.timed, run, inputs, rows), timeout_s
            )
        except TimeoutError:
            raise QueueTimeout(f"no answer within {timeout_s * 1000:.0f} ms; retry later") from None
        return outputs, 0.0

    # -- caches ------------------------------------------------------------------------
    def cache_stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"prediction": None, "data": {"bytes": self.data.used_bytes()}}
        out["data"]["max_bytes"] = self.data.max_bytes
        if self.predictions is not None:
            s = self.predictions.stats()
            out["prediction"] = {
                "entries": s.entries,
                "bytes": s.bytes,
                "memory_entries": s.memory_entries,
                "memory_bytes": s.memory_bytes,
                "max_entries": self.predictions.max_entries,
                "max_bytes": self.predictions.max_bytes,
                "ttl_s": self.predictions.ttl_s,
                "disabled_models": self.config.cache.prediction_disabled_models,
            }
        return out

    def close(self) -> None:
        self.shadow.close()
        self.drift.close()
        self._batchers.clear()
        self.executor.shutdown(wait=False, cancel_futures=True)
        if self.predictions is not None:
            self.predictions.close()
        self.data.close()
