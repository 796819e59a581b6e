"""BlazeFace decoding on the real MediaPipe model and a real photograph.

The model is ``models/face/1/model.tflite`` (MediaPipe face_detection_short_range)
and the image its bundled sample, NASA's astronaut portrait (512x512). The
shared reference says: one face, best score 0.92, box about x 179-271,
y 82-175 in image pixels.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest
from ai_edge_litert.interpreter import Interpreter

from edge_agent.runtime.blazeface import FaceBox, decode, generate_anchors
from edge_agent.runtime.package import Anchors, Detection, load_golden, read_manifest, verify_files

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "models" / "face" / "1"
ONNX_PKG = ROOT / "models" / "face_onnx" / "1"
SAMPLE = PKG / "samples" / "astronaut.png"
MANIFEST = read_manifest(PKG)
assert isinstance(MANIFEST.postprocessing, Detection)
SPEC: Detection = MANIFEST.postprocessing
SIZE = 128

# Reference box (x0, y0, x1, y1) in 512x512 pixels. The reference decoded one
# anchor's centre before NMS; we report MediaPipe's weighted-NMS average of the
# 8 overlapping anchors, and resize kernels differ a little between libraries,
# so a few pixels of difference are expected. 10 px is ~10% of the 92 px face.
REF_BOX = (179.0, 82.0, 271.0, 175.0)
BOX_TOL_PX = 10.0


# --- helpers: preprocessing as the manifest says, and its inverse ---------------------------


def load_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert bgr is not None, path
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def letterbox(rgb: np.ndarray) -> tuple[np.ndarray, float, int, int]:
    """Fit into SIZE x SIZE keeping the aspect ratio, centred, black padding.

    Returns the float input tensor [1, SIZE, SIZE, 3] and (scale, left, top)
    such that model pixel = image pixel * scale + (left, top).
    """
    pre = MANIFEST.preprocessing
    assert pre is not None and pre.resize.mode == "letterbox" and pre.resize.interpolation == "linear"
    assert pre.color == "rgb" and pre.layout == "NHWC" and pre.mean is None and pre.std is None
    h, w = rgb.shape[:2]
    scale = min(SIZE / w, SIZE / h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    canvas = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
    top, left = (SIZE - nh) // 2, (SIZE - nw) // 2
    canvas[top : top + nh, left : left + nw] = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_LINEAR)
    x = canvas.astype(np.float32) * np.float32(pre.scale) + np.float32(pre.offset)
    return x[None], nw / w, left, top


def to_image_px(face: FaceBox, scale: float, left: int, top: int) -> tuple[float, float, float, float]:
    """Undo the letterbox: normalized model-input box -> original image pixels."""
    return (
        (face.xmin * SIZE - left) / scale,
        (face.ymin * SIZE - top) / scale,
        (face.xmax * SIZE - left) / scale,
        (face.ymax * SIZE - top) / scale,
    )


@pytest.fixture(scope="module")
def interpreter():  # type: ignore[no-untyped-def]
    it = Interpreter(model_path=str(PKG / MANIFEST.file))
    it.allocate_tensors()
    return it


def run(it, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[no-untyped-def]
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    out = {d["name"]: np.array(it.get_tensor(d["index"])) for d in it.get_output_details()}
    return out[SPEC.boxes_output], out[SPEC.scores_output]


@pytest.fixture(scope="module")
def astronaut(interpreter):  # type: ignore[no-untyped-def]
    x, scale, left, top = letterbox(load_rgb(SAMPLE))
    boxes, scores = run(interpreter, x)
    return x, boxes, scores, (scale, left, top)


# --- anchors ----------------------------------------------------------------------------


def test_short_range_anchors_match_mediapipe() -> None:
    anchors = generate_anchors(SPEC.anchors)
    assert anchors.shape == (896, 4) and anchors.dtype == np.float32
    # stride 8: 16x16 cells x 2 anchors; stride 16 (three layers merged): 8x8 cells x 6 anchors
    assert np.allclose(anchors[0], [0.5 / 16, 0.5 / 16, 1, 1])
    assert np.allclose(anchors[1], anchors[0])
    assert np.allclose(anchors[2], [1.5 / 16, 0.5 / 16, 1, 1])
    assert np.allclose(anchors[511], [15.5 / 16, 15.5 / 16, 1, 1])
    assert np.allclose(anchors[512:518], [[0.5 / 8, 0.5 / 8, 1, 1]] * 6)
    assert np.allclose(anchors[-1], [7.5 / 8, 7.5 / 8, 1, 1])
    assert np.all(anchors[:, 2:] == 1.0)  # fixed_anchor_size
    assert generate_anchors(SPEC.anchors) is anchors  # cached
    assert not anchors.flags.writeable


def test_anchor_sizes_when_not_fixed() -> None:
    spec = SPEC.anchors.model_copy(update={"fixed_anchor_size": False})
    a = generate_anchors(spec)
    s = [0.1484375 + (0.75 - 0.1484375) * i / 3 for i in range(4)]
    # stride-8 cell: scale s0 and the interpolated sqrt(s0 * s1)
    assert np.allclose(a[0, 2:], [s[0], s[0]])
    assert np.allclose(a[1, 2:], [math.sqrt(s[0] * s[1])] * 2)
    # stride-16 cell: layers 1, 2, 3, each with its interpolated scale (the last one with 1.0)
    want = [s[1], math.sqrt(s[1] * s[2]), s[2], math.sqrt(s[2] * s[3]), s[3], math.sqrt(s[3])]
    assert np.allclose(a[512:518, 2], want)
    assert np.allclose(a[512:518, 3], want)
    assert generate_anchors(Anchors(input_width=64, input_height=32, strides=[16])).shape == (4 * 2 * 2, 4)


# --- the real model on the real image ---------------------------------------------------


def test_astronaut_face_found(astronaut) -> None:  # type: ignore[no-untyped-def]
    _x, boxes, scores, (scale, left, top) = astronaut
    assert boxes.shape == (1, 896, 16) and scores.shape == (1, 896, 1)
    faces = decode(boxes, scores, SPEC)
    assert len(faces) == 1, faces  # 8 raw anchors fire; weighted NMS merges them into one face
    face = faces[0]
    assert face.score >= 0.85
    got = to_image_px(face, scale, left, top)
    for g, want in zip(got, REF_BOX, strict=True):
        assert abs(g - want) <= BOX_TOL_PX, (got, REF_BOX)
    # the raw evidence the reference describes: 8 anchors above 0.5
    probs = 1.0 / (1.0 + np.exp(-np.clip(scores.reshape(-1).astype(np.float64), -100, 100)))
    assert int((probs > 0.5).sum()) == 8
    assert face.score == pytest.approx(float(probs.max()))


def test_keypoints_inside_box_and_plausible(astronaut) -> None:  # type: ignore[no-untyped-def]
    _x, boxes, scores, _ = astronaut
    face = decode(boxes, scores, SPEC)[0]
    assert len(face.keypoints) == SPEC.num_keypoints == len(SPEC.keypoint_names) == 6
    kp = dict(zip(SPEC.keypoint_names, face.keypoints, strict=True))
    for name in ("right_eye", "left_eye", "nose_tip", "mouth_center"):
        kx, ky = kp[name]
        assert face.xmin < kx < face.xmax and face.ymin < ky < face.ymax, name
    # The ear tragions mark the sides of the head, which is what the box edges
    # are trained on: here the right one sits ~1 px left of xmin. Allow 5% of the box.
    mx, my = 0.05 * (face.xmax - face.xmin), 0.05 * (face.ymax - face.ymin)
    for name in ("right_ear_tragion", "left_ear_tragion"):
        kx, ky = kp[name]
        assert face.xmin - mx <= kx <= face.xmax + mx and face.ymin - my <= ky <= face.ymax + my, name
    # the subject's right eye is on the image's left; eyes above nose above mouth
    assert kp["right_eye"][0] < kp["left_eye"][0]
    assert max(kp["right_eye"][1], kp["left_eye"][1]) < kp["nose_tip"][1] < kp["mouth_center"][1]


def test_letterboxed_crop_maps_back(interpreter) -> None:  # type: ignore[no-untyped-def]
    # A 512x352 strip of the photo: the letterbox keeps the full image's scale
    # (1/4) but pads 20 model rows above and below, so a decoder or caller that
    # ignored the padding would be off by 80 image pixels vertically.
    y0 = 20
    strip = np.ascontiguousarray(load_rgb(SAMPLE)[y0 : y0 + 352])
    x, scale, left, top = letterbox(strip)
    assert (scale, left, top) == (0.25, 0, 20)
    faces = decode(*run(interpreter, x), SPEC)
    assert len(faces) == 1 and faces[0].score >= 0.85, faces
    got = to_image_px(faces[0], scale, left, top)
    want = (REF_BOX[0], REF_BOX[1] - y0, REF_BOX[2], REF_BOX[3] - y0)
    for g, w in zip(got, want, strict=True):
        assert abs(g - w) <= BOX_TOL_PX, (got, want)


@pytest.mark.parametrize("kind", ["grey", "noise"])
def test_no_face(interpreter, kind: str) -> None:  # type: ignore[no-untyped-def]
    if kind == "grey":
        img = np.full((240, 320, 3), 128, dtype=np.uint8)
    else:
        img = np.random.default_rng(0).integers(0, 256, size=(240, 320, 3), dtype=np.uint8)
    boxes, scores = run(interpreter, letterbox(img)[0])
    assert decode(boxes, scores, SPEC) == []
    probs = 1.0 / (1.0 + np.exp(-np.clip(scores.astype(np.float64), -100, 100)))
    assert float(probs.max()) < 0.5


def test_decode_deterministic_and_shape_tolerant(astronaut) -> None:  # type: ignore[no-untyped-def]
    _x, boxes, scores, _ = astronaut
    b0, s0 = boxes.copy(), scores.copy()
    first = decode(boxes, scores, SPEC)
    assert decode(boxes, scores, SPEC) == first
    assert decode(boxes[0], scores[0], SPEC) == first
    assert decode(boxes[0], scores[0, :, 0], SPEC) == first
    assert np.array_equal(boxes, b0) and np.array_equal(scores, s0)  # inputs untouched
    with pytest.raises(ValueError):
        decode(boxes[:, :100], scores, SPEC)
    with pytest.raises(ValueError):
        decode(np.concatenate([boxes, boxes]), np.concatenate([scores, scores]), SPEC)


# --- weighted NMS on synthetic raw outputs ---------------------------------------------


def _raw(cands: dict[int, tuple[float, float, float, float, float]]) -> tuple[np.ndarray, np.ndarray]:
    """{anchor index: (dx, dy, w, h, logit)} in input pixels -> raw outputs; others score -20."""
    boxes = np.zeros((896, 16), dtype=np.float32)
    scores = np.full((896, 1), -20.0, dtype=np.float32)
    for i, (dx, dy, w, h, logit) in cands.items():
        boxes[i, :4] = (dx, dy, w, h)
        boxes[i, 4:] = np.tile([dx, dy], 6)  # keypoints at the box centre
        scores[i, 0] = logit
    return boxes, scores


def test_weighted_nms_averages_overlapping_boxes() -> None:
    a = generate_anchors(SPEC.anchors)
    i = 512 + 8 * 6 * 3 + 6 * 3  # a stride-16 anchor, cell (3, 3)
    cx, cy = float(a[i, 0]), float(a[i, 1])
    logit_hi, logit_lo = 3.0, 1.0
    boxes, scores = _raw(
        {
            i: (0.0, 0.0, 32.0, 32.0, logit_hi),
            i + 1: (8.0, 0.0, 32.0, 32.0, logit_lo),  # IoU 0.6 with the first: merged
            10: (0.0, 0.0, 16.0, 16.0, 0.0),  # far away, score exactly 0.5: kept (>= min_score)
            20: (0.0, 0.0, -16.0, 16.0, 5.0),  # negative width: dropped, as in MediaPipe
        }
    )
    faces = decode(boxes, scores, SPEC)
    assert len(faces) == 2
    hi, lo = 1 / (1 + math.exp(-logit_hi)), 1 / (1 + math.exp(-logit_lo))
    assert faces[0].score == pytest.approx(hi)
    shift = (8.0 / SIZE) * lo / (hi + lo)
    assert faces[0].xmin == pytest.approx(cx - 16 / SIZE + shift)
    assert faces[0].xmax == pytest.approx(cx + 16 / SIZE + shift)
    assert faces[0].ymin == pytest.approx(cy - 16 / SIZE)
    assert faces[0].keypoints[0] == pytest.approx((cx + shift, cy))
    assert faces[1].score == pytest.approx(0.5)
    assert decode(boxes, scores, SPEC.model_copy(update={"max_detections": 1})) == faces[:1]
    assert decode(boxes, scores, SPEC.model_copy(update={"min_score": 0.99})) == []


def test_nms_keeps_separated_faces_sorted() -> None:
    boxes, scores = _raw({600: (0.0, 0.0, 20.0, 20.0, 1.0), 880: (0.0, 0.0, 20.0, 20.0, 4.0)})
    faces = decode(boxes, scores, SPEC)
    assert [round(f.score, 4) for f in faces] == [round(1 / (1 + math.exp(-4.0)), 4), 0.7311]


# --- the package itself ------------------------------------------------------------------


def test_package_golden_is_this_preprocessing_and_reproduces(interpreter) -> None:  # type: ignore[no-untyped-def]
    verify_files(PKG, MANIFEST)
    inputs, outputs = load_golden(PKG, MANIFEST)
    x, *_ = letterbox(load_rgb(SAMPLE))
    # the golden input is the manifest's preprocessing of the sample, up to resize rounding
    assert np.abs(inputs["input"] - x).max() <= 2 / 127.5
    boxes, scores = run(interpreter, inputs["input"])
    atol = MANIFEST.golden.atol
    assert np.allclose(boxes, outputs[SPEC.boxes_output], atol=atol, rtol=0)
    assert np.allclose(scores, outputs[SPEC.scores_output], atol=atol, rtol=0)


@pytest.mark.skipif(not (ONNX_PKG / "manifest.json").is_file(), reason="face_onnx was not built")
def test_onnx_version_matches_litert(astronaut) -> None:  # type: ignore[no-untyped-def]
    manifest = read_manifest(ONNX_PKG)
    verify_files(ONNX_PKG, manifest)
    assert manifest.preprocessing == MANIFEST.preprocessing
    assert manifest.postprocessing == MANIFEST.postprocessing
    x, boxes, scores, _ = astronaut
    sess = ort.InferenceSession(str(ONNX_PKG / manifest.file), providers=["CPUExecutionProvider"])
    ob, os_ = sess.run([SPEC.boxes_output, SPEC.scores_output], {"input": x})
    assert np.abs(ob - boxes).max() <= manifest.golden.atol
    assert np.abs(os_ - scores).max() <= manifest.golden.atol
    got, want = decode(ob, os_, SPEC), decode(boxes, scores, SPEC)
    assert len(got) == len(want) == 1
    assert got[0].score == pytest.approx(want[0].score, abs=1e-4)
    assert (got[0].xmin, got[0].ymin, got[0].xmax, got[0].ymax) == pytest.approx(
        (want[0].xmin, want[0].ymin, want[0].xmax, want[0].ymax), abs=1e-4
    )
