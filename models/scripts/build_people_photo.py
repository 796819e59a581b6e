#!/usr/bin/env python3
"""Compose ``tests/data/people/people.png``, the two-person reference photo, from two
public-domain portraits shipped inside PyPI wheels (fetched with ``pip download --no-deps``,
only unzipped, never installed):

* ``skimage/data/astronaut.png`` from scikit-image 0.26.0: NASA astronaut Eileen Collins,
  512x512, scaled to 307x307 (INTER_AREA) and put at the bottom left;
* ``matplotlib/mpl-data/sample_data/grace_hopper.jpg`` from matplotlib 3.11.2: Commodore Grace
  Hopper (US Navy portrait), 512x600, unscaled, at the right.

Canvas 819x600, grey (128) where no portrait is. Both people are cut at the waist by the bottom
edge, as in their portraits. Why this layout: no registry package we found ships a free photo of
two or more people (see docs/model-packages.md); with the person detector's body box (a square
around the mid-hip keypoint, clipped to the image) two waist-cut portraits side by side at the same
size give one box over both, so Collins is scaled to 0.6.

It also writes the person detector's quantization sets, ``tests/data/people/calibration/`` (8
variants of each of 7 pictures) and ``tests/data/people/evaluation/`` (6 other variants of each),
JPEGs at most 224 px a side (the model's input size): flips, crops, padding, gain, rotation,
seeded. The 7 pictures: the two portraits, people.png, and from the scikit-image wheel
camera.png (a man with a camera; CC0, Lav Varshney), chelsea.png (a cat; CC0, Stefan van der
Walt), coffee.png (CC0, Rachel Michetti) and rocket.jpg (public domain, SpaceX): people and
scenes without one, so that "finds nothing" is measured too.

    .venv/bin/python models/scripts/build_people_photo.py [--wheels DIR]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "tests" / "data" / "people" / "people.png"
SETS = OUT.parent
SKIMAGE, MPL = "scikit-image==0.26.0", "matplotlib==3.11.2"
WHEEL_PREFIX = {SKIMAGE: "scikit_image-0.26.0-", MPL: "matplotlib-3.11.2-"}
OTHERS = [
    "skimage/data/camera.png",
    "skimage/data/chelsea.png",
    "skimage/data/coffee.png",
    "skimage/data/rocket.jpg",
]
SET_SIZE = 224
COLLINS_SIZE = 307
CANVAS = (600, 819)  # height, width


def read_member(wheels: Path, requirement: str, member: str) -> np.ndarray:
    prefix = WHEEL_PREFIX[requirement]
    found = sorted(wheels.glob(f"{prefix}*.whl"))
    if not found:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_28_x86_64",
               "--python-version", "3.11", requirement, "-d", str(wheels)]  # fmt: skip
        subprocess.run(cmd, check=True)
        found = sorted(wheels.glob(f"{prefix}*.whl"))
    with zipfile.ZipFile(found[0]) as zf:
        data = np.frombuffer(zf.read(member), np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if image is None:
        raise SystemExit(f"cannot decode {member} of {found[0].name}")
    return image


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wheels", type=Path, help="a directory holding (or to receive) the two wheels")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="people_photo_") as tmp:
        wheels = args.wheels or Path(tmp)
        collins = read_member(wheels, SKIMAGE, "skimage/data/astronaut.png")
        hopper = read_member(wheels, MPL, "matplotlib/mpl-data/sample_data/grace_hopper.jpg")
        others = {Path(m).stem: read_member(wheels, SKIMAGE, m) for m in OTHERS}
    small = cv2.resize(collins, (COLLINS_SIZE, COLLINS_SIZE), interpolation=cv2.INTER_AREA)
    canvas = np.full((*CANVAS, 3), 128, np.uint8)
    canvas[CANVAS[0] - COLLINS_SIZE :, :COLLINS_SIZE] = small
    canvas[:, COLLINS_SIZE:] = hopper
    OUT.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(OUT), canvas, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    print(f"wrote {OUT.relative_to(REPO)} ({CANVAS[1]}x{CANVAS[0]})")
    write_sets({"astronaut": collins, "grace_hopper": hopper, "people": canvas, **others})
    return 0


def write_sets(pictures: dict[str, np.ndarray]) -> None:
    rng = np.random.default_rng(0)

    def crop(im: np.ndarray) -> np.ndarray:
        h, w = im.shape[:2]
        f = rng.uniform(0.65, 0.9)
        ch, cw = int(h * f), int(w * f)
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        return im[y : y + ch, x : x + cw]

    def pad(im: np.ndarray, k: float) -> np.ndarray:
        h, w = im.shape[:2]
        c = np.full((int(h * k), int(w * k), 3), int(rng.integers(0, 255)), np.uint8)
        y, x = rng.integers(0, c.shape[0] - h + 1), rng.integers(0, c.shape[1] - w + 1)
        c[y : y + h, x : x + w] = im
        return c

    def rot(im: np.ndarray) -> np.ndarray:
        h, w = im.shape[:2]
        m = cv2.getRotationMatrix2D((w / 2, h / 2), float(rng.uniform(-15, 15)), 1.0)
        return cv2.warpAffine(im, m, (w, h), borderValue=(128, 128, 128))

    def gain(im: np.ndarray, g: float) -> np.ndarray:
        return np.clip(im.astype(np.float32) * g, 0, 255).astype(np.uint8)

    def save(d: Path, name: str, im: np.ndarray) -> None:
        h, w = im.shape[:2]
        s = SET_SIZE / max(h, w)
        if s < 1:
            im = cv2.resize(im, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(d / name), im, [cv2.IMWRITE_JPEG_QUALITY, 90])

    calib, ev = SETS / "calibration", SETS / "evaluation"
    for d in (calib, ev):
        if d.exists():
            for old in d.glob("*.jpg"):
                old.unlink()
        d.mkdir(parents=True, exist_ok=True)
    for stem, im in pictures.items():
        flip = np.ascontiguousarray(im[:, ::-1])
        for i, v in enumerate(
            [im, flip, crop(im), crop(flip), pad(im, 1.5), pad(im, 2.0), gain(im, 1.3), rot(im)]
        ):
            save(calib, f"{stem}_c{i}.jpg", v)
        for i, v in enumerate([crop(im), crop(flip), gain(im, 0.6), rot(im), rot(flip), pad(im, 1.3)]):
            save(ev, f"{stem}_e{i}.jpg", v)
    n_calib, n_eval = len(list(calib.glob("*.jpg"))), len(list(ev.glob("*.jpg")))
    print(f"wrote {n_calib} calibration and {n_eval} evaluation images")


if __name__ == "__main__":
    sys.exit(main())
