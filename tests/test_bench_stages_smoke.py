"""Smoke test of bench/request_stages.py: a short run over a real gateway process with the stage probe,
every answer checked. Never asserts on timings (a benchmark is not a timed test); it asserts what
must hold whatever the machine: every stage measured, and a part never longer than its whole in
the same request, which holds for the medians too."""

from __future__ import annotations

import json
from pathlib import Path

from bench.request_stages import STAGES
from tests.bench_runner import run_bench

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "request_stages.py"


def test_a_short_run_measures_every_stage_of_both_formats(tmp_path: Path) -> None:
    out = tmp_path / "stages.json"
    args = ["--model", "digits_int8", "--requests", "20", "--warmup", "5", "--json", str(out)]
    run = run_bench(SCRIPT, args, timeout=180)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 wrong answers of 50 checked" in run.stdout
    doc = json.loads(out.read_text())
    assert doc["model"] == "digits_int8" and doc["wrong"] == 0
    for fmt in ("json", "bin"):
        st = doc["stages_us"][fmt]
        assert st["measured requests"] == 20
        for stage in STAGES:
            assert st[stage[0]] > 0, (fmt, stage[0])
        total = st["in the server, in all"]
        assert (
            st["  of which the JSON parse (codec.loads)"]
            <= st["fast path: checks, body, decode, until the service"]
        )
        assert st["  of which the runtime call"] <= st["service"]
        assert st["  of which the input check"] <= st["service"]
        assert all(st[s[0]] <= total for s in STAGES)
        assert st["client round trip"] >= total
        assert f"| {STAGES[0][0]} |" in run.stdout


def test_an_unknown_format_is_a_usage_error() -> None:
    run = run_bench(SCRIPT, ["--formats", "xml"], timeout=60)
    assert run.returncode == 2
    assert "--formats takes json, bin" in run.stderr
