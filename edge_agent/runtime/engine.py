"""Store + backend + pre/post-processing: ``engine.predict(model, inputs)``.

The engine keeps one loaded instance per (model, version) and knows which
version of each model serves by default. Activation loads and self-tests the
new version first and swaps the pointer only when that passed, so a failed
update leaves the old version serving.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_agent.errors import EdgeAgentError, InvalidInput, ModelNotFound, ModelNotReady
from edge_agent.runtime.backends import BackendOptions, LoadedModel
from edge_agent.runtime.imageio import DEFAULT_MAX_PIXELS
from edge_agent.runtime.inputs import DEFAULT_MAX_ROWS, InputCheck
from edge_agent.runtime.package import Manifest
from edge_agent.runtime.postprocess import postprocess
from edge_agent.runtime.preprocess import Geometry, preprocess
from edge_agent.runtime.store import ModelStore, SelfTestReport, version_key

logger = logging.getLogger(__name__)
FOLLOW_INTERVAL_S = 1.0  # how often a serving engine looks for versions switched by another process


@dataclass(frozen=True, slots=True)
class EngineOptions:
    backend: BackendOptions = field(default_factory=BackendOptions)
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    max_rows: int = DEFAULT_MAX_ROWS


@dataclass(slots=True)
class Prediction:
    model: str
    version: str
    outputs: dict[str, np.ndarray]
    results: list[dict[str, Any]]
    timings_ms: dict[str, float] = field(default_factory=dict)


class Engine:
    def __init__(self, store: ModelStore, options: EngineOptions | None = None) -> None:
        self.store = store
        self.options = options or EngineOptions()
        self._loaded: dict[tuple[str, str], LoadedModel] = {}
        self._active: dict[str, str] = {}
        self.load_errors: dict[str, str] = {}
        self.reports: dict[tuple[str, str], SelfTestReport] = {}
        self._unloaded: set[str] = set()
        self._state_seen = self._state_stamp()
        self._next_follow = 0.0
        self._lock = threading.RLock()
        # name -> the serving model and its input checks, read without the lock; emptied on every
        # change of state
        self._serving: dict[str, tuple[LoadedModel, InputCheck]] = {}
        self._checks: dict[tuple[str, str], InputCheck] = {}

    # -- lifecycle -------------------------------------------------------------
    def load_all(self) -> dict[str, str | None]:
        """Load the active version of every model; name -> None or the error."""
        return {name: self._try_load_active(name) for name in self.store.names()}

    def _try_load_active(self, name: str) -> str | None:
        try:
            self.model(name)
            return None
        except EdgeAgentError as exc:
            return exc.message

    def _load(self, name: str, version: str) -> LoadedModel:
        key = (name, version)
        with self._lock:
            if key not in self._loaded:
                model, report = self.store.load(name, version, self.options.backend)
                self._checks[key] = InputCheck(model.manifest, self.options.max_rows)
                self._loaded[key] = model
                self.reports[key] = report
                logger.info("loaded %s/%s (%s)", name, version, report.message)
            return self._loaded[key]

    def _load_serving(self, name: str) -> str:
        """Load the store's active version; if it fails, the newest earlier one that passes."""
        wanted = self.store.active_version(name)
        candidates = [wanted] + [v for v in reversed(self.store.history(name)) if v != wanted]
        candidates += [
            v for v in sorted(self.store.versions(name), key=version_key, reverse=True) if v not in candidates
        ]
        first_error: EdgeAgentError | None = None
        for v in candidates:
            try:
                self._load(name, v)
            except EdgeAgentError as exc:
                logger.error("cannot serve %s/%s: %s", name, v, exc.message)
                first_error = first_error or exc
                continue
            if v != wanted:
                self.load_errors[name] = f"active version {wanted} refused ({first_error}); serving {v}"
            self._active[name] = v
            return v
        if first_error is None:  # unreachable: active_version raised if there were no versions
            raise ModelNotFound(f"no model named {name!r}", model=name)
        self.load_errors[name] = first_error.message
        raise first_error

    def model(self, name: str, version: str | None = None) -> LoadedModel:
        return self._model_and_check(name, version)[0]

    def _model_and_check(self, name: str, version: str | None) -> tuple[LoadedModel, InputCheck]:
        """The loaded model (default: the serving version) and its prepared input checks."""
        if version is None and time.monotonic() < self._next_follow:
            serving = self._serving.get(name)
            if serving is not None and serving[0].ready:
                return serving
        with self._lock:
            if name in self._unloaded:
                raise ModelNotReady(
                    f"model {name!r} is unloaded; load it again (POST /v2/repository/models/{name}/load)",
                    model=name,
                )
            if version is None:
                now = time.monotonic()
                if now >= self._next_follow:
                    self._next_follow = now + FOLLOW_INTERVAL_S
                    self.follow_store()
                version = self._active.get(name) or self._load_serving(name)
                m = self._load(name, version)
                entry = self._serving[name] = (m, self.input_check(m))
            else:
                self.store.package_dir(name, version)  # 404s for unknown model / version
                m = self._load(name, version)
                entry = (m, self.input_check(m))
        if not m.ready:
            raise ModelNotReady(f"{name}/{version} is not ready", model=name, version=version)
        return entry

    def input_check(self, model: LoadedModel) -> InputCheck:
        """The input checks of a loaded model, prepared when it was loaded."""
        m = model.manifest
        check = self._checks.get((m.name, m.version))
        if check is None or check.manifest is not m:
            check = self._checks[(m.name, m.version)] = InputCheck(m, self.options.max_rows)
        return check

    def validate(self, model: LoadedModel, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Caller tensors -> contiguous arrays of the model's dtypes (InvalidInput naming the problem)."""
        return self.input_check(model)(inputs)

    def active_version(self, name: str) -> str | None:
        return self._active.get(name)

    def _state_stamp(self) -> int | None:
        try:
            return self.store.state_path.stat().st_mtime_ns
        except OSError:
            return None

    def follow_store(self) -> list[str]:
        """Serve what another process activated (an over-the-air update, the CLI).

        Cheap when nothing changed (one stat of the store's state file). A version
        that fails to load or self-test is logged and the current one keeps serving.
        Returns the models switched."""
        with self._lock:
            stamp = self._state_stamp()
            if stamp == self._state_seen:
                return []
            self._serving.clear()
            self._state_seen = stamp
            switched = []
            for name, serving in list(self._active.items()):
                try:
                    wanted = self.store.active_version(name)
                    if wanted == serving:
                        continue
                    self._load(name, wanted)
                except EdgeAgentError as exc:
                    logger.error("not following %s to its new active version: %s", name, exc.message)
                    self.load_errors[name] = exc.message
                    continue
                logger.info("following the store: %s %s -> %s", name, serving, wanted)
                self._active[name] = wanted
                switched.append(name)
            return switched

    def loaded(self) -> list[tuple[str, str]]:
        return sorted(self._loaded)

    def activate(self, name: str, version: str) -> SelfTestReport:
        """Load + self-test ``version``; only then make it the serving version."""
        with self._lock:
            self._serving.clear()
            self._load(name, version)
            self._unloaded.discard(name)
            self.store.set_active(name, version)
            self._active[name] = version
            self.load_errors.pop(name, None)
            return self.reports[(name, version)]

    def check(self, name: str, version: str) -> SelfTestReport:
        """Load + self-test ``version`` without serving it (a staged candidate)."""
        with self._lock:
            self._load(name, version)
            return self.reports[(name, version)]

    def rollback(self, name: str) -> str:
        with self._lock:
            self._serving.clear()
            target = self.store.rollback_target(name)
            self._load(name, target)
            self._unloaded.discard(name)
            self.store.mark_rolled_back(name, target)
            self._active[name] = target
            return target

    def unload(self, name: str) -> None:
        """Drop every loaded version; requests get 503 until ``load``."""
        with self._lock:
            self._serving.clear()
            self.store.active_version(name)  # 404 for an unknown model
            for key in [k for k in self._loaded if k[0] == name]:
                self._loaded.pop(key).close()
            self._active.pop(name, None)
            self._unloaded.add(name)

    def load(self, name: str) -> str:
        """(Re)load the active version of ``name``; returns the version now serving."""
        with self._lock:
            self._serving.clear()
            self._unloaded.discard(name)
            self._active.pop(name, None)
            return self._load_serving(name)

    def is_ready(self, name: str, version: str | None = None) -> bool:
        if name in self._unloaded:
            return False
        version = version or self._active.get(name)
        model = self._loaded.get((name, version)) if version else None
        return model is not None and model.ready

    def close(self) -> None:
        self._serving.clear()
        for key in list(self._loaded):
            self._loaded.pop(key).close()

    # -- inference -------------------------------------------------------------
    def infer(self, model: LoadedModel, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run validated inputs, split into slices the runtime accepts."""
        limit = model.max_batch
        if limit is None:
            return model.infer(inputs)
        n = next(iter(inputs.values())).shape[0]
        if n <= limit:
            return model.infer(inputs)
        parts = [model.infer({k: v[i : i + limit] for k, v in inputs.items()}) for i in range(0, n, limit)]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def prepare_images(
        self, manifest: Manifest, images: Sequence[bytes]
    ) -> tuple[dict[str, np.ndarray], list[Geometry]]:
        spec = manifest.preprocessing
        if spec is None:
            raise InvalidInput(f"{manifest.name} takes tensors, not images (it has no image preprocessing)")
        if len(manifest.inputs) != 1:
            raise InvalidInput(
                f"{manifest.name} has {len(manifest.inputs)} inputs; images feed single-input models"
            )
        if len(images) > self.options.max_rows:
            raise InvalidInput(f"{len(images)} images is over the limit of {self.options.max_rows}")
        tensors, geos = [], []
        for i, data in enumerate(images):
            try:
                t, g = preprocess(data, spec, self.options.max_image_pixels)
            except InvalidInput as exc:
                if len(images) > 1:
                    exc.message = f"image {i}: {exc.message}"
                    exc.args = (exc.message,)
                raise
            tensors.append(t)
            geos.append(g)
        return {spec.input: np.stack(tensors)}, geos

    def predict(
        self,
        name: str,
        inputs: Mapping[str, Any] | None = None,
        *,
        images: Sequence[bytes] | None = None,
        version: str | None = None,
        answers: bool = True,
        timed: bool = True,
    ) -> Prediction:
        """Validate or preprocess, infer, and (``answers=True``) post-process.

        ``answers=False`` returns the raw output tensors only (``results`` empty):
        what a caller that wants tensors, such as the v2 protocol, needs.
        ``timed=False`` leaves ``timings_ms`` empty (no clock reads).
        """
        t0 = time.perf_counter_ns() if timed else 0
        model, check = self._model_and_check(name, version)
        m = model.manifest
        if images is not None:
            tensors, geos = self.prepare_images(m, images)
        elif inputs is not None:
            tensors = check(inputs)
            geos = []
        else:
            raise InvalidInput("send either input tensors or images")
        if not timed:
            outputs = self.infer(model, tensors)
            results = self._answers(m, tensors, outputs, geos) if answers else []
            return Prediction(m.name, m.version, outputs, results, {})
        t1 = time.perf_counter_ns()
        outputs = self.infer(model, tensors)
        t2 = time.perf_counter_ns()
        results = self._answers(m, tensors, outputs, geos) if answers else []
        t3 = time.perf_counter_ns()
        timings = {  # (inline: four calls of _ms cost a third of a microsecond)
            "preprocess": (t1 - t0) / 1e6,
            "infer": (t2 - t1) / 1e6,
            "postprocess": (t3 - t2) / 1e6,
            "total": (t3 - t0) / 1e6,
        }
        return Prediction(m.name, m.version, outputs, results, timings)

    @staticmethod
    def _answers(
        m: Manifest, tensors: Mapping[str, np.ndarray], outputs: dict[str, np.ndarray], geos: list[Geometry]
    ) -> list[dict[str, Any]]:
        rows: Sequence[Geometry | None] = geos or [None] * next(iter(tensors.values())).shape[0]
        return postprocess(m, outputs, rows)

    def describe(self, name: str) -> dict[str, Any]:
        """Everything a caller may want to know about a model, without loading it."""
        versions = self.store.versions(name)
        if not versions:
            self.store.package_dir(name, "")  # raises ModelNotFound
        active = self._active.get(name) or self.store.active_version(name)
        m = self.store.manifest(name, active)
        loaded = self.is_ready(name, active)
        return {
            "name": name,
            "versions": versions,
            "active_version": active,
            "ready": loaded,
            "backend": m.backend,
            "task": m.task,
            "inputs": [t.model_dump() for t in m.inputs],
            "outputs": [t.model_dump() for t in m.outputs],
            "labels": m.labels,
            "quantization": m.quantization.model_dump(),
            "metrics": m.metrics.model_dump() if m.metrics else None,
            "load_error": self.load_errors.get(name),
        }
