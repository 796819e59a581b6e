"""`edge-agent models bench` on every bundled model, as a user runs it (a real process).

These are not timed tests: they check the figures' shape and consistency (p50 <= p99, a
stage never slower than the whole request at the same percentile's neighbourhood, rows/s
from the batch and the latencies), not how fast this machine is."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.runtime import bench
from edge_agent.runtime.package import read_manifest
from edge_agent.sync.protocol import ModelBench
from tests.conftest import MODELS, ROOT, bundled_models


def run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")}
    cmd = [sys.executable, "-m", "edge_agent.cli", "--model-dir", str(MODELS),
           "--data-dir", str(tmp_path / "st"), *args]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)


@pytest.mark.parametrize("model", bundled_models())
def test_bench_every_bundled_model_json_parses(tmp_path: Path, model: str) -> None:
    out = run(tmp_path, "models", "bench", model, "--batch", "1,2", "--threads", "1", "--seconds", "0.05",
              "--json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    fig = ModelBench.model_validate(json.loads(out.stdout))
    assert fig.model == model and fig.version == "1"
    assert [(r.batch, r.threads) for r in fig.rows] == [(1, 1), (2, 1)]
    assert fig.memory_mb is not None and fig.memory_mb >= 0
    pkg = MODELS / model / "1"
    has_images = bool(bench.sample_images(pkg)) and read_manifest(pkg).preprocessing is not None
    assert fig.inputs == ("images" if has_images else "tensors")
    for r in fig.rows:
        assert r.calls >= 10
        assert 0 < r.p50_ms <= r.p99_ms
        assert set(r.stages) == {"preprocess", "infer", "postprocess"}
        for s in r.stages.values():
            assert 0 <= s.p50_ms <= s.p99_ms
        # every stage is part of the request: its median cannot exceed the request's p99
        assert all(s.p50_ms <= r.p99_ms for s in r.stages.values())
        # rows/s = batch / mean latency, and the mean lies between the median... and the max
        assert r.batch * 1000 / r.p99_ms * 0.5 <= r.throughput_rps
    saved = bench.latest(tmp_path / "st")
    assert saved[model] == fig


def test_bench_table_and_saved_figures(tmp_path: Path) -> None:
    out = run(
        tmp_path, "models", "bench", "digits", "--batch", "1,4", "--threads", "1,2", "--seconds", "0.05"
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("digits/1 (onnx, images); memory added by the model:")
    assert lines[1].split()[:3] == ["batch", "threads", "p50"]
    body = [line.split() for line in lines[3:7]]
    assert [(int(b[0]), int(b[1])) for b in body] == [(1, 1), (4, 1), (1, 2), (4, 2)]
    assert "saved to" in lines[-1]
    assert set(bench.latest(tmp_path / "st")) == {"digits"}


def test_bad_arguments_and_unknown_models_exit_with_a_message(tmp_path: Path) -> None:
    out = run(tmp_path, "models", "bench", "nope")
    assert out.returncode == 4 and "no model named 'nope'" in out.stderr
    out = run(tmp_path, "models", "bench", "iris", "--batch", "0")
    assert out.returncode == 5 and "batch sizes must be 1..1024" in out.stderr
    out = run(tmp_path, "models", "bench", "iris", "--batch", "x")
    assert out.returncode == 2 and "comma-separated integers" in out.stderr


def test_latest_skips_unreadable_files(tmp_path: Path) -> None:
    out = run(tmp_path, "models", "bench", "iris", "--batch", "1", "--threads", "1", "--seconds", "0.02")
    assert out.returncode == 0, out.stderr
    (bench.bench_dir(tmp_path / "st") / "broken.json").write_text("{not json")
    before = bench.stamp(tmp_path / "st")
    assert set(bench.latest(tmp_path / "st")) == {"iris"}
    (bench.bench_dir(tmp_path / "st") / "broken.json").unlink()
    assert bench.stamp(tmp_path / "st") != before
