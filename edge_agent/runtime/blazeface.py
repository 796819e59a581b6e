"""BlazeFace post-processing: SSD anchors, box decoding and weighted NMS.

Pure numpy re-implementation of the three MediaPipe calculators that follow
the face detector's tensors in ``face_detection_short_range.pbtxt``:

* ``SsdAnchorsCalculator`` -> :func:`generate_anchors` (896 anchors for the
  short-range model: 16x16 cells x 2 at stride 8, 8x8 cells x 6 at stride 16);
* ``TensorsToDetectionsCalculator`` -> the decoding half of :func:`decode`
  (score clipping, sigmoid, threshold, box and keypoint regression relative to
  the anchors; BlazeFace emits x before y, MediaPipe's ``reverse_output_order``);
* ``NonMaxSuppressionCalculator`` with ``overlap_type: INTERSECTION_OVER_UNION``
  and ``algorithm: WEIGHTED`` -> the NMS half of :func:`decode`: each kept face
  is the score-weighted average of the boxes and keypoints of every candidate
  whose IoU with the best remaining one exceeds ``iou_threshold``; its score is
  the best candidate's score.

Everything is in normalized model-input coordinates (0..1 over the 128x128
tensor, letterbox padding included). Mapping back to the original image
(undoing a letterbox) and clipping to it is the caller's job; boxes near the
border can extend slightly beyond [0, 1], as in MediaPipe.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from edge_agent.runtime.package import Anchors, BodyBox, Detection

__all__ = ["PRESETS", "FaceBox", "decode", "generate_anchors", "preset"]

_AnchorKey = tuple[int, int, tuple[int, ...], float, float, float, float, tuple[float, ...], float, bool]


@dataclass(frozen=True, slots=True)
class FaceBox:
    """One detected face, in normalized model-input coordinates."""

    xmin: float
    ymin: float
    xmax: float
    ymax: float
    score: float
    keypoints: tuple[tuple[float, float], ...]


def _scale(min_scale: float, max_scale: float, index: int, count: int) -> float:
    if count == 1:
        return (min_scale + max_scale) * 0.5
    return min_scale + (max_scale - min_scale) * index / (count - 1.0)


def _anchor_key(spec: Anchors) -> _AnchorKey:
    # The pydantic model is frozen but holds lists, so it is not hashable itself.
    return (
        spec.input_width,
        spec.input_height,
        tuple(spec.strides),
        spec.min_scale,
        spec.max_scale,
        spec.anchor_offset_x,
        spec.anchor_offset_y,
        tuple(spec.aspect_ratios),
        spec.interpolated_scale_aspect_ratio,
        spec.fixed_anchor_size,
    )


@lru_cache(maxsize=16)
def _anchors(key: _AnchorKey) -> np.ndarray:
    (width, height, strides, min_scale, max_scale, off_x, off_y, ratios, interp, fixed) = key
    n_layers = len(strides)
    if n_layers == 0:
        raise ValueError("anchors need at least one stride")
    blocks: list[np.ndarray] = []
    layer = 0
    while layer < n_layers:
        # Consecutive layers with the same stride share one feature map; their
        # anchors are interleaved per cell, in layer order (as MediaPipe does).
        sizes: list[tuple[float, float]] = []  # (w, h) per anchor of a cell
        last = layer
        while last < n_layers and strides[last] == strides[layer]:
            scale = _scale(min_scale, max_scale, last, n_layers)
            for ratio in ratios:
                sizes.append((scale * math.sqrt(ratio), scale / math.sqrt(ratio)))
            if interp > 0.0:
                nxt = 1.0 if last == n_layers - 1 else _scale(min_scale, max_scale, last + 1, n_layers)
                s = math.sqrt(scale * nxt)
                sizes.append((s * math.sqrt(interp), s / math.sqrt(interp)))
            last += 1
        stride = strides[layer]
        fm_h = math.ceil(height / stride)
        fm_w = math.ceil(width / stride)
        ys, xs = np.meshgrid(np.arange(fm_h), np.arange(fm_w), indexing="ij")
        xc = ((xs.reshape(-1) + off_x) / fm_w).astype(np.float32)
        yc = ((ys.reshape(-1) + off_y) / fm_h).astype(np.float32)
        k = len(sizes)
        block = np.empty((fm_h * fm_w, k, 4), dtype=np.float32)
        block[:, :, 0] = xc[:, None]
        block[:, :, 1] = yc[:, None]
        if fixed:
            block[:, :, 2:] = 1.0
        else:
            block[:, :, 2:] = np.asarray(sizes, dtype=np.float32)[None, :, :]
        blocks.append(block.reshape(-1, 4))
        layer = last
    out = np.concatenate(blocks, axis=0)
    out.setflags(write=False)  # shared by the cache
    return out


def generate_anchors(spec: Anchors) -> np.ndarray:
    """SSD anchors as float32 [num_anchors, 4] = (x_center, y_center, w, h), normalized.

    The returned array is cached per spec and read-only.
    """
    return _anchors(_anchor_key(spec))


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one [4] box (xmin, ymin, xmax, ymax) with [n, 4] boxes (MediaPipe's OverlapSimilarity)."""
    iw = np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0])
    ih = np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1])
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    safe = np.where(union > 0, union, 1.0)
    return np.where(union > 0, inter / safe, 0.0)


def decode(raw_boxes: np.ndarray, raw_scores: np.ndarray, spec: Detection) -> list[FaceBox]:
    """Decode one image's raw BlazeFace outputs into faces, best first.

    ``raw_boxes`` is [anchors, 4 + 2*keypoints] (x_center, y_center, w, h, then
    x, y per keypoint, all in ``box_scale`` units relative to the anchor) and
    ``raw_scores`` [anchors] or [anchors, 1] logits; a leading batch dimension
    of 1 is accepted on both.
    """
    boxes = np.asarray(raw_boxes)
    scores = np.asarray(raw_scores)
    if boxes.ndim == 3:
        if boxes.shape[0] != 1:
            raise ValueError(f"decode takes one image, got raw_boxes of shape {boxes.shape}")
        boxes = boxes[0]
    if scores.ndim == 3 or (scores.ndim == 2 and scores.shape[0] == 1 and scores.shape[1] != 1):
        if scores.shape[0] != 1:
            raise ValueError(f"decode takes one image, got raw_scores of shape {scores.shape}")
        scores = scores[0]
    if scores.ndim == 2:
        if scores.shape[1] != 1:
            raise ValueError(f"raw_scores must be [anchors] or [anchors, 1], got {np.shape(raw_scores)}")
        scores = scores[:, 0]
    anchors = generate_anchors(spec.anchors)
    n = anchors.shape[0]
    n_coords = 4 + 2 * spec.num_keypoints
    if boxes.ndim != 2 or boxes.shape[0] != n or boxes.shape[1] < n_coords:
        raise ValueError(f"raw_boxes must be [{n}, >={n_coords}], got {np.shape(raw_boxes)}")
    if scores.shape != (n,):
        raise ValueError(f"raw_scores must hold {n} scores, got {np.shape(raw_scores)}")

    logits = np.clip(scores.astype(np.float64), -spec.score_clip, spec.score_clip)
    probs = 1.0 / (1.0 + np.exp(-logits))
    keep = np.flatnonzero(probs >= spec.min_score)  # NaN logits compare False: dropped
    if keep.size == 0:
        return []

    reg = boxes[keep, :n_coords].astype(np.float64) / spec.box_scale
    anc = anchors[keep].astype(np.float64)
    ax, ay, aw, ah = anc[:, 0:1], anc[:, 1:2], anc[:, 2:3], anc[:, 3:4]
    xc = reg[:, 0:1] * aw + ax
    yc = reg[:, 1:2] * ah + ay
    w = reg[:, 2:3] * aw
    h = reg[:, 3:4] * ah
    rects = np.concatenate([xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2], axis=1)
    kps = reg[:, 4:n_coords].reshape(-1, spec.num_keypoints, 2)
    kps = kps * np.stack([aw, ah], axis=2) + np.stack([ax, ay], axis=2)
    cand_scores = probs[keep]

    # MediaPipe drops boxes with a negative or NaN width/height.
    valid = (
        (w[:, 0] >= 0) & (h[:, 0] >= 0) & np.isfinite(rects).all(axis=1) & np.isfinite(kps).all(axis=(1, 2))
    )
    rects, kps, cand_scores = rects[valid], kps[valid], cand_scores[valid]

    order = np.argsort(-cand_scores, kind="stable")
    rects, kps, cand_scores = rects[order], kps[order], cand_scores[order]

    faces: list[FaceBox] = []
    remaining = np.arange(cand_scores.shape[0])
    while remaining.size and len(faces) < spec.max_detections:
        top = remaining[0]
        overlap = _iou(rects[top], rects[remaining]) > spec.iou_threshold
        overlap[0] = True  # the best box always joins its own cluster
        members = remaining[overlap]
        weights = cand_scores[members]
        total = float(weights.sum())
        box = (rects[members] * weights[:, None]).sum(axis=0) / total
        pts = (kps[members] * weights[:, None, None]).sum(axis=0) / total
        faces.append(
            FaceBox(
                xmin=float(box[0]),
                ymin=float(box[1]),
                xmax=float(box[2]),
                ymax=float(box[3]),
                score=float(cand_scores[top]),
                keypoints=tuple((float(x), float(y)) for x, y in pts),
            )
        )
        remaining = remaining[~overlap]
    return faces


# Anchor settings cannot be read from a model file: they ship as named presets,
# with the keypoint names that go with them. The manifest's validator checks
# that a preset's anchor count equals the rows of the model's box output.
PRESETS: dict[str, dict[str, object]] = {
    # MediaPipe face_detection_short_range.pbtxt: 896 anchors
    "face": {
        "anchors": Anchors(input_width=128, input_height=128, strides=[8, 16, 16, 16]),
        "num_keypoints": 6,
        "box_scale": 128.0,
        "min_score": 0.5,
        "iou_threshold": 0.3,
        "keypoint_names": [
            "right_eye", "left_eye", "nose_tip", "mouth_center", "right_ear_tragion", "left_ear_tragion",
        ],
    },
    # MediaPipe pose_detection_cpu.pbtxt: 28*28*2 + 14*14*2 + 7*7*6 = 2254 anchors. The
    # detector's box is the face; the body box comes from keypoints 0 (mid-hip) and 1.
    "person": {
        "anchors": Anchors(input_width=224, input_height=224, strides=[8, 16, 32, 32, 32]),
        "num_keypoints": 4,
        "box_scale": 224.0,
        "min_score": 0.5,
        "iou_threshold": 0.3,
        "keypoint_names": ["mid_hip", "full_body_radius", "mid_shoulder", "upper_body_radius"],
        "body_box": BodyBox(center=0, radius_point=1, scale=1.0),
    },
}  # fmt: skip


def preset(name: str, boxes_output: str, scores_output: str, **overrides: object) -> Detection:
    """A ``blazeface`` post-processing spec from a named preset (KeyError when unknown)."""
    fields = dict(PRESETS[name]) | {k: v for k, v in overrides.items() if v is not None}
    return Detection.model_validate({"boxes_output": boxes_output, "scores_output": scores_output, **fields})
