"""Write the drift reference (``drift.json``) of a model package from the data it was built from.

    python models/scripts/drift_reference.py iris models/iris/1
    python models/scripts/drift_reference.py iris models/iris_setosa/1     # labels: setosa / not setosa
    python models/scripts/drift_reference.py digits models/digits/1        # and digits_int8, digits_tflite,
                                                                           # digits_tflite_int8
    python models/scripts/drift_reference.py photos models/face/1          # and face_onnx, person,
                                                                           # person_onnx

``iris``: scikit-learn's bundled iris data (150 rows), the same data ``build_iris.py`` trains on; for
the one-vs-rest packages the labels are the manifest's (``X`` / ``not X``). ``digits``: the training
split ``build_digits.py`` uses (image features: brightness, contrast); all four digits packages share
that data and that preprocessing. ``photos`` (the face and person detectors, whose training data is
not ours): ``CROPS`` random crops of each photograph in ``PHOTOS`` (public domain / MIT, shipped in
this repository), through the package's own preprocessing: brightness and contrast only. It is a
coarse reference (two photographs, natural daylight scenes), not the detector's training set: it
flags a camera that is much darker, brighter, flatter or harsher than daylight photographs; the
source size is left out (crop sizes say nothing about a camera). A deployment writes a better one
from its own frames with ``edge-agent models import --sample``. The format and the statistics are
``edge_agent.runtime.drift``. ``iris`` and ``digits`` need the iris build venv (requirements-iris.txt).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from edge_agent.runtime import drift_sample  # noqa: E402
from edge_agent.runtime.drift import features  # noqa: E402
from edge_agent.runtime.package import read_manifest  # noqa: E402

PHOTOS = (ROOT / "models" / "face" / "1" / "samples" / "astronaut.png", ROOT / "tests" / "data" / "cat.jpg")
CROPS = 150  # per photograph
SEED = 0  # the reference's crops; tests draw theirs with another seed


def iris(package: Path) -> tuple[dict[str, np.ndarray], list[str], str]:
    from sklearn.datasets import load_iris

    data = load_iris()
    names = [str(data.target_names[t]) for t in data.target]
    labels = read_manifest(package).labels
    if len(labels) == 2:  # one-vs-rest: "setosa" / "not setosa"
        names = [labels[0] if n == labels[0] else labels[1] for n in names]
    return features(data.data.astype("float32")), names, f"iris: {len(names)} rows"


def digits(package: Path) -> tuple[dict[str, np.ndarray], list[str], str]:
    """The training split of scikit-learn's digits, as ``build_digits.py`` makes it (pixels / 16)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    x_tr, _, y_tr, _ = train_test_split(x, d.target, test_size=0.25, random_state=0, stratify=d.target)
    return features(x_tr), [str(int(t)) for t in y_tr], f"digits: {len(y_tr)} rows"


def crops(image: np.ndarray, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``n`` random windows (side 30-100 % of the shorter edge, any position, half mirrored)."""
    h, w = image.shape[:2]
    out = []
    for _ in range(n):
        side = int(rng.uniform(0.3, 1.0) * min(h, w))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        c = image[y : y + side, x : x + side]
        out.append(np.ascontiguousarray(c[:, ::-1] if rng.random() < 0.5 else c))
    return out


def photo_crops(seed: int = SEED, per_photo: int = CROPS) -> list[np.ndarray]:
    import cv2

    rng = np.random.default_rng(seed)
    images = []
    for path in PHOTOS:
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise SystemExit(f"cannot read {path}")
        images += crops(img, per_photo, rng)
    return images


def photos(package: Path) -> tuple[dict[str, np.ndarray], list[str], str]:
    spec = read_manifest(package).preprocessing
    if spec is None:
        raise SystemExit(f"{package}: not an image model")
    images = photo_crops()
    names = ", ".join(p.name for p in PHOTOS)
    source = f"photos: {len(images)} random crops (seed {SEED}) of {names}; brightness and contrast only"
    return drift_sample.image_features(images, spec, sizes=False), [], source


SOURCES: dict[str, Any] = {"iris": iris, "digits": digits, "photos": photos}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", choices=sorted(SOURCES), help="the data the model was built from")
    p.add_argument("package", type=Path, help="the package directory to write drift.json into")
    args = p.parse_args(argv)
    feats, labels, source = SOURCES[args.source](args.package)
    rows = len(next(iter(feats.values())))
    doc = drift_sample.reference(feats, labels, f"{source} (models/scripts/drift_reference.py)", rows)
    path = drift_sample.write(args.package, doc)
    print(f"wrote {path}: {len(doc['features'])} features, {rows} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
