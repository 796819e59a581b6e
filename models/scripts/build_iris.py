"""Build the iris model packages (models/iris*, version 1).

Retrains the book's chapter-4 models (shibuiwilliam/ml-system-in-actions,
``iris_svc.onnx`` and ``iris_svc_0_<class>.onnx``) from scikit-learn's bundled
iris data: ``StandardScaler + SVC(probability=True)`` pipelines converted with
skl2onnx, input ``float_input`` float32 [None, 4], outputs ``output_label``
int64 [None] and ``output_probability`` (ZipMap: a sequence of maps).

Packages written (each ``model.onnx``, ``manifest.json``, ``golden.npz``,
``samples/rows.json``, ``samples/rows.npy``):

* ``iris/1``            - 3 classes: setosa, versicolor, virginica
* ``iris_setosa/1``     - one-vs-rest, class 0 = "is setosa", 1 = "is not"
* ``iris_versicolor/1`` - likewise
* ``iris_virginica/1``  - likewise

Everything is seeded; running it twice gives byte-identical files with the
pinned versions of models/scripts/requirements-iris.txt. No downloads.

Run (from the repository root)::

    python3.11 -m venv /work/venvs/iris
    /work/venvs/iris/bin/pip install -r models/scripts/requirements-iris.txt
    /work/venvs/iris/bin/python models/scripts/build_iris.py
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import skl2onnx
import sklearn
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_iris
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from edge_agent.runtime.package import (  # noqa: E402
    Batching,
    Classification,
    Golden,
    Manifest,
    Metrics,
    TensorSpec,
    save_golden,
    sha256_file,
    write_manifest,
)

SEED = 0
VERSION = "1"
CLASS_NAMES = ["setosa", "versicolor", "virginica"]
TARGET_OPSET = {"": 15, "ai.onnx.ml": 3}  # an upper bound: skl2onnx emits the lowest opsets that suffice
DATASET = "sklearn iris held-out 30% (random_state=0)"
SAMPLE_ROWS = [[5.1, 3.5, 1.4, 0.2], [1.0, 2.0, 3.0, 4.0], [6.3, 3.3, 6.0, 2.5]]
N_HELDOUT_GOLDEN = 2
ATOL = 1e-5
TOLERANCE_REASON = (
    "Probabilities are float32 from onnxruntime's SVMClassifier (RBF kernel sums, Platt "
    "sigmoid, pairwise coupling); another onnxruntime build or CPU (x86-64 vs ARM, SIMD "
    "width) may change the summation order by a few ulp. 1e-5 absolute covers that and "
    "still catches any real model change. Labels must match exactly."
)
# scikit-learn 1.9 deprecates SVC(probability=True) (removal planned for 1.11; the
# requirements pin 1.9.x). It is kept on purpose: it is the book's model, and
# skl2onnx converts its Platt scaling into the ONNX SVMClassifier.
warnings.filterwarnings("ignore", category=FutureWarning, message=r".*probability.*")
warnings.filterwarnings("ignore", category=FutureWarning, message=r".*prob[AB]_.*")

LICENSE = (
    "Trained here from scikit-learn's bundled iris dataset (BSD-3-Clause); model released under Apache-2.0"
)


def make_pipeline() -> Pipeline:
    return Pipeline(
        [
            ("scaler", StandardScaler()),
            ("svc", SVC(probability=True, random_state=SEED)),
        ]
    )


def to_onnx(pipe: Pipeline, doc: str) -> onnx.ModelProto:
    model = convert_sklearn(
        pipe,
        name="iris_svc",
        initial_types=[("float_input", FloatTensorType([None, 4]))],
        target_opset=TARGET_OPSET,
    )
    model.doc_string = doc
    # skl2onnx lists opset_import in set order, which follows PYTHONHASHSEED:
    # sort it so the file is byte-identical from run to run.
    opsets = sorted((o.domain, o.version) for o in model.opset_import)
    del model.opset_import[:]
    for domain, version in opsets:
        model.opset_import.add(domain=domain, version=version)
    return model


def run_onnx(session: ort.InferenceSession, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (labels int64 [N], probabilities float32 [N, C], classes in key order)."""
    labels, prob_maps = session.run(["output_label", "output_probability"], {"float_input": x})
    keys = sorted(prob_maps[0])
    probs = np.array([[row[k] for k in keys] for row in prob_maps], dtype=np.float32)
    return np.asarray(labels, dtype=np.int64), probs


def build_package(
    out_root: Path,
    *,
    name: str,
    description: str,
    labels: list[str],
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
) -> dict[str, float]:
    pipe = make_pipeline().fit(x_train, y_train)
    model = to_onnx(pipe, description)
    onnx.checker.check_model(model)

    pkg = out_root / name / VERSION
    if pkg.exists():
        shutil.rmtree(pkg)
    (pkg / "samples").mkdir(parents=True)
    model_path = pkg / "model.onnx"
    model_path.write_bytes(model.SerializeToString())

    opsets = ", ".join(f"{o.domain or 'ai.onnx'} opset {o.version}" for o in model.opset_import)
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    test_labels, test_probs = run_onnx(session, x_test.astype(np.float32))
    n_classes = len(labels)
    assert test_probs.shape == (len(x_test), n_classes), test_probs.shape
    onnx_acc = float(np.mean(test_labels == y_test))
    skl_acc = float(pipe.score(x_test, y_test))
    argmax_acc = float(np.mean(test_probs.argmax(axis=1) == y_test))
    skl_labels = pipe.predict(x_test.astype(np.float32))
    label_agreement = float(np.mean(skl_labels == test_labels))

    golden_x = np.array(SAMPLE_ROWS + x_test[:N_HELDOUT_GOLDEN].tolist(), dtype=np.float32)
    golden_labels, golden_probs = run_onnx(session, golden_x)
    golden_sha = save_golden(
        pkg,
        {"float_input": golden_x},
        {"output_probability": golden_probs, "output_label": golden_labels},
    )

    rows = np.array(SAMPLE_ROWS, dtype=np.float32)
    (pkg / "samples" / "rows.json").write_text(json.dumps({"data": SAMPLE_ROWS}) + "\n")
    with (pkg / "samples" / "rows.npy").open("wb") as fh:
        np.save(fh, rows)

    manifest = Manifest(
        name=name,
        version=VERSION,
        description=description,
        backend="onnx",
        task="classification",
        file="model.onnx",
        sha256=sha256_file(model_path),
        inputs=[TensorSpec(name="float_input", dtype="float32", shape=[None, 4])],
        outputs=[
            TensorSpec(name="output_label", dtype="int64", shape=[None]),
            TensorSpec(
                name="output_probability",
                dtype="float32",
                shape=[None, n_classes],
                kind="sequence_of_maps",
            ),
        ],
        preprocessing=None,
        postprocessing=Classification(
            output="output_probability",
            label_output="output_label",
            apply_softmax=False,
            top_k=min(3, n_classes),
        ),
        labels=labels,
        metrics=Metrics(
            dataset=DATASET,
            heldout_size=len(x_test),
            heldout_accuracy=round(onnx_acc, 6),
            extra={
                "sklearn_heldout_accuracy": round(skl_acc, 6),
                "onnx_argmax_probability_accuracy": round(argmax_acc, 6),
                "onnx_sklearn_label_agreement": round(label_agreement, 6),
                "train_size": float(len(x_train)),
            },
        ),
        golden=Golden(sha256=golden_sha, atol=ATOL, rtol=0.0, tolerance_reason=TOLERANCE_REASON),
        batching=Batching(),
        source=(
            "Built by models/scripts/build_iris.py: scikit-learn "
            f"{sklearn.__version__} Pipeline(StandardScaler, SVC(probability=True, random_state=0)) "
            "trained on sklearn.datasets.load_iris with train_test_split(test_size=0.3, "
            f"random_state=0, stratify=y), converted with skl2onnx {skl2onnx.__version__} "
            f"({opsets}, default ZipMap). "
            "Same design as iris_svc*.onnx of shibuiwilliam/ml-system-in-actions chapter 4 "
            "(MIT), retrained here, so outputs differ slightly from the book's."
        ),
        license=LICENSE,
    )
    write_manifest(pkg, manifest)
    return {"onnx": onnx_acc, "sklearn": skl_acc, "argmax": argmax_acc, "agreement": label_agreement}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "models", help="packages root")
    args = parser.parse_args(argv)

    iris = load_iris()
    x, y = iris.data, iris.target
    assert list(iris.target_names) == CLASS_NAMES
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.3, random_state=SEED, stratify=y)

    results = {}
    results["iris"] = build_package(
        args.out,
        name="iris",
        description="Iris species classifier (setosa, versicolor, virginica) from 4 measurements in cm: "
        "sepal length, sepal width, petal length, petal width.",
        labels=CLASS_NAMES,
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
    )
    for k, cls in enumerate(CLASS_NAMES):
        name = f"iris_{cls}"
        results[name] = build_package(
            args.out,
            name=name,
            description=f"One-vs-rest iris classifier: class 0 = is {cls}, 1 = is not {cls} "
            "(like the book's iris_svc_0_" + cls + ".onnx). Input: sepal length, sepal width, "
            "petal length, petal width in cm.",
            labels=[cls, f"not {cls}"],
            x_train=x_train,
            y_train=np.where(y_train == k, 0, 1),
            x_test=x_test,
            y_test=np.where(y_test == k, 0, 1),
        )

    for name, acc in results.items():
        print(
            f"{name:16s} onnx heldout acc {acc['onnx']:.4f}  sklearn {acc['sklearn']:.4f}  "
            f"argmax(prob) {acc['argmax']:.4f}  onnx/sklearn label agreement {acc['agreement']:.4f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
