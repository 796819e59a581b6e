"""Bad imports: the real ``edge-agent models import`` process refuses with an exit code and a
message a person can act on, and the store stays byte for byte as it was."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.cli import EXIT_PACKAGE
from tests.conftest import DATA, MODELS, ROOT, copy_models
from tests.runtime.onnx_builders import custom_op, dynamic_classifier, unsupported_type


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (the store and its state), with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def edge_agent(tmp: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")}
    cmd = [sys.executable, "-m", "edge_agent.cli", "--model-dir", str(tmp / "store" / "models")]
    cmd += ["--data-dir", str(tmp / "store" / "data"), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120, check=False)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    copy_models(tmp_path / "store" / "models", ["digits"])
    # a state file exists too: an import must not touch it either
    r = edge_agent(tmp_path, "models", "activate", "digits", "1")
    assert r.returncode == 0, r.stderr
    return tmp_path


def _files(tmp: Path) -> dict[str, Path]:
    jpeg = tmp / "photo.onnx"
    jpeg.write_bytes((DATA / "cat.jpg").read_bytes())
    whole = (MODELS / "digits" / "1" / "digits.onnx").read_bytes()
    truncated = tmp / "truncated.onnx"
    truncated.write_bytes(whole[: len(whole) // 2])
    return {
        "jpeg": jpeg,
        "truncated": truncated,
        "custom_op": custom_op(tmp / "custom.onnx"),
        "unsupported_kernel": unsupported_type(tmp / "relu16.onnx"),
        "existing": MODELS / "digits" / "1" / "digits.onnx",
        "dynamic": dynamic_classifier(tmp / "dyn.onnx")[0],
        "tflite_custom_op": DATA / "mediapipe" / "face_landmark_with_attention.tflite",
    }


CASES = [
    # (file, extra flags, words the message must hold)
    ("jpeg", ["--task", "classification"], ["photo.onnx is a JPEG image, not a model"]),
    ("truncated", ["--task", "classification"], ["truncated.onnx is truncated", "graph"]),
    ("custom_op", ["--task", "classification"], ["operator com.example:Frobnicate"]),
    ("unsupported_kernel", ["--task", "classification"], ["cannot run operator Relu", "relu_int16"]),
    ("existing", ["--name", "digits", "--task", "classification"], ["digits/1 already exists", "--version"]),
    (
        "tflite_custom_op",
        ["--task", "detection"],
        ["LiteRT on this device cannot run operator Landmarks2TransformMatrix"],
    ),
    # an input the preprocessing cannot feed: [N, 4] is no image
    ("dynamic", ["--postprocess", "classification", "--input-range", "0:1"], ["shape [None, 4]", "4-D"]),
    # a detector with no image preprocessing: the message names the flag
    ("dynamic", ["--postprocess", "yolo"], ["--input-range"]),
    # labels that do not fit the classes
    (
        "dynamic",
        ["--postprocess", "classification", "--labels", "LABELS"],
        ["--labels has 2 names", "3 classes"],
    ),
    # no decoder and no task
    ("dynamic", [], ["--task"]),
]


@pytest.mark.parametrize(("kind", "flags", "words"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_bad_import_changes_nothing(store: Path, kind: str, flags: list[str], words: list[str]) -> None:
    files = _files(store)
    labels = store / "labels.txt"
    labels.write_text("a\nb\n")
    flags = [str(labels) if f == "LABELS" else f for f in flags]
    before = snapshot(store / "store")
    r = edge_agent(store, "models", "import", files[kind], *flags)
    assert r.returncode == EXIT_PACKAGE, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    for w in words:
        assert w in r.stderr, r.stderr
    assert r.stdout == ""  # no manifest printed: nothing was made
    assert snapshot(store / "store") == before


def test_good_import_after_refusals_still_works(store: Path) -> None:
    """The refusals above are not a broken importer: the same store takes a good file."""
    path = _files(store)["dynamic"]
    r = edge_agent(store, "models", "import", path, "--name", "dyn", "--task", "classification")
    assert r.returncode == 0, r.stderr
    assert (store / "store" / "models" / "dyn" / "1" / "manifest.json").is_file()


def test_activate_makes_a_new_version_active(store: Path) -> None:
    """--activate self-tests the new version and switches to it; without it the active one stays."""
    onnx_file = MODELS / "digits" / "1" / "digits.onnx"
    flags = ["--name", "digits", "--postprocess", "classification", "--input-range", "0:1"]
    r = edge_agent(store, "models", "import", onnx_file, *flags, "--version", "2", "--activate")
    assert r.returncode == 0, r.stderr
    assert "imported digits/2 and activated it (golden sample reproduced)" in r.stdout
    r = edge_agent(store, "models", "import", onnx_file, *flags, "--version", "3")
    assert r.returncode == 0, r.stderr
    assert "imported digits/3 (active: 2)" in r.stdout
    listed = edge_agent(store, "models", "list", "--json")
    (row,) = json.loads(listed.stdout)
    assert row["versions"] == ["1", "2", "3"] and row["active_version"] == "2"
