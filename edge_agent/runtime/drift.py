"""Input drift: pure functions (numpy only) comparing what a model sees with what it was built for.

A **reference** (``drift.json`` in the model package, written when the
package is built or imported: ``models/scripts/drift_reference.py``) holds,
per feature, the bin edges at the reference sample's deciles and the share
of the sample in each bin (0.1 each, by construction), plus each feature's
mean, std and quartiles; and the share of each output label.

Features: for a tabular input ``[n, f]`` each column; for an image batch the
per-image brightness (mean of the preprocessed tensor), contrast (its std),
and the source size (width x height) when known.

A window of live rows is compared with the reference by the **population
stability index** per feature, PSI = sum((a - r) * ln(a / r)) over the bins
(shares floored at ``EPS``). Conventional reading: < 0.1 stable, 0.1-0.25 a
shift worth a look, > 0.25 a shift (``THRESHOLD`` is 0.25).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

REFERENCE_FILE = "drift.json"
BINS = 10
EPS = 1e-4
THRESHOLD = 0.25
MIN_ROWS = 30  # a window smaller than this says nothing


def features(batch: np.ndarray, sizes: Sequence[tuple[int, int]] | None = None) -> dict[str, np.ndarray]:
    """name -> one value per row: columns of a ``[n, f]`` tensor, or image brightness / contrast / size."""
    x = np.asarray(batch, dtype=np.float64)
    if x.ndim == 2:
        return {f"f{i}": x[:, i] for i in range(x.shape[1])}
    flat = x.reshape(x.shape[0], -1)
    out = {"brightness": flat.mean(axis=1), "contrast": flat.std(axis=1)}
    if sizes:
        out["pixels"] = np.asarray([w * h for w, h in sizes], dtype=np.float64)
    return out


def reference(
    feats: Mapping[str, np.ndarray], labels: Sequence[str] | None = None, bins: int = BINS
) -> dict[str, Any]:
    """The reference of a sample: per feature, decile edges + shares + summary; the label shares."""
    doc: dict[str, Any] = {"bins": bins, "features": {}, "labels": {}}
    for name, values in feats.items():
        v = np.asarray(values, dtype=np.float64)
        edges = np.unique(np.quantile(v, np.linspace(0, 1, bins + 1)[1:-1]))
        doc["features"][name] = {
            "edges": edges.tolist(),
            "shares": shares(v, edges).tolist(),
            "mean": float(v.mean()),
            "std": float(v.std()),
            "quartiles": np.quantile(v, [0.25, 0.5, 0.75]).tolist(),
            "min": float(v.min()),
            "max": float(v.max()),
        }
    if labels:
        names, counts = np.unique(np.asarray(labels), return_counts=True)
        doc["labels"] = {str(n): float(c) / len(labels) for n, c in zip(names, counts, strict=True)}
    return doc


def shares(values: np.ndarray, edges: Sequence[float] | np.ndarray) -> np.ndarray:
    """Share of ``values`` in each bin between ``edges`` (first and last bins open)."""
    idx = np.searchsorted(
        np.asarray(edges, dtype=np.float64), np.asarray(values, dtype=np.float64), side="right"
    )
    counts = np.bincount(idx, minlength=len(edges) + 1).astype(np.float64)
    return counts / max(len(values), 1)


def psi(expected: Sequence[float] | np.ndarray, actual: Sequence[float] | np.ndarray) -> float:
    e = np.maximum(np.asarray(expected, dtype=np.float64), EPS)
    a = np.maximum(np.asarray(actual, dtype=np.float64), EPS)
    return float(np.sum((a - e) * np.log(a / e)))


def compare(
    ref: Mapping[str, Any], feats: Mapping[str, np.ndarray], labels: Sequence[str] = ()
) -> dict[str, Any]:
    """PSI per feature (and of the label shares) of a window against ``ref``; ``max`` and ``drifted``."""
    out: dict[str, Any] = {"rows": 0, "psi": {}, "mean": {}}
    for name, spec in ref.get("features", {}).items():
        if name not in feats:
            continue
        v = np.asarray(feats[name], dtype=np.float64)
        out["rows"] = max(out["rows"], len(v))
        out["psi"][name] = psi(spec["shares"], shares(v, spec["edges"]))
        out["mean"][name] = float(v.mean()) if len(v) else None
    if labels and ref.get("labels"):
        names = sorted(set(ref["labels"]) | set(labels))
        got = [sum(1 for x in labels if x == n) / len(labels) for n in names]
        out["psi"]["labels"] = psi([ref["labels"].get(n, 0.0) for n in names], got)
    out["max"] = max(out["psi"].values(), default=0.0)
    out["drifted"] = out["rows"] >= MIN_ROWS and out["max"] > THRESHOLD
    return out


def load_reference(package_dir: Path) -> dict[str, Any] | None:
    """The package's reference, or None when it has none (or an unreadable one)."""
    try:
        doc = json.loads((package_dir / REFERENCE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and "features" in doc else None
