"""Smoke test of bench/runtime.py: it runs and prints its table. Never asserts on timings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from edge_agent.runtime.store import ModelStore

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "runtime.py"
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"


def _python() -> str:
    return str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable


def _models() -> list[str]:
    """iris, face and digits_tflite_int8 when bundled (one ONNX ZipMap model, one fixed-batch LiteRT
    detector, one LiteRT model with integer input/output tensors)."""
    bundled = ModelStore(ROOT / "models", Path("/nonexistent/store-state.json")).names()
    wanted: list[str] = [m for m in ("iris", "face", "digits_tflite_int8") if m in bundled]
    return wanted or bundled[:2]


def test_quick_benchmark_prints_a_row_per_model(tmp_path: Path) -> None:
    models = _models()
    assert models, "no bundled models"
    out_json = tmp_path / "bench.json"
    proc = subprocess.run(
        [_python(), str(SCRIPT), "--quick", "--models", ",".join(models), "--json", str(out_json)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert any(line.startswith("command: ") for line in lines)
    header = [line for line in lines if line.startswith("| model ")]
    assert len(header) == 1, proc.stdout
    for column in ("b1 p50 raw ms", "b1 p50 agent ms", "b32 raw rows/s", "b32 agent/raw"):
        assert column in header[0]
    first_cells = [line.split("|")[1].strip().rstrip("¹²³⁴") for line in lines if line.startswith("| ")]
    for name in models:
        assert first_cells.count(name) == 1, f"no row for {name}:\n{proc.stdout}"
    assert lines[-1].startswith("Memory: "), proc.stdout
    doc = json.loads(out_json.read_text())
    assert [m["name"] for m in doc["models"]] == models
    assert all(m["error"] is None for m in doc["models"])
    assert all(m["agrees"] for m in doc["models"]), doc["models"]
    # integer-tensor rows carry the like-for-like baseline (raw + the float<->int conversion), others not
    for m in doc["models"]:
        if m["quantized_io"]:
            assert m["overhead_conv_b32"] > 0 and "raw_conv" in m["batch32"], m
        else:
            assert m["overhead_conv_b32"] is None, m


def test_unknown_model_is_a_usage_error() -> None:
    proc = subprocess.run(
        [_python(), str(SCRIPT), "--quick", "--models", "no_such_model"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 2
    assert "no_such_model" in proc.stderr
