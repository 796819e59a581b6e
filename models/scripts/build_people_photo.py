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
WHEELS = {
    "scikit-image==0.26.0": ("scikit_image-0.26.0-", "skimage/data/astronaut.png"),
    "matplotlib==3.11.2": ("matplotlib-3.11.2-", "matplotlib/mpl-data/sample_data/grace_hopper.jpg"),
}
COLLINS_SIZE = 307
CANVAS = (600, 819)  # height, width


def read_member(wheels: Path, requirement: str) -> np.ndarray:
    prefix, member = WHEELS[requirement]
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
        collins = read_member(wheels, "scikit-image==0.26.0")
        hopper = read_member(wheels, "matplotlib==3.11.2")
    small = cv2.resize(collins, (COLLINS_SIZE, COLLINS_SIZE), interpolation=cv2.INTER_AREA)
    canvas = np.full((*CANVAS, 3), 128, np.uint8)
    canvas[CANVAS[0] - COLLINS_SIZE :, :COLLINS_SIZE] = small
    canvas[:, COLLINS_SIZE:] = hopper
    OUT.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(OUT), canvas, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    print(f"wrote {OUT.relative_to(REPO)} ({CANVAS[1]}x{CANVAS[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
