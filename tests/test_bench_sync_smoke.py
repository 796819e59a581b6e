"""Smoke test of bench/sync.py: ``--quick`` runs end to end over real processes (mosquitto, the
cloud ingest role, device sync roles) and prints every row of its table. Never asserts on timings
(a benchmark is not a timed test)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.bench_runner import python, run_bench

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "sync.py"
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
TIMEOUT_S = 85
# row key in the JSON -> the start of its first cell in the table
ROWS = {
    "b100": "sync: outbox -> cloud store, batched (default batch_size 100)",
    "b500": "sync: outbox -> cloud store, batched (batch_size 500)",
    "b1": "sync: outbox -> cloud store, one message per result",
    "raw_batched": "raw paho publish -> broker PUBACK, batch-100 payloads",
    "raw_single": "raw paho publish -> broker PUBACK, one-result payloads",
    "recovery": "recovery: ",
}


@pytest.fixture(autouse=True)
def _mosquitto_installed() -> None:
    """Fail (not skip) without Debian's mosquitto: `make test` installs it."""
    assert Path(MOSQUITTO).exists(), "mosquitto is missing: run `make test` (apt-get install mosquitto)"


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return run_bench(SCRIPT, args, timeout)


def test_quick_run_prints_every_row(tmp_path: Path) -> None:
    out_json = tmp_path / "sync.json"
    proc = _run(["--quick", "--json", str(out_json)], TIMEOUT_S)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("command: ")
    for prefix in ("versions: ", "CPUs: ", "load average at start: ", "load average at end: ", "target: "):
        assert any(line.startswith(prefix) for line in lines), f"no {prefix!r} line:\n{proc.stdout}"
    assert "mosquitto" in next(line for line in lines if line.startswith("versions: "))
    target = next(line for line in lines if line.startswith("target: "))
    assert target.rsplit(": ", 1)[1].split()[0] in {"met", "MISSED"}, target  # either verdict, with figures
    table = [line for line in lines if line.startswith("| ")]
    header = [c.strip() for c in table[0].split("|")[1:-1]]
    for column in ("path", "results/s", "× one-per-result", "e2e p50 ms", "e2e p99 ms"):
        assert column in header, header
    cells = [[c.strip() for c in line.split("|")[1:-1]] for line in table[2:]]
    rate = header.index("results/s")
    for key, first in ROWS.items():
        row = [c for c in cells if c[0].startswith(first)]
        assert len(row) == 1, f"no single {key} row:\n{proc.stdout}"
        assert row[0][rate] != "error", row[0]
    assert any(line.startswith("Exactly once: ") for line in lines), proc.stdout
    assert not any(line.startswith(("ERROR", "WARNING")) for line in lines), proc.stdout
    doc = json.loads(out_json.read_text())
    assert doc["quick"] is True
    assert {r["key"] for r in doc["rows"]} == set(ROWS)
    assert all(r["error"] is None for r in doc["rows"])
    assert all(c["missing"] == c["duplicates"] == c["extra"] == 0 for c in doc["exactly_once"].values())


def _group_members(pgid: int) -> list[str]:
    """Processes still in process group ``pgid`` (from /proc), as "pid command" strings."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid:  # field 5 of /proc/PID/stat: the process group
            found.append(f"{stat.parent.name} {text[text.index('(') + 1 : text.rindex(')')]}")
    return found


def test_sigterm_mid_run_stops_every_process(tmp_path: Path) -> None:
    """A SIGTERM mid-run stops the benchmark and the broker, ingest and sync roles it started."""
    proc = subprocess.Popen(
        [python(), str(SCRIPT), "--quick", "--workdir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
        start_new_session=True,
    )
    log = tmp_path / "bench-b1" / "sync.log"
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while "connected to the broker" not in (log.read_text() if log.exists() else ""):
            assert proc.poll() is None, f"the benchmark exited early with {proc.returncode}"
            assert time.monotonic() < deadline, "the sync roles did not start"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM
    assert _group_members(proc.pid) == []
