"""The bundled person detector (MediaPipe BlazePose's pose_detection.tflite) and its ONNX twin
(person_onnx) on the reference photos, with the boxes stated from the pictures themselves, not
from the model's output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_agent.errors import PackageError
from edge_agent.runtime.engine import Engine
from edge_agent.runtime.package import parse_manifest
from tests.conftest import DATA, MODELS

PHOTO = MODELS / "person" / "1" / "samples" / "astronaut.png"  # 512 x 512, public domain (NASA)
# Read off the picture: Eileen Collins from her left arm's edge (x ~22) to her right shoulder
# (x ~370), from the top of her hair (y ~14) down to where the frame cuts her at the waist (512).
PERSON = (22.0, 14.0, 370.0, 512.0)
# Her head and neck, where BlazePose's own box (a face-sized box) must lie.
HEAD = (140.0, 40.0, 310.0, 280.0)
MIN_IOU = 0.5

# The two-person reference photo (819 x 600; tests/data/people/LICENSE.txt: both portraits public
# domain, composed by models/scripts/build_people_photo.py). Read off the picture: Eileen Collins,
# bottom left, from her left arm's edge (x ~12) to her right shoulder (x ~220), from the top of her
# hair (y ~302) to the bottom edge, which cuts her at the waist; Grace Hopper, right, from her left
# shoulder (x ~320) to her right shoulder (x ~815), from the top of her cap (y ~22) to the bottom
# edge.
PEOPLE_PHOTO = DATA / "people" / "people.png"
PEOPLE = {"Collins": (12.0, 302.0, 220.0, 600.0), "Hopper": (320.0, 22.0, 815.0, 600.0)}


def match_people(boxes: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Each stated person's best box by IoU; asserts one distinct box per person, IoU >= 0.5."""
    found: dict[str, dict[str, float]] = {}
    for who, ref in PEOPLE.items():
        best = max(boxes, key=lambda b: iou(b, ref))
        assert iou(best, ref) >= MIN_IOU, (who, [(round(iou(b, ref), 3), b) for b in boxes])
        found[who] = best
    assert found["Collins"] is not found["Hopper"], found
    return found


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


@pytest.mark.parametrize("model", ["person", "person_onnx"])
def test_finds_both_people_in_the_two_person_photo(engine: Engine, model: str) -> None:
    (row,) = engine.predict(model, images=[PEOPLE_PHOTO.read_bytes()]).results
    boxes = row["boxes"]
    assert len(boxes) == 2, boxes
    assert all(b["label"] == "person" and b["score"] >= 0.5 for b in boxes), boxes
    for who, box in match_people(boxes).items():
        d, body = box["detector_box"], PEOPLE[who]  # the detector's own box lies on that person
        assert body[0] <= d["xmin"] < d["xmax"] <= body[2] and body[1] <= d["ymin"] < d["ymax"] <= body[3], (
            who,
            d,
        )


def test_onnx_twin_answers_as_the_tflite_model(engine: Engine) -> None:
    """person_onnx is person converted: same people, boxes within a pixel, scores within 0.01."""
    for photo in (PHOTO, PEOPLE_PHOTO):
        (a,) = engine.predict("person", images=[photo.read_bytes()]).results
        (b,) = engine.predict("person_onnx", images=[photo.read_bytes()]).results
        assert len(a["boxes"]) == len(b["boxes"]) >= 1
        for x, y in zip(a["boxes"], b["boxes"], strict=True):
            assert abs(x["score"] - y["score"]) < 0.01, (x, y)
            assert all(abs(x[k] - y[k]) < 1.0 for k in ("xmin", "ymin", "xmax", "ymax")), (x, y)


def test_anchor_preset_is_checked_against_the_output(tmp_path: Path) -> None:
    doc = json.loads((MODELS / "person" / "1" / "manifest.json").read_text())
    assert doc["postprocessing"]["anchors"]["strides"] == [8, 16, 32, 32, 32]
    doc["postprocessing"]["anchors"]["strides"] = [8, 16, 16, 16]  # the face preset's strides
    with pytest.raises(PackageError, match="make 2744 anchors but output 'Identity' has 2254 rows"):
        parse_manifest(json.dumps(doc))
