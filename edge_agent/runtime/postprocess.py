"""Raw output tensors -> answers a person can read: top-k labels, boxes."""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence
from typing import Any

import numpy as np

from edge_agent.runtime.package import Classification, Detection, Manifest, SsdDetection, YoloDetection
from edge_agent.runtime.preprocess import Geometry


def softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    out: np.ndarray = e / e.sum(axis=-1, keepdims=True)
    return out


SMALL_ROWS = 4  # answers of up to this many rows ...
SMALL_CLASSES = 64  # ... of up to this many classes are computed in plain Python


def classify(
    outputs: dict[str, np.ndarray], spec: Classification, labels: Sequence[str]
) -> list[dict[str, Any]]:
    """One dict per row: best label, its score, the top-k and every probability.

    Vectorised: numpy does the sorting and gathering, Python only builds the dicts. A small
    answer (the usual single request) is computed in plain Python instead (``_classify_small``).
    """
    scores = outputs[spec.output]
    if (
        spec.label_output is None
        and scores.ndim == 2
        and scores.shape[0] <= SMALL_ROWS
        and 0 < scores.shape[1] <= SMALL_CLASSES
    ):
        small = _classify_small(scores.tolist(), spec, labels)
        if small is not None:
            return small
    if scores.ndim == 1:
        scores = scores[:, None]
    probs = softmax(scores.astype(np.float32)) if spec.apply_softmax else scores
    c = probs.shape[1]
    k = min(spec.top_k, c)
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    best = (
        order[:, 0] if spec.label_output is None else outputs[spec.label_output].astype(np.int64).reshape(-1)
    )
    names = [*labels, *(str(j) for j in range(len(labels), c))]
    prob_rows = probs.tolist()
    rows: list[dict[str, Any]] = []
    for idx, p, top in zip(best.tolist(), prob_rows, order.tolist(), strict=True):
        ok = 0 <= idx < c
        rows.append(
            {
                "label": names[idx] if ok else str(idx),
                "index": idx,
                "score": p[idx] if ok else None,
                "top_k": [{"label": names[j], "index": j, "score": p[j]} for j in top],
                "probabilities": p,
            }
        )
    return rows


def _classify_small(
    rows: list[list[float]], spec: Classification, labels: Sequence[str]
) -> list[dict[str, Any]] | None:
    """``classify`` for a few rows of a few classes, or None for a row that is not all finite.

    A dozen numpy calls on ten numbers cost more than the numbers: ~50 us right after a
    convolutional model has evicted the caches numpy's code runs from, against ~20 us of plain
    Python (~11 against ~5 us warm). The softmax is computed in double precision and rounded to
    float32, the type numpy's version computes in: the probabilities may differ from it by one
    float32 rounding step (about 6e-8 of 1.0). The top-k order is the same stable order (equal
    scores keep their class order)."""
    names = [*labels, *(str(j) for j in range(len(labels), len(rows[0])))]
    out: list[dict[str, Any]] = []
    for row in rows:
        if not all(map(math.isfinite, row)):
            return None  # NaN or infinity: numpy's version says what it makes of them
        if spec.apply_softmax:
            top = max(row)
            exps = [math.exp(v - top) for v in row]
            total = math.fsum(exps)
            p: list[float] = array("f", [v / total for v in exps]).tolist()
        else:
            p = row
        order = sorted(range(len(p)), key=p.__getitem__, reverse=True)[: min(spec.top_k, len(p))]
        best = order[0]
        out.append(
            {
                "label": names[best],
                "index": best,
                "score": p[best],
                "top_k": [{"label": names[j], "index": j, "score": p[j]} for j in order],
                "probabilities": p,
            }
        )
    return out


def detect(
    outputs: dict[str, np.ndarray],
    spec: Detection,
    labels: Sequence[str],
    geometries: Sequence[Geometry | None],
) -> list[dict[str, Any]]:
    from edge_agent.runtime.blazeface import decode

    label = labels[0] if labels else "object"
    boxes_all, scores_all = outputs[spec.boxes_output], outputs[spec.scores_output]
    iw, ih = spec.anchors.input_width, spec.anchors.input_height
    rows: list[dict[str, Any]] = []
    identity = Geometry(iw, ih, 1.0, 1.0)  # tensor input: answer in model-input pixels
    for i, maybe_geo in enumerate(geometries):
        geo = maybe_geo or identity
        found = decode(boxes_all[i], scores_all[i], spec)
        boxes = []
        for f in found:
            x0, y0 = geo.to_image(f.xmin * iw, f.ymin * ih)
            x1, y1 = geo.to_image(f.xmax * iw, f.ymax * ih)
            extra: dict[str, Any] = {}
            if spec.body_box is not None:  # report the body; keep the detector's own box beside it
                extra["detector_box"] = {
                    "xmin": round(x0, 1),
                    "ymin": round(y0, 1),
                    "xmax": round(x1, 1),
                    "ymax": round(y1, 1),
                }
                bb = spec.body_box
                cx, cy = f.keypoints[bb.center][0] * iw, f.keypoints[bb.center][1] * ih
                rx, ry = f.keypoints[bb.radius_point][0] * iw, f.keypoints[bb.radius_point][1] * ih
                half = bb.scale * math.hypot(rx - cx, ry - cy)
                x0, y0 = geo.to_image(cx - half, cy - half)
                x1, y1 = geo.to_image(cx + half, cy + half)
            kps = []
            for j, (kx, ky) in enumerate(f.keypoints):
                px, py = geo.to_image(kx * iw, ky * ih)
                name = spec.keypoint_names[j] if j < len(spec.keypoint_names) else str(j)
                kps.append({"name": name, "x": round(px, 1), "y": round(py, 1)})
            boxes.append(
                {
                    "label": label,
                    "score": round(float(f.score), 4),
                    "xmin": round(x0, 1),
                    "ymin": round(y0, 1),
                    "xmax": round(x1, 1),
                    "ymax": round(y1, 1),
                    "keypoints": kps,
                    **extra,
                }
            )
        rows.append({"boxes": boxes})
    return rows


def _input_size(manifest: Manifest) -> tuple[int, int]:
    """(width, height) of the image tensor the detector sees."""
    if manifest.preprocessing is not None:
        r = manifest.preprocessing.resize
        return r.width, r.height
    shape = manifest.inputs[0].shape
    if len(shape) == 4:
        nchw = shape[1] in (1, 3) and shape[3] not in (1, 3)
        h, w = (shape[2], shape[3]) if nchw else (shape[1], shape[2])
        if h is not None and w is not None:
            return int(w), int(h)
    return 1, 1


def detect_boxes(
    outputs: dict[str, np.ndarray],
    spec: YoloDetection | SsdDetection,
    manifest: Manifest,
    geometries: Sequence[Geometry | None],
) -> list[dict[str, Any]]:
    """YOLO/SSD outputs -> one {"boxes": [...]} per image, in the caller's pixels."""
    from edge_agent.runtime.detect import decode_ssd, decode_yolo

    iw, ih = _input_size(manifest)
    identity = Geometry(iw, ih, 1.0, 1.0)  # tensor input: answer in model-input pixels
    labels = manifest.labels
    rows: list[dict[str, Any]] = []
    for i, maybe_geo in enumerate(geometries):
        geo = maybe_geo or identity
        if isinstance(spec, YoloDetection):
            found = decode_yolo(outputs[spec.output][i], spec, (iw, ih))
        else:
            one = {k: v[i] for k, v in outputs.items() if v.ndim >= 1 and v.shape[0] == len(geometries)}
            found = decode_ssd(one, spec, (iw, ih))
        boxes = []
        for f in found:
            x0, y0 = geo.to_image(f.xmin, f.ymin)
            x1, y1 = geo.to_image(f.xmax, f.ymax)
            ok = 0 <= f.class_index < len(labels)
            boxes.append(
                {
                    "label": labels[f.class_index] if ok else str(f.class_index),
                    "class_index": f.class_index,
                    "score": round(f.score, 4),
                    "xmin": round(x0, 1),
                    "ymin": round(y0, 1),
                    "xmax": round(x1, 1),
                    "ymax": round(y1, 1),
                }
            )
        rows.append({"boxes": boxes})
    return rows


def postprocess(
    manifest: Manifest, outputs: dict[str, np.ndarray], geometries: Sequence[Geometry | None]
) -> list[dict[str, Any]]:
    post = manifest.postprocessing
    if isinstance(post, Classification):
        return classify(outputs, post, manifest.labels)
    if isinstance(post, Detection):
        return detect(outputs, post, manifest.labels, geometries)
    if isinstance(post, YoloDetection | SsdDetection):
        return detect_boxes(outputs, post, manifest, geometries)
    n = len(geometries)
    return [{name: arr[i].tolist() for name, arr in outputs.items()} for i in range(n)]
