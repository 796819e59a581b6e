"""Smoke test of bench/service_client.py: a short run end to end over two real model service
processes, every row printed for both clients. Never asserts on timings (a benchmark is not a
timed test); the figures are in the client's docstring and the note of issue 13."""

from __future__ import annotations

from pathlib import Path

from tests.bench_runner import run_bench

ROOT = Path(__file__).resolve().parent.parent


def test_the_client_benchmark_prints_every_row() -> None:
    args = ["--seconds", "0.3", "--rounds", "1", "--concurrency", "1,4"]
    run = run_bench(ROOT / "bench" / "service_client.py", args, timeout=120)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].split()[:3] == ["model", "c", "hand"]
    rows = [line.split() for line in lines[1:5]]
    assert [(r[0], r[1]) for r in rows] == [
        ("iris", "1"),
        ("iris", "4"),
        ("digits_int8", "1"),
        ("digits_int8", "4"),
    ]
    for r in rows:
        assert float(r[2]) > 0 and float(r[3]) > 0  # both clients answered (every call checked by Services)
    assert "hand-written / httpx throughput:" in run.stdout
