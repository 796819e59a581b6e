"""The offline CLI as a user runs it: real processes, real model files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.cli import build_parser
from tests.conftest import MODELS, ROOT
from tests.helpers import flip_byte

ASTRONAUT = MODELS / "face" / "1" / "samples" / "astronaut.png"


def run(tmp_path: Path, *args: str, models: Path = MODELS) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")}
    cmd = [
        sys.executable,
        "-m",
        "edge_agent.cli",
        "--model-dir",
        str(models),
        "--data-dir",
        str(tmp_path / "st"),
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)


def test_predict_json_rows(tmp_path: Path) -> None:
    out = run(tmp_path, "predict", "iris", str(MODELS / "iris/1/samples/rows.json"), "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert [r["label"] for r in doc["results"]] == ["setosa", "virginica", "virginica"]
    assert set(doc["timings_ms"]) == {"preprocess", "infer", "postprocess", "total"}


def test_predict_image_prints_boxes_and_stage_times(tmp_path: Path) -> None:
    out = run(tmp_path, "predict", "face", str(ASTRONAUT))
    assert out.returncode == 0, out.stderr
    assert "face 0.9" in out.stdout
    assert "preprocess" in out.stdout and "infer" in out.stdout and "postprocess" in out.stdout


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        (b"not an image at all", ".jpg", "not an image"),
        (b'{"data": [[1, 2]]}', ".json", "expected [N, 4]"),
        (b"{broken", ".json", "not valid JSON"),
        (b"\x93NUMPY garbage", ".npy", "not a valid .npy"),
    ],
)
def test_bad_input_files_exit_5_with_a_message(
    tmp_path: Path, content: bytes, suffix: str, message: str
) -> None:
    f = tmp_path / f"input{suffix}"
    f.write_bytes(content)
    model = "face" if suffix == ".jpg" else "iris"
    out = run(tmp_path, "predict", model, str(f))
    assert out.returncode == 5, out.stdout + out.stderr
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_unknown_model_exits_4(tmp_path: Path) -> None:
    out = run(tmp_path, "predict", "nope", str(ASTRONAUT))
    assert out.returncode == 4 and "no model named 'nope'" in out.stderr


def test_verify_reports_tampered_file_exit_6(tmp_path: Path) -> None:
    store = tmp_path / "models"
    shutil.copytree(MODELS / "iris", store / "iris")
    assert run(tmp_path, "models", "verify", models=store).returncode == 0
    flip_byte(store / "iris" / "1" / "model.onnx")
    out = run(tmp_path, "models", "verify", "iris", models=store)
    assert out.returncode == 6
    assert "FAILED  iris/1" in out.stdout and "tampered" in out.stdout


def test_models_list_selftest_activate_rollback(tmp_path: Path) -> None:
    store = tmp_path / "models"
    shutil.copytree(MODELS / "iris", store / "iris")
    shutil.copytree(store / "iris" / "1", store / "iris" / "2")
    manifest = json.loads((store / "iris/2/manifest.json").read_text())
    manifest["version"] = "2"
    (store / "iris/2/manifest.json").write_text(json.dumps(manifest))
    out = run(tmp_path, "models", "list", "--json", models=store)
    assert json.loads(out.stdout)[0]["versions"] == ["1", "2"]
    assert run(tmp_path, "models", "selftest", models=store).returncode == 0
    assert run(tmp_path, "models", "activate", "iris", "1", models=store).returncode == 0
    assert (
        json.loads(run(tmp_path, "models", "list", "--json", models=store).stdout)[0]["active_version"] == "1"
    )
    assert run(tmp_path, "models", "activate", "iris", "2", models=store).returncode == 0
    out = run(tmp_path, "models", "rollback", "iris", models=store)
    assert out.returncode == 0 and "rolled back to version 1" in out.stdout


def test_bad_environment_lists_every_problem(tmp_path: Path) -> None:
    env = dict(os.environ, EDGE_INTRA_OP_THREADS="0", EDGE_MODLE_DIR="/x", EDGE_LOG_LEVEL="LOUD")
    out = subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", "backends"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 3
    for needle in ("intra_op_threads", "EDGE_MODLE_DIR", "log_level"):
        assert needle in out.stderr


def test_every_command_has_help_text() -> None:
    parser = build_parser()
    stack = [parser]
    seen = 0
    while stack:
        p = stack.pop()
        for action in p._actions:
            if action.help is None and action.dest not in ("help",):
                raise AssertionError(f"{p.prog}: {action.dest} has no help text")
            choices = getattr(action, "choices", None)
            if isinstance(choices, dict):
                for sub in choices.values():
                    assert sub.description, f"{sub.prog} has no description"
                    stack.append(sub)
                    seen += 1
    assert seen >= 9
