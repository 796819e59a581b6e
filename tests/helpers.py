"""Test helpers that build real model packages from model files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.runtime.package import (
    Classification,
    Golden,
    Manifest,
    TensorSpec,
    save_golden,
    sha256_file,
    write_manifest,
)


def make_package(
    root: Path,
    name: str,
    version: str,
    model_file: Path,
    golden_in: dict[str, np.ndarray],
    golden_out: dict[str, np.ndarray],
    atol: float,
    **fields: Any,
) -> Path:
    pkg = root / name / version
    pkg.mkdir(parents=True)
    shutil.copy(model_file, pkg / ("model" + model_file.suffix))
    digest = save_golden(pkg, golden_in, golden_out)
    manifest = Manifest(
        name=name,
        version=version,
        file="model" + model_file.suffix,
        sha256=sha256_file(pkg / ("model" + model_file.suffix)),
        golden=Golden(sha256=digest, atol=atol, tolerance_reason="test package"),
        **fields,
    )
    write_manifest(pkg, manifest)
    return pkg


def flip_byte(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0x01
    path.write_bytes(bytes(data))


BOOK = Path(__file__).resolve().parent / "data" / "book"
EXPECTED = json.loads((BOOK / "expected.json").read_text())
BOOK_LABELS = {
    "iris_svc.onnx": ["setosa", "versicolor", "virginica"],
    "iris_svc_0_setosa.onnx": ["setosa", "not setosa"],
    "iris_svc_0_versicolor.onnx": ["versicolor", "not versicolor"],
    "iris_svc_0_virginica.onnx": ["virginica", "not virginica"],
}


def book_name(fname: str) -> str:
    """iris_svc.onnx -> book_iris, iris_svc_0_setosa.onnx -> book_setosa."""
    return fname.removesuffix(".onnx").replace("iris_svc_0_", "book_").replace("iris_svc", "book_iris")


def make_book_store(root: Path) -> Path:
    """Packages around the book's reference models; golden = the book's expected table."""
    for fname, labels in BOOK_LABELS.items():
        cases = [c for c in EXPECTED["cases"] if c["model"] == fname]
        make_package(
            root,
            book_name(fname),
            "1",
            BOOK / fname,
            {"float_input": np.array([c["input"] for c in cases], dtype=np.float32)},
            {
                "output_probability": np.array([c["probabilities"] for c in cases], dtype=np.float32),
                "output_label": np.array([c["label"] for c in cases], dtype=np.int64),
            },
            atol=EXPECTED["atol"],
            backend="onnx",
            task="classification",
            inputs=[TensorSpec(name="float_input", dtype="float32", shape=[None, 4])],
            outputs=[
                TensorSpec(name="output_label", dtype="int64", shape=[None]),
                TensorSpec(
                    name="output_probability",
                    dtype="float32",
                    shape=[None, len(labels)],
                    kind="sequence_of_maps",
                ),
            ],
            labels=labels,
            postprocessing=Classification(output="output_probability", label_output="output_label"),
        )
    return root
