"""YOLO- and SSD-style detector outputs -> boxes, with class-aware NMS, in numpy.

Every decoder here ends in one internal format, :class:`Box`: corners in
model-input pixels (letterbox padding included), a score in [0, 1] and a class
index. Mapping back to the caller's image (undoing the letterbox) is the
caller's job, as for :mod:`edge_agent.runtime.blazeface`.

Layouts (one image's slice, the batch dimension already taken off):

* YOLO ``yolov8`` ``[4+C, A]``: rows cx, cy, w, h then one score per class;
  the score of a box is its best class score (no objectness);
* YOLO ``yolov5`` ``[A, 5+C]``: cx, cy, w, h, objectness, class scores; the
  score is objectness x best class score;
* SSD: boxes ``[A, 4]`` and either per-class scores ``[A, C]`` or one score
  ``[A]`` with a class index ``[A]`` (TFLite_Detection_PostProcess, which also
  gives a count of valid rows).

``auto`` tells the two YOLO layouts apart by shape: fewer rows than columns is
``yolov8``. A shape that fits no layout raises :class:`DecodeError` naming what
was expected; nothing here indexes past an array.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_agent.errors import DecodeError
from edge_agent.runtime.package import SsdDetection, YoloDetection

__all__ = ["Box", "decode_ssd", "decode_yolo", "nms", "resolve_yolo_layout"]


@dataclass(frozen=True, slots=True)
class Box:
    """One detection in model-input pixels."""

    xmin: float
    ymin: float
    xmax: float
    ymax: float
    score: float
    class_index: int


def _one_image(arr: np.ndarray, ndim: int, what: str) -> np.ndarray:
    a = np.asarray(arr)
    if a.ndim == ndim + 1:
        if a.shape[0] != 1:
            raise DecodeError(f"{what}: decode takes one image at a time, got shape {list(a.shape)}")
        a = a[0]
    if a.ndim != ndim:
        raise DecodeError(f"{what}: expected {ndim} dimensions per image, got shape {list(np.shape(arr))}")
    return a


def _to_corners(b: np.ndarray, fmt: str) -> np.ndarray:
    """[n, 4] boxes in ``fmt`` -> [n, 4] (xmin, ymin, xmax, ymax)."""
    if fmt == "cxcywh":
        cx, cy, w, h = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
        return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    if fmt == "yxyx":
        return b[:, [1, 0, 3, 2]]
    return b[:, :4]


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every [n, 4] corner box in ``a`` with every [m, 4] box in ``b``."""
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    out: np.ndarray = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    return out


def nms(
    boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float, limit: int, agnostic: bool
) -> np.ndarray:
    """Greedy hard NMS, best score first; per class unless ``agnostic``. Returns kept indices."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    suppressed = np.zeros(len(order), dtype=bool)
    ious = iou_matrix(boxes[order], boxes[order])
    same = np.ones_like(ious, dtype=bool) if agnostic else classes[order][:, None] == classes[order][None, :]
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(int(order[i]))
        if len(keep) >= limit:
            break
        suppressed |= (ious[i] > iou) & same[i]
    return np.asarray(keep, dtype=np.int64)


def _finish(
    corners: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    spec: YoloDetection | SsdDetection,
    size: tuple[int, int],
) -> list[Box]:
    w, h = size
    ok = np.isfinite(scores) & np.isfinite(corners).all(axis=1) & (scores >= spec.min_score)
    corners, scores, classes = corners[ok], scores[ok], classes[ok]
    if spec.normalized:
        corners = corners * np.asarray([w, h, w, h], dtype=np.float64)
    valid = (corners[:, 2] > corners[:, 0]) & (corners[:, 3] > corners[:, 1])
    corners, scores, classes = corners[valid], scores[valid], classes[valid]
    if scores.size == 0:
        return []
    kept = nms(corners, scores, classes, spec.iou_threshold, spec.max_detections, spec.class_agnostic)
    out: list[Box] = []
    for i in kept.tolist():
        x0, y0, x1, y1 = (float(v) for v in corners[i])
        out.append(Box(x0, y0, x1, y1, float(scores[i]), int(classes[i])))
    return out


def resolve_yolo_layout(shape: tuple[int | None, ...] | list[int | None], spec: YoloDetection) -> str:
    """``yolov8`` or ``yolov5`` for an output of ``shape`` ([N, rows, cols] or [rows, cols])."""
    dims = list(shape)[-2:]
    if len(dims) != 2:
        raise DecodeError(f"YOLO output must be [N, 4+C, A] or [N, A, 5+C], got shape {list(shape)}")
    if spec.layout != "auto":
        return spec.layout
    rows, cols = dims
    if rows is None or cols is None:
        raise DecodeError(f"YOLO output shape {list(shape)} has dynamic dims; set layout yolov8 or yolov5")
    return "yolov8" if rows < cols else "yolov5"


def yolo_classes(shape: tuple[int | None, ...] | list[int | None], layout: str) -> int | None:
    """Number of classes a YOLO output of ``shape`` holds, None when a dim is dynamic."""
    rows, cols = list(shape)[-2:]
    if layout == "yolov8":
        return None if rows is None else rows - 4
    return None if cols is None else cols - 5


def decode_yolo(raw: np.ndarray, spec: YoloDetection, size: tuple[int, int]) -> list[Box]:
    """One image's YOLO output -> boxes, best first. ``size`` is the model input (width, height)."""
    a = _one_image(raw, 2, f"YOLO output {spec.output!r}").astype(np.float64)
    layout = resolve_yolo_layout(a.shape, spec)
    if layout == "yolov8":
        if a.shape[0] < 5:
            raise DecodeError(
                f"YOLO output {spec.output!r} has {a.shape[0]} rows; layout yolov8 needs 4 box rows "
                f"and at least one class row ([N, 4+C, A]); is it yolov5 ([N, A, 5+C])?"
            )
        a = a.T
        boxes, cls_scores = a[:, :4], a[:, 4:]
        best = cls_scores.argmax(axis=1)
        scores = cls_scores[np.arange(len(a)), best]
    else:
        if a.shape[1] < 6:
            raise DecodeError(
                f"YOLO output {spec.output!r} has {a.shape[1]} columns; layout yolov5 needs 4 box "
                f"columns, objectness and at least one class ([N, A, 5+C]); is it yolov8?"
            )
        boxes, obj, cls_scores = a[:, :4], a[:, 4], a[:, 5:]
        best = cls_scores.argmax(axis=1)
        scores = obj * cls_scores[np.arange(len(a)), best]
    return _finish(_to_corners(boxes, spec.box_format), scores, best, spec, size)


def decode_ssd(outputs: dict[str, np.ndarray], spec: SsdDetection, size: tuple[int, int]) -> list[Box]:
    """One image's SSD outputs (batch dimension taken off or of size 1) -> boxes."""
    boxes = _one_image(outputs[spec.boxes_output], 2, f"SSD boxes {spec.boxes_output!r}").astype(np.float64)
    if boxes.shape[1] != 4:
        raise DecodeError(f"SSD boxes {spec.boxes_output!r} must be [N, A, 4], got {list(boxes.shape)}")
    raw = np.asarray(outputs[spec.scores_output]).astype(np.float64)
    if spec.classes_output is None:
        scores_all = _one_image(raw, 2, f"SSD scores {spec.scores_output!r}")
        if spec.score_activation == "sigmoid":
            scores_all = 1.0 / (1.0 + np.exp(-np.clip(scores_all, -100, 100)))
        elif spec.score_activation == "softmax":
            z = np.exp(scores_all - scores_all.max(axis=1, keepdims=True))
            scores_all = z / z.sum(axis=1, keepdims=True)
        if spec.background_class is not None and 0 <= spec.background_class < scores_all.shape[1]:
            scores_all = scores_all.copy()
            scores_all[:, spec.background_class] = -np.inf
        classes = scores_all.argmax(axis=1)
        scores = scores_all[np.arange(len(scores_all)), classes]
    else:
        scores = _one_image(raw, 1, f"SSD scores {spec.scores_output!r}")
        if spec.score_activation == "sigmoid":
            scores = 1.0 / (1.0 + np.exp(-np.clip(scores, -100, 100)))
        classes_raw = _one_image(outputs[spec.classes_output], 1, f"SSD classes {spec.classes_output!r}")
        classes = np.rint(classes_raw).astype(np.int64)
        if spec.background_class is not None:
            scores = np.where(classes == spec.background_class, -np.inf, scores)
    if scores.shape[0] != boxes.shape[0]:
        raise DecodeError(
            f"SSD outputs disagree: {boxes.shape[0]} boxes but {scores.shape[0]} score rows "
            f"({spec.boxes_output!r} vs {spec.scores_output!r})"
        )
    if spec.count_output is not None:
        count = int(np.asarray(outputs[spec.count_output]).reshape(-1)[0])
        n = max(0, min(count, boxes.shape[0]))
        boxes, scores, classes = boxes[:n], scores[:n], classes[:n]
    return _finish(_to_corners(boxes, spec.box_format), scores, classes, spec, size)
