"""Smoke test of bench/model_tools.py: `--quick` runs `models quantize` and `models bench` against the
raw runtime end to end and prints its one table. Never asserts on timings (a benchmark is not a timed
test): the figures' presence and shape only."""

from __future__ import annotations

import json
from pathlib import Path

from tests.bench_runner import ROOT, run_bench

SCRIPT = ROOT / "bench" / "model_tools.py"


def test_quick_run_prints_one_row_per_model_and_batch(tmp_path: Path) -> None:
    out_json = tmp_path / "model_tools.json"
    proc = run_bench(SCRIPT, ["--quick", "--models", "digits", "--json", str(out_json)], 300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("command: ")
    header = [line for line in lines if line.startswith("| model ")]
    assert len(header) == 1, proc.stdout
    for column in (
        "fp32 KiB",
        "int8 KiB",
        "agreement",
        "99 % gate",
        "raw fp32 ms",
        "bench fp32 ms",
        "bench overhead int8",
    ):
        assert column in header[0]
    rows = [line.split("|")[1:3] for line in lines if line.startswith("| digits ")]
    assert [(m.strip(), b.strip()) for m, b in rows] == [("digits", "1"), ("digits", "32")]
    assert any(line.startswith("digits: int8 = static QDQ, per-channel; agreement ") for line in lines)
    assert lines[-1].startswith("bench overhead: largest |bench/raw - 1| = ")
    doc = json.loads(out_json.read_text())
    assert [(r["model"], r["batch"]) for r in doc["rows"]] == [("digits", 1), ("digits", 32)]
    for r in doc["rows"]:
        q = r["quantize"]
        assert q["written"] and q["gate"] == "written" and q["size_bytes"]["int8"] < q["size_bytes"]["fp32"]
        assert r["fp32"]["raw_ms"] > 0 and r["int8"]["bench_ms"] > 0


def test_unknown_model_is_a_usage_error() -> None:
    proc = run_bench(SCRIPT, ["--quick", "--models", "no_such_model"], 60)
    assert proc.returncode == 2 and "no_such_model" in proc.stderr
