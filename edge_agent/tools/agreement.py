"""What ``models quantize`` reports: top-1 agreement of int8 with fp32, accuracies, size, latency.

Agreement per row: a classifier's class (argmax of its scored output) must be the same; a
detector's best-scoring detection, after the model's own post-processing, must have the same
label and an IoU of at least 0.5 with fp32's (both finding nothing also agrees).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_agent.runtime.backends import LoadedModel
from edge_agent.runtime.package import Classification, Manifest
from edge_agent.tools.evalset import EvalSet

DEFAULT_THRESHOLD = 0.99
LATENCY_BATCHES = (1, 32)
DETECTION_IOU = 0.5


@dataclass(slots=True)
class QuantizeReport:
    model: str
    source_version: str
    version: str
    calibration: str
    evaluation: str
    size_bytes: dict[str, int] = field(default_factory=dict)  # fp32 / int8
    latency_ms: dict[str, dict[int, float]] = field(default_factory=dict)  # fp32|int8 -> batch -> p50
    agreement: float = 0.0
    accuracy: dict[str, float] | None = None
    threshold: float = DEFAULT_THRESHOLD
    written: bool = False
    activated: bool = False
    scheme: str = "static QDQ, per-channel"

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "source_version": self.source_version,
            "version": self.version,
            "calibration": self.calibration,
            "evaluation": self.evaluation,
            "size_bytes": self.size_bytes,
            "latency_ms": {k: {str(b): v for b, v in d.items()} for k, d in self.latency_ms.items()},
            "agreement": self.agreement,
            "accuracy": self.accuracy,
            "threshold": self.threshold,
            "written": self.written,
            "activated": self.activated,
            "scheme": self.scheme,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QuantizeReport:
        fields = dict(d)
        fields["latency_ms"] = {k: {int(b): v for b, v in x.items()} for k, x in d["latency_ms"].items()}
        return cls(**fields)

    def table(self) -> str:
        rows = [("size", *(f"{self.size_bytes[k] / 1024:.1f} KiB" for k in ("fp32", "int8")))]
        ratio = [f"{self.size_bytes['int8'] / self.size_bytes['fp32']:.2f}x"]
        for b in LATENCY_BATCHES:
            f, q = self.latency_ms["fp32"][b], self.latency_ms["int8"][b]
            rows.append((f"latency p50, batch {b}", f"{f:.3f} ms", f"{q:.3f} ms"))
            ratio.append(f"{q / f:.2f}x" if f else "-")
        if self.accuracy is not None:
            rows.append(("top-1 accuracy", f"{self.accuracy['fp32']:.2%}", f"{self.accuracy['int8']:.2%}"))
            ratio.append(f"{self.accuracy['int8'] - self.accuracy['fp32']:+.2%}")
        lines = [
            f"{self.model}: {self.source_version} (fp32) -> {self.version} (int8 {self.scheme})",
            f"calibration: {self.calibration}",
            f"evaluation:  {self.evaluation}",
            f"{'':24} {'fp32':>12} {'int8':>12} {'int8/fp32':>10}",
        ]
        lines += [f"{n:24} {a:>12} {b:>12} {r:>10}" for (n, a, b), r in zip(rows, ratio, strict=True)]
        verdict = "ok" if self.agreement >= self.threshold else "UNDER THE THRESHOLD"
        lines.append(
            f"{'top-1 agreement':24} {self.agreement:>25.2%}   (threshold {self.threshold:.2%}: {verdict})"
        )
        return "\n".join(lines)


def is_detector(m: Manifest) -> bool:
    return m.postprocessing is not None and not isinstance(m.postprocessing, Classification)


def top1(m: Manifest, outputs: dict[str, np.ndarray]) -> np.ndarray:
    """A classifier's class per row: argmax of its scored output (the first output without one)."""
    post = m.postprocessing
    y = outputs[post.output if isinstance(post, Classification) else m.outputs[0].name]
    return np.asarray(y.reshape(y.shape[0], -1).argmax(axis=1))


def iou(a: dict[str, Any], b: dict[str, Any]) -> float:
    w = min(a["xmax"], b["xmax"]) - max(a["xmin"], b["xmin"])
    h = min(a["ymax"], b["ymax"]) - max(a["ymin"], b["ymin"])
    inter = max(w, 0.0) * max(h, 0.0)
    area = (a["xmax"] - a["xmin"]) * (a["ymax"] - a["ymin"]) + (b["xmax"] - b["xmin"]) * (
        b["ymax"] - b["ymin"]
    )
    return inter / (area - inter) if area - inter > 0 else 0.0


def same_top_detection(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    """Both found nothing, or their best-scoring boxes have one label and IoU >= 0.5."""
    if not a or not b:
        return not a and not b
    x, y = max(a, key=lambda d: d["score"]), max(b, key=lambda d: d["score"])
    return bool(x["label"] == y["label"] and iou(x, y) >= DETECTION_IOU)


def agreeing_rows(m: Manifest, ref: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> np.ndarray:
    """Per row, whether the int8 answer is the fp32 one (top-1 class, or top detection)."""
    if not is_detector(m):
        return np.asarray(top1(m, ref) == top1(m, got))
    from edge_agent.runtime.postprocess import postprocess

    n = next(iter(ref.values())).shape[0]
    a, b = postprocess(m, ref, [None] * n), postprocess(m, got, [None] * n)
    return np.asarray(
        [same_top_detection(x.get("boxes", []), y.get("boxes", [])) for x, y in zip(a, b, strict=True)]
    )


def run_rows(model: LoadedModel, data: EvalSet) -> dict[str, np.ndarray]:
    """Every row, in slices the model takes (1 for a fixed-batch model)."""
    step = model.max_batch or 256
    parts = [model.infer(data.take(i, i + step)) for i in range(0, data.rows, step)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def median_latency_ms(model: LoadedModel, data: EvalSet, batch: int, seconds: float) -> float:
    idx = np.arange(batch) % data.rows
    rows = {k: np.ascontiguousarray(v[idx]) for k, v in data.inputs.items()}
    step = model.max_batch or batch

    def once() -> None:
        for i in range(0, batch, step):
            model.infer({k: v[i : i + step] for k, v in rows.items()})

    once()
    samples: list[int] = []
    deadline = time.perf_counter() + seconds
    while len(samples) < 10 or time.perf_counter() < deadline:
        t0 = time.perf_counter_ns()
        once()
        samples.append(time.perf_counter_ns() - t0)
    return round(float(np.median(samples)) / 1e6, 4)


def measure(
    report: QuantizeReport, fp32: LoadedModel, int8: LoadedModel, data: EvalSet, m: Manifest, seconds: float
) -> None:
    ref, got = run_rows(fp32, data), run_rows(int8, data)
    report.agreement = round(float(np.mean(agreeing_rows(m, ref, got))), 6)
    if data.labels is not None and not is_detector(m):
        report.accuracy = {
            "fp32": round(float(np.mean(top1(m, ref) == data.labels)), 6),
            "int8": round(float(np.mean(top1(m, got) == data.labels)), 6),
        }
    report.latency_ms = {
        kind: {b: median_latency_ms(model, data, b, seconds) for b in LATENCY_BATCHES}
        for kind, model in (("fp32", fp32), ("int8", int8))
    }
