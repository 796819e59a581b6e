#!/usr/bin/env python3
"""Build the person detector package ``models/person/1`` with ``models import`` itself.

Steps, end to end:

1. ``pip download --no-deps mediapipe==0.10.21`` (the same cp311 manylinux wheel
   the face model came from; only unzipped, never installed) and extract
   ``mediapipe/modules/pose_detection/pose_detection.tflite`` (BlazePose's person
   detector), checking its sha256.
2. Import it with :func:`edge_agent.runtime.importer.prepare`, the code behind
   ``edge-agent models import``: the signature is read from LiteRT; the
   preprocessing is MediaPipe's (RGB, letterboxed to 224x224, [-1, 1]); the
   decoder is the ``person`` BlazeFace-family preset (2254 SSD anchors, strides
   8/16/32/32/32, 4 keypoints, sigmoid, threshold 0.5, weighted NMS at IoU 0.3);
   the golden sample is the model's answer on astronaut.png.
3. Write the package with its licence, notice and sample.

Which box is reported: the detector's own box is the *face*. The package's
``body_box`` setting makes the agent report a square centred on keypoint 0
(mid-hip) with half side = distance to keypoint 1 (the circle circumscribing
the whole person), as MediaPipe's pose ROI step (AlignmentPointsRectsCalculator)
computes it, before that step's 1.25 margin; rotation is ignored and the box is
clipped to the image. The face box is kept beside it as ``detector_box``.

Run with the project venv from the repo root::

    .venv/bin/python models/scripts/build_person.py
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from edge_agent.runtime.import_options import DecoderOptions, ImageOptions, ImportOptions  # noqa: E402
from edge_agent.runtime.importer import prepare, write_package  # noqa: E402
from edge_agent.runtime.package import sha256_file  # noqa: E402
from models.scripts.build_face import download_wheel, extract  # noqa: E402

MP_VERSION = "0.10.21"
WHEEL_MEMBER = "mediapipe/modules/pose_detection/pose_detection.tflite"
WHEEL_LICENSE = f"mediapipe-{MP_VERSION}.dist-info/LICENSE"
TFLITE_SHA256 = "9ba9dd3d42efaaba86b4ff0122b06f29c4122e756b329d89dca1e297fd8f866c"
DESCRIPTION = (
    "Google MediaPipe BlazePose person detector (pose_detection.tflite). Input: RGB letterboxed "
    "to 224x224 (black padding), scaled to [-1, 1], NHWC float32, batch fixed at 1. Outputs: "
    "Identity [1, 2254, 12] (x_center, y_center, w, h, then x, y of 4 keypoints, in input pixels "
    "relative to the SSD anchors) and Identity_1 [1, 2254, 1] (score logits). Reported box: the "
    "BODY, a square centred on keypoint 0 (mid-hip) with half side = its distance to keypoint 1 "
    "(MediaPipe's pose ROI before its 1.25 margin), clipped to the image; the detector's own box "
    "(the face) is returned as detector_box."
)
NOTICE = f"""\
pose_detection.tflite - MediaPipe BlazePose person detector.
Copyright The MediaPipe Authors (Google LLC). Licensed under the Apache License 2.0;
LICENSE.txt is the licence file shipped in the mediapipe {MP_VERSION} wheel.

Obtained from the mediapipe {MP_VERSION} wheel on PyPI ({{wheel}}),
member {WHEEL_MEMBER}, sha256 {TFLITE_SHA256}.
The model file is unmodified (renamed model.tflite).
"""
SAMPLE_LICENSE = """\
astronaut.png - 512x512 RGB portrait of NASA astronaut Eileen Collins.

Source: the scikit-image wheel, which ships it as skimage/data/astronaut.png.
Licence: public domain (a NASA photograph, a work of the US federal government);
scikit-image lists it as public domain.

Expected result with this package: one person, score ~0.81; the body box covers
the picture (she is cut at the waist, so the mid-hip keypoint lies below the frame).
"""


def options(sample: Path, wheel_name: str) -> ImportOptions:
    return ImportOptions(
        name="person",
        version="1",
        postprocess="blazeface",
        labels=["person"],
        image=ImageOptions(input_range=(-1.0, 1.0), resize="letterbox"),
        decoder=DecoderOptions(anchors="person"),
        samples=[sample],
        description=DESCRIPTION,
        source=(
            f"Extracted unchanged from `pip download --no-deps mediapipe=={MP_VERSION}` ({wheel_name}); "
            f"member {WHEEL_MEMBER} (sha256 {TFLITE_SHA256}); packaged by models/scripts/build_person.py "
            f"through edge_agent.runtime.importer (the code behind `edge-agent models import`)."
        ),
        license=f"Apache-2.0 (Google MediaPipe, pose_detection.tflite from the mediapipe {MP_VERSION} wheel)",
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wheel", type=Path, help="use this mediapipe wheel instead of downloading it")
    args = ap.parse_args()
    sample_src = REPO / "models" / "face" / "1" / "samples" / "astronaut.png"
    pkg = REPO / "models" / "person" / "1"
    with tempfile.TemporaryDirectory(prefix="build_person_") as tmp_s:
        tmp = Path(tmp_s)
        wheel = args.wheel or download_wheel(tmp)
        tflite = tmp / "pose_detection.tflite"
        extract(wheel, WHEEL_MEMBER, tflite)
        extract(wheel, WHEEL_LICENSE, tmp / "LICENSE")
        got = sha256_file(tflite)
        if got != TFLITE_SHA256:
            raise SystemExit(f"{WHEEL_MEMBER} has sha256 {got}, expected {TFLITE_SHA256}")
        sample = Path(shutil.copyfile(sample_src, tmp / "astronaut.png"))
        prep = prepare(tflite, options(sample, wheel.name))
        if pkg.exists():
            shutil.rmtree(pkg)
        (pkg / "samples").mkdir(parents=True)
        manifest = write_package(prep, pkg)
        shutil.copyfile(tmp / "LICENSE", pkg / "LICENSE.txt")
        (pkg / "NOTICE.txt").write_text(NOTICE.format(wheel=wheel.name))
        shutil.copyfile(sample, pkg / "samples" / "astronaut.png")
        (pkg / "samples" / "LICENSE.txt").write_text(SAMPLE_LICENSE)
    print(f"[build_person] wrote {pkg.relative_to(REPO)}: golden atol {manifest.golden.atol}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
