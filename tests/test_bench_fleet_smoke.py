"""Smoke test of bench/fleet.py: a tiny fleet end to end over real processes (mosquitto, the
ingest and API roles, PostgreSQL, the asyncio simulator, Chromium) prints every row of its table
with no result lost or stored twice. Never asserts on timings (a benchmark is not a timed test)."""

from __future__ import annotations

from pathlib import Path

from tests.bench_runner import run_bench

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "fleet.py"


def test_a_small_fleet_prints_every_row_and_loses_nothing() -> None:
    """The matrix in one invocation: two fleet sizes, SQLite and two ingests on PostgreSQL, the
    preload and the fleet page in Chromium at the larger size."""
    args = [
        "--devices", "10,20", "--seconds", "8", "--rate", "1,0.5", "--configs", "sqlite-1,pg-2",
        "--drain-s", "40", "--preload", "500", "--dashboard", "pg-2", "--dashboard-s", "2",
    ]  # fmt: skip
    proc = run_bench(SCRIPT, args, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in table[0].split("|")[1:-1]]
    rows = {
        (r[0], r[1]): dict(zip(header, r, strict=True))
        for r in ([c.strip() for c in line.split("|")[1:-1]] for line in table[2:])
    }
    assert set(rows) == {(c, n) for c in ("sqlite-1", "pg-2") for n in ("10", "20")}, proc.stdout
    for (name, size), row in rows.items():
        assert row["devices"] == size, (name, row)
        assert int(row["produced"].replace(",", "")) > 0, (name, row)
        assert (row["lost"], row["stored twice"], row["left in outboxes"]) == ("0", "0", "0"), (name, row)
    assert "fleet page, pg-2 at 20 devices: load" in proc.stdout, proc.stdout + proc.stderr
    assert "preloaded 500 results" in proc.stderr
