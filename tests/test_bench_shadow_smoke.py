"""Smoke test of bench/shadow.py: one short round per condition end to end through a real gateway;
the table is printed and the shadow really ran. Never asserts on timings (a benchmark is not a
timed test)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.bench_runner import run_bench

ROOT = Path(__file__).resolve().parent.parent


def test_one_round_each_way_prints_the_ratio_table(tmp_path: Path) -> None:
    out = tmp_path / "shadow.json"
    proc = run_bench(
        ROOT / "bench" / "shadow.py", ["--requests", "30", "--rounds", "1", "--json", str(out)], 240
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ratio (staged / none)" in proc.stdout and "target p50 within 5 %" in proc.stdout
    doc = json.loads(out.read_text())
    assert doc["off"]["n"] == doc["on"]["n"] == 30
    assert doc["shadow"]["samples"] >= 1 and doc["shadow"]["agreement"] == 1.0  # the same model: it agrees
