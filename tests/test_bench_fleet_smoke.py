"""Smoke test of bench/fleet.py: a tiny fleet end to end over real processes (mosquitto, the
ingest and API roles, PostgreSQL, the asyncio simulator) prints every row of its table with no
result lost or stored twice. Never asserts on timings (a benchmark is not a timed test)."""

from __future__ import annotations

from pathlib import Path

from tests.bench_runner import run_bench

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "fleet.py"


def test_a_small_fleet_prints_every_row_and_loses_nothing() -> None:
    args = [
        "--devices",
        "20",
        "--seconds",
        "8",
        "--rate",
        "1",
        "--configs",
        "sqlite-1,pg-2",
        "--drain-s",
        "40",
    ]
    proc = run_bench(SCRIPT, args, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in table[0].split("|")[1:-1]]
    rows = {
        r[0]: dict(zip(header, r, strict=True))
        for r in ([c.strip() for c in line.split("|")[1:-1]] for line in table[2:])
    }
    assert set(rows) == {"sqlite-1", "pg-2"}, proc.stdout
    for name, row in rows.items():
        assert row["devices"] == "20", (name, row)
        assert int(row["produced"].replace(",", "")) > 0, (name, row)
        assert (row["lost"], row["stored twice"], row["left in outboxes"]) == ("0", "0", "0"), (name, row)
