"""Smoke run of bench/wear.py: one pattern, few operations, no idle window. The figures are
measured, not asserted beyond being there (timing-free, but byte counts vary with scheduling)."""

from __future__ import annotations

from tests.bench_runner import ROOT, run_bench


def test_wear_bench_runs_old_and_new_side_by_side() -> None:
    done = run_bench(
        ROOT / "bench" / "wear.py", ["--n", "40", "--idle-s", "0", "--patterns", "async job"], 600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    row = next(line for line in done.stdout.splitlines() if line.startswith("async job"))
    old, new = (float(x) for x in row.split()[3:5])
    assert old > 0 and new > 0, row
    assert "target: <= 8 KiB per small result" in done.stdout
