"""YOLO / SSD decoding and class-aware NMS (edge_agent.runtime.detect), on outputs whose boxes
are known because the test wrote them; shapes that fit no layout give a DecodeError, never an
IndexError."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.errors import DecodeError
from edge_agent.runtime.detect import decode_ssd, decode_yolo, nms
from edge_agent.runtime.package import SsdDetection, YoloDetection

SIZE = (100, 80)  # model input width, height


def _corners(boxes: list[object]) -> list[tuple[float, ...]]:
    return [(b.xmin, b.ymin, b.xmax, b.ymax, b.class_index) for b in boxes]  # type: ignore[attr-defined]


def test_yolov5_layout_with_objectness() -> None:
    # [1, A, 5+C]: cx, cy, w, h, objectness, 2 class scores; more anchors than columns
    rows = np.array(
        [
            [50, 40, 20, 10, 0.9, 0.1, 0.9],  # score 0.81, class 1
            [51, 40, 20, 10, 0.9, 0.1, 0.8],  # overlaps, same class, 0.72: suppressed
            [20, 20, 10, 10, 0.5, 0.9, 0.1],  # 0.45, class 0
            [80, 60, 10, 10, 0.2, 0.9, 0.1],  # 0.18: below min_score
            [10, 70, 4, 4, 0.0, 0.0, 0.0],
            [90, 10, 4, 4, 0.0, 0.0, 0.0],
            [30, 60, 4, 4, 0.0, 0.0, 0.0],
            [60, 20, 4, 4, 0.0, 0.0, 0.0],
        ],
        dtype=np.float32,
    )[None]
    spec = YoloDetection(output="out", min_score=0.3, iou_threshold=0.5)
    got = decode_yolo(rows, spec, SIZE)
    assert _corners(got) == [(40.0, 35.0, 60.0, 45.0, 1), (15.0, 15.0, 25.0, 25.0, 0)]
    assert [round(b.score, 4) for b in got] == [0.81, 0.45]


def test_yolov8_normalized_xyxy_and_override() -> None:
    # [4+C, A] with normalized xyxy boxes; layout forced (a square output cannot be told apart)
    a = np.zeros((5, 5), np.float32)
    a[:, 0] = [0.1, 0.25, 0.3, 0.5, 0.95]  # box 0: class 0
    spec = YoloDetection(output="o", layout="yolov8", box_format="xyxy", normalized=True, min_score=0.5)
    (box,) = decode_yolo(a, spec, SIZE)
    assert (box.xmin, box.ymin, box.xmax, box.ymax) == pytest.approx((10.0, 20.0, 30.0, 40.0), abs=1e-5)


def test_class_aware_and_agnostic_nms() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10]], dtype=np.float64)
    scores = np.array([0.9, 0.8, 0.7])
    classes = np.array([0, 0, 1])
    assert nms(boxes, scores, classes, 0.5, 10, agnostic=False).tolist() == [0, 2]
    assert nms(boxes, scores, classes, 0.5, 10, agnostic=True).tolist() == [0]
    assert nms(boxes, scores, classes, 0.5, 1, agnostic=False).tolist() == [0]  # max detections


def test_ssd_tflite_postprocess_outputs() -> None:
    # TFLite_Detection_PostProcess: boxes [1, N, 4] (ymin, xmin, ymax, xmax, normalized), classes, scores, count
    outputs = {
        "boxes": np.array([[[0.1, 0.2, 0.5, 0.6], [0.5, 0.5, 0.9, 0.9], [0, 0, 1, 1]]], np.float32),
        "classes": np.array([[3.0, 1.0, 7.0]], np.float32),
        "scores": np.array([[0.8, 0.6, 0.9]], np.float32),
        "count": np.array([2.0], np.float32),  # the third row is padding
    }
    spec = SsdDetection(
        boxes_output="boxes",
        scores_output="scores",
        classes_output="classes",
        count_output="count",
        min_score=0.5,
    )
    got = decode_ssd(outputs, spec, SIZE)
    assert _corners(got) == [
        pytest.approx((20.0, 8.0, 60.0, 40.0, 3)),
        pytest.approx((50.0, 40.0, 90.0, 72.0, 1)),
    ]


def test_ssd_per_class_scores_with_background() -> None:
    outputs = {
        "b": np.array([[[10, 10, 30, 30], [50, 50, 70, 70]]], np.float32),
        "s": np.array([[[0.95, 0.04, 0.01], [0.1, 0.2, 0.7]]], np.float32),  # class 0 is background
    }
    spec = SsdDetection(
        boxes_output="b", scores_output="s", box_format="xyxy", normalized=False, background_class=0
    )
    got = decode_ssd(outputs, spec, SIZE)
    assert _corners(got) == [(50.0, 50.0, 70.0, 70.0, 2)]  # the background row scores 0.04 at best


@pytest.mark.parametrize(
    ("raw", "spec", "words"),
    [
        (np.zeros((1, 3, 10), np.float32), YoloDetection(output="o", layout="yolov8"), "4 box rows"),
        (np.zeros((1, 10, 4), np.float32), YoloDetection(output="o", layout="yolov5"), "objectness"),
        (np.zeros((2, 6, 10), np.float32), YoloDetection(output="o"), "one image at a time"),
        (np.zeros((6,), np.float32), YoloDetection(output="o"), "expected 2 dimensions"),
    ],
)
def test_yolo_shapes_that_fit_no_layout(raw: np.ndarray, spec: YoloDetection, words: str) -> None:
    with pytest.raises(DecodeError, match=words):
        decode_yolo(raw, spec, SIZE)


def test_ssd_mismatched_outputs() -> None:
    spec = SsdDetection(boxes_output="b", scores_output="s")
    with pytest.raises(DecodeError, match="2 boxes but 3 score rows"):
        decode_ssd({"b": np.zeros((1, 2, 4), np.float32), "s": np.zeros((1, 3, 2), np.float32)}, spec, SIZE)
    with pytest.raises(DecodeError, match=r"must be \[N, A, 4\]"):
        decode_ssd({"b": np.zeros((1, 2, 5), np.float32), "s": np.zeros((1, 2, 2), np.float32)}, spec, SIZE)


def test_nan_rows_are_dropped() -> None:
    a = np.zeros((6, 8), np.float32)
    a[:, 0] = [50, 40, 20, 10, 0.9, 0.0]
    a[:, 1] = [np.nan, 40, 20, 10, 0.95, 0.0]
    got = decode_yolo(a, YoloDetection(output="o", min_score=0.5), SIZE)
    assert len(got) == 1 and got[0].score == pytest.approx(0.9)
