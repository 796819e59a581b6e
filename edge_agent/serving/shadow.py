"""Shadow evaluation: a staged version answers a sample of live requests, off the caller's path.

A staged version (installed, self-tested, not serving: ``ModelStore.staged``)
gets a copy of a sample of its model's requests. The caller's answer and
latency come from the active version alone: ``offer`` is called after the
active answer is computed and only does a coin toss, a token-bucket check and
a non-blocking ``put``; one daemon thread runs the candidate and compares.

The candidate runs in its own spawned process at the lowest CPU priority
(``edge_agent.serving.shadow_worker``): it shares no GIL with the gateway and
gets the cores only when callers do not need them.

Bounded: ``sample`` share of requests, at most ``max_per_s`` per second (the
rest counted as ``rate_limited``), at most ``queue`` waiting (the rest counted
as ``dropped``). Figures per model, written every ``report_every_s`` to
``<data_dir>/shadow/<model>.json`` for the sync role, which reports them on
``models/reported``:

- agreement: classification, the top-1 label of each row; detection, each
  active box matched to a candidate box of the same label with IoU >= 0.5
  (a row agrees when every box on both sides is matched);
- output difference: mean and max absolute difference of the raw outputs;
- latency: median compute time of the active answer and of the candidate's.
"""

from __future__ import annotations

import json
import logging
import queue
import random
import statistics
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.config import ShadowConfig
from edge_agent.errors import EdgeAgentError
from edge_agent.runtime.engine import Engine
from edge_agent.runtime.store import atomic_write
from edge_agent.serving.shadow_worker import CandidateProcess

logger = logging.getLogger(__name__)

IOU_MATCH = 0.5
LATENCY_WINDOW = 500  # the medians are over the last samples
STAGED_REFRESH_S = 1.0


@dataclass
class Figures:
    model: str
    active: str
    candidate: str
    since: float = field(default_factory=time.time)
    samples: int = 0
    agree: int = 0
    rows: int = 0
    rows_agree: int = 0
    errors: int = 0
    dropped: int = 0
    rate_limited: int = 0
    diff_sum: float = 0.0
    diff_max: float = 0.0
    active_ms: list[float] = field(default_factory=list)
    candidate_ms: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        a = statistics.median(self.active_ms) if self.active_ms else None
        c = statistics.median(self.candidate_ms) if self.candidate_ms else None
        return {
            "model": self.model,
            "active": self.active,
            "candidate": self.candidate,
            "since": self.since,
            "updated": time.time(),
            "samples": self.samples,
            "rows": self.rows,
            "agreement": self.rows_agree / self.rows if self.rows else None,
            "errors": self.errors,
            "dropped": self.dropped,
            "rate_limited": self.rate_limited,
            "mean_abs_diff": self.diff_sum / self.samples if self.samples else None,
            "max_abs_diff": self.diff_max,
            "active_ms_p50": a,
            "candidate_ms_p50": c,
            "latency_ratio": c / a if a and c else None,
        }


@dataclass(frozen=True, slots=True)
class _Sample:
    model: str
    active: str
    candidate: str
    tensors: Mapping[str, np.ndarray] | None
    images: Sequence[bytes] | None
    outputs: Mapping[str, np.ndarray]
    results: list[dict[str, Any]]
    active_ms: float


def iou(a: Mapping[str, Any], b: Mapping[str, Any]) -> float:
    ix = max(0.0, min(a["xmax"], b["xmax"]) - max(a["xmin"], b["xmin"]))
    iy = max(0.0, min(a["ymax"], b["ymax"]) - max(a["ymin"], b["ymin"]))
    inter = ix * iy
    area = (a["xmax"] - a["xmin"]) * (a["ymax"] - a["ymin"]) + (b["xmax"] - b["xmin"]) * (
        b["ymax"] - b["ymin"]
    )
    return inter / (area - inter) if area - inter > 0 else 0.0


def rows_agree(active: list[dict[str, Any]], candidate: list[dict[str, Any]]) -> list[bool]:
    """Per row: same top-1 label (classification) or every box matched by label and IoU (detection)."""
    out = []
    for a, c in zip(active, candidate, strict=False):
        if "boxes" in a:
            left, right = list(a["boxes"]), list(c.get("boxes", []))
            matched = 0
            for box in left:
                best = max(
                    (j for j, other in enumerate(right) if other.get("label") == box.get("label")),
                    key=lambda j: iou(box, right[j]),
                    default=None,
                )
                if best is not None and iou(box, right[best]) >= IOU_MATCH:
                    right.pop(best)
                    matched += 1
            out.append(matched == len(left) and not right)
        else:
            out.append(a.get("label") == c.get("label"))
    return out


def output_diff(active: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray]) -> float:
    """Largest mean absolute difference over the outputs both have with the same shape."""
    diffs = [
        float(np.mean(np.abs(np.asarray(active[k], np.float64) - np.asarray(candidate[k], np.float64))))
        for k in active
        if k in candidate and np.shape(active[k]) == np.shape(candidate[k])
    ]
    return max(diffs, default=0.0)


class ShadowEvaluator:
    def __init__(
        self, engine: Engine, settings: ShadowConfig, directory: Path, *, seed: int | None = None
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.directory = directory
        self._queue: queue.Queue[_Sample] = queue.Queue(maxsize=settings.queue)
        self._rng = random.Random(seed)
        self._staged: dict[str, str] = {}
        self._figures: dict[str, Figures] = {}
        self._lock = threading.Lock()
        self._tokens = settings.max_per_s
        self._last = time.monotonic()
        self._stop = threading.Event()
        self._candidate = CandidateProcess(engine.store.root, engine.store.state_path, engine.options)
        self._refresh_staged()
        self._thread = threading.Thread(target=self._run, name="shadow", daemon=True)
        self._thread.start()

    # -- the caller's side: cheap, never blocks ---------------------------------------------------
    def offer(
        self,
        model: str,
        version: str,
        outputs: Mapping[str, np.ndarray],
        results: list[dict[str, Any]],
        active_ms: float,
        *,
        tensors: Mapping[str, np.ndarray] | None = None,
        images: Sequence[bytes] | None = None,
    ) -> bool:
        """Copy one answered request to the staged version, if sampled; True when queued."""
        candidate = self._staged.get(model)
        if candidate is None or candidate == version or self._rng.random() >= self.settings.sample:
            return False
        with self._lock:
            figures = self._figures_for(model, version, candidate)
            now = time.monotonic()
            self._tokens = min(
                self.settings.max_per_s, self._tokens + (now - self._last) * self.settings.max_per_s
            )
            self._last = now
            if self._tokens < 1.0:
                figures.rate_limited += 1
                return False
            self._tokens -= 1.0
            try:
                self._queue.put_nowait(
                    _Sample(model, version, candidate, tensors, images, outputs, results, active_ms)
                )
            except queue.Full:
                figures.dropped += 1
                return False
        return True

    def figures(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {m: f.summary() for m, f in self._figures.items()}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._candidate.close()
        self._write()

    # -- the shadow thread ------------------------------------------------------------------------
    def _figures_for(self, model: str, active: str, candidate: str) -> Figures:
        f = self._figures.get(model)
        if f is None or (f.active, f.candidate) != (active, candidate):
            f = self._figures[model] = Figures(model, active, candidate)
        return f

    def _refresh_staged(self) -> None:
        try:
            staged = self.engine.store.staged()
        except (OSError, EdgeAgentError) as exc:
            logger.warning("cannot read staged versions: %s", exc)
            return
        self._staged = staged
        if not staged and self._candidate.running:  # nothing to evaluate: free the process's memory
            self._candidate.close()
        with self._lock:
            for model in [m for m in self._figures if m not in staged]:
                del self._figures[model]  # no candidate any more: promoted or withdrawn
                (self.directory / f"{model}.json").unlink(missing_ok=True)

    def _run(self) -> None:
        next_refresh = next_write = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_refresh:
                self._refresh_staged()
                next_refresh = now + STAGED_REFRESH_S
            if now >= next_write:
                self._write()
                next_write = now + self.settings.report_every_s
            try:
                sample = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self._evaluate(sample)
            except Exception:  # a broken candidate costs its figures, never the gateway
                logger.exception("shadow evaluation of %s/%s failed", sample.model, sample.candidate)
                with self._lock:
                    self._figures_for(sample.model, sample.active, sample.candidate).errors += 1

    def _evaluate(self, s: _Sample) -> None:
        try:
            outputs, results, candidate_ms = self._candidate.predict(
                s.model, s.candidate, s.tensors, s.images
            )
        except EdgeAgentError as exc:
            logger.warning("shadow %s/%s: %s", s.model, s.candidate, exc.message)
            with self._lock:
                self._figures_for(s.model, s.active, s.candidate).errors += 1
            return
        agree = rows_agree(s.results, results)
        diff = output_diff(s.outputs, outputs)
        with self._lock:
            f = self._figures_for(s.model, s.active, s.candidate)
            f.samples += 1
            f.rows += len(agree)
            f.rows_agree += sum(agree)
            f.agree += all(agree)
            f.diff_sum += diff
            f.diff_max = max(f.diff_max, diff)
            f.active_ms = [*f.active_ms, s.active_ms][-LATENCY_WINDOW:]
            f.candidate_ms = [*f.candidate_ms, candidate_ms][-LATENCY_WINDOW:]

    def _write(self) -> None:
        figures = self.figures()
        if not figures:
            return
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            for model, doc in figures.items():
                atomic_write(self.directory / f"{model}.json", json.dumps(doc, sort_keys=True).encode())
        except OSError as exc:  # a full disk loses figures, not answers
            logger.warning("cannot write shadow figures to %s: %s", self.directory, exc)
