"""Test videos written with OpenCV's VideoWriter (MJPG in .avi, which the bundled FFmpeg reads).

A face video is the astronaut sample (models/face/1/samples) scaled to the
frame height and sliding right, followed by blank grey frames. Each frame's
content is known, so a test can tell which frames must hold a face and where.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from tests.conftest import MODELS

ASTRONAUT = MODELS / "face" / "1" / "samples" / "astronaut.png"
# the face in astronaut.png (512 x 512) is centred near x = 225, y = 128
FACE_CENTER = (225.0, 128.0)


@dataclass(frozen=True)
class TestVideo:
    path: Path
    fps: float
    width: int
    height: int
    offsets: tuple[int | None, ...]  # x offset of the astronaut per frame; None = blank frame

    __test__ = False  # not a pytest test class

    @property
    def frames(self) -> int:
        return len(self.offsets)

    def face_center_x(self, index: int) -> float | None:
        """Where the face centre is drawn in frame ``index`` (frame pixels), None if blank."""
        offset = self.offsets[index]
        if offset is None:
            return None
        return offset + FACE_CENTER[0] * self.height / 512


def face_frame(width: int, height: int, offset: int) -> np.ndarray:
    """The astronaut scaled to the frame height, ``offset`` pixels from the left, on black."""
    src = cv2.imread(str(ASTRONAUT))
    if src is None:
        raise RuntimeError(f"cannot read {ASTRONAUT}")
    face = cv2.resize(src, (height, height), interpolation=cv2.INTER_AREA)
    frame = np.zeros((height, width, 3), np.uint8)
    visible = min(height, width - offset)
    frame[:, offset : offset + visible] = face[:, :visible]
    return frame


def blank_frame(width: int, height: int) -> np.ndarray:
    return np.full((height, width, 3), 128, np.uint8)


def write_face_video(
    path: Path,
    *,
    fps: float = 30.0,
    face_frames: int = 60,
    blank_frames: int = 30,
    width: int = 320,
    height: int = 240,
    travel: int = 80,
) -> TestVideo:
    """``face_frames`` frames of a face moving ``travel`` px to the right, then blank frames."""
    offsets: list[int | None] = [round(travel * i / max(1, face_frames - 1)) for i in range(face_frames)]
    offsets += [None] * blank_frames
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write MJPG video {path}")
    try:
        for offset in offsets:
            writer.write(blank_frame(width, height) if offset is None else face_frame(width, height, offset))
    finally:
        writer.release()
    return TestVideo(path, fps, width, height, tuple(offsets))


def read_frames(path: Path) -> list[np.ndarray]:
    """Every frame of a video decoded as the camera role decodes it (BGR)."""
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    frames: list[np.ndarray] = []
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                return frames
            frames.append(frame)
    finally:
        cap.release()
