"""Smoke test of bench/serving.py: a small subset runs end to end over real HTTP and every
answer is right. Never asserts on timings (a benchmark is not a timed test)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.bench_runner import run_bench

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "serving.py"
TIMEOUT_S = 150


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return run_bench(SCRIPT, args, TIMEOUT_S)


def test_small_subset_runs_every_path_and_answers_right(tmp_path: Path) -> None:
    out_json = tmp_path / "serving.json"
    models = ["digits_int8", "face", "heavy_cnn"]
    proc = _run(
        [
            "--quick",
            "--models",
            ",".join(models),
            "--concurrency",
            "1,8",
            "--requests",
            "20",
            "--formats",
            "json,bin,png",
            "--json",
            str(out_json),
        ]
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert any(line.startswith("command: ") for line in lines), proc.stdout
    header = [line for line in lines if line.startswith("| model | path |")]
    assert len(header) == 1, proc.stdout
    for column in ("req/s", "p50 ms", "p99 ms", "mean batch", "wrong/checked"):
        assert column in header[0]
    assert "Targets:" in lines
    doc = json.loads(out_json.read_text())
    assert doc["wrong_answers"] == 0
    assert doc["failed_cells"] == 0
    rows = doc["rows"]
    for model in models:
        paths = {r["path"] for r in rows if r["model"] == model}
        assert paths == {"a", "b", "c", "d"}, (model, paths)
    for r in rows:
        assert r["checked"] > 0 and r["wrong"] == 0 and r["failure"] is None, r
        if r["path"] in ("c", "d"):
            assert r["mean_batch"] is not None and r["mean_batch"] >= 1.0, r  # read from /metrics
    formats = {(r["model"], r["fmt"]) for r in rows if r["path"] == "d"}
    assert {("digits_int8", "json"), ("digits_int8", "bin"), ("face", "png"), ("heavy_cnn", "bin")} <= formats
    assert len(doc["targets"]) == 4  # tiny vs naive, heavy binary and JSON vs raw, c=1 p50


def test_unknown_model_is_a_usage_error() -> None:
    proc = _run(["--quick", "--models", "no_such_model"])
    assert proc.returncode == 2
    assert "no_such_model" in proc.stderr
