"""Write the drift reference (``drift.json``) of a model package from the data it was built from.

    python models/scripts/drift_reference.py iris models/iris/1
    python models/scripts/drift_reference.py digits models/digits/1   # and models/digits_int8/1

``iris``: scikit-learn's bundled iris data (150 rows), the same data ``build_iris.py`` trains on;
``digits``: the training split ``build_digits.py`` uses (image features: brightness, contrast).
The label shares are the classes' shares in the data. The format and the statistics are
``edge_agent.runtime.drift.reference``. Needs the iris build venv (requirements-iris.txt).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from edge_agent.runtime.drift import REFERENCE_FILE, features, reference  # noqa: E402


def iris() -> tuple[object, list[str]]:
    from sklearn.datasets import load_iris

    data = load_iris()
    labels = [str(data.target_names[t]) for t in data.target]
    return data.data.astype("float32"), labels


def digits() -> tuple[object, list[str]]:
    """The training split of scikit-learn's digits, as ``build_digits.py`` makes it (pixels / 16)."""
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    x_tr, _, y_tr, _ = train_test_split(x, d.target, test_size=0.25, random_state=0, stratify=d.target)
    return x_tr, [str(int(t)) for t in y_tr]


SOURCES = {"iris": iris, "digits": digits}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", choices=sorted(SOURCES), help="the data the model was built from")
    p.add_argument("package", type=Path, help="the package directory to write drift.json into")
    args = p.parse_args(argv)
    rows, labels = SOURCES[args.source]()
    doc = reference(features(rows), labels)  # type: ignore[arg-type]
    doc["source"] = f"{args.source}: {len(labels)} rows (models/scripts/drift_reference.py)"
    (args.package / REFERENCE_FILE).write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    print(f"wrote {args.package / REFERENCE_FILE}: {len(doc['features'])} features, {len(labels)} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
