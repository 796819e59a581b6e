"""Sample inputs -> a drift reference (``drift.json``): the importer's (``edge-agent models import
--sample``) and ``models/scripts/drift_reference.py``'s. The statistics are
``edge_agent.runtime.drift``'s; this module turns images and tensors into the features it reads, the
same way the gateway does for live requests (the preprocessed tensor, and the source size)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.runtime import drift
from edge_agent.runtime.package import ImagePreprocess

MIN_REFERENCE_ROWS = drift.MIN_ROWS  # fewer rows than a window needs: the reference is sampling noise


def image_features(
    images: Sequence[np.ndarray], spec: ImagePreprocess, *, sizes: bool = True
) -> dict[str, np.ndarray]:
    """Decoded BGR uint8 images -> brightness / contrast of the preprocessed tensors (and the source
    size in pixels when ``sizes``: leave it out when the sample's sizes say nothing about the
    deployment's camera)."""
    from edge_agent.runtime.preprocess import transform

    tensors, geos = zip(*(transform(im, spec) for im in images), strict=True)
    wh = [(g.width, g.height) for g in geos] if sizes else None
    return drift.features(np.stack(tensors), wh)


def reference(
    feats: dict[str, np.ndarray], labels: Sequence[str] | None, source: str, rows: int
) -> dict[str, Any]:
    """The reference document, with ``source`` saying what it was written from."""
    if rows < MIN_REFERENCE_ROWS:
        raise ValueError(f"{rows} rows; a drift reference needs at least {MIN_REFERENCE_ROWS}")
    return drift.reference(feats, labels) | {"source": source, "rows": rows}


def write(package_dir: Path, doc: dict[str, Any]) -> Path:
    path = package_dir / drift.REFERENCE_FILE
    path.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    return path
