"""Smoke run of bench/repack.py: a small database, one pattern, few operations. The figures are
measured, not asserted beyond being there (byte counts vary with scheduling)."""

from __future__ import annotations

from tests.bench_runner import ROOT, run_bench


def test_repack_bench_measures_the_cost_and_the_three_sides() -> None:
    done = run_bench(ROOT / "bench" / "repack.py", ["--mb", "1", "--n", "20", "--patterns", "async job"], 600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "1 KiB pages: repacked," in done.stdout, done.stdout
    row = next(line for line in done.stdout.splitlines() if line.startswith("async job"))
    figures = [float(x) for x in row.split()[2::2]]
    assert len(figures) == 3 and all(f > 0 for f in figures), row
