"""The bundled person detector (MediaPipe BlazePose's pose_detection.tflite) on the reference
photo, with the boxes stated from the picture itself, not from the model's output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_agent.errors import PackageError
from edge_agent.runtime.engine import Engine
from edge_agent.runtime.package import parse_manifest
from tests.conftest import MODELS

PHOTO = MODELS / "person" / "1" / "samples" / "astronaut.png"  # 512 x 512, public domain (NASA)
# Read off the picture: Eileen Collins from her left arm's edge (x ~22) to her right shoulder
# (x ~370), from the top of her hair (y ~14) down to where the frame cuts her at the waist (512).
PERSON = (22.0, 14.0, 370.0, 512.0)
# Her head and neck, where BlazePose's own box (a face-sized box) must lie.
HEAD = (140.0, 40.0, 310.0, 280.0)
MIN_IOU = 0.5


def iou(a: dict[str, float] | tuple[float, ...], b: tuple[float, ...]) -> float:
    ax = (a["xmin"], a["ymin"], a["xmax"], a["ymax"]) if isinstance(a, dict) else a
    w = max(0.0, min(ax[2], b[2]) - max(ax[0], b[0]))
    h = max(0.0, min(ax[3], b[3]) - max(ax[1], b[1]))
    inter = w * h
    union = (ax[2] - ax[0]) * (ax[3] - ax[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def test_finds_the_person_in_the_reference_photo(engine: Engine) -> None:
    (row,) = engine.predict("person", images=[PHOTO.read_bytes()]).results
    assert len(row["boxes"]) == 1, row
    box = row["boxes"][0]
    assert box["label"] == "person" and box["score"] >= 0.5
    assert iou(box, PERSON) >= MIN_IOU, box  # the reported box is the body
    d = box["detector_box"]  # the detector's own box: face-sized, on her head, not the body
    assert HEAD[0] <= d["xmin"] < d["xmax"] <= HEAD[2] and HEAD[1] <= d["ymin"] < d["ymax"] <= HEAD[3], d
    assert [k["name"] for k in box["keypoints"]][:2] == ["mid_hip", "full_body_radius"]


def test_anchor_preset_is_checked_against_the_output(tmp_path: Path) -> None:
    doc = json.loads((MODELS / "person" / "1" / "manifest.json").read_text())
    assert doc["postprocessing"]["anchors"]["strides"] == [8, 16, 32, 32, 32]
    doc["postprocessing"]["anchors"]["strides"] = [8, 16, 16, 16]  # the face preset's strides
    with pytest.raises(PackageError, match="make 2744 anchors but output 'Identity' has 2254 rows"):
        parse_manifest(json.dumps(doc))
