"""The camera role with the person detector and its filters, on videos made from the reference
photos: only frames with a person are recorded, each with the people's boxes."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import copy_models
from tests.patterns.test_camera import camera
from tests.patterns.videos import blank_frame, write_face_video
from tests.runtime.test_person import MIN_IOU, PEOPLE_PHOTO, PERSON, iou, match_people

PHOTO_FRAMES, BLANK_FRAMES = 12, 8


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_models(tmp_path_factory.mktemp("models"), ["person", "person_onnx"])


def write_people_video(path: Path, photo_frames: int, blank_frames: int) -> Path:
    """The two-person photo (819 x 600) on an 820 x 600 frame (the codec wants an even width: one
    black column on the right, which moves no box), then grey frames. FFV1, lossless: MJPG's
    blocking costs Collins, small in the picture, her detection (score ~0.6 on the photo)."""
    photo = cv2.imread(str(PEOPLE_PHOTO))
    frame = np.zeros((600, 820, 3), np.uint8)
    frame[:, : photo.shape[1]] = photo
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"FFV1"), 10, (820, 600))
    assert writer.isOpened()
    try:
        for i in range(photo_frames + blank_frames):
            writer.write(frame if i < photo_frames else blank_frame(820, 600))
    finally:
        writer.release()
    return path


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


@pytest.mark.parametrize("model", ["person", "person_onnx"])
def test_records_both_people_of_the_two_person_photo(models: Path, tmp_path: Path, model: str) -> None:
    video = write_people_video(tmp_path / "two.avi", PHOTO_FRAMES, BLANK_FRAMES)
    env = {"model": model, "labels": '["person"]', "min_score": 0.5, "only_detections": True}
    with camera(models, tmp_path / "data", str(video), realtime=False, fps=1000, **env) as run:
        assert run.wait(120) == 0, run.logs()
    results = run.results()
    assert sorted(r.body["frame"] for r in results) == list(range(PHOTO_FRAMES)), [r.body for r in results]
    for r in results:
        boxes = r.body["boxes"]
        assert len(boxes) == 2 and all(b["label"] == "person" for b in boxes), boxes
        match_people(boxes)  # Collins and Hopper, each with IoU >= 0.5 against the stated boxes
    assert run.status()["frames_without_detection"] == BLANK_FRAMES
