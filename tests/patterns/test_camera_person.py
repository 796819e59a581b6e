"""The camera role with the person detector and its filters, on a video made from the reference
photo: only frames with a person are recorded, each with the person's box."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import copy_models
from tests.patterns.test_camera import camera
from tests.patterns.videos import write_face_video
from tests.runtime.test_person import MIN_IOU, PERSON, iou

PHOTO_FRAMES, BLANK_FRAMES = 12, 8


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_models(tmp_path_factory.mktemp("models"), ["person"])


def test_records_only_frames_with_a_person(models: Path, tmp_path: Path) -> None:
    # the photo unchanged (512 x 512, offset 0) for 12 frames, then 8 grey frames
    video = write_face_video(
        tmp_path / "people.avi", fps=10, face_frames=PHOTO_FRAMES, blank_frames=BLANK_FRAMES,
        width=512, height=512, travel=0,
    )  # fmt: skip
    env = {"model": "person", "labels": '["person"]', "min_score": 0.5, "only_detections": True}
    with camera(models, tmp_path / "data", str(video.path), realtime=False, fps=1000, **env) as run:
        assert run.wait(120) == 0, run.logs()
    results = run.results()
    frames = sorted(r.body["frame"] for r in results)
    assert frames == list(range(PHOTO_FRAMES)), frames  # every photo frame, no grey frame
    for r in results:
        (box,) = r.body["boxes"]
        assert box["label"] == "person" and box["score"] >= 0.5
        assert iou(box, PERSON) >= MIN_IOU, box
    status = run.status()
    assert status["frames_inferred"] == PHOTO_FRAMES + BLANK_FRAMES
    assert status["frames_without_detection"] == BLANK_FRAMES


def test_a_label_the_model_lacks_is_a_config_error(models: Path, tmp_path: Path) -> None:
    video = write_face_video(tmp_path / "v.avi", face_frames=2, blank_frames=0, width=64, height=64, travel=0)
    with camera(models, tmp_path / "data", str(video.path), model="person", labels='["cat"]') as run:
        code = run.wait(60)
    assert code == 3, run.logs()  # EXIT_CONFIG
    assert "camera.labels: ['cat'] not among model 'person'" in run.logs()
